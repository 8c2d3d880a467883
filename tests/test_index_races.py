"""The index's scripts under the interleavings that lose or double a follow-up, on a real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from followup.config import load_settings
from followup.connections import redis_client
from followup.embedded import RedisServer
from followup.index import DUE, FIRING, LIMBO, ScheduleIndex, parse_claims
from followup.listener import Listener
from followup.notifications import NotificationsOff
from tests.harness import wait_until


@pytest.fixture
def index(redis_server: RedisServer) -> Iterator[tuple[redis.Redis, ScheduleIndex]]:
    client = redis_client(redis_server.url(7))
    client.flushdb()
    yield client, ScheduleIndex(client, 4096)
    client.flushdb()


def expire_now(client: redis.Redis, key: str) -> None:
    wait_until(lambda: client.exists(key) == 0, 5, f"{key} to expire")  # an access expires it


def fire(idx: ScheduleIndex) -> list:
    """What the timer fires now: claimed by its touch, or (if Redis's own expiry was first) on the
    key's expired event, which claim_due.lua handles the same way."""
    result = idx.fire_due(100)
    return result.claimed + parse_claims(idx.claim(result.gone, unknown_too=True))


def test_a_key_reset_right_after_its_deadline_still_fires_its_old_deadline(index) -> None:
    client, idx = index
    client.set("k", "first", px=50)
    [first_deadline] = idx.index(["k"])
    time.sleep(0.06)
    expire_now(client, "k")  # Redis expired it: its expired event is on its way, unread
    client.set("k", "second", px=5000)  # and the flow wrote the key again at once
    result = idx.fire_due(100)
    assert result.moved == ["k"] and result.claimed == []  # undecided: in limbo, not re-indexed
    # The expired event, read now, claims the old deadline; then the set event indexes the new one.
    [claim] = parse_claims(idx.claim(["k"], unknown_too=True))
    assert (claim.deadline, claim.tagged) == (first_deadline, b"vfirst")
    [second_deadline] = idx.index(["k"])
    assert second_deadline > first_deadline and client.zscore(DUE, "k") == second_deadline
    assert client.zcard(LIMBO) == 0


def test_a_ttl_moved_before_the_deadline_does_not_fire_early(index) -> None:
    client, idx = index
    client.set("m", "v", px=50)
    idx.index(["m"])
    client.pexpire("m", 5000)  # the timer restarts; its expire event is still unread
    time.sleep(0.06)
    result = idx.fire_due(100)
    assert result.moved == ["m"] and result.claimed == []
    idx.index(["m"])  # the expire event, read now
    assert parse_claims(idx.claim(["m"], unknown_too=False)) == []
    assert client.zscore(DUE, "m") > time.time() * 1000 + 4000


def test_an_expired_event_read_long_after_the_timer_claimed_the_key_is_not_a_second_job(index) -> None:
    client, idx = index
    client.set("late", "v", px=30)
    idx.index(["late"])
    time.sleep(0.05)
    assert [c.key for c in fire(idx)] == ["late"]
    # Its expired event is handled much later (a slow listener, a second listener behind):
    client.zadd("_followup:fired", {"late": time.time() * 1000 - 60_000}, xx=True)  # a minute later
    assert parse_claims(idx.claim(["late"], unknown_too=True)) == []


def test_a_new_life_of_a_claimed_key_fires_again(index) -> None:
    client, idx = index
    client.set("again", "1", px=30)
    idx.index(["again"])
    time.sleep(0.05)
    [first] = fire(idx)
    client.set("again", "2", px=30)
    idx.index(["again"])  # a new life: it leaves the recently-fired set
    time.sleep(0.05)
    [second] = fire(idx)
    assert second.deadline > first.deadline and second.tagged == b"v2"


def test_outbox_claims_are_taken_over_by_one_listener_only(index) -> None:
    client, idx = index
    client.hset(FIRING, "1000:abandoned", f"{int(time.time() * 1000) - 60_000}:vx")
    client.hset(FIRING, "2000:in-flight", f"{int(time.time() * 1000)}:vy")
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(idx.reclaim_firing(10_000))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = [claim for claims, _ in results for claim in claims]
    assert [(c.key, c.deadline) for c in taken] == [("abandoned", 1000)]
    assert all(oldest is not None for _, oldest in results)


def test_an_empty_key_name_neither_crashes_the_timer_nor_fires(index) -> None:
    client, idx = index
    client.set("", "v", px=30)
    idx.index([""])
    time.sleep(0.05)
    assert [c.key for c in fire(idx)] == [""]  # the scripts cope; the listener ignores such keys
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0", "KEY_WEBHOOK_MAPPING": "*=|c"}.get)
    assert Listener(settings)._mapped_key(b"") is None


def test_managed_redis_without_the_index_flags_is_refused(log_dir) -> None:
    server = RedisServer(args=("--notify-keyspace-events", "Ex", "--rename-command", "CONFIG", "")).start()
    try:
        settings = load_settings({"REDIS_URL": server.url(), "KEY_WEBHOOK_MAPPING": "t:*=|c"}.get)
        listener = Listener(settings)
        with pytest.raises(NotificationsOff, match=r"'\$g' are off.*'Eg\$xe'"):
            listener.run(threading.Event())
    finally:
        server.stop()


def test_managed_redis_with_the_flags_set_is_accepted(log_dir) -> None:
    server = RedisServer(args=("--notify-keyspace-events", "Eg$xe", "--rename-command", "CONFIG", "")).start()
    try:
        settings = load_settings({"REDIS_URL": server.url(), "KEY_WEBHOOK_MAPPING": "t:*=|c"}.get)
        listener = Listener(settings)
        stop = threading.Event()
        thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
        thread.start()
        wait_until(lambda: listener.health()[0], 10, "the listener to start on a managed Redis")
        stop.set()
        thread.join(5)
    finally:
        server.stop()
