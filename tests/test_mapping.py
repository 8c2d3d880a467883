"""KEY_WEBHOOK_MAPPING: the Node tool's syntax, exact-before-glob matching, safe descriptions."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from followup.durations import parse_duration
from followup.errors import ConfigError
from followup.mapping import VARIABLE, Rule, parse_mapping

# --- the Node syntax, unchanged ---------------------------------------------------------------


def test_node_readme_example():
    mapping = parse_mapping("key01=https://a.example/x,key02=|myChannel")
    assert mapping.rules == (
        Rule(pattern="key01", webhook_url="https://a.example/x", channel=None),
        Rule(pattern="key02", webhook_url=None, channel="myChannel"),
    )
    assert mapping.match("key01").webhook_url == "https://a.example/x"
    assert mapping.match("key02").channel == "myChannel"
    assert mapping.match("key03") is None


def test_webhook_and_channel():
    (rule,) = parse_mapping("k=https://h/p|chan").rules
    assert rule == Rule(pattern="k", webhook_url="https://h/p", channel="chan")


def test_http_and_port_and_ip():
    rules = parse_mapping("a=http://10.0.0.5:5678/webhook/abc,b=https://n8n.local:443/webhook-test/x").rules
    assert [r.webhook_url for r in rules] == [
        "http://10.0.0.5:5678/webhook/abc",
        "https://n8n.local:443/webhook-test/x",
    ]


def test_trailing_comma_and_empty_entries_are_ignored():
    assert [r.pattern for r in parse_mapping("a=|x,").rules] == ["a"]
    assert [r.pattern for r in parse_mapping("a=|x,,b=|y, ,").rules] == ["a", "b"]


def test_whitespace_is_trimmed():
    rules = parse_mapping("  key01 = https://a.example/x ,\n key02= | myChannel ,k = https://h/p | chan ").rules
    assert rules == (
        Rule(pattern="key01", webhook_url="https://a.example/x", channel=None),
        Rule(pattern="key02", webhook_url=None, channel="myChannel"),
        Rule(pattern="k", webhook_url="https://h/p", channel="chan"),
    )


def test_url_query_with_equals_signs():
    (rule,) = parse_mapping("k=https://h.example/hook?token=abc==&x=1").rules
    assert rule.pattern == "k"
    assert rule.webhook_url == "https://h.example/hook?token=abc==&x=1"
    (rule,) = parse_mapping("k=https://h.example/hook?a=b|chan").rules
    assert (rule.webhook_url, rule.channel) == ("https://h.example/hook?a=b", "chan")


def test_keys_with_colons_and_dots():
    mapping = parse_mapping("followup:contact.42=|c")
    assert mapping.match("followup:contact.42").channel == "c"


# --- matching ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "followup:*=|glob,followup:vip=|exact",
        "followup:vip=|exact,followup:*=|glob",
        "*=|any,followup:v?p=|q,followup:vip=|exact",
    ],
)
def test_exact_beats_glob_regardless_of_order(text):
    mapping = parse_mapping(text)
    assert mapping.match("followup:vip").channel == "exact"
    assert mapping.match("followup:other").channel in ("glob", "any")


def test_globs_in_written_order():
    mapping = parse_mapping("followup:a*=|first,followup:*=|second,*=|third")
    assert mapping.match("followup:abc").channel == "first"
    assert mapping.match("followup:xyz").channel == "second"
    assert mapping.match("other").channel == "third"
    reversed_order = parse_mapping("*=|third,followup:*=|second,followup:a*=|first")
    assert reversed_order.match("followup:abc").channel == "third"


def test_question_mark_glob():
    mapping = parse_mapping("key?=|one")
    assert mapping.match("key1").channel == "one"
    assert mapping.match("keyX").channel == "one"
    assert mapping.match("key") is None
    assert mapping.match("key12") is None


def test_bracket_glob():
    mapping = parse_mapping("key[abc]=|set,k[0-9]=|range,n[!0-9]=|negated")
    assert mapping.match("keya").channel == "set"
    assert mapping.match("keyc").channel == "set"
    assert mapping.match("keyd") is None
    assert mapping.match("k7").channel == "range"
    assert mapping.match("kx") is None
    assert mapping.match("nx").channel == "negated"
    assert mapping.match("n1") is None


def test_glob_matches_the_whole_key():
    mapping = parse_mapping("followup:*=|c")
    assert mapping.match("followup:") is not None
    assert mapping.match("followup:a:b\nc") is not None
    assert mapping.match("xfollowup:a") is None
    assert mapping.match("FOLLOWUP:a") is None  # keys are case-sensitive


def test_glob_star_does_not_match_literal_pattern_text_only():
    mapping = parse_mapping("a.b*=|c")
    assert mapping.match("a.bxyz") is not None
    assert mapping.match("aXbxyz") is None  # '.' is literal, not a regex wildcard


def test_rule_is_glob():
    assert Rule("a*", None, "c").is_glob
    assert Rule("a?", None, "c").is_glob
    assert Rule("a[bc]", None, "c").is_glob
    assert not Rule("a:b.c", None, "c").is_glob


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("", "no rules"),
        (" , ,", "no rules"),
        ("key01", "key01"),
        ("=|c", "rule 1"),
        ("key=", "rule 1"),
        ("key=|", "rule 1"),
        ("key= | ", "rule 1"),
        ("a=|c,key=https://h/x|", "rule 2"),
        ("k=ftp://h/x", "ftp://h/x"),
        ("k=h.example/x", "h.example/x"),
        ("k=https:///x", "rule 1"),
        ("k=https://h:99999/x", "rule 1"),
        ("k=https://[::1/x", "rule 1"),
        ("a=|c,b=|d,a=https://h/x", "rule 3"),
        ("k[ab=|c", "rule 1"),
    ],
)
def test_bad_mapping(text, shown):
    with pytest.raises(ConfigError) as caught:
        parse_mapping(text)
    assert caught.value.variable == VARIABLE
    assert shown in caught.value.bad


def test_duplicate_names_first_rule():
    with pytest.raises(ConfigError) as caught:
        parse_mapping("a=|c,b=|d,a=https://h/x")
    assert "rule 1" in caught.value.expected


def test_bad_url_error_masks_credentials():
    with pytest.raises(ConfigError) as caught:
        parse_mapping("k=ftp://user:hunter22@h/x")
    assert "hunter22" not in str(caught.value)


# --- describe() -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "described"),
    [
        ("k=https://h.example", "k=https://h.example"),
        ("k=https://h.example/", "k=https://h.example"),
        ("k=https://h.example/webhook/SECRETPATH", "k=https://h.example/…"),
        ("k=https://h.example:8443/webhook/SECRETPATH?token=SECRETQ", "k=https://h.example:8443/…"),
        ("k=https://user:SECRETPW@h.example/x|chan", "k=https://h.example/…|chan"),
        ("k=https://h.example?token=SECRETQ", "k=https://h.example"),
        ("k=https://h.example/#SECRETFRAG", "k=https://h.example"),
        ("k=|chan", "k=|chan"),
        ("followup:*=http://n8n:5678/webhook/SECRETPATH", "followup:*=http://n8n:5678/…"),
    ],
)
def test_describe_never_shows_path_query_or_credentials(text, described):
    (rule,) = parse_mapping(text).rules
    assert rule.describe() == described
    assert "SECRET" not in rule.describe()
    assert "user" not in rule.describe()


# --- properties -------------------------------------------------------------------------------

# Text made mostly of the characters that mean something in a mapping, so that the examples reach
# deep into the parser rather than failing on the first character.
MAPPING_PIECES = st.sampled_from(
    [*"ab:=|,*?[]!-/@ .\t\n%#\\^$(){}\x00é", "http://", "https://h", "https://h.example/p?q=1", "[z-a]", "[!]", ":99"]
)
MAPPING_TEXT = st.one_of(st.text(), st.lists(MAPPING_PIECES, max_size=25).map("".join))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MAPPING_TEXT, st.text(max_size=20))
def test_parse_mapping_returns_mapping_or_config_error(text, key):
    try:
        mapping = parse_mapping(text)
    except ConfigError as error:
        assert error.variable == VARIABLE
        assert "\n" not in error.bad
        return
    assert mapping.rules
    for rule in mapping.rules:
        assert rule.webhook_url or rule.channel
        assert rule.pattern == rule.pattern.strip()
        assert isinstance(rule.describe(), str)
        if not rule.is_glob:
            assert mapping.match(rule.pattern) is rule
    found = mapping.match(key)
    assert found is None or found in mapping.rules


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text("abcxyz019:._-", min_size=1, max_size=12), min_size=1, max_size=8, unique=True))
def test_every_exact_rule_matches_itself(keys):
    mapping = parse_mapping(",".join(f"{key}=|ch{n}" for n, key in enumerate(keys)))
    for n, key in enumerate(keys):
        assert mapping.match(key).channel == f"ch{n}"


DURATION_PIECES = st.sampled_from(
    [*"0123456789.-+ eE_", "ms", "s", "m", "h", "d", "MS", "\u0661", "\xa0", "inf", "nan"]
)
DURATION_TEXT = st.one_of(st.text(), st.lists(DURATION_PIECES, max_size=10).map("".join))


@settings(max_examples=500, deadline=None)
@given(DURATION_TEXT)
def test_parse_duration_returns_seconds_or_config_error(text):
    try:
        seconds = parse_duration(text, "X")
    except ConfigError as error:
        assert error.variable == "X"
        return
    assert isinstance(seconds, float)
    assert seconds >= 0
    assert math.isfinite(seconds)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=87_600), st.sampled_from(["ms", "s", "m", "h", ""]))
def test_parse_duration_units(number, unit):
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 0.001}[unit]
    assert parse_duration(f"{number}{unit}", "X") == pytest.approx(number * factor)


def test_a_url_the_parser_rejects_never_shows_its_credentials_in_the_error() -> None:
    # urlsplit's own message quotes the netloc (an NFKC look-alike "＃" makes it raise).
    with pytest.raises(ConfigError) as raised:
        parse_mapping("k=https://user:tok\uff03en-SECRET@hooks.example/x")
    assert "SECRET" not in str(raised.value) and "user:" not in str(raised.value), str(raised.value)
