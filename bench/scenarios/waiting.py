"""Waiting: 2,000 jobs waiting on their callbacks at once in one worker.

The receiver answers every webhook at once but does not call back. Once all 2,000 webhooks have
arrived (every job is then waiting in the one worker), the worker's RSS is read from /proc; then
the bench publishes the 2,000 callbacks itself, paced at a steady rate, and measures, per job,
callback PUBLISH → success event on SUCCESS_CHANNEL. Baselines: the same worker's RSS at rest, and
the same paced messages through a plain redis-py relay (subscribe → PUBLISH): the floor of one
pub/sub hop plus one PUBLISH.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from bench.common import (
    CALLBACK_CHANNEL,
    PYTHON,
    Collector,
    Process,
    ms,
    now_ms,
    progress,
    rss_mb,
    start_redis,
    summary,
    target,
    wait_progress,
    wait_until,
    write_deadlines,
)
from bench.scenarios.throughput import due_second
from bench.systems import CpuMeter, FollowupSystem


def paced_publish(
    client: redis.Redis, channel: str, messages: list[tuple[str, bytes]], rate: float
) -> dict[str, float]:
    """PUBLISH each (id, message) at `rate` a second; returns id -> ms just before its PUBLISH."""
    sent: dict[str, float] = {}
    start = time.monotonic()
    for n, (ident, message) in enumerate(messages):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent[ident] = now_ms()
        client.publish(channel, message)
    return sent


def run_followup(count: int, rate: float, bound_s: float) -> dict[str, Any]:
    system = FollowupSystem("waiting-followup", WORKER_CONCURRENCY=str(count), WORKER_CALLBACK_TIMEOUT="5m")
    try:
        time.sleep(1.0)
        rest = rss_mb(system.worker.pid)
        system.receiver.hold(True)
        start = int(now_ms()) + 2000
        write_deadlines(system.redis, due_second(count, start))
        progress(f"followup: {count:,} jobs due in one second; the receiver does not call back")
        meter = CpuMeter(system.pids()).start()
        arrived = wait_progress("jobs waiting", system.receiver.count, count, start / 1000 + bound_s)
        time.sleep(1.0)
        waiting_rss = rss_mb(system.worker.pid)
        hits = system.receiver.hits()
        progress(f"worker RSS: {rest:.0f} MB at rest, {waiting_rss:.0f} MB with {arrived:,} jobs waiting")
        callbacks = [(hit.job_id, json.dumps({"jobId": hit.job_id, "status": "success"}).encode()) for hit in hits]
        progress(f"publishing {len(callbacks):,} callbacks at {rate:g}/s")
        sent = paced_publish(system.redis, CALLBACK_CHANNEL, callbacks, rate)
        wait_progress("success events", lambda: len(system.successes()), len(callbacks), time.time() + 30)
        cpu = meter.stop()
        latency = []
        for at, data in system.successes():
            job_id = json.loads(data)["jobId"]
            if job_id in sent:
                latency.append(at - sent[job_id])
        return {
            "system": "followup worker (gevent)",
            "waiting": arrived,
            "rss_rest_mb": round(rest, 1),
            "rss_waiting_mb": round(waiting_rss, 1),
            "kb_per_waiting_job": round((waiting_rss - rest) * 1024 / max(1, arrived), 1),
            **summary(latency, len(callbacks)),
            "failures": system.failures(),
            "cpu_s": cpu,
        }
    finally:
        system.stop()


def run_relay(count: int, rate: float) -> dict[str, Any]:
    server = start_redis("waiting-relay")
    relay = None
    try:
        argv = [PYTHON, "-m", "bench.relay", "--redis-port", str(server.port), "--source", "in", "--sink", "out"]
        relay = Process("waiting-relay", argv, {**os.environ, "PYTHONUNBUFFERED": "1"}).start("relay ready")
        client = redis.Redis.from_url(server.url())
        out = Collector(server.url(), channels=("out",))
        wait_until(lambda: client.pubsub_numsub("out")[0][1] >= 1, 5, "the collector's subscription")
        messages = [(str(n), str(n).encode()) for n in range(count)]
        progress(f"relay baseline: {count:,} messages at {rate:g}/s")
        sent = paced_publish(client, "in", messages, rate)
        wait_until(lambda: out.count() >= count, 30, "the relayed messages")
        out.close()
        latency = [at - sent[data.decode()] for at, _, data in out.messages]
        return {
            "system": "redis-py relay (subscribe → PUBLISH)",
            "rss_rest_mb": round(rss_mb(relay.pid), 1),
            **summary(latency, count),
        }
    finally:
        if relay:
            relay.stop()
        server.stop()


def run(options: Any) -> dict[str, Any]:
    count, rate = options.waiting_jobs, options.callback_rate
    followup = run_followup(count, rate, options.waiting_bound)
    relay = run_relay(count, rate)
    all_waiting = followup["waiting"] >= count
    rss = followup["rss_waiting_mb"]
    shown = f"{rss:.0f} MB" + ("" if all_waiting else f" (only {followup['waiting']:,} waiting)")
    targets = [
        target(f"worker RSS with {count:,} jobs waiting", "< 300 MB", shown, all_waiting and rss < 300, rss),
        target("callback → success p99", "≤ 5 ms", ms(followup["p99"]), followup["p99"] <= 5, followup["p99"]),
    ]
    return {
        "name": "waiting",
        "conditions": {"jobs": count, "callback_rate_per_s": rate, "worker_concurrency": count},
        "rows": [followup, relay],
        "targets": targets,
    }
