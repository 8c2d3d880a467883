"""The ready lists: first attempts, from the listener straight to the workers.

A first attempt does not travel as a Celery message: one Celery task costs a worker several
milliseconds of CPU (task events, kombu's ack bookkeeping, the trace), which capped a worker at
about 150 follow-ups a second (bench/findings.md). The listener pushes each batch of jobs onto a
Redis list per queue in one round trip and wakes the workers; a worker takes as many as it has
free slots, each under a lease, in one script. Retries, with their backoff, are Celery tasks
(tasks.py), and so is everything Flower shows of a job after its first attempt.

Layout (in the watched database, beside the schedule index):
  _followup:ready:<queue>  LIST  job messages (`<jobId>\n<queue>\n<JSON>`), oldest at the right
  _followup:leases         ZSET  jobId -> when its lease ends (ms); renewed while its worker lives
  _followup:leased         HASH  jobId -> the message, to put back if the lease runs out
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from followup import scripts
from followup.jobs import PREFIX, Job
from followup.mapping import Mapping

log = logging.getLogger("followup.feeder")

READY_PREFIX = f"{PREFIX}ready:"
LEASES = f"{PREFIX}leases"
LEASED = f"{PREFIX}leased"
# Workers wake on this channel when a list gets jobs (the message: the queue's name, or "reaped").
WAKE_CHANNEL = f"{PREFIX}ready"
# A worker renews its leases a few times per lease: a dead worker's jobs come back within this.
LEASE_MS = 10_000
# Lua's unpack() takes a few thousand arguments at most.
DROP_BATCH = 1000


def ready_list(queue: str) -> str:
    return READY_PREFIX + queue


def ready_jobs(jobs: Iterable[Job], mapping: Mapping, default_queue: str) -> list[ReadyJob]:
    """First attempts of `jobs`, each on the queue its rule names (`key=…@queue`), else the default."""
    out = []
    for job in jobs:
        rule = mapping.match(job.key)
        out.append(ReadyJob(job, 1, (rule.queue if rule else None) or default_queue))
    return out


@dataclass(frozen=True)
class ReadyJob:
    """One job as a ready list holds it: the attempt to run, and the queue it came from."""

    job: Job
    attempt: int
    queue: str

    def to_message(self) -> str:
        """`<jobId>\n<queue>\n<JSON>`: the scripts read the id and queue without decoding JSON
        (a job's payload may be large, and no Lua JSON decoder takes every string Python's does)."""
        job = self.job
        body = json.dumps(
            {
                "key": job.key,
                "expired_at": job.expired_at,
                "payload": job.payload,
                "payload_error": job.payload_error,
                "attempt": self.attempt,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return f"{job.id}\n{self.queue}\n{body}"

    @classmethod
    def from_message(cls, raw: bytes | str) -> ReadyJob:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        job_id, queue, body = text.split("\n", 2)
        data: dict[str, Any] = json.loads(body)
        job = Job(job_id, data["key"], int(data["expired_at"]), data.get("payload"), data.get("payload_error"))
        return cls(job, int(data.get("attempt", 1)), queue)


class ReadyQueue:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._take = scripts.load(client, "take_ready")
        self._reap = scripts.load(client, "reap_leases")
        self._drop = scripts.load(client, "drop_leases")

    def push(self, jobs: Sequence[ReadyJob], pipe: redis.client.Pipeline) -> None:
        """Put jobs on their queues' lists and wake the workers, in the caller's transaction."""
        by_queue: dict[str, list[str]] = {}
        for ready in jobs:
            by_queue.setdefault(ready.queue, []).append(ready.to_message())
        for queue, messages in by_queue.items():
            pipe.lpush(ready_list(queue), *messages)
        for queue in by_queue:
            pipe.publish(WAKE_CHANNEL, queue)

    def take(self, queues: Sequence[str], limit: int, lease_ms: int = LEASE_MS) -> list[ReadyJob]:
        """Up to `limit` jobs from the queues' lists (the first queue first), each now leased."""
        if limit <= 0:
            return []
        raw = self._take(keys=[LEASES, LEASED, *map(ready_list, queues)], args=[limit, lease_ms])
        taken, unreadable = [], []
        for message in raw:
            try:
                taken.append(ReadyJob.from_message(message))
            except (ValueError, KeyError, TypeError) as exc:
                # No attempt can run it: left leased, the reaper would put it back for ever.
                log.error("dropped a ready message that does not parse (%s): %r", exc, message[:500])
                text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
                unreadable.append(text.split("\n", 1)[0])
        if unreadable:
            self.drop(unreadable)
        return taken

    def renew(self, job_ids: Iterable[str], lease_ms: int = LEASE_MS) -> None:
        """Extend the leases of jobs this worker still runs (only those still leased)."""
        ids = list(job_ids)
        if not ids:
            return
        seconds, micros = self._redis.time()
        now = seconds * 1000 + micros // 1000
        self._redis.zadd(LEASES, dict.fromkeys(ids, now + lease_ms), xx=True)

    def drop(self, job_ids: Sequence[str]) -> None:
        """End the leases of settled jobs."""
        for start in range(0, len(job_ids), DROP_BATCH):
            self._drop(keys=[LEASES, LEASED], args=list(job_ids[start : start + DROP_BATCH]))

    def reap(self, limit: int = 1000) -> int:
        """Put jobs whose lease ran out back on their lists, and wake the workers; returns how many."""
        back = int(self._reap(keys=[LEASES, LEASED], args=[READY_PREFIX, limit]))
        if back:
            self._redis.publish(WAKE_CHANNEL, "reaped")
        return back
