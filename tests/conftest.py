"""Fixtures: a private redis-server, the HTTP receiver, and a running followup (listener + worker)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from followup.embedded import RedisServer, free_port
from tests.harness import Events, FollowupProcess, Receiver, followup_env, start_listener, start_worker

CALLBACK_CHANNEL = "test_callback"
SUCCESS_CHANNEL = "test_success"
FAILURE_CHANNEL = "test_failure"
CHANNEL_ONLY = "test_followups"
BOTH_CHANNEL = "test_both"

# Short enough for a quick suite, long enough for a loaded 2-core machine to keep up.
TIMINGS = {
    "WORKER_CALLBACK_TIMEOUT": "1500",
    "MAX_ATTEMPTS": "3",
    "BACKOFF_DELAY": "1s",
    "BACKOFF_MAX": "5s",
    "WEBHOOK_TIMEOUT": "1s",
    "PAYLOAD_MAX_BYTES": "4096",
}


@dataclass
class System:
    """A running followup on a private Redis: what the end-to-end tests drive."""

    redis: redis.Redis
    url: str
    env: dict[str, str]
    receiver: Receiver
    events: Events
    listener: FollowupProcess
    worker: FollowupProcess
    log_dir: Path

    def expire(self, key: str, value: str = "1", ttl_ms: int = 50) -> None:
        self.redis.set(key, value, px=ttl_ms)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


def mapping_for(receiver: Receiver, refused_port: int) -> str:
    return ",".join(
        [
            f"t:*={receiver.url('/hook')}",
            f"t:exact={receiver.url('/exact')}",
            f"ch:*=|{CHANNEL_ONLY}",
            f"both:*={receiver.url('/both')}|{BOTH_CHANNEL}",
            f"refused:*=http://127.0.0.1:{refused_port}/nobody-here",
        ]
    )


def base_env(url: str, mapping: str, **overrides: str) -> dict[str, str]:
    channels = {
        "CALLBACK_CHANNEL": CALLBACK_CHANNEL,
        "SUCCESS_CHANNEL": SUCCESS_CHANNEL,
        "FAILURE_CHANNEL": FAILURE_CHANNEL,
    }
    return followup_env(REDIS_URL=url, KEY_WEBHOOK_MAPPING=mapping, **{**channels, **TIMINGS, **overrides})


@pytest.fixture(scope="session")
def system(redis_server: RedisServer, log_dir: Path) -> Iterator[System]:
    url = redis_server.url(0)
    receiver = Receiver(url, CALLBACK_CHANNEL)
    env = base_env(url, mapping_for(receiver, free_port()))
    events = Events(url, SUCCESS_CHANNEL, FAILURE_CHANNEL, CHANNEL_ONLY, BOTH_CHANNEL)
    worker = start_worker(env, log_dir)
    listener = start_listener(env, log_dir)
    yield System(redis.Redis.from_url(url), url, env, receiver, events, listener, worker, log_dir)
    listener.stop()
    worker.stop()
    events.close()
    receiver.stop()
