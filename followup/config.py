"""Every setting of the contract, read once (environment, then `.env`) into one frozen object.

Nothing else in followup reads the environment: processes call `load_settings()` at start-up and
pass the result around. A bad value raises ConfigError, which the CLI turns into exit status 2.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from followup.durations import parse_duration
from followup.errors import ConfigError
from followup.mapping import Mapping, parse_mapping
from followup.payloads import DEFAULT_PAYLOAD_LIMIT
from followup.redaction import redact_userinfo

Lookup = Callable[[str], "str | None"]

# Every variable followup reads (aliases and NAME_FILE forms below), for checks of deploy files.
VARIABLES = frozenset(
    [
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "KEY_WEBHOOK_MAPPING",
        "QUEUE_NAME",
        "CALLBACK_CHANNEL",
        "SUCCESS_CHANNEL",
        "FAILURE_CHANNEL",
        "WORKER_CALLBACK_TIMEOUT",
        "MAX_ATTEMPTS",
        "BACKOFF_DELAY",
        "BACKOFF_MAX",
        "WORKER_CONCURRENCY",
        "WEBHOOK_TIMEOUT",
        "WEBHOOK_SECRET",
        "BROKER_VISIBILITY_TIMEOUT",
        "PAYLOAD_MAX_BYTES",
        "METRICS_PORT",
        "API_HOST",
        "API_PORT",
        "API_TOKEN",
        "API_UNAUTHENTICATED",
        "FLOWER_BASIC_AUTH",
        "FLOWER_UNAUTHENTICATED",
        "DEBUG",
        "LOG_FORMAT",
    ]
)
ALIASES = {
    "BULLMQ_QUEUE_NAME": "QUEUE_NAME",
    "BULLMQ_ATTEMPTS": "MAX_ATTEMPTS",
    "BULLMQ_BACKOFF_DELAY": "BACKOFF_DELAY",
    "BULLMQ_CONCURRENCY": "WORKER_CONCURRENCY",
}
# Variables whose value may instead come from a file named by NAME_FILE (Docker secrets).
SECRET_FILES = frozenset({"REDIS_URL", "CELERY_BROKER_URL", "WEBHOOK_SECRET", "API_TOKEN", "FLOWER_BASIC_AUTH"})
# A killed worker's messages come back this long after the longest a live worker can hold one.
VISIBILITY_MARGIN = 30.0
# How far the last, capped backoff may be stretched by jitter (the contract: up to 25 %).
JITTER = 0.25


@dataclass(frozen=True)
class Settings:
    redis_url: str
    redis_db: int
    broker_url: str
    mapping: Mapping
    queue_name: str
    callback_channel: str
    success_channel: str
    failure_channel: str
    callback_timeout: float  # seconds; 0 = do not wait for a callback
    max_attempts: int
    backoff_delay: float  # seconds before the 2nd attempt
    backoff_max: float  # seconds, cap on one delay
    worker_concurrency: int | None
    webhook_timeout: float  # seconds
    webhook_secrets: tuple[str, ...]  # as written; signing.py decodes whsec_ ones
    visibility_timeout: float  # seconds
    payload_max_bytes: int
    metrics_port: int | None
    api_host: str
    api_port: int
    api_token: str | None
    api_unauthenticated: bool  # the API may run without a token (local use only)
    flower_basic_auth: str | None
    flower_unauthenticated: bool  # Flower may run without auth (local use only)
    debug: bool
    log_format: str  # text | json

    @property
    def longest_attempt(self) -> float:
        """The longest one attempt can take: a webhook that times out, then the callback wait."""
        return self.webhook_timeout + self.callback_timeout

    @property
    def longest_backoff(self) -> float:
        """The longest delay before any attempt, jitter included."""
        if self.max_attempts < 2:
            return 0.0
        return min(self.backoff_delay * doubling(self.max_attempts - 2) * (1 + JITTER), self.backoff_max)

    @property
    def longest_hold(self) -> float:
        """How long a worker may hold one broker message before acking it.

        A retry is an ETA message: the worker takes it at once, keeps it through the backoff and
        then runs the attempt, all on one delivery. The broker must not hand it to another worker
        meanwhile, so its visibility timeout has to exceed this.
        """
        return self.longest_backoff + self.longest_attempt

    def secrets(self) -> list[str]:
        """Strings that must never be printed, for the logging filter."""
        found = [*_password(self.redis_url), *_password(self.broker_url), self.api_token]
        if self.flower_basic_auth:
            found += [pair.partition(":")[2] for pair in self.flower_basic_auth.split(",")]
        found += list(self.webhook_secrets)
        return [s for s in found if s]

    @property
    def masked_redis_url(self) -> str:
        return redact_userinfo(self.redis_url)


def doubling(times: int) -> float:
    """2 ** times, saturating: a delay doubled 60 times is past any cap, and the float stays finite."""
    return 2.0 ** min(max(times, 0), 60)


def environment() -> Lookup:
    """The process environment, then a `.env` file in the working directory (python-decouple)."""
    from decouple import AutoConfig

    config = AutoConfig(search_path=os.getcwd())
    return lambda name: config(name, default=None)


@cache
def settings() -> Settings:
    """This process's settings, read once from its environment."""
    return load_settings(environment())


