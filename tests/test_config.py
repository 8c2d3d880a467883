"""followup.config.load_settings: defaults, aliases, units, derived values and every rejection."""

from __future__ import annotations

import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from followup.backoff import retry_delay
from followup.config import VISIBILITY_MARGIN, load_settings
from followup.durations import parse_duration
from followup.errors import ConfigError
from followup.redaction import SecretFilter

MAPPING = "key01=https://a.example/x"


def lookup(**variables: str):
    """A lookup over exactly these variables (plus a valid mapping unless one is given)."""
    variables.setdefault("KEY_WEBHOOK_MAPPING", MAPPING)
    return variables.get


def load(**variables: str):
    return load_settings(lookup(**variables))


def config_error(**variables: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(**variables)
    return caught.value


# --- defaults ---------------------------------------------------------------------------------


def test_defaults():
    s = load()
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.redis_db == 0
    assert s.broker_url == "redis://localhost:6379/0"
    assert s.queue_name == "followup"
    assert s.callback_channel == "workflow_callback"
    assert s.success_channel == "workflow_success"
    assert s.failure_channel == "workflow_failure"
    assert s.callback_timeout == 300.0  # 300000 ms
    assert s.max_attempts == 5
    assert s.backoff_delay == 5.0
    assert s.backoff_max == 600.0
    assert s.worker_concurrency is None
    assert s.webhook_timeout == 10.0
    assert s.webhook_secrets == ()
    assert s.metrics_port is None
    assert s.api_port == 8000
    assert s.api_token is None
    assert s.flower_basic_auth is None
    assert s.debug is False
    assert [rule.pattern for rule in s.mapping.rules] == ["key01"]


def test_every_value_can_be_set():
    s = load(
        REDIS_URL="redis://redis:6379/2",
        CELERY_BROKER_URL="redis://broker:6379/4",
        QUEUE_NAME="jobs",
        CALLBACK_CHANNEL="cb",
        SUCCESS_CHANNEL="ok",
        FAILURE_CHANNEL="ko",
        WORKER_CALLBACK_TIMEOUT="2m",
        MAX_ATTEMPTS="3",
        BACKOFF_DELAY="2s",
        BACKOFF_MAX="1m",
        WORKER_CONCURRENCY="200",
        WEBHOOK_TIMEOUT="3s",
        METRICS_PORT="9808",
        API_PORT="8080",
        API_TOKEN="tok",
        FLOWER_BASIC_AUTH="admin:pw",
        DEBUG="true",
    )
    assert (s.redis_url, s.redis_db, s.broker_url) == ("redis://redis:6379/2", 2, "redis://broker:6379/4")
    assert (s.queue_name, s.callback_channel, s.success_channel, s.failure_channel) == ("jobs", "cb", "ok", "ko")
    assert (s.callback_timeout, s.max_attempts, s.backoff_delay, s.backoff_max) == (120.0, 3, 2.0, 60.0)
    assert (s.worker_concurrency, s.webhook_timeout, s.metrics_port, s.api_port) == (200, 3.0, 9808, 8080)
    assert (s.api_token, s.flower_basic_auth, s.debug) == ("tok", "admin:pw", True)


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False)])
def test_debug_spellings(text, expected):
    assert load(DEBUG=text).debug is expected


def test_empty_value_means_unset():
    s = load(QUEUE_NAME="", MAX_ATTEMPTS="", WEBHOOK_TIMEOUT="")
    assert (s.queue_name, s.max_attempts, s.webhook_timeout) == ("followup", 5, 10.0)


# --- BullMQ aliases ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "value", "field", "expected"),
    [
        ("BULLMQ_QUEUE_NAME", "legacy", "queue_name", "legacy"),
        ("BULLMQ_ATTEMPTS", "7", "max_attempts", 7),
        ("BULLMQ_BACKOFF_DELAY", "2000", "backoff_delay", 2.0),
        ("BULLMQ_CONCURRENCY", "50", "worker_concurrency", 50),
    ],
)
def test_bullmq_alias_is_read(alias, value, field, expected):
    assert getattr(load(**{alias: value}), field) == expected


