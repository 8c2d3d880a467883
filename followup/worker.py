"""One attempt of one job, and what a worker process keeps for all of its jobs.

A worker process holds one Redis pool, one HTTP session and one callback subscription, shared by
every job it runs; they are made on first use, so the same code serves Celery's gevent, threads
and prefork pools.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis

from followup.callbacks import CallbackHub
from followup.config import Settings, settings
from followup.connections import redis_client, subscriber_client
from followup.dispatch import Dispatcher, http_session
from followup.durations import format_duration
from followup.errors import DispatchError
from followup.jobs import Job, JobStore
from followup.metrics import WorkerMetrics

log = logging.getLogger("followup.worker")


@dataclass(frozen=True)
class Outcome:
    kind: str  # success | failed | skipped | busy
    reason: str = ""
    retry_after: float = 0.0  # for busy: when the other holder's lease ends


@dataclass
class WorkerRuntime:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    hub: CallbackHub
    dispatcher: Dispatcher
    metrics: WorkerMetrics

    @classmethod
    def start(cls, settings: Settings) -> WorkerRuntime:
        client = redis_client(settings.redis_url)
        store = JobStore(client, settings)
        hub = CallbackHub(
            subscriber_client(settings.redis_url),
            settings.callback_channel,
            offer=lambda cb: store.offer(cb.job_id, cb.status, cb.raw, cb.error),
        )
        hub.start()
        metrics = WorkerMetrics()
        metrics.waiting.set_function(lambda: hub.waiting)
        pool = max(10, settings.worker_concurrency or 100)
        dispatcher = Dispatcher(settings, client, http_session(pool), metrics)
        return cls(settings, client, store, hub, dispatcher, metrics)

    def health(self) -> tuple[bool, str]:
        """For /healthz: the callback subscription is live."""
        if not self.hub.connected:
            return False, "callback subscription is down"
        return True, f"{self.hub.waiting} attempt(s) waiting for callbacks"

    def stop(self) -> None:
        self.hub.stop()


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> WorkerRuntime:
    """This process's runtime, started on first use (after a prefork child is forked)."""
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = WorkerRuntime.start(settings())
    return _runtime


def stop_runtime() -> None:
    if _runtime is not None:
        _runtime.stop()


def run_attempt(rt: WorkerRuntime, job: Job, attempt: int) -> Outcome:
    """Dispatch one attempt and wait for its callback; never raises for the flow's failures."""
    rule = rt.settings.mapping.match(job.key)
    if rule is None:
        return Outcome("failed", f"no rule for key {job.key!r} in this worker's KEY_WEBHOOK_MAPPING")
    # Register before anything can make the flow answer: n8n confirms before its webhook returns.
    with rt.hub.register(job.id) as waiter:
        begin = rt.store.begin(job, attempt)
        if begin.verdict == "done":
            return Outcome("skipped", f"job already finished ({begin.detail})")
        if begin.verdict == "stale":
            return Outcome("skipped", f"attempt {begin.detail} has already begun")
        if begin.verdict == "busy":
            return Outcome("busy", "another worker runs this attempt", int(begin.detail) / 1000)
        if begin.verdict == "callback":
            return _succeed(rt, job, attempt, "its success callback arrived between attempts")
        try:
            rt.dispatcher.send(job, rule, attempt)
        except DispatchError as exc:
            rt.store.release(job, attempt, str(exc))
            return Outcome("failed", str(exc))
        timeout = rt.settings.callback_timeout
        dispatched = time.monotonic()
        if timeout == 0:
            return _succeed(rt, job, attempt, "dispatched (WORKER_CALLBACK_TIMEOUT=0: no callback awaited)")
        callback = waiter.wait(timeout)
        if callback is None:
            reason = f"no callback within {format_duration(timeout)}"
            # Release first, then stop listening: a callback in between reaches this waiter or,
            # once it is gone, is kept for the next attempt; it cannot fall through the gap.
            rt.store.release(job, attempt, reason)
            callback = waiter.close()
            if callback is None:
                return Outcome("failed", reason)
        rt.metrics.callback_wait.observe(time.monotonic() - dispatched)
        if callback.ok:
            return _succeed(rt, job, attempt, "callback confirmed it")
        reason = f"callback status {callback.status!r}" + (f": {callback.error}" if callback.error else "")
        rt.store.release(job, attempt, reason)
        return Outcome("failed", reason)


def _succeed(rt: WorkerRuntime, job: Job, attempt: int, why: str) -> Outcome:
    if rt.store.succeed(job, attempt):
        return Outcome("success", why)
    return Outcome("skipped", "job had already finished")
