"""The schedule index: nothing lost, nothing twice, nothing early, payloads carried."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import followup
from followup.embedded import RedisServer
from followup.feeder import LEASE_CARE_EVERY
from followup.index import DUE, LIMBO, VALUES, job_id
from followup.ready import LEASE_MS
from tests.conftest import CALLBACK_CHANNEL, SUCCESS_CHANNEL, System, base_env
from tests.harness import Events, Receiver, Reply, start_listener, start_worker, wait_until
from tests.test_end_to_end import run_cli, unique


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def indexed(client: redis.Redis, count: int) -> None:
    wait_until(lambda: client.zcard(DUE) >= count, 15, f"{count} keys in the schedule index")


# On the shared system --------------------------------------------------------------------------


def test_payload_round_trip_json_text_and_oversize(system: System) -> None:
    values = {
        unique("t:json-"): ('{"contact": {"id": 7}, "tags": ["a", "b"]}', {"contact": {"id": 7}, "tags": ["a", "b"]}),
        unique("t:text-"): ("call Ana back", "call Ana back"),
        unique("t:big-"): ("x" * 5000, None),  # over PAYLOAD_MAX_BYTES=4096
    }
    for key, (value, _) in values.items():
        system.receiver.plan(key, Reply(callback="success"))
        system.expire(key, value=value, ttl_ms=300)
    for key, (_, expected) in values.items():
        [call] = system.receiver.wait_calls(key, 1)
        assert call.body["payload"] == expected
        if expected is None:
            assert "over PAYLOAD_MAX_BYTES (4096)" in call.body["payloadError"]
        else:
            assert "payloadError" not in call.body


def test_non_string_value_is_not_carried_and_says_why(system: System) -> None:
    key = unique("t:hash-")
    system.receiver.plan(key, Reply(callback="success"))
    system.redis.hset(key, mapping={"a": "1"})
    system.redis.pexpire(key, 300)
    [call] = system.receiver.wait_calls(key, 1)
    assert call.body["payload"] is None
    assert call.body["payloadError"] == "the value is a hash; only string values are carried"


def test_n8n_set_then_expire_carries_the_value(system: System) -> None:
    key = unique("t:n8n-")
    system.receiver.plan(key, Reply(callback="success"))
    system.redis.set(key, '{"from": "n8n"}')  # n8n's Redis node: SET, then EXPIRE
    system.redis.pexpire(key, 300)
    [call] = system.receiver.wait_calls(key, 1)
    assert call.body["payload"] == {"from": "n8n"}


def test_jobid_is_derived_from_key_and_deadline(system: System) -> None:
    key = unique("t:jobid-")
    system.receiver.plan(key, Reply(callback="success"))
    system.expire(key, ttl_ms=300)
    [call] = system.receiver.wait_calls(key, 1)
    assert call.body["jobId"] == job_id(key, call.body["expiredAt"])


def test_reset_with_a_longer_ttl_fires_once_at_the_new_deadline(system: System) -> None:
    key = unique("t:reset-")
    system.receiver.plan(key, Reply(callback="success"))
    system.redis.set(key, "first", px=600)
    time.sleep(0.2)  # the contact answers 200 ms later: the timer restarts
    system.redis.set(key, "second", px=1200)
    new_deadline = time.time() + 1.2
    [call] = system.receiver.wait_calls(key, 1)
    assert call.at >= new_deadline - 0.005, f"fired {new_deadline - call.at:.3f}s before the new deadline"
    assert call.body["payload"] == "second"
    system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
    assert len(system.receiver.calls(key)) == 1


REMOVALS = {
    "del": lambda client, key: client.delete(key),
    "unlink": lambda client, key: client.unlink(key),
    "persist": lambda client, key: client.persist(key),
    "getex persist": lambda client, key: client.getex(key, persist=True),
    "followup.cancel": lambda client, key: followup.cancel(key, client=client),
}


def test_an_indexed_key_deleted_or_persisted_never_fires(system: System) -> None:
    keys = {how: unique(f"t:{how.replace(' ', '-').replace('.', '-')}-") for how in REMOVALS}
    for key in keys.values():
        system.redis.set(key, "1", px=2000)  # time to see each indexed, then removed, on a loaded machine
    for key in keys.values():  # each entry really exists before its key is removed
        wait_until(lambda key=key: system.redis.zscore(DUE, key) is not None, 10, f"{key} to be indexed")
    for how, key in keys.items():
        REMOVALS[how](system.redis, key)
    for key in keys.values():  # out of every part of the index: nothing is left that could fire it
        wait_until(
            lambda key=key: (
                not any(
                    (system.redis.zscore(DUE, key), system.redis.zscore(LIMBO, key), system.redis.hexists(VALUES, key))
                )
            ),
            10,
            f"{key} to leave the index",
        )
    marker = unique("t:after-removals-")
    system.receiver.plan(marker, Reply(callback="success"))
    system.expire(marker, ttl_ms=2300)  # due after the removed keys' old deadlines
    system.receiver.wait_calls(marker, 1)
    assert {how: system.receiver.calls(key) for how, key in keys.items()} == {how: [] for how in keys}
    system.redis.delete(*keys.values())  # the persisted ones


@pytest.mark.parametrize("how", ["getex", "pexpire", "expire moves it later"])
def test_a_ttl_set_by_other_commands_fires_once_not_before_its_deadline(system: System, how: str) -> None:
    key = unique(f"t:{how.replace(' ', '-')}-")
    system.receiver.plan(key, Reply(callback="success"))
    if how == "getex":
        system.redis.set(key, '{"v": 1}')
        system.redis.getex(key, px=400)
    elif how == "pexpire":
        system.redis.set(key, '{"v": 1}')
        system.redis.pexpire(key, 400)
    else:  # the contact answered: the timer restarts by EXPIRE, not by SET
        system.redis.set(key, '{"v": 1}', px=1500)
        wait_until(lambda: system.redis.zscore(DUE, key) is not None, 10, f"{key} to be indexed")
        assert system.redis.pexpire(key, 2500), f"{key} expired before its TTL could be moved"
    deadline = time.time() + system.redis.pttl(key) / 1000
    [call] = system.receiver.wait_calls(key, 1)
    assert call.body["payload"] == {"v": 1}
    assert call.at >= deadline - 0.01, f"fired {deadline - call.at:.3f}s before its deadline"
    system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
    assert len(system.receiver.calls(key)) == 1


def test_cancel_and_pending_commands(system: System) -> None:
    kept, cancelled = unique("t:kept-"), unique("t:cancel-")
    run_cli(system, "schedule", kept, "--in", "1h")
    run_cli(system, "schedule", cancelled, "--in", "1h")
    listing = run_cli(system, "pending", "--limit", "1000").stdout
    assert kept in listing and cancelled in listing and "t:*=http://127.0.0.1" in listing
    assert "cancelled" in run_cli(system, "cancel", cancelled).stdout
    listing = run_cli(system, "pending", "--limit", "1000").stdout
    assert kept in listing and cancelled not in listing
    assert "nothing scheduled" in run_cli(system, "cancel", cancelled).stdout
    followup.cancel(kept, client=system.redis)


def test_python_api_schedules_with_payload(system: System) -> None:
    key = unique("t:api-")
    system.receiver.plan(key, Reply(callback="success"))
    deadline = followup.schedule(key, 0.3, {"contact": 42}, client=system.redis)
    [call] = system.receiver.wait_calls(key, 1)
    assert call.body["payload"] == {"contact": 42}
    assert call.body["expiredAt"] == deadline
    assert call.at * 1000 >= deadline - 5


# On private systems (they kill and restart things) ---------------------------------------------


def test_two_listeners_fire_each_of_500_expirations_once(private_redis: RedisServer, log_dir: Path) -> None:
    url = private_redis.url()
    receiver = Receiver(url, CALLBACK_CHANNEL)
    receiver.default_reply = Reply(callback="success")
    env = base_env(url, f"two:*={receiver.url('/two')}")
    events = Events(url, SUCCESS_CHANNEL)
    worker = start_worker(env, log_dir, name="two-worker", concurrency=200)
    listeners = [start_listener(env, log_dir, name=f"two-listener-{n}") for n in (1, 2)]
    try:
        client = redis.Redis.from_url(url)
        keys = [f"two:{n}" for n in range(500)]
        pipe = client.pipeline()
        for n, key in enumerate(keys):
            pipe.set(key, str(n), px=1000 + n * 2)  # due over one second
        pipe.execute()
        wait_until(lambda: len(events.matching(SUCCESS_CHANNEL)) >= 500, 60, "500 success events")
        calls = Counter(r.body["key"] for r in receiver.requests)
        assert set(calls) == set(keys)
        assert [key for key, n in calls.items() if n > 1] == []
        job_ids = [r.body["jobId"] for r in receiver.requests]
        assert len(job_ids) == len(set(job_ids)) == 500
        assert all(r.body["payload"] == int(r.body["key"].split(":")[1]) for r in receiver.requests)
        assert len(events.matching(SUCCESS_CHANNEL)) == 500
    finally:
        for listener in listeners:
            listener.stop()
        worker.stop()
        events.close()
        receiver.stop()


def test_expirations_while_the_listener_is_dead_fire_once_when_it_is_back(
    private_redis: RedisServer, log_dir: Path
) -> None:
    url = private_redis.url()
    receiver = Receiver(url, CALLBACK_CHANNEL)
    receiver.default_reply = Reply(callback="success")
    env = base_env(url, f"down:*={receiver.url('/down')}")
    events = Events(url, SUCCESS_CHANNEL)
    worker = start_worker(env, log_dir, name="down-worker", concurrency=200)
    listener = start_listener(env, log_dir, name="down-listener")
    client = redis.Redis.from_url(url)
    try:
        keys = [f"down:{n}" for n in range(200)]
        pipe = client.pipeline()
        for key in keys:
            pipe.set(key, key, px=1500)
        pipe.execute()
        indexed(client, 200)
        listener.kill()
        # Written and expired entirely while no listener runs: only followup.schedule() can promise it.
        followup.schedule("down:via-api", 0.2, {"while": "down"}, client=client)
        wait_until(lambda: client.exists(*keys, "down:via-api") == 0, 15, "every key to expire")
        assert receiver.requests == []
        listener = start_listener(env, log_dir, name="down-listener")
        wait_until(lambda: len(events.matching(SUCCESS_CHANNEL)) >= 201, 60, "201 success events")
        calls = Counter(r.body["key"] for r in receiver.requests)
        assert set(calls) == {*keys, "down:via-api"}
        assert [key for key, n in calls.items() if n > 1] == []
        assert receiver.calls("down:via-api")[0].body["payload"] == {"while": "down"}
        assert "came due while no listener ran" in listener.output()
    finally:
        listener.stop()
        worker.stop()
        events.close()
        receiver.stop()


def test_redis_restart_with_persistence_fires_what_came_due_once(log_dir: Path) -> None:
    server = RedisServer(args=("--appendonly", "yes", "--appendfsync", "always")).start()
    url = server.url()
    receiver = Receiver(url, CALLBACK_CHANNEL)
    receiver.default_reply = Reply(callback="success")
    env = base_env(url, f"persist:*={receiver.url('/persist')}")
    worker = start_worker(env, log_dir, name="persist-worker")
    listener = start_listener(env, log_dir, name="persist-listener")
    try:
        client = redis.Redis.from_url(url)
        keys = [f"persist:{n}" for n in range(20)]
        for key in keys:
            client.set(key, key, px=1500)
        indexed(client, 20)
        server.stop()
        time.sleep(2.0)  # the keys come due while Redis is down
        server.start()
        wait_until(lambda: listener.output().count("listening on") >= 2, 30, "the listener to reconnect")
        wait_until(lambda: {r.body["key"] for r in receiver.requests} >= set(keys), 30, "the 20 overdue follow-ups")
        after = unique("persist:after-")
        client.set(after, "1", px=200)
        receiver.wait_calls(after, 1, timeout=30)
        calls = Counter(r.body["key"] for r in receiver.requests)
        assert [key for key, n in calls.items() if n > 1] == []
        assert worker.proc.poll() is None
    finally:
        listener.stop()
        worker.stop()
        receiver.stop()
        server.stop()


def test_worker_killed_while_50_jobs_wait_loses_none(private_redis: RedisServer, log_dir: Path) -> None:
    url = private_redis.url()
    receiver = Receiver(url, CALLBACK_CHANNEL)
    env = base_env(url, f"wait:*={receiver.url('/wait')}", BROKER_VISIBILITY_TIMEOUT="7s")
    events = Events(url, SUCCESS_CHANNEL)
    doomed = start_worker(env, log_dir, name="fifty-doomed", concurrency=100)
    listener = start_listener(env, log_dir, name="fifty-listener")
    rescue = None
    try:
        client = redis.Redis.from_url(url)
        keys = [f"wait:{uuid.uuid4().hex[:8]}" for _ in range(50)]
        for key in keys:
            receiver.plan(key, Reply(), Reply(callback="success"))  # the first call is never confirmed
        for key in keys:
            client.set(key, "1", px=100)
        wait_until(lambda: len({r.body["key"] for r in receiver.requests}) == 50, 15, "50 jobs to be waiting")
        doomed.kill()
        rescue = start_worker(env, log_dir, name="fifty-rescue", concurrency=100)
        wait_until(lambda: len(events.matching(SUCCESS_CHANNEL)) >= 50, 45, "50 success events")
        for key in keys:
            first, second = receiver.calls(key)
            assert first.body["jobId"] == second.body["jobId"]
            assert second.body["attempt"] == 1, "the interrupted attempt runs again, it is not used up"
            # Back once its lease has run out, put back by the rescuer's next look at the leases.
            lease = LEASE_MS / 1000
            assert lease <= second.at - first.at < lease + LEASE_CARE_EVERY + 5.0, second.at - first.at
        assert len(events.matching(SUCCESS_CHANNEL)) == 50
    finally:
        listener.stop()
        if rescue:
            rescue.stop()
        events.close()
        receiver.stop()


def test_keys_written_while_no_listener_ran_are_found_by_the_start_up_scan(
    private_redis: RedisServer, log_dir: Path
) -> None:
    url = private_redis.url()
    receiver = Receiver(url, CALLBACK_CHANNEL)
    receiver.default_reply = Reply(callback="success")
    env = base_env(url, f"scan:*={receiver.url('/scan')}")
    client = redis.Redis.from_url(url)
    keys = [f"scan:{n}" for n in range(100)]
    pipe = client.pipeline()
    for n, key in enumerate(keys):
        pipe.set(key, f'{{"n": {n}}}', px=4000)  # by another tool, while no listener runs
    pipe.execute()
    listener = start_listener(env, log_dir, name="scan-listener")  # first: it must see them still there
    worker = start_worker(env, log_dir, name="scan-worker")
    try:
        indexed(client, len(keys))
        wait_until(lambda: len(receiver.requests) >= len(keys), 30, f"{len(keys)} webhooks")
        calls = Counter(request.body["key"] for request in receiver.requests)
        assert set(calls) == set(keys) and max(calls.values()) == 1
        assert all(r.body["payload"] == {"n": int(r.body["key"].split(":")[1])} for r in receiver.requests)
    finally:
        listener.stop()
        worker.stop()
        receiver.stop()


def test_the_listener_adds_its_notify_flags_to_those_already_set(log_dir: Path) -> None:
    server = RedisServer(args=("--notify-keyspace-events", "Khl")).start()
    try:
        listener = start_listener(base_env(server.url(), "t:*=|c"), log_dir, name="flags-listener")
        listener.stop()
        flags = redis.Redis.from_url(server.url()).config_get("notify-keyspace-events")["notify-keyspace-events"]
        assert set("Khl") | set("Eg$xe") <= set(flags), flags
    finally:
        server.stop()