@pytest.mark.parametrize(
    ("name", "alias", "field", "expected"),
    [
        ("QUEUE_NAME", "BULLMQ_QUEUE_NAME", "queue_name", "new"),
        ("MAX_ATTEMPTS", "BULLMQ_ATTEMPTS", "max_attempts", 3),
        ("BACKOFF_DELAY", "BULLMQ_BACKOFF_DELAY", "backoff_delay", 1.0),
        ("WORKER_CONCURRENCY", "BULLMQ_CONCURRENCY", "worker_concurrency", 3),
    ],
)
def test_new_name_wins_over_alias(name, alias, field, expected):
    new_values = {"QUEUE_NAME": "new", "MAX_ATTEMPTS": "3", "BACKOFF_DELAY": "1s", "WORKER_CONCURRENCY": "3"}
    old_values = {"QUEUE_NAME": "old", "MAX_ATTEMPTS": "9", "BACKOFF_DELAY": "9s", "WORKER_CONCURRENCY": "9"}
    # The alias may even be invalid: it is not read when the new name is set.
    assert getattr(load(**{name: new_values[name], alias: old_values[name]}), field) == expected
    assert getattr(load(**{name: new_values[name], alias: "garbage"}), field) == expected


@pytest.mark.parametrize(
    ("alias", "value"),
    [
        ("BULLMQ_ATTEMPTS", "0"),
        ("BULLMQ_BACKOFF_DELAY", "-1"),
        ("BULLMQ_CONCURRENCY", "x"),
        ("BULLMQ_QUEUE_NAME", "a b"),
    ],
)
def test_bad_alias_value_names_the_alias(alias, value):
    assert config_error(**{alias: value}).variable == alias


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300000", 300.0),  # bare number: milliseconds, as in the Node tool
        ("1500", 1.5),
        ("0", 0.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        (" 30s ", 30.0),
        ("2.5s", 2.5),
    ],
)
def test_duration_forms(text, seconds):
    assert parse_duration(text, "X") == pytest.approx(seconds)
    assert load(WORKER_CALLBACK_TIMEOUT=text).callback_timeout == pytest.approx(seconds)


@pytest.mark.parametrize("variable", ["WORKER_CALLBACK_TIMEOUT", "BACKOFF_DELAY", "BACKOFF_MAX", "WEBHOOK_TIMEOUT"])
def test_every_duration_variable_takes_both_forms(variable):
    field = {
        "WORKER_CALLBACK_TIMEOUT": "callback_timeout",
        "BACKOFF_DELAY": "backoff_delay",
        "BACKOFF_MAX": "backoff_max",
        "WEBHOOK_TIMEOUT": "webhook_timeout",
    }[variable]
    assert getattr(load(**{variable: "7000"}), field) == pytest.approx(7.0)
    assert getattr(load(**{variable: "7s"}), field) == pytest.approx(7.0)


@pytest.mark.parametrize("text", ["9" * 400, "1" + "0" * 320 + "h"])
def test_infinite_duration_is_rejected(text):
    assert config_error(WORKER_CALLBACK_TIMEOUT=text).variable == "WORKER_CALLBACK_TIMEOUT"


def test_zero_callback_timeout_means_do_not_wait():
    assert load(WORKER_CALLBACK_TIMEOUT="0").callback_timeout == 0


# --- Redis URL, broker ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "db"),
    [
        ("redis://h:6379/3", 3),
        ("redis://:pw@h:6379/3", 3),
        ("rediss://h:6380/5", 5),
        ("redis://h:6379", 0),
        ("redis://h:6379/", 0),
        ("unix:///tmp/redis.sock?db=2", 2),
    ],
)
def test_redis_db_comes_from_redis_url(url, db):
    assert load(REDIS_URL=url).redis_db == db


def test_broker_defaults_to_redis_url():
    s = load(REDIS_URL="redis://:pw@cache:6379/3")
    assert s.broker_url == "redis://:pw@cache:6379/3"
    s = load(REDIS_URL="redis://cache:6379/3", CELERY_BROKER_URL="redis://broker:6379/1")
    assert (s.redis_url, s.broker_url, s.redis_db) == ("redis://cache:6379/3", "redis://broker:6379/1", 3)


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("REDIS_URL", "redis://h:6379/abc"),
        ("REDIS_URL", "redis://h:6379/-1"),
        ("REDIS_URL", "redis://h:6379/1/2"),
        ("REDIS_URL", "unix:///tmp/redis.sock?db=x"),
        ("CELERY_BROKER_URL", "redis://h:6379/abc"),
    ],
)
def test_bad_redis_db_is_rejected(variable, url):
    assert config_error(**{variable: url}).variable == variable


