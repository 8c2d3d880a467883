"""The Celery task: one expiration of a mapped key, followed up until the flow confirms it."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis
from celery import Task

from followup.backoff import retry_delay
from followup.celery_app import app
from followup.config import settings
from followup.jobs import Job
from followup.worker import Outcome, WorkerRuntime, run_attempt, runtime

log = logging.getLogger("followup.tasks")

TASK_NAME = "followup.deliver"
# A copy of an attempt that a live worker runs looks again after at most this long: short enough
# that the copy is never held past the broker's visibility timeout.
BUSY_RECHECK = 30.0


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
    job = Job(self.request.id, key, expired_at, payload, payload_error)
    rt: WorkerRuntime | None = None
    try:
        rt = runtime()
        outcome = run_attempt(rt, job, attempt)
        return _conclude(self, rt, job, attempt, outcome)
    except (redis.RedisError, TimeoutError) as exc:
        # Nothing was concluded: this same attempt runs again. (Celery's Retry is not caught here.)
        delay = retry_delay(rt.settings if rt else settings(), attempt)
        if rt is not None:
            _release_quietly(rt, job, attempt, str(exc))
        log.warning("job %s attempt %d interrupted (%s); runs again in %.1fs", job.id, attempt, exc, delay)
        raise self.retry(countdown=delay, exc=exc, kwargs=_kwargs(job, attempt)) from None


def _kwargs(job: Job, attempt: int) -> dict[str, Any]:
    """The task's arguments for attempt `attempt` of `job` (its id is the task id)."""
    return {
        "key": job.key,
        "expired_at": job.expired_at,
        "payload": job.payload,
        "payload_error": job.payload_error,
        "attempt": attempt,
    }


def _conclude(task: Task, rt: WorkerRuntime, job: Job, attempt: int, outcome: Outcome) -> str:
    config = rt.settings
    if outcome.kind == "success":
        rt.metrics.attempts.labels("success").observe(attempt)
        log.info("job %s (%s) succeeded on attempt %d: %s", job.id, job.key, attempt, outcome.reason)
        return outcome.kind
    if outcome.kind == "skipped":
        log.info("job %s attempt %d skipped: %s", job.id, attempt, outcome.reason)
        return outcome.kind
    if outcome.kind == "busy":
        # Look again when the other holder's lease ends (or sooner): by then it has finished, or
        # it died and this copy is the one that must run.
        countdown = min((outcome.retry_after or 0) + 1, BUSY_RECHECK)
        raise task.retry(countdown=countdown, kwargs=_kwargs(job, attempt))
    if outcome.final or attempt >= config.max_attempts:
        verdict = rt.store.dead_letter(job, attempt, outcome.reason)
        if verdict == "succeeded":
            rt.metrics.attempts.labels("success").observe(attempt)
            log.info("job %s (%s) succeeded: its success callback arrived after the last attempt", job.id, job.key)
            return "success"
        rt.metrics.attempts.labels("failed").observe(attempt)
        if verdict == "dead-lettered":
            rt.metrics.dead_lettered.inc()
        log.error("job %s (%s) failed after %d attempt(s): %s; %s", job.id, job.key, attempt, outcome.reason, verdict)
        raise JobFailed(f"{outcome.reason} (after {attempt} attempts)")
    delay = retry_delay(config, attempt)
    if outcome.retry_after:
        # The receiver asked for a pause (429 / 503 Retry-After): granted, up to BACKOFF_MAX.
        delay = min(max(delay, outcome.retry_after), config.backoff_max)
    log.warning(
        "job %s (%s) attempt %d/%d failed: %s; retrying in %.1fs",
        job.id,
        job.key,
        attempt,
        config.max_attempts,
        outcome.reason,
        delay,
    )
    retry = task.retry(
        countdown=delay, exc=AttemptFailed(outcome.reason), kwargs=_kwargs(job, attempt + 1), throw=False
    )
    # Only now that the next attempt is on the broker: a redelivered copy of this attempt is
    # stale. (Had the publish failed, this attempt's unacked message would run it again.)
    rt.store.end(job, attempt, outcome.reason)
    raise retry


def _release_quietly(rt: WorkerRuntime, job: Job, attempt: int, reason: str) -> None:
    # Redis may be away: then the lease runs out on its own, and the rerun waits for that.
    with contextlib.suppress(redis.RedisError):
        rt.store.release(job, attempt, reason)
