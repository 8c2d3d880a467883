"""Throughput: 20,000 keys due in the same second; how fast the whole job completes.

A follow-up is complete when its success event is out: webhook POSTed, callback received (the
receiver publishes it before answering), success published. Measured by a subscriber to
SUCCESS_CHANNEL: completed follow-ups per second = completed ÷ (last success event − the start of
the due second), the time to the last one, lost (no success event) and doubled (a second success
event, or a second webhook call, for one key). Baseline: the Celery countdown scheduler (prefork,
one process per core) completing bare webhook tasks — POST, then one PUBLISH — due in the same second.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from typing import Any

from bench.common import now_ms, progress, target, wait_progress, write_deadlines
from bench.systems import CountdownSystem, CpuMeter, FollowupSystem

INDEX = "_followup:due"


def due_second(count: int, start_ms: int, prefix: str = "due:") -> list[tuple[str, int]]:
    """`count` keys with deadlines spread at random over one second from `start_ms`."""
    rng = random.Random(4)
    return sorted(((f"{prefix}{n}", start_ms + rng.randrange(1000)) for n in range(count)), key=lambda kd: kd[1])


def completion(start_ms: float, times: list[float], expected: int) -> dict[str, Any]:
    done = len(times)
    last = max(times) if times else start_ms
    span_s = max(1e-3, (last - start_ms) / 1000)
    return {
        "completed": done,
        "expected": expected,
        "time_to_last_s": round(span_s, 3) if done else None,
        "per_s": round(done / span_s, 1) if done else 0.0,
    }


def run_followup(count: int, bound_s: float, name: str = "throughput-followup", **settings: str) -> dict[str, Any]:
    system = FollowupSystem(name, **settings)
    try:
        start = int(now_ms()) + 3000 + count // 10
        schedule = due_second(count, start)
        meter = CpuMeter(system.pids()).start()
        write_deadlines(system.redis, schedule)
        wait_progress("indexed", lambda: int(system.redis.zcard(INDEX)), count, start / 1000)
        indexed_in_time = int(system.redis.zcard(INDEX)) >= count and now_ms() < start
        progress(f"followup: {count:,} keys due in the second from now+{(start - now_ms()) / 1000:.1f}s")
        wait_progress("success events", lambda: len(system.successes()), count, start / 1000 + bound_s, every=5)
        time.sleep(0.5)  # anything doubled arrives now or never
        cpu = meter.stop()
        successes = system.successes()
        per_key = Counter(json.loads(data)["key"] for _, data in successes)
        hits = system.receiver.hits()
        calls = Counter(hit.key for hit in hits)
        result = completion(start, [at for at, _ in successes], count)
        unfinished = count - len(per_key)
        return {
            "system": "followup",
            **result,
            "unfinished": unfinished,
            "doubled_success": sum(n - 1 for n in per_key.values() if n > 1),
            "doubled_webhook": sum(n - 1 for n in calls.values() if n > 1),
            "webhooks": len(hits),
            "failures": system.failures(),
            "indexed_before_due": indexed_in_time,
            "waited_s": bound_s,
            "cpu_s": cpu,
        }
    finally:
        system.stop()


def run_countdown(count: int, bound_s: float) -> dict[str, Any]:
    system = CountdownSystem("throughput-countdown")
    try:
        # ≈ 1 ms a task to send and as much for the worker to take in: the due second comes after.
        start = int(now_ms()) + 3000 + int(1.3 * count)
        schedule = [(str(uuid.uuid4()), key, deadline) for key, deadline in due_second(count, start)]
        meter = CpuMeter(system.pids()).start()
        progress(f"Celery countdown: sending {count:,} tasks due in one second")
        system.send(schedule)
        wait_progress("taken in by the worker", lambda: count - system.queued(), count, start / 1000)
        fetched_in_time = system.queued() == 0 and now_ms() < start
        progress(f"Celery countdown: {count:,} tasks due in the second from now+{(start - now_ms()) / 1000:.1f}s")

        def done() -> int:
            return system.events.count()

        wait_progress("done events", done, count, start / 1000 + bound_s, every=5)
        time.sleep(0.5)
        cpu = meter.stop()
        per_job = Counter(json.loads(data)["jobId"] for _, _, data in system.events.messages)
        calls = Counter(hit.key for hit in system.receiver.hits())
        result = completion(start, [at for at, _, _ in system.events.messages], count)
        return {
            "system": "Celery countdown",
            **result,
            "unfinished": count - len(per_job),
            "doubled_success": sum(n - 1 for n in per_job.values() if n > 1),
            "doubled_webhook": sum(n - 1 for n in calls.values() if n > 1),
            "fetched_before_due": fetched_in_time,
            "waited_s": bound_s,
            "cpu_s": cpu,
        }
    finally:
        system.stop()


def run(options: Any) -> dict[str, Any]:
    count = options.throughput_keys
    rows = [run_followup(count, options.throughput_bound), run_countdown(count, options.throughput_bound)]
    followup = rows[0]
    unfinished = followup["unfinished"]
    doubled = followup["doubled_success"] + followup["doubled_webhook"]
    targets = [
        target(
            "completed follow-ups/s",
            "≥ 1,500/s",
            f"{followup['per_s']:,.0f}/s",
            followup["per_s"] >= 1500,
            followup["per_s"],
        ),
        target(
            "lost",
            "0",
            "0" if not unfinished else f"{unfinished:,} unfinished after {options.throughput_bound:g} s",
            not unfinished,
            unfinished,
        ),
        target("doubled", "0", f"{doubled:,}", doubled == 0, doubled),
    ]
    return {
        "name": "throughput",
        "conditions": {"keys": count, "due_within_s": 1, "bound_s": options.throughput_bound},
        "rows": rows,
        "targets": targets,
    }
