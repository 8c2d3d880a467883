"""Races between attempts, copies of attempts and callbacks, on a real Redis and a real hub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from followup.callbacks import CallbackHub
from followup.config import load_settings
from followup.connections import redis_client, subscriber_client
from followup.embedded import RedisServer
from followup.jobs import Job, JobStore
from tests.harness import wait_until


@dataclass
class Parts:
    redis: redis.Redis
    store: JobStore
    hub: CallbackHub
    channel: str

    def callback(self, job_id: str, status: str = "success", **extra: object) -> None:
        self.redis.publish(self.channel, json.dumps({"jobId": job_id, "status": status, **extra}))


@pytest.fixture(scope="module")
def parts(redis_server: RedisServer) -> Iterator[Parts]:
    url = redis_server.url(5)
    settings = load_settings(
        {
            "REDIS_URL": url,
            "KEY_WEBHOOK_MAPPING": "r:*=http://127.0.0.1:9/x",
            "MAX_ATTEMPTS": "2",
            "CALLBACK_CHANNEL": "race_callback",
        }.get
    )
    client = redis_client(url)
    store = JobStore(client, settings)
    hub = CallbackHub(
        subscriber_client(url),
        settings.callback_channel,
        offer=lambda cb: store.offer(cb.job_id, cb.status, cb.raw, cb.error),
    )
    hub.start()
    yield Parts(client, store, hub, settings.callback_channel)
    hub.stop()


def test_a_duplicate_copy_in_the_same_process_does_not_unregister_the_running_attempt(parts: Parts) -> None:
    job = Job("race-a", "r:a", 1)
    with parts.hub.register(job.id, 1) as running:
        running.arm()
        assert parts.store.begin(job, 1).verdict == "go"
        with parts.hub.register(job.id, 1):  # the duplicate: busy, and it leaves
            assert parts.store.begin(job, 1).verdict == "busy"
        parts.callback(job.id)
        callback = running.wait(5)
    assert callback is not None and callback.ok


def test_a_success_after_the_last_attempt_succeeds_instead_of_dead_lettering(parts: Parts) -> None:
    job = Job("race-b", "r:b", 1)
    assert parts.store.begin(job, 2).verdict == "go"
    # The last attempt timed out and left; the flow's success arrives now, in no waiter's process.
    parts.callback(job.id)
    wait_until(lambda: parts.store.stored_success(job), 5, "the success to be kept")
    assert parts.store.dead_letter(job, 2, "no callback within 2s") == "succeeded"
    record = parts.store.record(job.id)
    assert record["status"] == "success" and "cb" not in record
    assert job.id not in {letter.job_id for letter in parts.store.dead_letters()}


def test_a_late_failure_for_an_earlier_attempt_does_not_fail_the_current_one(parts: Parts) -> None:
    job = Job("race-c", "r:c", 1)
    parts.store.begin(job, 1)
    parts.store.end(job, 1, "timeout")
    with parts.hub.register(job.id, 2) as waiter:
        # Before the dispatch, a failure can only be about an earlier attempt.
        parts.callback(job.id, "failed", error="attempt 1 gave up")
        _await_delivery_of_what_was_published(parts)
        assert parts.store.begin(job, 2).verdict == "go"
        waiter.arm()
        # After it, one that names its attempt is judged by that.
        parts.callback(job.id, "failed", error="attempt 1 gave up", attempt=1)
        assert waiter.wait(0.5) is None
        parts.callback(job.id, "failed", error="attempt 2 failed", attempt=2)
        callback = waiter.wait(5)
    assert callback is not None and callback.error == "attempt 2 failed"


def _await_delivery_of_what_was_published(parts: Parts) -> None:
    """The hub reads its channel in order: once a marker arrives, everything before it has."""
    with parts.hub.register("race-marker", 1) as marker:
        parts.callback("race-marker")
        assert marker.wait(5) is not None, "the hub did not deliver a marker callback within 5 s"


def test_an_ended_attempt_does_not_run_again_but_an_interrupted_one_does(parts: Parts) -> None:
    ended, interrupted = Job("race-d1", "r:d", 1), Job("race-d2", "r:d", 1)
    assert parts.store.begin(ended, 1).verdict == "go"
    parts.store.end(ended, 1, "webhook answered HTTP 500")  # its retry is on the broker
    assert parts.store.begin(ended, 1).verdict == "stale"
    assert parts.store.begin(ended, 2).verdict == "go"
    assert parts.store.begin(interrupted, 1).verdict == "go"
    parts.store.release(interrupted, 1, "Redis went away")  # nothing concluded: run it again
    assert parts.store.begin(interrupted, 1).verdict == "go"


def test_a_kept_success_survives_until_the_job_finishes(parts: Parts) -> None:
    job = Job("race-e", "r:e", 1)
    parts.store.begin(job, 1)
    parts.callback(job.id)
    wait_until(lambda: parts.store.stored_success(job), 5, "the success to be kept")
    assert parts.store.begin(job, 2).verdict == "callback"
    assert "cb" in parts.store.record(job.id)  # a blip before finishing loses nothing
    assert parts.store.succeed(job, 2)
    assert parts.store.begin(job, 2).verdict == "done"
    assert not parts.store.succeed(job, 2)
