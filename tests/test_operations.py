"""Operating followup: /healthz and /metrics, `followup check`, graceful shutdown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from followup.embedded import RedisServer, free_port
from tests.conftest import CALLBACK_CHANNEL, SUCCESS_CHANNEL, base_env
from tests.harness import (
    FOLLOWUP,
    ROOT,
    Events,
    FollowupProcess,
    Receiver,
    Reply,
    start_listener,
    start_worker,
    wait_until,
)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str) -> float:
    """The sum of every sample of `name` in a Prometheus exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_listener_metrics_move_and_healthz_follows_redis(private_redis: RedisServer, log_dir: Path) -> None:
    url = private_redis.url()
    port = free_port()
    receiver = Receiver(url, CALLBACK_CHANNEL)
    env = base_env(url, f"m:*={receiver.url('/m')}", METRICS_PORT=str(port))
    listener = start_listener(env, log_dir, name="metrics-listener")
    try:
        base = f"http://127.0.0.1:{port}"
        assert get(f"{base}/healthz")[0] == 200
        assert run_followup(env, "health", "--role", "listen").returncode == 0  # the image's HEALTHCHECK command
        client = redis.Redis.from_url(url)
        for n in range(5):
            client.set(f"m:{n}", "1", px=100)
        client.set("unmapped", "1", px=100)
        wait_until(
            lambda: metric(get(f"{base}/metrics")[1], "followup_listener_enqueued_total") >= 5,
            15,
            "5 enqueued in /metrics",
        )
        text = get(f"{base}/metrics")[1]
        assert metric(text, "followup_listener_matched_total") >= 10  # set + expire events of 5 keys
        assert 'followup_listener_events_total{event="set"}' in text
        assert metric(text, "followup_listener_lateness_seconds_count") == 5
        assert metric(text, "followup_listener_index_size") == 0
        expired = 'followup_listener_events_total{event="expired"}'
        wait_until(lambda: metric(get(f"{base}/metrics")[1], expired) >= 5, 15, "the 5 expired events")
        # The only listener: each expired event is the echo of its own timer's touch, no duplicate.
        assert metric(get(f"{base}/metrics")[1], "followup_listener_duplicates_suppressed_total") == 0

        private_redis.stop()
        wait_until(lambda: get(f"{base}/healthz")[0] == 503, 15, "/healthz to turn unhealthy")
        assert "not connected" in get(f"{base}/healthz")[1]
        unhealthy = run_followup(env, "health", "--role", "listen")
        assert unhealthy.returncode == 1 and "not connected" in unhealthy.stderr + unhealthy.stdout, unhealthy
        private_redis.start()
        wait_until(lambda: get(f"{base}/healthz")[0] == 200, 30, "/healthz to be healthy again")
        assert metric(get(f"{base}/metrics")[1], "followup_listener_reconnects_total") >= 1
    finally:
        listener.stop()
        receiver.stop()


def test_worker_metrics_count_webhooks_and_attempts(private_redis: RedisServer, log_dir: Path) -> None:
    url = private_redis.url()
    port = free_port()
    receiver = Receiver(url, CALLBACK_CHANNEL)
    env = base_env(url, f"w:*={receiver.url('/w')}", METRICS_PORT=str(port))
    events = Events(url, SUCCESS_CHANNEL)
    worker = start_worker(env, log_dir, name="metrics-worker")
    listener = start_listener({**env, "METRICS_PORT": ""}, log_dir, name="metrics-worker-listener")
    try:
        receiver.plan("w:1", Reply(status=500), Reply(callback="success"))
        redis.Redis.from_url(url).set("w:1", "1", px=100)
        [call, *_] = receiver.wait_calls("w:1", 2)
        events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
        status, text = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert metric(text, 'followup_webhook_duration_seconds_count{outcome="5xx"}') == 1
        assert metric(text, 'followup_webhook_duration_seconds_count{outcome="2xx"}') == 1
        assert metric(text, 'followup_job_attempts_sum{outcome="success"}') == 2
        assert metric(text, "followup_callback_wait_seconds_count") == 1
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        listener.stop()
        worker.stop()
        events.close()
        receiver.stop()


def test_sigterm_on_a_worker_with_waiting_jobs_loses_none(private_redis: RedisServer, log_dir: Path) -> None:
    url = private_redis.url()
    receiver = Receiver(url, CALLBACK_CHANNEL)
    env = base_env(url, f"g:*={receiver.url('/g')}", WORKER_CALLBACK_TIMEOUT="10s")
    events = Events(url, SUCCESS_CHANNEL)
    worker = start_worker(env, log_dir, name="graceful-worker")
    listener = start_listener(env, log_dir, name="graceful-listener")
    try:
        client = redis.Redis.from_url(url)
        keys = [f"g:{n}" for n in range(5)]
        for key in keys:
            client.set(key, "1", px=100)
        calls = [receiver.wait_calls(key, 1)[0] for key in keys]
        worker.proc.send_signal(signal.SIGTERM)  # warm shutdown: no new jobs, running ones finish
        wait_until(
            lambda: "Warm shutdown" in worker.output() or "warm shutdown" in worker.output().lower(),
            10,
            "the worker to start its warm shutdown",
        )
        for call in calls:
            receiver.publish_callback(call.body["jobId"])
        for call in calls:
            events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
        assert worker.proc.wait(30) == 0
        assert all(len(receiver.calls(key)) == 1 for key in keys)
    finally:
        listener.stop()
        worker.stop()
        events.close()
        receiver.stop()


