"""The worker's feeder: first attempts from the ready lists, each in a slot of its own.

It takes as many jobs as it has free slots, in one script call, whenever the listener says a list
has jobs (and once a second regardless, should that word be lost), and runs each job's attempt in
its own thread — a greenlet under the gevent pool, so a thousand jobs waiting for callbacks cost
little. It keeps the leases of the jobs it runs alive, ends them once a job is settled, and puts
back jobs whose worker died (any worker's feeder does, the step is atomic). A retry leaves as a
Celery task (`followup.deliver`) with its backoff as countdown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from followup.job_events import JobEvents
from followup.ready import LEASE_MS, ReadyJob, ReadyQueue
from followup.worker import WorkerRuntime

log = logging.getLogger("followup.feeder")

# Jobs taken per script call: a burst is taken in a few calls, and no call holds Redis long.
TAKE_BATCH = 200
# How long the feeder sleeps when no word comes that a list has jobs.
IDLE_POLL = 1.0
# Leases are renewed, and run-out ones reaped, this often: a few times per lease.
LEASE_CARE_EVERY = LEASE_MS / 1000 / 3


class Feeder:
    def __init__(self, rt: WorkerRuntime, queues: Sequence[str], slots: int, events: JobEvents | None) -> None:
        self._rt = rt
        self._events = events
        self._queues = list(queues)
        self._slots = slots
        self._ready = ReadyQueue(rt.redis)
        self._running: dict[str, ReadyJob] = {}
        self._settled: list[str] = []
        self._lock = threading.Lock()
        self._take_lock = threading.Lock()  # held while a take is in flight (see drain)
        self._taking = True
        # The last take filled every slot it asked for: more may wait, so a slot that comes free
        # is worth a take at once rather than after the next word from the listener.
        self._more_may_wait = True
        self._stopped = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="followup-feeder", daemon=True)
        self._thread.start()
        log.info("taking first attempts from %s (%d slots)", ", ".join(self._queues), self._slots)

    def stop_taking(self) -> None:
        """Warm shutdown: take no more jobs; the running ones go on."""
        self._taking = False
        self._rt.ready_signal.set()

    def drain(self, timeout: float) -> int:
        """Wait up to `timeout` for the running jobs; returns how many are still running then.

        Those keep their leases: another worker takes them once the leases run out.
        """
        self.stop_taking()
        with self._take_lock:
            pass  # a take in flight has registered its jobs: they are counted below
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running and time.monotonic() < deadline:
                self._idle.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            left = len(self._running)
        self._stopped.set()
        self._rt.ready_signal.set()
        if self._thread is not None:
            self._thread.join(5)
        self._flush_settled()
        if self._events:
            self._events.stop()
        return left

    # The loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        care_at = 0.0
        while not self._stopped.is_set():
            try:
                self._rt.ready_signal.clear()
                with self._take_lock:
                    if self._taking:
                        self._take()
                self._flush_settled()
                if time.monotonic() >= care_at:
                    self._care_for_leases()
                    care_at = time.monotonic() + LEASE_CARE_EVERY
                if not (self._more_may_wait and self._taking) or self.running >= self._slots:
                    self._rt.ready_signal.wait(IDLE_POLL)
            except Exception as exc:  # noqa: BLE001 - Redis away or worse: the loop must go on
                log.warning("could not take jobs (%s); trying again in %.0fs", exc, IDLE_POLL)
                self._stopped.wait(IDLE_POLL)

    def _take(self) -> None:
        wanted = min(self._slots - self.running, TAKE_BATCH)
        if wanted <= 0:
            self._more_may_wait = True  # woken while full: what woke it waits for a free slot
            return
        taken = self._ready.take(self._queues, wanted)
        self._more_may_wait = len(taken) == wanted
        for ready in taken:
            with self._lock:
                self._running[ready.job.id] = ready
            if self._events:
                self._events.received(ready)
            threading.Thread(target=self._follow_up, args=(ready,), name=f"job-{ready.job.id}", daemon=True).start()

    def _care_for_leases(self) -> None:
        with self._lock:
            ids = list(self._running)
        self._ready.renew(ids)
        back = self._ready.reap()
        if back:
            log.warning("put %d job(s) back on the ready lists: their worker stopped renewing their leases", back)

    def _flush_settled(self) -> None:
        with self._lock:
            settled, self._settled = self._settled, []
        if settled:
            try:
                self._ready.drop(settled)
            except Exception:
                with self._lock:
                    self._settled[:0] = settled
                raise

    # One job ----------------------------------------------------------------------------------

    def _follow_up(self, ready: ReadyJob) -> None:
        from followup.tasks import follow_up

        job, settled, started = ready.job, False, time.monotonic()
        if self._events:
            self._events.started(job.id)
        try:
            kind, why = follow_up(
                self._rt, job, ready.attempt, lambda attempt, delay, why: self._publish(ready, attempt, delay, why)
            )
            settled = True
            if self._events and kind != "retrying":  # a retry's event went out before it (_publish)
                self._events.finished(job.id, kind, started, why)
        except Exception:
            # Its lease stays: once it runs out, the job goes back on its list.
            log.exception("job %s: attempt %d could not be concluded; it runs again later", job.id, ready.attempt)
        finally:
            with self._idle:
                self._running.pop(job.id, None)
                if settled:
                    self._settled.append(job.id)
                self._idle.notify_all()
            if self._more_may_wait:
                self._rt.ready_signal.set()  # a slot came free and more may wait: take them

    def _publish(self, ready: ReadyJob, attempt: int, countdown: float, why: str) -> None:
        from followup.tasks import publish_attempt

        if self._events:
            # This attempt's events reach Flower before those of its retry.
            self._events.finished(ready.job.id, "retrying", 0.0, why)
            self._events.flush()
        publish_attempt(ready.job, attempt, ready.queue, countdown)
