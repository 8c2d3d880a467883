"""Celery task events for first attempts, so that Flower shows every job.

A first attempt comes from a ready list, not as a Celery task (see ready.py), so Celery sends no
events for it. The feeder sends the ones Celery would (received, started, then succeeded, failed
or retried) under the job's id and the task's name, so Flower lists the job as one task whose
retries, when it has any, are the Celery tasks that follow under the same id. They are buffered
and published as one message per batch, which is what makes them cheap: Celery's own events
cost a publish each.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery

from followup.jobs import TASK_NAME
from followup.ready import ReadyJob

log = logging.getLogger("followup.job_events")

# Events are published at least this often, and at once when this many are waiting.
FLUSH_EVERY = 0.25
BUFFER_LIMIT = 500


class JobEvents:
    def __init__(self, app: Celery, hostname: str) -> None:
        self._dispatcher = app.events.Dispatcher(
            connection=app.connection_for_write(),
            hostname=hostname,
            buffer_group={"task"},
            buffer_limit=BUFFER_LIMIT,
        )
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="followup-job-events", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.flush()
        self._dispatcher.close()

    def received(self, ready: ReadyJob) -> None:
        job = ready.job
        kwargs = {"key": job.key, "expired_at": job.expired_at, "attempt": ready.attempt}
        self._send("task-received", uuid=job.id, name=TASK_NAME, args="()", kwargs=repr(kwargs), retries=0)

    def started(self, job_id: str) -> None:
        self._send("task-started", uuid=job_id)

    def finished(self, job_id: str, kind: str, started: float, reason: str = "") -> None:
        """After `follow_up` returned `kind` (success | skipped | failed | retrying)."""
        if kind == "failed":
            self._send("task-failed", uuid=job_id, exception=f"JobFailed({reason!r})", traceback="")
        elif kind == "retrying":
            self._send("task-retried", uuid=job_id, exception=f"AttemptFailed({reason!r})", traceback="")
        else:
            self._send("task-succeeded", uuid=job_id, result=repr(kind), runtime=time.monotonic() - started)

    def _send(self, event: str, **fields: object) -> None:
        try:
            self._dispatcher.send(event, **fields)
        except Exception as exc:  # noqa: BLE001 - Flower's view must never cost a job
            log.debug("could not send %s: %s", event, exc)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_EVERY):
            self.flush()

    def flush(self) -> None:
        try:
            self._dispatcher.flush()
        except Exception as exc:  # noqa: BLE001 - the broker may be away; events wait in the buffer
            log.debug("could not publish task events: %s", exc)
