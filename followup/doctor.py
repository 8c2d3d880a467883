"""`followup check`: is this setup able to follow up? One line per check: ok, warn or fail."""

from __future__ import annotations

import socket
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from followup.config import Settings
from followup.durations import format_duration
from followup.listener import NOTIFY_FLAGS
from followup.mapping import Rule
from followup.notifications import SETTING, NotificationsOff, ensure_flags
from followup.redaction import redact_userinfo


@dataclass(frozen=True)
class Check:
    verdict: str  # ok | warn | fail
    subject: str
    detail: str

    def line(self) -> str:
        return f"{self.verdict:<5} {self.subject}: {self.detail}"


def run_checks(settings: Settings) -> Iterator[Check]:
    watched = yield from _redis_checks("redis", settings.redis_url)
    if settings.broker_url != settings.redis_url:
        yield from _redis_checks("broker", settings.broker_url)
    if watched is not None:
        yield _notify_flags(watched, settings.redis_db)
    yield Check("ok", "mapping", f"{len(settings.mapping.rules)} rule(s) parsed")
    rules = settings.mapping.rules
    if watched is not None:
        rules = yield from rule_checks(watched, settings)
    yield from _webhook_hosts(rules)
    parts = [settings.longest_backoff, settings.webhook_timeout, settings.callback_timeout]
    backoff, webhook, callback = (format_duration(part) for part in parts)
    yield Check(
        "ok",
        "visibility timeout",
        f"{format_duration(settings.visibility_timeout)}, above the longest a worker holds a job "
        f"({format_duration(settings.longest_hold)}: backoff {backoff} + webhook {webhook} + callback {callback})",
    )
    if settings.flower_basic_auth:
        yield Check("ok", "flower", "FLOWER_BASIC_AUTH is set")
    else:
        yield Check("warn", "flower", "FLOWER_BASIC_AUTH is not set: the dashboard would be open to anyone")


def rule_checks(client: redis.Redis, settings: Settings) -> Generator[Check, None, Sequence[Rule]]:
    """Which rules are in force (Redis's, once seeded), and the queues they send jobs to; returns
    those rules."""
    from followup.rules import RuleStore

    try:
        rule_set = RuleStore(client).load()
    except redis.RedisError as exc:
        yield Check("warn", "rules", f"cannot read the rules in Redis: {redact_userinfo(str(exc))}")
        return settings.mapping.rules
    if rule_set.version:
        rules = rule_set.rules
        detail = f"{len(rules)} in Redis (version {rule_set.version}), in force; KEY_WEBHOOK_MAPPING only seeds"
        yield Check("ok", "rules", detail)
    else:
        rules = settings.mapping.rules
        yield Check("ok", "rules", "none in Redis yet: the first process to start seeds KEY_WEBHOOK_MAPPING's")
    for problem in rule_set.skipped:
        yield Check("warn", "rules", f"a stored rule does not parse and is skipped: {problem}")
    queues = sorted({rule.queue for rule in rules if rule.queue and rule.queue != settings.queue_name})
    if queues:
        yield Check("ok", "queues", f"rules also use {', '.join(queues)}: each needs `followup worker --queues NAME`")
    return rules


def _redis_checks(name: str, url: str) -> Iterator[Check]:
    shown = redact_userinfo(url)
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)
    try:
        version = client.info("server").get("redis_version", "?")
    except redis.RedisError as exc:
        yield Check("fail", name, f"cannot reach {shown}: {redact_userinfo(str(exc))}")
        return None
    yield Check("ok", name, f"reachable at {shown}, Redis {version}")
    return client


def _notify_flags(client: redis.Redis, db: int) -> Check:
    # What the listener does at its start, so that the check says what the listener will meet.
    try:
        return Check("ok", SETTING, ensure_flags(client, db, NOTIFY_FLAGS))
    except NotificationsOff as exc:
        return Check("fail", SETTING, str(exc))


def _webhook_hosts(rules: Sequence[Rule]) -> Iterator[Check]:
    hosts = sorted({urlsplit(rule.webhook_url).hostname or "" for rule in rules if rule.webhook_url})
    for host in hosts:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except (OSError, UnicodeError) as exc:
            yield Check("fail", "webhook host", f"{host} does not resolve ({exc})")
        else:
            yield Check("ok", "webhook host", f"{host} resolves to {', '.join(sorted(addresses)[:3])}")
