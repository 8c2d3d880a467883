"""What an operator does to followup, one function each, shared by the CLI and the HTTP API.

`followup dead replay` and `POST /dead/{jobId}/replay` (and the other pairs) call the same code
here, never each other: the CLI does not go through HTTP, the API does not shell out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from followup.config import Settings
from followup.connections import redis_client
from followup.index import ScheduleIndex
from followup.jobs import PREFIX, Job, JobStore, job_key
from followup.mapping import Mapping, Rule
from followup.ready import ReadyQueue, ready_jobs
from followup.rules import RuleStore

Enqueue = Callable[[Sequence[Job]], None]
JOB_PREFIX = job_key("")
# GET /jobs walks job records with SCAN: bounded, so a huge keyspace cannot stall the API.
RECENT_SCAN_MAX_KEYS = 5_000


class UnknownJob(LookupError):
    """No record of this job in Redis (never began, or finished long enough ago to be forgotten)."""


def enqueuer(settings: Settings) -> Enqueue:
    """How replays go back: as first attempts, on the ready list of their rule's queue (the
    listener's path, ready.py), in this one place."""
    client = redis_client(settings.redis_url, pool_size=2)
    ready = ReadyQueue(client)

    def enqueue(jobs: Sequence[Job]) -> None:
        pipe = client.pipeline(transaction=True)
        ready.push(ready_jobs(jobs, current_mapping(client, settings), settings.queue_name), pipe)
        pipe.execute()

    return enqueue


def current_mapping(client: redis.Redis, settings: Settings) -> Mapping:
    """The rules in force: Redis's once seeded, else KEY_WEBHOOK_MAPPING (nothing has started yet)."""
    rule_set = RuleStore(client).load()
    return rule_set.mapping if rule_set.version else settings.mapping


# --- follow-ups --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    key: str
    due: int  # ms since the epoch
    rule: Rule | None


def pending(client: redis.Redis, settings: Settings, mapping: Mapping, limit: int, offset: int = 0) -> list[Pending]:
    """Scheduled follow-ups, soonest first, each with the rule it will fire."""
    index = ScheduleIndex(client, settings.payload_max_bytes)
    return [Pending(key, due, mapping.match(key)) for key, due in index.pending(limit, offset)]


def pending_count(client: redis.Redis, settings: Settings) -> int:
    return ScheduleIndex(client, settings.payload_max_bytes).size()


# --- callbacks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallbackSent:
    receivers: int  # worker processes that got the PUBLISH
    outcome: str  # published | stored | noted | finished | unknown (see offer_callback.lua)


def callback_message(job_id: str, status: str, error: str | None = None, attempt: int | None = None) -> str:
    message: dict[str, object] = {"jobId": job_id, "status": status}
    if error:
        message["error"] = error
    if attempt is not None:
        message["attempt"] = attempt
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def send_callback(
    client: redis.Redis,
    settings: Settings,
    job_id: str,
    status: str,
    *,
    error: str | None = None,
    attempt: int | None = None,
    require_known: bool = False,
) -> CallbackSent:
    """Confirm (or fail) a job exactly as a flow's PUBLISH on CALLBACK_CHANNEL would.

    Published, the workers' hub handles it like any callback: race-free, whether an attempt
    waits for it, has not begun waiting, or is between attempts. When no worker process is
    subscribed (all down, restarting), nobody would see it; it is then offered to the job's record
    directly (offer_callback.lua), which the next attempt's `begin` finds.
    """
    if require_known and not client.exists(job_key(job_id)):
        raise UnknownJob(job_id)
    raw = callback_message(job_id, status, error, attempt)
    receivers = int(client.publish(settings.callback_channel, raw))
    if receivers:
        return CallbackSent(receivers, "published")
    outcome = JobStore(client, settings).offer(job_id, status.strip().lower(), raw, error)
    return CallbackSent(0, outcome)


# --- jobs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    job_id: str
    key: str | None
    state: str  # succeeded | failed | running | retrying | waiting
    attempts: int
    last_error: str | None
    updated: int | None  # ms since the epoch
    callback_stored: bool  # a success callback is kept for the next attempt


def job_state(job_id: str, record: dict[str, str], now_ms: int | None = None) -> JobState:
    """A job's record (see jobs.py and its scripts) told as a state a person reads."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    status = record.get("status")
    attempt = int(record.get("attempt") or 0)
    if status == "success":
        state = "succeeded"
    elif status == "failed":
        state = "failed"
    elif int(record.get("waiter_until") or 0) > now_ms:
        state = "running"
    elif attempt and int(record.get("ended") or 0) >= attempt:
        state = "retrying"  # the attempt ended; its retry waits on the broker
    else:
        state = "waiting"
    updated = record.get("updated")
    return JobState(
        job_id=job_id,
        key=record.get("key"),
        state=state,
        attempts=attempt,
        last_error=record.get("error") or None,
        updated=int(updated) if updated else None,
        callback_stored="cb" in record,
    )


def get_job(client: redis.Redis, settings: Settings, job_id: str) -> JobState:
    record = JobStore(client, settings).record(job_id)
    if not record:
        raise UnknownJob(job_id)
    return job_state(job_id, record)


def recent_jobs(client: redis.Redis, limit: int) -> list[JobState]:
    """The most recently updated job records, newest first.

    There is no index of jobs (the hot path should not keep one for this page), so this SCANs
    `_followup:job:*`, at most RECENT_SCAN_MAX_KEYS keys: with more records than that it shows
    the most recent of those it looked at.
    """
    ids: list[str] = []
    for raw in client.scan_iter(match=f"{JOB_PREFIX}*", count=1000):
        ids.append(raw.decode("utf-8", "surrogateescape")[len(JOB_PREFIX) :])
        if len(ids) >= RECENT_SCAN_MAX_KEYS:
            break
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(job_key(job_id))
        records = pipe.execute()
    now = int(time.time() * 1000)
    states = [
        job_state(job_id, {k.decode(): v.decode(errors="replace") for k, v in record.items()}, now)
        for job_id, record in zip(ids, records, strict=True)
        if record
    ]
    states.sort(key=lambda state: state.updated or 0, reverse=True)
    return states[:limit]


# --- dead letters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    job_id: str
    outcome: str  # replaying | missing | failed
    key: str | None = None
    error: str | None = None


def replay_dead_letter(store: JobStore, enqueue: Enqueue, job_id: str) -> Replay:
    """Take a dead letter and run its job again from attempt 1 under the same jobId.

    If the broker refuses the job, the letter goes back: a replay never loses a job.
    """
    letter = store.take_dead_letter(job_id)
    if letter is None:
        return Replay(job_id, "missing")
    try:
        enqueue([letter.job])
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the letter goes back
        store.restore_dead_letter(letter)
        return Replay(job_id, "failed", letter.key, str(exc))
    return Replay(job_id, "replaying", letter.key)


def is_reserved_key(key: str) -> bool:
    """Keys followup keeps for itself: never scheduled as follow-ups."""
    return key.startswith(PREFIX)