@pytest.mark.parametrize("url", ["redis://h:6379/²", "unix:///tmp/redis.sock?db=³"])
def test_superscript_db_is_rejected_with_config_error(url):
    assert config_error(REDIS_URL=url).variable == "REDIS_URL"


# --- visibility timeout -----------------------------------------------------------------------


def test_visibility_timeout_is_derived_from_defaults():
    s = load()
    # longest backoff: 5 s * 2^(5-2) * 1.25 = 50 s; longest attempt: 10 s webhook + 300 s callback.
    assert s.longest_hold == pytest.approx(360.0)
    assert s.visibility_timeout == pytest.approx(360.0 + VISIBILITY_MARGIN)
    assert VISIBILITY_MARGIN == 30.0


def test_visibility_timeout_short_settings():
    s = load(MAX_ATTEMPTS="3", BACKOFF_DELAY="1s", WEBHOOK_TIMEOUT="5s", WORKER_CALLBACK_TIMEOUT="10s")
    # 1 s * 2^(3-2) * 1.25 = 2.5 s, + 5 s + 10 s = 17.5 s held; + 30 s margin.
    assert s.visibility_timeout == pytest.approx(47.5)


def test_visibility_timeout_backoff_capped_by_backoff_max():
    s = load(MAX_ATTEMPTS="20", BACKOFF_DELAY="1s", BACKOFF_MAX="2m")
    assert s.longest_backoff == pytest.approx(120.0)
    assert s.visibility_timeout == pytest.approx(120.0 + 10.0 + 300.0 + 30.0)


@pytest.mark.parametrize("attempts", ["1100", "100000"])
def test_huge_max_attempts_is_capped_or_rejected_cleanly(attempts):
    try:
        s = load(MAX_ATTEMPTS=attempts)
    except ConfigError as error:
        assert error.variable == "MAX_ATTEMPTS"
        return
    assert s.longest_backoff == s.backoff_max
    assert s.visibility_timeout == pytest.approx(600.0 + 10.0 + 300.0 + 30.0)


def test_many_attempts_backoff_capped():
    s = load(MAX_ATTEMPTS="1000")
    assert s.longest_backoff == s.backoff_max


def test_one_attempt_has_no_backoff():
    s = load(MAX_ATTEMPTS="1")
    assert s.visibility_timeout == pytest.approx(10.0 + 300.0 + 30.0)


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"MAX_ATTEMPTS": "2"},
        {"MAX_ATTEMPTS": "8", "BACKOFF_DELAY": "3s", "BACKOFF_MAX": "1m", "WORKER_CALLBACK_TIMEOUT": "0"},
        {"MAX_ATTEMPTS": "10", "BACKOFF_DELAY": "100", "WEBHOOK_TIMEOUT": "1s", "WORKER_CALLBACK_TIMEOUT": "2s"},
    ],
)
def test_visibility_timeout_exceeds_every_hold_retry_delay_can_produce(variables):
    s = load(**variables)

    class MaxJitter(random.Random):
        def uniform(self, a, b):
            return b

    holds = [s.webhook_timeout + s.callback_timeout]  # the first attempt
    holds += [retry_delay(s, n, MaxJitter()) + s.webhook_timeout + s.callback_timeout for n in range(1, s.max_attempts)]
    assert s.visibility_timeout > max(holds)
    assert s.longest_hold == pytest.approx(max(holds))


def test_explicit_visibility_timeout_longer_than_hold_is_kept():
    assert load(BROKER_VISIBILITY_TIMEOUT="1h").visibility_timeout == 3600.0
    assert load(BROKER_VISIBILITY_TIMEOUT="361s").visibility_timeout == 361.0


