"""The Celery task: one expiration of a mapped key, followed up until the flow confirms it."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task

from followup.backoff import retry_delay
from followup.celery_app import app
from followup.jobs import Job
from followup.worker import run_attempt, runtime

log = logging.getLogger("followup.tasks")

TASK_NAME = "followup.deliver"


class AttemptFailed(Exception):
    """One attempt failed; Celery retries the task after a backoff."""


class JobFailed(Exception):
    """The last attempt failed; the job is dead-lettered and the task ends in FAILURE."""


@app.task(bind=True, name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def deliver(
    self: Task,
    key: str,
    expired_at: int,
    *,
    payload: Any = None,
    attempt: int = 1,
    payload_error: str | None = None,
) -> str:
    """Attempt `attempt` of the follow-up for one expiration (the task id is the jobId).

    The attempt number travels in the message rather than in Celery's retry count, so that an
    attempt cut short by Redis going away runs again as the same attempt instead of using one up.
    """
    rt = runtime()
    settings = rt.settings
    job = Job(self.request.id, key, expired_at, payload, payload_error)
    again = {"key": key, "expired_at": expired_at, "payload": payload, "payload_error": payload_error}
    try:
        outcome = run_attempt(rt, job, attempt)
    except redis.RedisError as exc:
        delay = retry_delay(settings, attempt)
        log.warning("job %s attempt %d interrupted (%s); runs again in %.1fs", job.id, attempt, exc, delay)
        raise self.retry(countdown=delay, exc=exc, kwargs={**again, "attempt": attempt}) from None
    if outcome.kind == "success":
        rt.metrics.attempts.labels("success").observe(attempt)
        log.info("job %s (%s) succeeded on attempt %d: %s", job.id, key, attempt, outcome.reason)
        return outcome.kind
    if outcome.kind == "skipped":
        log.info("job %s attempt %d skipped: %s", job.id, attempt, outcome.reason)
        return outcome.kind
    if outcome.kind == "busy":
        # Come back when the other holder's lease ends: by then it has finished, or it died and
        # this copy is the one that must run.
        raise self.retry(countdown=outcome.retry_after + 1, kwargs={**again, "attempt": attempt})
    if attempt >= settings.max_attempts:
        rt.store.dead_letter(job, attempt, outcome.reason)
        rt.metrics.attempts.labels("failed").observe(attempt)
        rt.metrics.dead_lettered.inc()
        log.error("job %s (%s) failed after %d attempts: %s; dead-lettered", job.id, key, attempt, outcome.reason)
        raise JobFailed(f"{outcome.reason} (after {attempt} attempts)")
    delay = retry_delay(settings, attempt)
    log.warning(
        "job %s (%s) attempt %d/%d failed: %s; retrying in %.1fs",
        job.id,
        key,
        attempt,
        settings.max_attempts,
        outcome.reason,
        delay,
    )
    raise self.retry(countdown=delay, exc=AttemptFailed(outcome.reason), kwargs={**again, "attempt": attempt + 1})
