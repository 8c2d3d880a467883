"""Flood: 100,000 keys due in the same second.

Every one must be delivered exactly once (one webhook and one success event per key), and the
listener must never be dropped by Redis: a subscriber whose output buffer passes the pub/sub limit
(`client-output-buffer-limit pubsub 32mb 8mb 60` by default) is disconnected, and every event in
flight is lost with it. The bench samples CLIENT LIST every half second (the listener's connection
id, which changes on a reconnect, and its output buffer, omem) and reads the listener's log for
'lost Redis'. Drain time: the start of the due second → the last success event. Baseline: the same
100,000 keys in a Redis with a plain subscriber to the expired events (no followup).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from typing import Any

import psutil
import redis

from bench.common import (
    Collector,
    now_ms,
    progress,
    pubsub_clients,
    start_redis,
    target,
    wait_progress,
    write_deadlines,
)
from bench.scenarios.throughput import INDEX, due_second
from bench.systems import CpuMeter, FollowupSystem


class BufferWatch(threading.Thread):
    """Samples one process's subscription in CLIENT LIST every half second: its connection ids
    (a reconnect shows as a new id) and the peak of its output buffer (omem).

    The subscription is told by its client port: the one of `pid`'s TCP connections (psutil) whose
    CLIENT LIST entry has a subscription of `kind`: psub for the listener's key events (its other
    subscription, to the rules' change channel, is a plain one and carries next to nothing).
    """

    def __init__(self, client: redis.Redis, pid: int, kind: str = "psub") -> None:
        super().__init__(daemon=True)
        self.kind = kind
        self.client = client
        self.process = psutil.Process(pid)
        self.peak_omem = 0
        self.ids: set[str] = set()
        self.samples = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        try:
            ports = {conn.laddr.port for conn in self.process.net_connections(kind="tcp") if conn.laddr}
            clients = pubsub_clients(self.client)
        except (redis.RedisError, psutil.Error):
            return
        self.samples += 1
        for c in clients:
            if int(c.get(self.kind, 0)) and int(str(c.get("addr", ":0")).rpartition(":")[2]) in ports:
                self.ids.add(str(c["id"]))
                self.peak_omem = max(self.peak_omem, int(c.get("omem", 0)))

    def run(self) -> None:
        self.sample()
        while not self._halt.wait(0.5):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(2)
        self.sample()


def run_followup(count: int, bound_s: float) -> dict[str, Any]:
    system = FollowupSystem("flood-followup")
    try:
        watch = BufferWatch(redis.Redis.from_url(system.url), system.listener.pid)
        watch.start()
        start = int(now_ms()) + 4000 + count // 20
        schedule = due_second(count, start)
        meter = CpuMeter(system.pids()).start()
        progress(f"followup: writing {count:,} keys due in one second")
        written_at = time.monotonic()
        write_deadlines(system.redis, schedule, batch=10_000)
        indexed = wait_progress("indexed", lambda: int(system.redis.zcard(INDEX)), count, start / 1000)
        index_s = time.monotonic() - written_at
        indexed_in_time = indexed >= count and now_ms() < start
        progress(f"followup: {count:,} keys due in the second from now+{(start - now_ms()) / 1000:.1f}s")
        wait_progress("success events", lambda: len(system.successes()), count, start / 1000 + bound_s, every=5)
        time.sleep(0.5)
        cpu = meter.stop()
        watch.stop()
        successes = system.successes()
        per_key = Counter(json.loads(data)["key"] for _, data in successes)
        calls = Counter(hit.key for hit in system.receiver.hits())
        times = [at for at, _ in successes]
        log = system.listener.output()
        return {
            "system": "followup",
            "delivered_once": sum(1 for key in per_key if per_key[key] == 1 and calls.get(key) == 1),
            "webhooks": sum(calls.values()),
            "successes": len(successes),
            "unfinished": count - len(per_key),
            "doubled_success": sum(n - 1 for n in per_key.values() if n > 1),
            "doubled_webhook": sum(n - 1 for n in calls.values() if n > 1),
            "drain_s": round((max(times) - start) / 1000, 2) if len(per_key) >= count else None,
            "completed_per_s": round(len(times) / max(1e-3, (max(times) - start) / 1000), 1) if times else 0.0,
            "indexed_before_due": indexed_in_time,
            "indexed_from_events": indexed,
            "index_s": round(index_s, 1),
            "listener_lost_redis": log.count("lost Redis"),
            "listener_connections_seen": len(watch.ids),
            "peak_listener_omem_mb": round(watch.peak_omem / 2**20, 2),
            "waited_s": bound_s,
            "cpu_s": cpu,
        }
    finally:
        system.stop()


def run_raw(count: int, bound_s: float) -> dict[str, Any]:
    server = start_redis("flood-raw")
    client = redis.Redis.from_url(server.url())
    try:
        client.config_set("notify-keyspace-events", "Ex")
        events = Collector(server.url(), channels=("__keyevent@0__:expired",))
        watch = BufferWatch(client, os.getpid(), kind="sub")
        watch.start()
        start = int(now_ms()) + 3000
        write_deadlines(client, due_second(count, start), batch=10_000)
        progress(f"raw Redis: {count:,} keys due in one second, a plain subscriber to the expired events")
        wait_progress("expired events", events.count, count, start / 1000 + bound_s)
        watch.stop()
        events.close()
        keys = Counter(data for _, _, data in events.messages)
        times = [at for at, _, _ in events.messages]
        return {
            "system": "raw Redis expired events",
            "delivered_once": sum(1 for n in keys.values() if n == 1),
            "unfinished": count - len(keys),
            "drain_s": round((max(times) - start) / 1000, 2) if len(keys) >= count else None,
            "peak_subscriber_omem_mb": round(watch.peak_omem / 2**20, 2),
        }
    finally:
        client.close()
        server.stop()


def run(options: Any) -> dict[str, Any]:
    count = options.flood_keys
    followup = run_followup(count, options.flood_bound)
    raw = run_raw(count, 30)
    ok_once = followup["delivered_once"] == count
    never_dropped = followup["listener_lost_redis"] == 0 and followup["listener_connections_seen"] <= 1
    targets = [
        target(
            f"flood: delivered exactly once (of {count:,})",
            f"{count:,}",
            f"{followup['delivered_once']:,}"
            + (
                f" ({followup['unfinished']:,} unfinished after {options.flood_bound:g} s)"
                if followup["unfinished"]
                else ""
            ),
            ok_once,
            followup["delivered_once"],
        ),
        target(
            "flood: listener never dropped by Redis",
            "0 drops",
            f"{followup['listener_lost_redis']} 'lost Redis', {followup['listener_connections_seen']} connection(s), "
            f"peak output buffer {followup['peak_listener_omem_mb']:.1f} MB",
            never_dropped,
            followup["listener_lost_redis"],
        ),
    ]
    return {
        "name": "flood",
        "conditions": {"keys": count, "due_within_s": 1, "bound_s": options.flood_bound},
        "rows": [followup, raw],
        "targets": targets,
    }