@pytest.mark.parametrize("value", ["5m", "360s", "1000"])
def test_explicit_visibility_timeout_not_longer_than_hold_is_rejected(value):
    error = config_error(BROKER_VISIBILITY_TIMEOUT=value)
    assert error.variable == "BROKER_VISIBILITY_TIMEOUT"
    assert value in str(error)


def test_bad_visibility_timeout_is_rejected():
    assert config_error(BROKER_VISIBILITY_TIMEOUT="soon").variable == "BROKER_VISIBILITY_TIMEOUT"


# --- every bad value --------------------------------------------------------------------------

BAD = [
    # variable, value, a part of the message that shows what is wrong
    ("KEY_WEBHOOK_MAPPING", None, "not set"),
    ("KEY_WEBHOOK_MAPPING", "", "not set"),
    ("KEY_WEBHOOK_MAPPING", "   ", ""),
    ("KEY_WEBHOOK_MAPPING", ",,", "no rules"),
    ("KEY_WEBHOOK_MAPPING", "justakey", "justakey"),
    ("KEY_WEBHOOK_MAPPING", "=https://a.example/x", "rule 1"),
    ("KEY_WEBHOOK_MAPPING", "k=not a url", "rule 1"),
    ("KEY_WEBHOOK_MAPPING", "k=ftp://files.example/x", "ftp://files.example/x"),
    ("KEY_WEBHOOK_MAPPING", "k=https://", "rule 1"),
    ("KEY_WEBHOOK_MAPPING", "a=|one,b=|two,a=|three", "rule 3"),
    ("KEY_WEBHOOK_MAPPING", "key=", "key"),
    ("KEY_WEBHOOK_MAPPING", "key=|", "key"),
    ("KEY_WEBHOOK_MAPPING", "key=https://a.example/x|", "key"),
    ("KEY_WEBHOOK_MAPPING", "ok=|c,bad=https://h:port/x", "rule 2"),
    ("KEY_WEBHOOK_MAPPING", "x[ab=|c", "rule 1"),
    ("WORKER_CALLBACK_TIMEOUT", "-1", "-1"),
    ("WORKER_CALLBACK_TIMEOUT", "-5s", "-5s"),
    ("WORKER_CALLBACK_TIMEOUT", "five minutes", "five minutes"),
    ("WORKER_CALLBACK_TIMEOUT", "5 days", "5 days"),
    ("BACKOFF_DELAY", "-5000", "-5000"),
    ("BACKOFF_DELAY", "1e3", "1e3"),
    ("BACKOFF_MAX", "10min", "10min"),
    ("BACKOFF_MAX", "-1m", "-1m"),
    ("WEBHOOK_TIMEOUT", "0", "0"),
    ("WEBHOOK_TIMEOUT", "0s", "0"),
    ("WEBHOOK_TIMEOUT", "abc", "abc"),
    ("MAX_ATTEMPTS", "0", "0"),
    ("MAX_ATTEMPTS", "-3", "-3"),
    ("MAX_ATTEMPTS", "x", "x"),
    ("MAX_ATTEMPTS", "2.5", "2.5"),
    ("WORKER_CONCURRENCY", "0", "0"),
    ("API_PORT", "0", "0"),
    ("API_PORT", "70000", "70000"),
    ("API_PORT", "http", "http"),
    ("METRICS_PORT", "0", "0"),
    ("METRICS_PORT", "70000", "70000"),
    ("REDIS_URL", "http://x", "http://x"),
    ("REDIS_URL", "localhost:6379", "localhost"),
    ("REDIS_URL", "redis://", "redis://"),
    ("REDIS_URL", "redis://h:99999/0", "99999"),
    ("CELERY_BROKER_URL", "amqp://rabbit//", "amqp"),
    ("QUEUE_NAME", "   ", "''"),
    ("QUEUE_NAME", "my queue", "my queue"),
    ("CALLBACK_CHANNEL", "   ", "''"),
    ("CALLBACK_CHANNEL", "call back", "call back"),
    ("SUCCESS_CHANNEL", " ", "''"),
    ("FAILURE_CHANNEL", "\t", "''"),
    ("DEBUG", "maybe", "maybe"),
    ("FLOWER_BASIC_AUTH", "nocolon", "pair 1"),
    ("FLOWER_BASIC_AUTH", "admin:pw,bob", "pair 2"),
    ("FLOWER_BASIC_AUTH", ":pw", "pair 1"),
    ("FLOWER_BASIC_AUTH", "admin:", "pair 1"),
    ("WEBHOOK_SECRET", "whsec_!!!", "whsec_"),
]


