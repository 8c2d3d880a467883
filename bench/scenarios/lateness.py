"""Lateness: keys due at a steady 400/s; how long after its deadline each follow-up reaches the flow.

Measured at the receiver: arrival (its clock) − the key's deadline (its absolute expiry, which is
the webhook's `expiredAt`). Run with 0 and with 100,000 unrelated 1-hour-TTL keys in the same
Redis (a cache sharing it), at `hz 10`. Beside followup, for the same schedule:
  - raw Redis: a plain subscriber to `__keyevent@0__:expired` (what a tool that waits for the
    event inherits); the same run feeds
  - a 1-second poller: every second ZRANGEBYSCORE a zset of the deadlines and "fire" the due ones;
  - Celery countdown: one task per key sent ahead with `eta=deadline`, POSTing to the receiver.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import redis

from bench.common import (
    Collector,
    ms,
    now_ms,
    populate_background,
    progress,
    start_redis,
    summary,
    target,
    wait_progress,
    write_deadlines,
)
from bench.systems import CountdownSystem, CpuMeter, FollowupSystem

RATE = 400  # keys due per second
LEAD_MS = 3000  # from writing the schedule to its first deadline


def make_schedule(count: int, start_ms: int, prefix: str = "due:") -> list[tuple[str, int]]:
    return [(f"{prefix}{n}", start_ms + round(n * 1000 / RATE)) for n in range(count)]


def _row(system: str, background: int, latencies: list[float], expected: int, **extra: Any) -> dict[str, Any]:
    return {"system": system, "background": background, **summary(latencies, expected), **extra}


def run_followup(background: int, count: int, tail_s: float) -> dict[str, Any]:
    system = FollowupSystem(f"lateness-followup-{background}", background=background)
    try:
        schedule = make_schedule(count, int(now_ms()) + LEAD_MS)
        deadlines = dict(schedule)
        meter = CpuMeter(system.pids()).start()
        write_deadlines(system.redis, schedule)
        last = schedule[-1][1] / 1000
        progress(f"followup, {background:,} background keys: {count:,} keys due at {RATE}/s for {count / RATE:g} s")
        wait_progress("webhooks", system.receiver.count, count, last + tail_s)
        wait_progress("success events", lambda: len(system.successes()), count, max(time.time() + 2, last + tail_s))
        cpu = meter.stop()
        hits = system.receiver.hits()
        first: dict[str, float] = {}
        calls = Counter()
        wrong_deadline = 0
        for hit in hits:
            calls[hit.key] += 1
            if hit.key not in first:
                first[hit.key] = hit.arrived - hit.expired_at
                wrong_deadline += hit.expired_at != deadlines.get(hit.key)
        listener = summary(system.listener_lateness())
        return _row(
            "followup",
            background,
            list(first.values()),
            count,
            doubled=sum(1 for n in calls.values() if n > 1),
            wrong_deadline=wrong_deadline,
            successes=len(system.successes()),
            failures=system.failures(),
            listener_enqueue_p50=listener["p50"],
            listener_enqueue_p99=listener["p99"],
            cpu_s=cpu,
        )
    finally:
        system.stop()


class Poller(threading.Thread):
    """Every second: ZRANGEBYSCORE the deadlines that have passed, ZREM them, 'fire' each."""

    def __init__(self, client: redis.Redis, zset: str, until: float) -> None:
        super().__init__(daemon=True)
        self.client, self.zset, self.until = client, zset, until
        self.fired: dict[str, float] = {}

    def run(self) -> None:
        tick = time.time()
        while tick < self.until:
            tick += 1.0
            time.sleep(max(0.0, tick - time.time()))
            due = self.client.zrangebyscore(self.zset, "-inf", int(now_ms()), withscores=True)
            if due:
                self.client.zrem(self.zset, *[key for key, _ in due])
            fired = now_ms()
            for key, deadline in due:
                self.fired[key.decode()] = fired - deadline


def run_raw_and_poller(background: int, count: int, tail_s: float) -> list[dict[str, Any]]:
    server = start_redis(f"lateness-raw-{background}")
    client = redis.Redis.from_url(server.url())
    try:
        client.config_set("notify-keyspace-events", "Ex")
        if background:
            progress(f"raw Redis: writing {background:,} unrelated keys with a 1-hour TTL")
            populate_background(client, background)
        events = Collector(server.url(), channels=("__keyevent@0__:expired",))
        schedule = make_schedule(count, int(now_ms()) + LEAD_MS)
        deadlines = dict(schedule)
        pipe = client.pipeline(transaction=False)
        for key, deadline in schedule:
            pipe.zadd("poll:due", {key: deadline})
        pipe.execute()
        last = schedule[-1][1] / 1000
        poller = Poller(client, "poll:due", last + 1.5)
        poller.start()
        write_deadlines(client, schedule)
        progress(
            f"raw expired events and 1-second poller, {background:,} background keys: {count:,} keys due at {RATE}/s"
        )

        def arrived() -> int:
            return sum(1 for _, _, key in list(events.messages) if key.startswith(b"due:"))

        wait_progress("expired events", arrived, count, last + tail_s)
        poller.join(5)
        events.close()
        raw: dict[str, float] = {}
        for at, _, key in events.messages:
            name = key.decode()
            if name in deadlines and name not in raw:
                raw[name] = at - deadlines[name]
        return [
            _row("raw Redis expired event", background, list(raw.values()), count, waited_s=tail_s),
            _row("1-second poller", background, list(poller.fired.values()), count),
        ]
    finally:
        client.close()
        server.stop()


def run_countdown(background: int, count: int, tail_s: float) -> dict[str, Any]:
    system = CountdownSystem(f"lateness-countdown-{background}", background=background)
    try:
        # Sending costs ≈ 1 ms a task from Python: the lead covers it, so that the worker holds
        # every task (ETA tasks wait in the worker) before the first deadline.
        schedule = make_schedule(count, int(now_ms()) + LEAD_MS + int(1.5 * count))
        meter = CpuMeter(system.pids()).start()
        system.send([(str(uuid.uuid4()), key, deadline) for key, deadline in schedule])
        progress(f"Celery countdown, {background:,} background keys: {count:,} tasks due at {RATE}/s")
        first_deadline, last = schedule[0][1] / 1000, schedule[-1][1] / 1000
        while system.queued() and time.time() < first_deadline:
            time.sleep(0.02)
        fetched_in_time = system.queued() == 0 and time.time() < first_deadline
        wait_progress("webhooks", system.receiver.count, count, last + tail_s)
        cpu = meter.stop()
        hits = system.receiver.hits()
        first: dict[str, float] = {}
        calls = Counter()
        for hit in hits:
            calls[hit.key] += 1
            first.setdefault(hit.key, hit.arrived - hit.expired_at)
        return _row(
            "Celery countdown",
            background,
            list(first.values()),
            count,
            doubled=sum(1 for n in calls.values() if n > 1),
            fetched_before_first_deadline=fetched_in_time,
            cpu_s=cpu,
        )
    finally:
        system.stop()


def run(options: Any) -> dict[str, Any]:
    count = RATE * options.lateness_seconds
    rows: list[dict[str, Any]] = []
    for background in (0, options.background):
        rows.append(run_followup(background, count, options.tail))
        rows.extend(run_raw_and_poller(background, count, options.raw_tail))
        rows.append(run_countdown(background, count, options.tail))
    targets = []
    for row in rows:
        if row["system"] != "followup":
            continue
        where = f"{row['background']:,} background keys"
        targets.append(target(f"lateness p50, {where}", "≤ 3 ms", ms(row["p50"]), row["p50"] <= 3, row["p50"]))
        targets.append(target(f"lateness p99, {where}", "≤ 10 ms", ms(row["p99"]), row["p99"] <= 10, row["p99"]))
    return {
        "name": "lateness",
        "conditions": {
            "keys": count,
            "rate_per_s": RATE,
            "background_keys": [0, options.background],
            "background_ttl_s": 3600,
            "tail_wait_s": options.tail,
            "raw_tail_wait_s": options.raw_tail,
        },
        "rows": rows,
        "targets": targets,
    }
