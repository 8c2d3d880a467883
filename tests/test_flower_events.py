"""Flower's view: a first attempt (taken from a ready list, not a Celery task) still shows as a task."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.events.state import State

from tests.conftest import System
from tests.harness import Reply, wait_until
from tests.test_end_to_end import unique


class TaskEvents:
    """What Flower would receive: every Celery event on the broker, captured in a thread."""

    def __init__(self, broker_url: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self._app = Celery(broker=broker_url)
        self._connection = self._app.connection_for_read()
        self._receiver = self._app.events.Receiver(self._connection, handlers={"*": self.seen.append})
        self._thread = threading.Thread(target=self._capture, daemon=True)
        self._thread.start()

    def _capture(self) -> None:
        self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, uuid: str) -> list[str]:
        return [event["type"] for event in list(self.seen) if event.get("uuid") == uuid]

    def close(self) -> None:
        self._receiver.should_stop = True
        self._thread.join(5)
        self._connection.release()


@pytest.fixture
def task_events(system: System) -> Iterator[TaskEvents]:
    events = TaskEvents(system.url)
    # The worker's heartbeat (every 2 s) proves the capture is subscribed before the job runs.
    wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in list(events.seen)), 15, "a worker heartbeat")
    yield events
    events.close()


def test_a_first_attempt_shows_in_flower_as_received_started_succeeded(system: System, task_events: TaskEvents) -> None:
    key = unique("t:flower-")
    system.receiver.plan(key, Reply(callback="success"))
    system.expire(key)
    [call] = system.receiver.wait_calls(key, 1)
    job_id = call.body["jobId"]
    wait_until(lambda: "task-succeeded" in task_events.of(job_id), 10, f"task-succeeded for job {job_id}")
    assert task_events.of(job_id) == ["task-received", "task-started", "task-succeeded"]
    received = next(e for e in task_events.seen if e.get("uuid") == job_id)
    assert received["name"] == "followup.deliver" and key in received["kwargs"]


def test_a_failed_first_attempt_shows_as_retried_then_the_retry_as_a_celery_task(
    system: System, task_events: TaskEvents
) -> None:
    key = unique("t:flower-retry-")
    system.receiver.plan(key, Reply(callback="failed"), Reply(callback="success"))
    system.expire(key)
    calls = system.receiver.wait_calls(key, 2)
    job_id = calls[0].body["jobId"]
    wait_until(lambda: task_events.of(job_id).count("task-succeeded") == 1, 15, f"the retry of {job_id} to succeed")
    kinds = task_events.of(job_id)
    first_attempt = kinds[: kinds.index("task-retried") + 1]
    assert first_attempt == ["task-received", "task-started", "task-retried"], kinds
    # Flower folds a task's events into one state, as celery.events.state does.
    state = State()
    for event in list(task_events.seen):
        state.event(event)
    task = state.tasks[job_id]
    assert (task.state, task.name) == ("SUCCESS", "followup.deliver"), (task.state, task.name)
