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
from followup.dispatch import Dispatcher
from followup.durations import format_duration
from followup.errors import DispatchError
from followup.http_client import HttpClient
from followup.jobs import Job, JobStore
from followup.metrics import WorkerMetrics
from followup.ready import WAKE_CHANNEL
from followup.rules import LiveRules, live_rules

log = logging.getLogger("followup.worker")

# Slots of a gevent worker when neither WORKER_CONCURRENCY nor --concurrency says otherwise.
DEFAULT_CONCURRENCY = 1000


@dataclass(frozen=True)
class Outcome:
    kind: str  # success | failed | skipped | busy
    reason: str = ""
    retry_after: float | None = None  # busy: when the other holder's lease ends; failed: the receiver's ask
    final: bool = False  # failed for good: no more attempts (410 Gone)


@dataclass
class WorkerRuntime:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    hub: CallbackHub
    dispatcher: Dispatcher
    metrics: WorkerMetrics
    # Set when the listener says a ready list has jobs (see feeder.py).
    ready_signal: threading.Event
    rules: LiveRules

    @classmethod
    def start(cls, settings: Settings) -> WorkerRuntime:
        client = redis_client(settings.redis_url)
        store = JobStore(client, settings)
        ready_signal = threading.Event()
        hub = CallbackHub(
            subscriber_client(settings.redis_url),
            settings.callback_channel,
            offer=lambda cb: store.offer(cb.job_id, cb.status, cb.raw, cb.error),
            signals={WAKE_CHANNEL: ready_signal.set},
        )
        try:
            hub.start()
        except TimeoutError:
            hub.stop()  # its thread goes on retrying otherwise, beside the next runtime's
            raise
        metrics = WorkerMetrics()
        metrics.waiting.set_function(lambda: hub.waiting)
        # One keep-alive connection per slot that may be posting at the same moment.
        pool = settings.worker_concurrency or DEFAULT_CONCURRENCY
        dispatcher = Dispatcher(settings, client, HttpClient(pool), metrics)
        rules = live_rules(settings).start()
        return cls(settings, client, store, hub, dispatcher, metrics, ready_signal, rules)

    def health(self) -> tuple[bool, str]:
        """For /healthz: the callback subscription is live."""
        if not self.hub.connected:
            return False, "callback subscription is down"
        return True, f"{self.hub.waiting} attempt(s) waiting for callbacks"

    def stop(self) -> None:
        self.hub.stop()
        self.rules.stop()


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
    """Dispatch one attempt and wait for its callback; never raises for the flow's failures.

    A failed attempt returns `failed` and leaves its lease in place: the task ends it
    (`JobStore.end`) once the retry is on the broker.
    """
    rule = rt.rules.mapping.match(job.key)
    if rule is None:
        return Outcome("failed", f"no rule for key {job.key!r} (it was removed after the key expired?)")
    # Register before anything can make the flow answer: n8n confirms before its webhook returns.
    with rt.hub.register(job.id, attempt) as waiter:
        begin = rt.store.begin(job, attempt)
        if begin.verdict == "done":
            return Outcome("skipped", f"job already finished ({begin.detail})")
        if begin.verdict == "stale":
            return Outcome("skipped", f"a later attempt ({begin.detail}) has begun, or this one has run")
        if begin.verdict == "busy":
            return Outcome("busy", "another worker runs this attempt", int(begin.detail) / 1000)
        if begin.verdict == "callback":
            return _succeed(rt, job, attempt, "its success callback had already arrived")
        waiter.arm()
        try:
            rt.dispatcher.send(job, rule, attempt)
        except DispatchError as exc:
            # The flow may have confirmed before its webhook's answer failed (n8n publishes
            # first): the job is done, whatever became of the answer.
            early = waiter.close()
            if early is not None and early.ok:
                return _succeed(rt, job, attempt, f"callback confirmed it (though {exc})")
            return Outcome("failed", str(exc), exc.retry_after, exc.final)
        timeout = rt.settings.callback_timeout
        dispatched = time.monotonic()
        if timeout == 0:
            return _succeed(rt, job, attempt, "dispatched (WORKER_CALLBACK_TIMEOUT=0: no callback awaited)")
        callback = waiter.wait(timeout)
        if callback is None:
            callback = waiter.close()  # one may have come in the meantime
        if callback is None:
            # This process may have missed it (its subscription was down): another process
            # would have kept it in the job's record.
            if rt.store.stored_success(job):
                return _succeed(rt, job, attempt, "its success callback was kept by another worker")
            return Outcome("failed", f"no callback within {format_duration(timeout)}")
        rt.metrics.callback_wait.observe(time.monotonic() - dispatched)
        if callback.ok:
            return _succeed(rt, job, attempt, "callback confirmed it")
        detail = f": {callback.error}" if callback.error else ""
        return Outcome("failed", f"callback status {callback.status!r}{detail}")


def _succeed(rt: WorkerRuntime, job: Job, attempt: int, why: str) -> Outcome:
    if rt.store.succeed(job, attempt):
        return Outcome("success", why)
    return Outcome("skipped", "job had already finished")