def run_followup(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FOLLOWUP, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_check_passes_on_a_good_setup(private_redis: RedisServer) -> None:
    url = private_redis.url()
    redis.Redis.from_url(url).config_set("notify-keyspace-events", "Eg$xe")
    result = run_followup(base_env(url, "k:*=http://127.0.0.1:9/hook,j=|chan", FLOWER_BASIC_AUTH="admin:pw"), "check")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.split()[0] in ("ok", "warn") for line in lines), lines
    assert any("Redis 6" in line or "Redis 7" in line for line in lines)
    assert "pw" not in result.stdout


def test_check_fails_without_notify_flags_where_config_is_refused(log_dir: Path) -> None:
    server = RedisServer(args=("--rename-command", "CONFIG", "")).start()
    try:
        result = run_followup(base_env(server.url(), "k:*=http://127.0.0.1:9/hook"), "check")
        assert result.returncode == 1, result.stdout
        assert any(line.startswith("fail") and "notify-keyspace-events" in line for line in result.stdout.splitlines())
    finally:
        server.stop()


def test_check_fails_without_notify_flags_where_only_config_set_is_refused(private_redis: RedisServer) -> None:
    # An ACL user that may read the setting but not change it: the listener could not add the flags.
    admin = redis.Redis.from_url(private_redis.url())
    admin.config_set("notify-keyspace-events", "")
    admin.acl_setuser(
        "reader", enabled=True, passwords=["+pw-reader"], keys=["*"], channels=["*"], commands=["+@all", "-config|set"]
    )
    try:
        url = f"redis://reader:pw-reader@127.0.0.1:{private_redis.port}/0"
        result = run_followup(base_env(url, "k:*=http://127.0.0.1:9/hook"), "check")
        assert result.returncode == 1, result.stdout
        [line] = [line for line in result.stdout.splitlines() if "notify-keyspace-events" in line]
        assert line.startswith("fail") and "refuses CONFIG SET" in line, line
    finally:
        admin.acl_deluser("reader")


def test_check_resolves_the_hosts_of_the_rules_in_redis_not_only_the_environment(
    private_redis: RedisServer,
) -> None:
    url = private_redis.url()
    env = base_env(url, "k:*=http://127.0.0.1:9/hook")
    made = run_followup(env, "rules", "set", "x:*", "http://no-such-host.invalid/hook")
    try:
        assert made.returncode == 0, made.stdout + made.stderr
        result = run_followup(env, "check")
        assert result.returncode == 1, result.stdout
        assert any(line.startswith("fail") and "no-such-host.invalid" in line for line in result.stdout.splitlines())
    finally:
        redis.Redis.from_url(url).delete(*redis.Redis.from_url(url).keys("_followup:rules*"))


def test_check_reports_unreachable_redis_and_unresolvable_host() -> None:
    env = base_env(f"redis://127.0.0.1:{free_port()}/0", "k:*=http://no-such-host.invalid/hook")
    result = run_followup(env, "check")
    assert result.returncode == 1
    text = result.stdout
    assert any(line.startswith("fail") and "redis" in line.lower() for line in text.splitlines()), text
    assert any(line.startswith("fail") and "no-such-host.invalid" in line for line in text.splitlines()), text


def test_log_format_json_gives_json_lines_from_every_process(private_redis: RedisServer, log_dir: Path) -> None:
    url = private_redis.url()
    env = base_env(url, "j:*=http://127.0.0.1:9/hook", LOG_FORMAT="json", FLOWER_BASIC_AUTH="ops:pw-json")
    port = free_port()
    processes = [
        start_listener(env, log_dir, name="json-listener"),
        start_worker(env, log_dir, name="json-worker"),
        FollowupProcess("json-flower", ["flower", f"--port={port}"], env, log_dir, ready="Visit me").start(),
    ]
    for process in processes:
        process.stop()
    for process in processes:
        output = process.output()
        if os.geteuid() == 0:
            # Run as root (the image runs as a user): Celery warns before any logging is set up.
            warning = r"^\S+: SecurityWarning: You're running the worker with superuser[\s\S]*?_warn_or_raise_.*\n"
            output = re.sub(warning, "", output, flags=re.MULTILINE)
        lines = [line for line in output.splitlines() if line.strip()]
        # Celery prints its shutdown notice straight to the terminal, not as a log record.
        not_json = [line for line in lines if not _is_json_entry(line) and not line.startswith("worker: ")]
        assert lines and not not_json, f"{process.name}: lines that are not JSON entries:\n" + "\n".join(not_json[:20])


def _is_json_entry(line: str) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and {"time", "level", "logger", "message"} <= set(entry)
