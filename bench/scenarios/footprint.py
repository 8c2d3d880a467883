"""Footprint: listener and worker RSS at rest and with 1,000,000 keys in the schedule index.

First both processes at rest on an empty Redis. Then the listener is stopped, 1,000,000 mapped
keys with a TTL a day away are written (`SET … EX 86400`, in chunks, by a script inside Redis),
and a new listener is started: its start-up scan indexes every one of them (the event path is
measured by the flood scenario). RSS is read from /proc once the index holds them all, and the
listener's peak (VmHWM). The bench then waits (bounded) for the scan to report itself done, and
reads Redis's SLOWLOG for the commands that took over 10 ms meanwhile: a long command blocks every
other client of that Redis. Baselines: the same processes at rest, and a stock Celery prefork
worker (the countdown baseline) at rest.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bench.common import fill, progress, rss_mb, start_listener, target, tree_rss_mb, wait_progress
from bench.scenarios.throughput import INDEX
from bench.systems import CountdownSystem, CpuMeter, FollowupSystem


def hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_followup(count: int, bound_s: float, scan_bound_s: float) -> dict[str, Any]:
    system = FollowupSystem("footprint-followup")
    try:
        time.sleep(2.0)
        listener_rest, worker_rest = rss_mb(system.listener.pid), rss_mb(system.worker.pid)
        progress(f"at rest: listener {listener_rest:.0f} MB, worker {worker_rest:.0f} MB")
        system.listener.stop()
        progress(f"writing {count:,} mapped keys with a 1-day TTL")
        fill(system.redis, "due:fp:", count, 86_400, value="1")
        # Every command Redis spends more than 10 ms on while the new listener starts: a long one
        # stalls every client of this Redis (workers, flows) for that long.
        system.redis.config_set("slowlog-log-slower-than", "10000")
        system.redis.config_set("slowlog-max-len", "1000")
        system.redis.slowlog_reset()
        started = time.monotonic()
        system.listener = start_listener(system.env, "footprint-listener-full", scan_done=False)
        meter = CpuMeter(system.pids()).start()
        progress("a new listener indexes them (its start-up scan)")
        indexed = wait_progress(
            "indexed", lambda: int(system.redis.zcard(INDEX)), count, time.time() + bound_s, every=10
        )
        index_s = time.monotonic() - started
        cpu = meter.stop()
        time.sleep(1.0)
        listener_full, worker_full = rss_mb(system.listener.pid), rss_mb(system.worker.pid)
        memory = system.redis.info("memory")
        progress(f"with {indexed:,} indexed: listener {listener_full:.0f} MB, worker {worker_full:.0f} MB")
        try:
            system.listener.wait_for("scan done", scan_bound_s)
            scan_done_s: float | None = round(time.monotonic() - started, 1)
        except TimeoutError:
            scan_done_s = None
        slow = system.redis.slowlog_get(1000)
        progress(
            "start-up scan done "
            + (f"after {scan_done_s:.0f} s" if scan_done_s else f"not within {index_s + scan_bound_s:.0f} s")
            + f"; {len(slow)} Redis commands over 10 ms meanwhile"
        )
        return {
            "system": "followup",
            "indexed": indexed,
            "index_s": round(index_s, 1),
            "indexed_per_s": round(indexed / index_s),
            "scan_done_s": scan_done_s,
            "scan_bound_s": round(index_s + scan_bound_s, 1),
            "redis_commands_over_10ms": len(slow),
            "redis_longest_command_ms": round(max((e["duration"] for e in slow), default=0) / 1000, 1),
            "redis_slow_commands": dict(Counter(_command(e) for e in slow).most_common(5)),
            "listener_rest_mb": round(listener_rest, 1),
            "listener_full_mb": round(listener_full, 1),
            "listener_peak_mb": round(hwm_mb(system.listener.pid), 1),
            "worker_rest_mb": round(worker_rest, 1),
            "worker_full_mb": round(worker_full, 1),
            "redis_used_mb": round(int(memory["used_memory"]) / 2**20, 1),
            "listener_lost_redis": system.listener.output().count("lost Redis"),
            "cpu_s": cpu,
        }
    finally:
        system.stop()


def _command(entry: dict[str, Any]) -> str:
    command = entry.get("command", b"")
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return text.split(" ", 1)[0].upper()


def run_countdown_rest() -> dict[str, Any]:
    system = CountdownSystem("footprint-countdown")
    try:
        time.sleep(2.0)
        return {
            "system": "stock Celery prefork worker (countdown baseline)",
            "worker_rest_mb": round(tree_rss_mb(system.worker.pid), 1),
            "worker_main_rest_mb": round(rss_mb(system.worker.pid), 1),
        }
    finally:
        system.stop()


def run(options: Any) -> dict[str, Any]:
    count = options.footprint_keys
    followup = run_followup(count, options.footprint_bound, options.footprint_scan_bound)
    countdown = run_countdown_rest()
    complete = followup["indexed"] >= count
    shown = f"{followup['listener_full_mb']:.0f} MB" + ("" if complete else f" (only {followup['indexed']:,} indexed)")
    targets = [
        target(
            f"listener RSS with {count:,} keys indexed",
            "≤ 60 MB",
            shown,
            complete and followup["listener_full_mb"] <= 60,
            followup["listener_full_mb"],
        )
    ]
    return {
        "name": "footprint",
        "conditions": {
            "keys": count,
            "ttl_s": 86_400,
            "bound_s": options.footprint_bound,
            "scan_bound_s": options.footprint_scan_bound,
        },
        "rows": [followup, countdown],
        "targets": targets,
    }
