"""Real faults: Redis restarted under a running system (worker kills: test_index.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from followup.embedded import RedisServer
from tests.conftest import CALLBACK_CHANNEL, SUCCESS_CHANNEL, base_env
from tests.harness import Events, Receiver, Reply, start_listener, start_worker, wait_until


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_listener_and_worker_survive_a_redis_restart(private_redis: RedisServer, log_dir: Path) -> None:
    url = private_redis.url()
    receiver = Receiver(url, CALLBACK_CHANNEL)
    env = base_env(url, f"r:*={receiver.url('/r')}")
    worker = start_worker(env, log_dir, name="restart-worker")
    listener = start_listener(env, log_dir, name="restart-listener")
    try:
        before = _round_trip(url, receiver, "r:before")
        private_redis.restart()  # no persistence: the notify flags and every key are gone
        wait_until(lambda: listener.output().count("listening on") >= 2, 30, "the listener to resubscribe")
        assert "lost Redis" in listener.output()
        wait_until(lambda: "callback subscription to" in worker.output(), 30, "the worker's callback subscription")
        after = _round_trip(url, receiver, "r:after")
        assert after != before
        assert worker.proc.poll() is None and listener.proc.poll() is None
    finally:
        listener.stop()
        worker.stop()
        receiver.stop()


def _round_trip(url: str, receiver: Receiver, key: str) -> str:
    """Expire `key`, let the receiver confirm it, and wait for the success event; return the jobId."""
    events = Events(url, SUCCESS_CHANNEL)
    try:
        receiver.plan(key, Reply(callback="success"))
        redis.Redis.from_url(url).set(key, "1", px=50)
        [call] = receiver.wait_calls(key, 1, timeout=30)
        events.wait(SUCCESS_CHANNEL, timeout=30, jobId=call.body["jobId"])
        return call.body["jobId"]
    finally:
        events.close()
