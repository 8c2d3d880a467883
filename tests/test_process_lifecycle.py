"""How the listener and the worker start and stop, as an operator sees it: exit status and last words."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from followup.embedded import RedisServer
from tests.harness import ROOT, FollowupProcess, followup_env, start_listener, start_worker


def test_listener_on_a_managed_redis_without_the_flags_exits_2_naming_the_setting() -> None:
    server = RedisServer(args=("--notify-keyspace-events", "", "--rename-command", "CONFIG", "")).start()
    try:
        env = followup_env(REDIS_URL=server.url(), KEY_WEBHOOK_MAPPING="t:*=|c")
        done = subprocess.run(
            [sys.executable, "-m", "followup", "listen"],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.stop()
    assert done.returncode == 2, f"exit status {done.returncode}:\n{done.stdout}{done.stderr}"
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("followup listen: "), done.stderr
    assert "notify-keyspace-events" in last and "'Eg$xe'" in last, last


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_listener_exits_0_on_a_stop_signal(redis_server: RedisServer, log_dir, signum: int) -> None:
    env = followup_env(REDIS_URL=redis_server.url(), KEY_WEBHOOK_MAPPING="lifecycle:*=|c")
    listener = start_listener(env, log_dir, name=f"lifecycle-listener-{signal.Signals(signum).name}")
    listener.proc.send_signal(signum)  # to the process alone, as `docker stop` or Ctrl-C in its own terminal
    _assert_stops_cleanly(listener, "followup listen: stopped")


def test_worker_exits_0_on_sigterm_at_once_after_start(redis_server: RedisServer, log_dir) -> None:
    # The signal lands while the worker's services may still be starting: they must not start after it.
    env = followup_env(REDIS_URL=redis_server.url(), KEY_WEBHOOK_MAPPING="lifecycle:*=|c")
    worker = start_worker(env, log_dir, name="lifecycle-worker", concurrency=5)
    worker.proc.send_signal(signal.SIGTERM)
    _assert_stops_cleanly(worker, "Warm shutdown")
    assert "unfinished" not in worker.output(), worker.tail()


def _assert_stops_cleanly(process: FollowupProcess, last_words: str) -> None:
    try:
        status = process.proc.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{process.name} did not stop within 30 s:\n{process.tail()}")
    assert status == 0, f"{process.name} exited {status}:\n{process.tail()}"
    assert last_words in process.output(), process.tail()
    assert "Traceback" not in process.output(), process.tail()
