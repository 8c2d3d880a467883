"""The systems a scenario starts and stops: followup itself, and the Celery countdown baseline."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from collections.abc import Iterator
from pathlib import Path

import redis
from celery import Celery

from bench.common import (
    CALLBACK_CHANNEL,
    FAILURE_CHANNEL,
    PYTHON,
    SUCCESS_CHANNEL,
    Collector,
    Process,
    ReceiverProcess,
    followup_env,
    populate_background,
    progress,
    start_listener,
    start_redis,
    start_worker,
)
from bench.countdown import TASK_NAME

DONE_CHANNEL = "bench_done"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU time of a process (and its live children: a prefork pool), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        own = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split() if children else []
    except OSError:
        return 0.0
    return own + sum(cpu_seconds(int(kid)) for kid in kids)


class CpuMeter:
    """CPU seconds each named process used between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        # The bench's own process only: every other process here is its child.
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return {**now, "bench": cpu_seconds(os.getpid(), children=False)}

    def start(self) -> CpuMeter:
        self._start = self._now()
        return self

    def stop(self) -> dict[str, float]:
        now = self._now()
        self.used = {name: round(now[name] - self._start[name], 2) for name in now}
        return self.used


class _PrivateRedisAndReceiver:
    """What every system under test starts with: its own redis-server (optionally filled with
    unrelated TTL keys) and the HTTP receiver."""

    def __init__(self, name: str, background: int) -> None:
        self.name = name
        self.server = start_redis(name)
        self.url = self.server.url()
        self.redis = redis.Redis.from_url(self.url)
        self.redis_pid = self.server.process.pid
        if background:
            progress(f"{name}: writing {background:,} unrelated keys with a 1-hour TTL")
            populate_background(self.redis, background)
        self.receiver = ReceiverProcess(self.server.port, name=f"{name}-receiver")


class FollowupSystem(_PrivateRedisAndReceiver):
    """A private redis-server, the receiver, `followup worker`, `followup listen`, a success collector."""

    def __init__(
        self,
        name: str,
        background: int = 0,
        worker_args: tuple[str, ...] = (),
        listener: bool = True,
        **settings: str,
    ) -> None:
        super().__init__(name, background)
        self.env = followup_env(self.url, f"due:*={self.receiver.url()}", **settings)
        progress(f"{name}: starting followup worker and listener")
        self.worker = start_worker(self.env, f"{name}-worker", *worker_args)
        self.listener = start_listener(self.env, f"{name}-listener") if listener else None
        self.events = Collector(self.url, channels=(SUCCESS_CHANNEL, FAILURE_CHANNEL))

    def start_listener(self) -> None:
        self.listener = start_listener(self.env, f"{self.name}-listener")

    def pids(self) -> dict[str, int]:
        pids = {"worker": self.worker.pid, "redis": self.redis_pid, "receiver": self.receiver.process.pid}
        if self.listener:
            pids["listener"] = self.listener.pid
        return pids

    def successes(self) -> list[tuple[float, bytes]]:
        return [(at, data) for at, channel, data in self.events.messages if channel == SUCCESS_CHANNEL.encode()]

    def failures(self) -> int:
        return sum(1 for _, channel, _ in self.events.messages if channel == FAILURE_CHANNEL.encode())

    def listener_lateness(self) -> list[int]:
        """The listener's own 'queued … N ms after its deadline' figures, when its log has them."""
        if not self.listener:
            return []
        return [int(n) for n in re.findall(r"(-?\d+) ms after its deadline", self.listener.output())]

    def stop(self) -> None:
        for part in (self.listener, self.worker):
            if part:
                part.stop()
        self.events.close()
        self.receiver.stop()
        self.server.stop()


class CountdownSystem(_PrivateRedisAndReceiver):
    """The baseline: a private redis-server, the receiver, a stock Celery prefork worker."""

    def __init__(self, name: str, background: int = 0, concurrency: int | None = None) -> None:
        super().__init__(name, background)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "BENCH_BROKER_URL": self.url,
            "BENCH_RECEIVER_URL": self.receiver.url(),
            "BENCH_DONE_CHANNEL": DONE_CHANNEL,
        }
        argv = [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "bench.countdown",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency or os.cpu_count() or 2),
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
            "--hostname",
            f"{name}@%h",
        ]
        progress(f"{name}: starting the Celery countdown worker (prefork, {argv[argv.index('--concurrency') + 1]})")
        self.worker = Process(f"{name}-worker", argv, env).start(" ready.")
        self.events = Collector(self.url, channels=(DONE_CHANNEL,))
        self.app = Celery("bench_countdown_sender", broker=self.url)
        self.app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)

    def pids(self) -> dict[str, int]:
        return {"worker": self.worker.pid, "redis": self.redis_pid, "receiver": self.receiver.process.pid}

    def send(self, schedule: list[tuple[str, str, int]]) -> None:
        """One task per (jobId, key, deadline ms), each with its deadline as ETA."""
        with self.app.producer_or_acquire() as producer:
            for job_id, key, deadline in schedule:
                eta = dt.datetime.fromtimestamp(deadline / 1000, dt.UTC)
                self.app.send_task(
                    TASK_NAME,
                    args=(job_id, key, deadline),
                    eta=eta,
                    task_id=job_id,
                    queue="bench_countdown",
                    producer=producer,
                )

    def queued(self) -> int:
        return int(self.redis.llen("bench_countdown"))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()
        self.worker.stop()
        self.events.close()
        self.receiver.stop()
        self.server.stop()


@contextlib.contextmanager
def running(system: FollowupSystem | CountdownSystem) -> Iterator[FollowupSystem | CountdownSystem]:
    try:
        yield system
    finally:
        system.stop()


__all__ = ["CALLBACK_CHANNEL", "DONE_CHANNEL", "CountdownSystem", "CpuMeter", "FollowupSystem", "running"]
