"""What followup remembers about each job in Redis, changed only through named Lua scripts.

A job is one expiration of a mapped key. Its record (`_followup:job:<jobId>`) holds the attempt
that runs, until when a worker waits for its callback, a success that arrived between attempts,
and how it ended. The record is what keeps a job from running twice when the broker hands a
message out again, and what lets a callback that no worker is waiting for still count.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from followup import scripts
from followup.config import Settings

PREFIX = "_followup:"
# The Celery task of a job: its retries run as it, and Flower lists first attempts under it too.
TASK_NAME = "followup.deliver"
DEAD_LETTERS = f"{PREFIX}dead"
# A key travels in every webhook body, event and log line of its job: longer ones are refused
# (by followup.schedule and the API) or ignored with a warning (by the listener).
MAX_KEY_BYTES = 1024


def check_key(key: str) -> None:
    """Raise ValueError for a key longer than MAX_KEY_BYTES in UTF-8."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"a key of at most {MAX_KEY_BYTES} bytes in UTF-8 (the listener ignores longer ones)")


FINISHED_RETENTION_MIN = 600.0


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Job:
    """One expiration to follow up: what the task carries from the listener to the worker."""

    id: str
    key: str
    expired_at: int  # ms since the epoch: the key's deadline
    payload: Any = None
    payload_error: str | None = None  # why the value is not carried, when it is not


@dataclass(frozen=True)
class Begin:
    """The verdict on starting an attempt (see begin_attempt.lua)."""

    verdict: str  # go | callback | done | stale | busy
    detail: str = ""


@dataclass(frozen=True)
class DeadLetter:
    job_id: str
    key: str
    expired_at: int
    payload: Any
    attempts: int
    error: str
    failed_at: int
    payload_error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        return cls(**json.loads(raw))

    @property
    def job(self) -> Job:
        return Job(self.job_id, self.key, self.expired_at, self.payload, self.payload_error)


class JobStore:
    """Job records and dead letters in the watched Redis."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._redis = client
        self._settings = settings
        self._begin = scripts.load(client, "begin_attempt")
        self._release = scripts.load(client, "release_attempt")
        self._end = scripts.load(client, "end_attempt")
        self._offer = scripts.load(client, "offer_callback")
        self._succeed = scripts.load(client, "finish_success")
        self._dead_letter = scripts.load(client, "dead_letter")
        self._take_dead = scripts.load(client, "take_dead_letter")
        # A record must outlive every message that can still arrive for its job: the attempts
        # left, each held at most `longest_hold`, and one more redelivery.
        self._running_ttl = int(settings.max_attempts * settings.longest_hold + settings.visibility_timeout) + 60
        self._finished_ttl = int(max(2 * settings.visibility_timeout, FINISHED_RETENTION_MIN))

    def begin(self, job: Job, attempt: int) -> Begin:
        """Claim attempt `attempt` of `job`, with a lease long enough for the whole attempt."""
        lease_ms = int((self._settings.longest_attempt + 5) * 1000)
        verdict, detail = self._begin(keys=[job_key(job.id)], args=[attempt, lease_ms, job.key, self._running_ttl])
        return Begin(_text(verdict), _text(detail))

    def release(self, job: Job, attempt: int, error: str) -> None:
        """The attempt was cut short: drop its lease so that it can run again at once."""
        self._release(keys=[job_key(job.id)], args=[attempt, error])

    def end(self, job: Job, attempt: int, error: str) -> None:
        """The attempt failed and its retry is on the broker: a redelivered copy must not run."""
        self._end(keys=[job_key(job.id)], args=[attempt, error])

    def stored_success(self, job: Job) -> bool:
        """Whether a success callback for the job is kept in its record (see offer_callback.lua)."""
        return bool(self._redis.hexists(job_key(job.id), "cb"))

    def offer(self, job_id: str, status: str, raw: str, error: str | None) -> str:
        """Tell the job about a callback no local attempt waits for; returns what it meant."""
        return _text(self._offer(keys=[job_key(job_id)], args=[status, raw, error or ""]))

    def succeed(self, job: Job, attempts: int) -> bool:
        """Mark the job succeeded and publish the success event; False if it had ended before."""
        published = self._succeed(
            keys=[job_key(job.id)],
            args=[self._settings.success_channel, _success_event(job, attempts), self._finished_ttl],
        )
        return bool(published)

    def dead_letter(self, job: Job, attempts: int, error: str) -> str:
        """Mark the job failed, keep it as a dead letter and publish the failure event, once.

        Returns "dead-lettered", "succeeded" (a success callback had been kept after all: the job
        is recorded and announced as a success) or "ended before".
        """
        failed_at = now_ms()
        event = {
            "jobId": job.id,
            "key": job.key,
            "status": "failed",
            "attempts": attempts,
            "error": error,
            "timestamp": failed_at,
        }
        record = DeadLetter(job.id, job.key, job.expired_at, job.payload, attempts, error, failed_at, job.payload_error)
        verdict = self._dead_letter(
            keys=[job_key(job.id), DEAD_LETTERS],
            args=[
                self._settings.failure_channel,
                _dumps(event),
                record.to_json(),
                job.id,
                self._finished_ttl,
                self._settings.success_channel,
                _success_event(job, attempts),
            ],
        )
        return {0: "ended before", 1: "dead-lettered", 2: "succeeded"}[int(verdict)]

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, oldest failure first."""
        records = [DeadLetter.from_json(raw) for raw in self._redis.hvals(DEAD_LETTERS)]
        return sorted(records, key=lambda record: record.failed_at)

    def take_dead_letter(self, job_id: str) -> DeadLetter | None:
        """Remove a dead letter for replay, resetting its job so attempts start again at 1."""
        raw = self._take_dead(keys=[DEAD_LETTERS, job_key(job_id)], args=[job_id])
        return DeadLetter.from_json(raw) if raw else None

    def restore_dead_letter(self, record: DeadLetter) -> None:
        """Put back a dead letter whose replay could not be enqueued."""
        self._redis.hset(DEAD_LETTERS, record.job_id, record.to_json())

    def record(self, job_id: str) -> dict[str, str]:
        """The raw job record, for tests and diagnostics."""
        return {_text(k): _text(v) for k, v in self._redis.hgetall(job_key(job_id)).items()}


def _success_event(job: Job, attempts: int) -> str:
    return _dumps({"jobId": job.id, "key": job.key, "status": "success", "attempts": attempts, "timestamp": now_ms()})


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
