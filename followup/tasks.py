"""Following up one job: an attempt, then its conclusion, and the Celery task that runs retries.

A first attempt comes from a ready list (feeder.py); every later attempt, and an attempt cut short
by Redis going away, is a Celery task (`followup.deliver`) published with its backoff as countdown.
Both paths conclude an attempt with the same code (`follow_up`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, Retry

from followup.backoff import retry_delay
from followup.celery_app import app
from followup.config import settings
from followup.jobs import TASK_NAME, Job
from followup.worker import Outcome, WorkerRuntime, run_attempt, runtime

log = logging.getLogger("followup.tasks")

# A copy of an attempt that a live worker runs looks again after at most this long: short enough
# that the copy is never held past the broker's visibility timeout.
BUSY_RECHECK = 30.0

# Puts attempt `attempt` of the job on the broker to run in `countdown` seconds; `reason` says why.
# Raises PublishFailed when the broker does not take it.
Publish = Callable[[int, float, str], None]
PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}


class AttemptFailed(Exception):
    """One attempt failed; Celery retries the task after a backoff."""


class JobFailed(Exception):
    """The last attempt failed; the job is dead-lettered and the task ends in FAILURE."""


class PublishFailed(Exception):
    """The broker did not take the next attempt: this one must come back as it is (its message
    is requeued, or its lease on the ready list runs out), nothing being concluded."""


def publish_attempt(job: Job, attempt: int, queue: str, countdown: float) -> None:
    """Put attempt `attempt` of `job` on `queue` as a Celery task, to run in `countdown` s."""
    try:
        deliver.apply_async(
            kwargs=task_kwargs(job, attempt),
            task_id=job.id,
            queue=queue,
            countdown=countdown,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
    except Exception as exc:  # noqa: BLE001 - whatever the broker raised, the attempt comes back
        # Not a RedisError to follow_up even when kombu lets redis-py's through: that would
        # "interrupt" an attempt that has in fact concluded.
        raise PublishFailed(f"{type(exc).__name__}: {exc}") from None


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
    queue = (self.request.delivery_info or {}).get("routing_key") or settings().queue_name
    retries: list[Retry] = []

    def publish(next_attempt: int, countdown: float, reason: str) -> None:
        # Published here rather than by Task.retry, which turns a failed publish into a Reject
        # without requeue: the message would be acked and the job lost.
        publish_attempt(job, next_attempt, queue, countdown)
        retries.append(Retry(reason, AttemptFailed(reason), when=countdown))

    try:
        rt = runtime()
    except (redis.RedisError, TimeoutError) as exc:
        delay = retry_delay(settings(), attempt)
        log.warning("job %s attempt %d could not start (%s); runs again in %.1fs", job.id, attempt, exc, delay)
        raise self.retry(countdown=delay, exc=exc, kwargs=task_kwargs(job, attempt)) from None
    try:
        kind, _ = follow_up(rt, job, attempt, publish)
    except PublishFailed as exc:
        log.error("job %s attempt %d: could not publish its next step (%s); it comes back", job.id, attempt, exc)
        raise Reject(str(exc), requeue=True) from None
    if retries:
        raise retries[-1]  # Celery shows the task as retrying; the next attempt is already published
    if kind == "failed":
        raise JobFailed(f"job {job.id} failed after {attempt} attempt(s)")
    return kind


def task_kwargs(job: Job, attempt: int) -> dict[str, Any]:
    """The task's arguments for attempt `attempt` of `job` (its id is the task id)."""
    return {
        "key": job.key,
        "expired_at": job.expired_at,
        "payload": job.payload,
        "payload_error": job.payload_error,
        "attempt": attempt,
    }


def follow_up(rt: WorkerRuntime, job: Job, attempt: int, publish: Publish) -> tuple[str, str]:
    """Run one attempt and conclude it: (success | skipped | failed (dead-lettered) | retrying, why).

    Raises only when the next step could not be published either; the caller then keeps what
    would bring the attempt back (its unacked message, or its lease on the ready list).
    """
    try:
        outcome = run_attempt(rt, job, attempt)
        return _conclude(rt, job, attempt, outcome, publish)
    except (redis.RedisError, TimeoutError) as exc:
        # Nothing was concluded: this same attempt runs again.
        delay = retry_delay(rt.settings, attempt)
        _release_quietly(rt, job, attempt, str(exc))
        log.warning("job %s attempt %d interrupted (%s); runs again in %.1fs", job.id, attempt, exc, delay)
        publish(attempt, delay, str(exc))
        return "retrying", str(exc)


def _conclude(rt: WorkerRuntime, job: Job, attempt: int, outcome: Outcome, publish: Publish) -> tuple[str, str]:
    config = rt.settings
    if outcome.kind == "success":
        rt.metrics.attempts.labels("success").observe(attempt)
        log.info("job %s (%s) succeeded on attempt %d: %s", job.id, job.key, attempt, outcome.reason)
        return outcome.kind, outcome.reason
    if outcome.kind == "skipped":
        log.info("job %s attempt %d skipped: %s", job.id, attempt, outcome.reason)
        return outcome.kind, outcome.reason
    if outcome.kind == "busy":
        # Look again when the other holder's lease ends (or sooner): by then it has finished, or
        # it died and this copy is the one that must run.
        publish(attempt, min((outcome.retry_after or 0) + 1, BUSY_RECHECK), outcome.reason)
        return "retrying", outcome.reason
    if outcome.final or attempt >= config.max_attempts:
        verdict = rt.store.dead_letter(job, attempt, outcome.reason)
        if verdict == "succeeded":
            rt.metrics.attempts.labels("success").observe(attempt)
            log.info("job %s (%s) succeeded: its success callback arrived after the last attempt", job.id, job.key)
            return "success", "its success callback arrived after the last attempt"
        rt.metrics.attempts.labels("failed").observe(attempt)
        if verdict == "dead-lettered":
            rt.metrics.dead_lettered.inc()
        log.error("job %s (%s) failed after %d attempt(s): %s; %s", job.id, job.key, attempt, outcome.reason, verdict)
        return "failed", outcome.reason
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
    publish(attempt + 1, delay, outcome.reason)
    # Only now that the next attempt is on the broker: a redelivered copy of this attempt is
    # stale. (Had the publish failed, this attempt would come back and run again.)
    rt.store.end(job, attempt, outcome.reason)
    return "retrying", outcome.reason


def _release_quietly(rt: WorkerRuntime, job: Job, attempt: int, reason: str) -> None:
    # Redis may be away: then the lease runs out on its own, and the rerun waits for that.
    with contextlib.suppress(redis.RedisError):
        rt.store.release(job, attempt, reason)