@pytest.mark.parametrize(("variable", "value", "shown"), BAD, ids=[f"{v}={x!r}" for v, x, _ in BAD])
def test_bad_value_raises_config_error_naming_the_variable(variable, value, shown):
    variables = {variable: value}
    if value is None:  # the variable is missing altogether
        variables = {"KEY_WEBHOOK_MAPPING": None}
    error = config_error(**variables)
    assert error.variable == variable
    message = str(error)
    assert message.startswith(f"{variable}: ")
    assert shown in error.bad
    assert error.expected
    assert f"expected {error.expected}" in message
    assert "\n" not in message


# --- secrets ----------------------------------------------------------------------------------

REDIS_PASSWORD = "s3cretpw"


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("REDIS_URL", f"redis://:{REDIS_PASSWORD}@host:notaport/0"),
        ("REDIS_URL", f"redis://user:{REDIS_PASSWORD}@host:99999/0"),
        ("REDIS_URL", f"http://:{REDIS_PASSWORD}@host:6379/0"),
        ("REDIS_URL", f"redis://:{REDIS_PASSWORD}@/0"),
        ("REDIS_URL", f"redis://:{REDIS_PASSWORD}@[bad/0"),
        ("CELERY_BROKER_URL", f"amqp://guest:{REDIS_PASSWORD}@rabbit:5672//"),
        ("CELERY_BROKER_URL", f"redis://:{REDIS_PASSWORD}@broker:xx/0"),
    ],
)
def test_password_never_in_config_error(variable, url):
    error = config_error(**{variable: url})
    assert error.variable == variable
    assert REDIS_PASSWORD not in str(error)
    assert REDIS_PASSWORD not in error.bad
    assert "***" in str(error)  # the URL is still shown, masked, so the user can find the bad part


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("redis://:Xk9v/Qz7+Lm2w@host:6379/0", ["Xk9v", "Qz7+Lm2w"]),  # base64-style password with '/'
        ("redis://:Xk9v?Qz7Lm2w@host:6379/0", ["Xk9v", "Qz7Lm2w"]),
        ("redis://:Xk9v@Qz7Lm2w@host:notaport/0", ["Xk9v", "Qz7Lm2w"]),
    ],
)
def test_password_with_url_delimiters_never_in_config_error(url, parts):
    error = config_error(REDIS_URL=url)
    assert error.variable == "REDIS_URL"
    for part in parts:
        assert part not in str(error)


def test_secrets_lists_every_secret_but_webhook():
    s = load(
        REDIS_URL="redis://:redispw@cache:6379/0",
        CELERY_BROKER_URL="redis://user:brokerpw@broker:6379/1",
        API_TOKEN="apitoken123",
        FLOWER_BASIC_AUTH="admin:flowerpw,bob:bobpw",
    )
    secrets = s.secrets()
    for secret in ["redispw", "brokerpw", "apitoken123", "flowerpw", "bobpw"]:
        assert secret in secrets
    assert "admin" not in secrets
    assert all(secrets)