def load_settings(lookup: Lookup) -> Settings:
    """Read and validate every setting; raise ConfigError on the first bad one."""
    env = _Env(lookup)
    redis_url = env.redis_url("REDIS_URL", "redis://localhost:6379/0")
    callback_timeout = env.duration("WORKER_CALLBACK_TIMEOUT", "300000")
    webhook_timeout = env.duration("WEBHOOK_TIMEOUT", "10s")
    if webhook_timeout <= 0:
        raise ConfigError("WEBHOOK_TIMEOUT", env.raw("WEBHOOK_TIMEOUT") or "0", "a duration above 0")
    partial = Settings(
        redis_url=redis_url,
        redis_db=_redis_db(redis_url) or 0,
        broker_url=env.redis_url("CELERY_BROKER_URL", redis_url),
        mapping=parse_mapping(env.required("KEY_WEBHOOK_MAPPING", "comma-separated KEY=WEBHOOK_URL rules")),
        queue_name=env.name("QUEUE_NAME", "followup", alias="BULLMQ_QUEUE_NAME"),
        callback_channel=env.name("CALLBACK_CHANNEL", "workflow_callback"),
        success_channel=env.name("SUCCESS_CHANNEL", "workflow_success"),
        failure_channel=env.name("FAILURE_CHANNEL", "workflow_failure"),
        callback_timeout=callback_timeout,
        max_attempts=env.integer("MAX_ATTEMPTS", 5, minimum=1, alias="BULLMQ_ATTEMPTS"),
        backoff_delay=env.duration("BACKOFF_DELAY", "5000", alias="BULLMQ_BACKOFF_DELAY"),
        backoff_max=env.duration("BACKOFF_MAX", "10m"),
        worker_concurrency=env.optional_integer("WORKER_CONCURRENCY", minimum=1, alias="BULLMQ_CONCURRENCY"),
        webhook_timeout=webhook_timeout,
        webhook_secrets=env.webhook_secrets("WEBHOOK_SECRET"),
        visibility_timeout=0.0,
        payload_max_bytes=env.integer("PAYLOAD_MAX_BYTES", DEFAULT_PAYLOAD_LIMIT, minimum=0),
        metrics_port=env.optional_integer("METRICS_PORT", minimum=1, maximum=65535),
        api_host=env.name("API_HOST", "127.0.0.1"),
        api_port=env.integer("API_PORT", 8000, minimum=1, maximum=65535),
        api_token=env.raw("API_TOKEN") or None,
        api_unauthenticated=env.boolean("API_UNAUTHENTICATED", False),
        flower_basic_auth=env.basic_auth("FLOWER_BASIC_AUTH"),
        flower_unauthenticated=env.boolean("FLOWER_UNAUTHENTICATED", False),
        debug=env.boolean("DEBUG", False),
        log_format=env.choice("LOG_FORMAT", ("text", "json")),
    )
    visibility = env.optional_duration("BROKER_VISIBILITY_TIMEOUT")
    if visibility is None:
        visibility = partial.longest_hold + VISIBILITY_MARGIN
    elif visibility <= partial.longest_hold:
        raise ConfigError(
            "BROKER_VISIBILITY_TIMEOUT",
            env.raw("BROKER_VISIBILITY_TIMEOUT") or "",
            f"more than the longest a worker holds a job ({partial.longest_hold:g}s: longest backoff "
            f"{partial.longest_backoff:g}s + WEBHOOK_TIMEOUT + WORKER_CALLBACK_TIMEOUT), "
            "or leave it unset to derive it",
        )
    return replace(partial, visibility_timeout=visibility)


