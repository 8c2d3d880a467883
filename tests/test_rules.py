"""Rules in Redis: atomic changes, order, seeding, and LiveRules following them within a second."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis

from followup.embedded import RedisServer
from followup.errors import ConfigError
from followup.mapping import build_rule, parse_mapping
from followup.rules import CHANGED, ORDER, RULES, VERSION, LiveRules, RuleStore

DB = 11  # no other test file uses it


@pytest.fixture
def url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url(DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture
def store(url: str) -> RuleStore:
    return RuleStore(redis.Redis.from_url(url))


def test_put_get_delete_bump_the_version_and_publish(url: str, store: RuleStore) -> None:
    listener = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(CHANGED)
    listener.get_message(timeout=1)  # the subscribe confirmation
    first = store.put(build_rule("vip:*", "https://h/p", None, "priority"))
    assert first.created and first.version == 1
    again = store.put(build_rule("vip:*", None, "chan", None))
    assert not again.created and again.version == 2
    assert store.get("vip:*") == build_rule("vip:*", None, "chan", None)
    assert store.delete("vip:*") == 3
    assert store.delete("vip:*") is None  # nothing to delete: no version bump, no message
    assert store.get("vip:*") is None
    published = [listener.get_message(timeout=1) for _ in range(3)]
    assert [int(m["data"]) for m in published] == [1, 2, 3]
    assert listener.get_message(timeout=0.2) is None
    listener.close()


def test_order_is_insertion_order_and_a_replaced_rule_keeps_its_place(store: RuleStore) -> None:
    for pattern, channel in [("a*", "first"), ("*", "any"), ("a1", "exact")]:
        store.put(build_rule(pattern, None, channel))
    store.put(build_rule("a*", None, "first-again"))
    rule_set = store.load()
    assert [r.pattern for r in rule_set.rules] == ["a*", "*", "a1"]
    mapping = rule_set.mapping
    assert mapping.match("a1").channel == "exact"  # exact beats every glob
    assert mapping.match("a2").channel == "first-again"  # then globs in the order they were added
    assert mapping.match("b").channel == "any"
    assert rule_set.version == 4


def test_seed_only_when_redis_never_held_rules(store: RuleStore) -> None:
    env = parse_mapping("k=|c,g:*=https://h/p@priority")
    assert store.seed(env.rules) == 3
    assert store.load().rules == env.rules
    assert store.seed(parse_mapping("other=|x").rules) is None  # Redis holds rules: env is ignored
    store.delete("k")
    store.delete("g:*")
    assert store.seed(env.rules) is None  # deleted through the API stays deleted
    assert store.load().rules == ()
    assert store.seed(parse_mapping("other=|x").rules, replace=True)
    assert [r.pattern for r in store.load().rules] == ["other"]


def test_a_stored_rule_that_does_not_parse_is_skipped_not_fatal(url: str, store: RuleStore) -> None:
    store.put(build_rule("good", None, "c"))
    client = redis.Redis.from_url(url)
    client.hset(RULES, "bad", '{"webhook": "ftp://nope/x"}')
    client.zadd(ORDER, {"bad": 99})
    client.hset(RULES, "junk", "not json")
    client.zadd(ORDER, {"junk": 100})
    rule_set = store.load()
    assert [r.pattern for r in rule_set.rules] == ["good"]
    assert len(rule_set.skipped) == 2
    assert "ftp://nope/x" in rule_set.skipped[0]
    with pytest.raises(ConfigError):
        store.get("junk")


def test_live_rules_seed_then_follow_a_change_within_a_second(url: str, store: RuleStore) -> None:
    live = LiveRules(url, parse_mapping("k=|seeded")).start()
    try:
        assert live.version == store.version() > 0
        assert live.mapping.match("k").channel == "seeded"
        started = time.monotonic()
        version = store.put(build_rule("new:*", "https://h/p", None, "priority")).version
        assert live.wait_for_version(version, timeout=1.0), "LiveRules missed the change"
        assert time.monotonic() - started < 1.0
        assert live.mapping.match("new:1").queue == "priority"
        version = store.delete("k")
        assert live.wait_for_version(version, timeout=1.0)
        assert live.mapping.match("k") is None
    finally:
        live.stop()


def test_live_rules_poll_finds_a_change_whose_message_was_missed(url: str, store: RuleStore) -> None:
    live = LiveRules(url, parse_mapping("k=|seeded"), poll_interval=0.2).start()
    try:
        # Written without the script: no message is published, only the version moves.
        client = redis.Redis.from_url(url)
        client.hset(RULES, "quiet", '{"channel": "c"}')
        client.zadd(ORDER, {"quiet": 50})
        version = client.incr(VERSION)
        assert live.wait_for_version(version, timeout=1.0)
        assert live.mapping.match("quiet").channel == "c"
    finally:
        live.stop()


def test_live_rules_survive_redis_going_away_and_keep_the_last_mapping(caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer().start()
    try:
        url = server.url(0)
        live = LiveRules(url, parse_mapping("k=|seeded"), poll_interval=0.1).start()
        RuleStore(redis.Redis.from_url(url)).put(build_rule("k", None, "from-redis"))
        assert live.wait_for_version(2, timeout=1.0)
        with caplog.at_level(logging.WARNING, logger="followup.rules"):
            server.stop()
            deadline = time.monotonic() + 5
            while "following changes failed" not in caplog.text and time.monotonic() < deadline:
                live.wait_for_version(99, timeout=0.1)  # an event that never comes: a bounded wait
            assert "following changes failed" in caplog.text
        assert live.mapping.match("k").channel == "from-redis"  # the last good mapping
        server.start()  # without persistence: the rules are gone, and are seeded again
        assert live.wait_until(lambda m: m.match("k") and m.match("k").channel == "seeded", 10), "not re-seeded"
        RuleStore(redis.Redis.from_url(url)).put(build_rule("k", None, "after-restart"))
        assert live.wait_until(lambda m: m.match("k").channel == "after-restart", 1.0), "LiveRules did not reconnect"
        live.stop()
    finally:
        server.stop()


def test_live_rules_start_without_redis_uses_the_seed(caplog: pytest.LogCaptureFixture) -> None:
    from followup.embedded import free_port

    with caplog.at_level(logging.WARNING, logger="followup.rules"):
        live = LiveRules(f"redis://127.0.0.1:{free_port()}/0", parse_mapping("k=|seeded")).start()
    try:
        assert live.version == -1
        assert live.mapping.match("k").channel == "seeded"
        assert "not readable yet" in caplog.text
    finally:
        live.stop()


def test_check_reports_the_rules_in_force_and_their_queues(url: str, store: RuleStore) -> None:
    from followup.config import load_settings
    from followup.doctor import rule_checks

    settings = load_settings({"REDIS_URL": url, "KEY_WEBHOOK_MAPPING": "k=|c"}.get)
    client = redis.Redis.from_url(url)
    before = [check.line() for check in rule_checks(client, settings)]
    assert before == ["ok    rules: none in Redis yet: the first process to start seeds KEY_WEBHOOK_MAPPING's"]
    store.seed(settings.mapping.rules)
    store.put(build_rule("vip:*", None, "c", "priority"))
    after = [check.line() for check in rule_checks(client, settings)]
    assert after[0].startswith("ok    rules: 2 in Redis (version")
    assert after[1] == "ok    queues: rules also use priority: each needs `followup worker --queues NAME`"
