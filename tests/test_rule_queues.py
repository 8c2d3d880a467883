"""A rule may name its Celery queue: `KEY=TARGET@QUEUE`, never confused with URL credentials."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from followup.errors import ConfigError
from followup.mapping import VARIABLE, Rule, build_rule, parse_mapping, parse_rule
from tests.test_mapping import MAPPING_TEXT


@pytest.mark.parametrize(
    ("text", "url", "channel", "queue"),
    [
        ("vip:*=https://host/path@priority", "https://host/path", None, "priority"),
        ("k=|channel@priority", None, "channel", "priority"),
        ("k=https://h/p|chan@priority", "https://h/p", "chan", "priority"),
        ("k=https://h/p @ priority", "https://h/p", None, "priority"),
        ("k=https://h/p@q.v-2_x", "https://h/p", None, "q.v-2_x"),
        ("k=https://h?token=1@fast", "https://h?token=1", None, "fast"),
        ("k=https://h/#frag@fast", "https://h/#frag", None, "fast"),
        # credentials are not a queue: the authority has not ended before the '@'
        ("k=https://user:pass@host", "https://user:pass@host", None, None),
        ("k=https://user:pass@host/path", "https://user:pass@host/path", None, None),
        ("k=https://user:pass@host/path@prio", "https://user:pass@host/path", None, "prio"),
        ("k=https://user@host:8443/p|chan", "https://user@host:8443/p", "chan", None),
        ("k=https://user:pass@host|chan@prio", "https://user:pass@host", "chan", "prio"),
        # an '@' followed by what cannot be a queue name stays where it is
        ("k=https://h/p?mail=a%40b.example", "https://h/p?mail=a%40b.example", None, None),
        ("k=https://h/p/@me/x", "https://h/p/@me/x", None, None),
    ],
)
def test_queue_is_the_trailing_name_after_a_complete_target(text, url, channel, queue):
    (rule,) = parse_mapping(text).rules
    assert (rule.webhook_url, rule.channel, rule.queue) == (url, channel, queue)


def test_a_rule_without_queue_is_unchanged():
    assert parse_rule("k=https://h/p|c") == Rule("k", "https://h/p", "c")
    assert Rule("k", None, "c").queue is None


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("k=|chan@", "rule 1"),
        ("k=https://h/p@", "rule 1"),
        ("k=@prio", "rule 1"),
        ("k=|@prio", "rule 1"),
    ],
)
def test_bad_queue_parts_are_named(text, shown):
    with pytest.raises(ConfigError) as caught:
        parse_mapping(text)
    assert caught.value.variable == VARIABLE
    assert shown in caught.value.bad


@pytest.mark.parametrize(
    ("parts", "bad", "expected"),
    [
        (("k", "https://h/p", None, "bad queue"), "queue 'bad queue'", "queue name"),
        (("k", "ftp://h/p", None, None), "ftp://h/p", "http"),
        (("k", None, None, None), "rule 'k'", "webhook URL"),
        (("k", None, "a|b", None), "channel 'a|b'", "channel name"),
        (("k", None, "a@b", None), "channel 'a@b'", "channel name"),
        (("k=x", None, "c", None), "rule 'k=x'", "'='"),
        (("a,b", None, "c", None), "rule 'a,b'", "','"),
        ((" k", None, "c", None), "rule ' k'", "spaces"),
        (("k[", None, "c", None), "rule 'k['", "balanced"),
        (("k", "https://h/p?mail=a@b.example", None, None), "rule 'k'", "%40"),
    ],
)
def test_build_rule_names_the_bad_part(parts, bad, expected):
    with pytest.raises(ConfigError) as caught:
        build_rule(*parts)
    assert bad in caught.value.bad
    assert expected in caught.value.expected


def test_target_of_a_url_without_path_keeps_the_queue_apart_from_credentials():
    rule = build_rule("k", "https://host", None, "prio")
    assert rule.target() == "https://host/@prio"
    again = parse_rule(f"k={rule.target()}")
    assert (again.webhook_url, again.queue) == ("https://host/", "prio")


def test_describe_shows_the_queue_but_not_the_path():
    (rule,) = parse_mapping("k=https://user:SECRET@h.example/SECRETPATH@prio").rules
    assert rule.describe() == "k=https://h.example/…@prio"


def test_queue_rules_keep_exact_before_glob_precedence():
    mapping = parse_mapping("vip:*=https://h/p@priority,vip:1=|c")
    assert mapping.match("vip:1").queue is None
    assert mapping.match("vip:2").queue == "priority"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MAPPING_TEXT)
def test_every_parsed_rule_is_written_back_as_itself(text):
    try:
        mapping = parse_mapping(text)
    except ConfigError:
        return
    for rule in mapping.rules:
        assert parse_rule(f"{rule.pattern}={rule.target()}") == rule


QUEUE = st.text("abcXYZ019_.-", min_size=1, max_size=8)
URL = st.sampled_from(
    ["https://h/p", "https://u:p@h/p", "http://h:80/a/b?c=d", "https://h?x=1", "https://h", "https://u@h"]
)


@settings(max_examples=200, deadline=None)
@given(URL, st.one_of(st.none(), st.text("abc_:", min_size=1, max_size=5)), st.one_of(st.none(), QUEUE))
def test_rules_built_from_parts_round_trip_through_text(url, channel, queue):
    rule = build_rule("k", url, channel, queue)
    again = parse_rule(f"k={rule.target()}")
    assert (again.channel, again.queue) == (channel, queue)
    assert again.webhook_url.rstrip("/") == url.rstrip("/")