@pytest.mark.parametrize(
    "written", ["plain-webhook-secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "old-secret whsec_c2VjcmV0c2VjcmV0"]
)
def test_secrets_lists_webhook_secret_as_written(written):
    s = load(WEBHOOK_SECRET=written, API_TOKEN="apitoken123")
    secrets = s.secrets()
    assert all(isinstance(secret, str) for secret in secrets)
    assert "apitoken123" in secrets
    for part in written.split():
        material = part.removeprefix("whsec_")
        assert any(secret in part and len(secret) >= len(material) for secret in secrets), (part, secrets)


def test_secret_filter_masks_every_configured_secret():
    s = load(
        REDIS_URL="redis://:redispw@cache:6379/0",
        API_TOKEN="apitoken123",
        FLOWER_BASIC_AUTH="admin:flowerpw",
        WEBHOOK_SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    text = "pw=redispw token=apitoken123 flower=flowerpw secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    record = logging.LogRecord("followup", logging.INFO, __file__, 1, "%s", (text,), None)
    assert SecretFilter(s.secrets()).filter(record)
    message = record.getMessage()
    for secret in ["redispw", "apitoken123", "flowerpw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]:
        assert secret not in message
    assert message.startswith("pw=***")


def test_secrets_without_any_configured_is_empty():
    assert load().secrets() == []


def test_masked_redis_url():
    s = load(REDIS_URL="redis://user:redispw@cache:6379/0")
    assert "redispw" not in s.masked_redis_url
    assert "cache:6379/0" in s.masked_redis_url


@pytest.mark.parametrize(
    ("url", "password", "expected"),
    [
        (
            "redis://cache:6379/0?password=Qp@ss-Tail&socket_timeout=3",
            "Qp@ss-Tail",
            "redis://:Qp%40ss-Tail@cache:6379/0?socket_timeout=3",
        ),
        ("redis://@cache:6379/0?password=Qpw-1", "Qpw-1", "redis://:Qpw-1@cache:6379/0"),
        ("redis://:@cache:6379/0?password=Qpw-1", "Qpw-1", "redis://:Qpw-1@cache:6379/0"),
        ("redis://cache:6379/0?password=Qpw-first&password=Qpw-second", "Qpw-first", "redis://:Qpw-first@cache:6379/0"),
        ("rediss://cache:6380/1?username=app&password=Qpw-2", "Qpw-2", "rediss://app:Qpw-2@cache:6380/1"),
    ],
)
def test_a_query_password_moves_into_the_userinfo_and_is_never_shown(url, password, expected):
    s = load(REDIS_URL=url)
    assert s.redis_url == expected == s.broker_url
    assert password in s.secrets()
    assert password not in s.masked_redis_url and "Tail" not in s.masked_redis_url


def test_a_unix_socket_password_stays_in_the_query_yet_is_masked():
    s = load(REDIS_URL="unix:///run/redis.sock?db=0&password=Qpw-sock")
    assert "Qpw-sock" in s.secrets() and "Qpw-sock" not in s.masked_redis_url


def test_masked_redis_url_with_at_sign_in_password():
    s = load(REDIS_URL="redis://:Xk9v@Qz7Lm2w@cache:6379/0")
    assert "Xk9v@Qz7Lm2w" in s.secrets()  # the URL itself is accepted and its password known
    assert "Qz7Lm2w" not in s.masked_redis_url
    assert "Xk9v" not in s.masked_redis_url


# --- property: any value of any variable gives Settings or ConfigError ---------------------------

VARIABLES = [
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "KEY_WEBHOOK_MAPPING",
    "QUEUE_NAME",
    "BULLMQ_QUEUE_NAME",
    "CALLBACK_CHANNEL",
    "WORKER_CALLBACK_TIMEOUT",
    "MAX_ATTEMPTS",
    "BULLMQ_ATTEMPTS",
    "BACKOFF_DELAY",
    "BACKOFF_MAX",
    "WORKER_CONCURRENCY",
    "WEBHOOK_TIMEOUT",
    "WEBHOOK_SECRET",
    "METRICS_PORT",
    "API_PORT",
    "FLOWER_BASIC_AUTH",
    "DEBUG",
    "BROKER_VISIBILITY_TIMEOUT",
]
PREFIXES = [
    "",
    "redis://",
    "redis://h",
    "redis://:Zq9Sekrit@h:6379/",
    "rediss://u:Zq9Sekrit@h/",
    "unix:///s?db=",
    "whsec_",
    "1",
    "k=",
]
ASCII_VALUE = st.builds(
    str.__add__, st.sampled_from(PREFIXES), st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=30)
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(VARIABLES), ASCII_VALUE, max_size=4))
def test_any_values_give_settings_or_config_error(variables):
    try:
        s = load_settings(lookup(**variables))
    except ConfigError as error:
        assert error.variable in VARIABLES
        if error.variable in ("REDIS_URL", "CELERY_BROKER_URL"):
            assert "Zq9Sekrit" not in str(error)
        return
    assert s.max_attempts >= 1
    assert s.visibility_timeout > s.longest_hold