class _Env:
    """Typed reads of single variables, each raising ConfigError that names the variable."""

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup

    def raw(self, name: str, alias: str | None = None) -> str | None:
        value = self._lookup(name)
        if (value is None or value == "") and alias:
            value = self._lookup(alias)
        if value in (None, "") and name in SECRET_FILES:
            value = self._secret_file(name)
        return value if value not in (None, "") else None

    def _secret_file(self, name: str) -> str | None:
        """NAME_FILE names a file holding NAME's value: how Docker secrets reach a process."""
        path = self._lookup(f"{name}_FILE")
        if not path:
            return None
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE", repr(path), f"a readable file ({exc.strerror})") from None

    def _name_of(self, name: str, alias: str | None) -> str:
        """The variable actually read, so that an error names the one the user set."""
        if alias and self._lookup(name) in (None, "") and self._lookup(alias) not in (None, ""):
            return alias
        return name

    def required(self, name: str, expected: str) -> str:
        value = self.raw(name)
        if value is None or not value.strip():
            raise ConfigError(name, "not set", expected)
        return value

    def name(self, name: str, default: str, alias: str | None = None) -> str:
        value = self.raw(name, alias)
        if value is None:
            return default
        value = value.strip()
        if not value or any(ch.isspace() for ch in value):
            raise ConfigError(self._name_of(name, alias), repr(value), "a non-empty name without spaces")
        return value

    def duration(self, name: str, default: str, alias: str | None = None) -> float:
        value = self.raw(name, alias)
        return parse_duration(default if value is None else value, self._name_of(name, alias))

    def optional_duration(self, name: str) -> float | None:
        value = self.raw(name)
        return None if value is None else parse_duration(value, name)

    def integer(
        self, name: str, default: int, minimum: int, maximum: int | None = None, alias: str | None = None
    ) -> int:
        value = self.optional_integer(name, minimum, maximum, alias)
        return default if value is None else value

    def optional_integer(
        self, name: str, minimum: int, maximum: int | None = None, alias: str | None = None
    ) -> int | None:
        value = self.raw(name, alias)
        if value is None:
            return None
        expected = f"a whole number from {minimum}" + (f" to {maximum}" if maximum else " up")
        try:
            number = int(value.strip())
        except ValueError:
            raise ConfigError(self._name_of(name, alias), repr(value), expected) from None
        if number < minimum or (maximum is not None and number > maximum):
            raise ConfigError(self._name_of(name, alias), repr(value), expected)
        return number

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name)
        if value is None:
            return choices[0]
        if value.strip().lower() not in choices:
            raise ConfigError(name, repr(value), " or ".join(choices))
        return value.strip().lower()

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, repr(value), "true or false")

    def redis_url(self, name: str, default: str) -> str:
        value = (self.raw(name) or default).strip()
        shown = repr(redact_userinfo(value))
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - a bad port only raises when read
        except ValueError:
            # The parser's own message quotes the netloc, password included: not shown.
            raise ConfigError(name, shown, "a Redis URL with a numeric port (redis://host:6379/0)") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(name, shown, "a redis://, rediss:// or unix:// URL")
        if parts.scheme != "unix" and not parts.hostname:
            raise ConfigError(name, shown, "a Redis URL with a host")
        if _redis_db(value) is None:
            raise ConfigError(name, shown, "a database number from 0 after the host (redis://host:6379/0)")
        return _credentials_in_userinfo(value, name, shown)

    def webhook_secrets(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        secrets = tuple(value.split())
        for number, secret in enumerate(secrets, start=1):
            try:
                secret_bytes(secret)
            except binascii.Error:
                raise ConfigError(name, f"secret {number} (whsec_…)", "base64 after 'whsec_'") from None
        return secrets

    def basic_auth(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        for number, pair in enumerate(value.split(","), start=1):
            user, colon, password = pair.partition(":")
            if not user.strip() or not colon or not password:
                raise ConfigError(name, f"pair {number}", "user:password (several joined by commas)")
        return value


def secret_bytes(secret: str) -> bytes:
    """The key a webhook secret stands for: `whsec_` + base64 as Standard Webhooks says, else the text."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :], validate=True)
    return secret.encode()


def _redis_db(url: str) -> int | None:
    """The database number of a Redis URL (path `/3` or query `?db=3`); None when it is not one."""
    parts = urlsplit(url)
    path = parts.path.strip("/") if parts.scheme != "unix" else ""
    query_db = dict(pair.partition("=")[::2] for pair in parts.query.split("&") if pair).get("db")
    text = path or query_db or "0"
    return int(text) if text.isascii() and text.isdigit() else None


def _credentials_in_userinfo(url: str, name: str, shown: str) -> str:
    """`redis://host/0?password=…` as `redis://:…@host/0`: redis-py takes both forms, kombu (the
    broker) only the second, and only a password in the userinfo is masked wherever it is shown."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    credentials: dict[str, str] = {}
    for key, value in query:
        if key in ("username", "password"):
            credentials.setdefault(key, value)  # the first, as redis-py reads it
    if not credentials or parts.scheme == "unix":
        return url
    if parts.username or parts.password:
        raise ConfigError(name, shown, "credentials either before the host or in the query, not both")
    userinfo = quote(credentials.get("username", ""), safe="")
    if "password" in credentials:
        userinfo += ":" + quote(credentials["password"], safe="")
    host = parts.netloc.rpartition("@")[2]  # an empty userinfo ("redis://@host") goes
    rest = urlencode([(key, value) for key, value in query if key not in credentials])
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, rest, parts.fragment))


def _password(url: str) -> tuple[str, ...]:
    """The URL's password as written and as Redis gets it (percent-decoded); for a unix socket
    it may stay in the query."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    found = [parts.password or "", *(value for key, value in parse_qsl(parts.query) if key == "password")]
    return tuple({form for password in found if password for form in (password, unquote(password))})
