"""Mapping rules kept in Redis, changed at run time, and followed live by every process.

KEY_WEBHOOK_MAPPING seeds the rules the first time any followup process starts against a Redis
that has never held rules. From then on Redis is where the rules live: `followup rules …` and the
HTTP API change them, and every listener, worker and API process follows within a second.

Layout (in the watched database, under the prefix the listener never follows up):
  _followup:rules          HASH   pattern -> {"webhook", "channel", "queue"} as JSON
  _followup:rules:order    ZSET   pattern -> position (globs are tried in this order)
  _followup:rules:version  STRING bumped by every change
  _followup:rules:changed  channel: the new version, published by every change

Every change is one named Lua script (put_rule, delete_rule, seed_rules) that writes, bumps the
version and publishes, atomically: a process that sees the version sees the rules of it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis

from followup import scripts
from followup.config import Settings
from followup.connections import redis_client, subscriber_client
from followup.errors import ConfigError
from followup.jobs import PREFIX
from followup.mapping import Mapping, Rule, build_rule

RULES = f"{PREFIX}rules"
ORDER = f"{PREFIX}rules:order"
VERSION = f"{PREFIX}rules:version"
CHANGED = f"{PREFIX}rules:changed"
POLL_INTERVAL = 0.5  # s: how often LiveRules compares versions, in case a change message was missed
RECONNECT_MAX = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleSet:
    """The rules of one version, in order; `skipped` names stored rules that no longer parse."""

    version: int
    rules: tuple[Rule, ...]
    skipped: tuple[str, ...] = ()

    @property
    def mapping(self) -> Mapping:
        return Mapping(self.rules)


@dataclass(frozen=True)
class PutResult:
    version: int
    created: bool


def rule_json(rule: Rule) -> str:
    return json.dumps({"webhook": rule.webhook_url, "channel": rule.channel, "queue": rule.queue})


def rule_from_json(pattern: str, raw: bytes | str) -> Rule:
    """A stored rule, checked again (Redis may have been written by hand); raises ConfigError."""
    try:
        fields = json.loads(raw)
    except ValueError:
        fields = None
    names = ("webhook", "channel", "queue")
    if not isinstance(fields, dict) or not all(isinstance(fields.get(n), str | None) for n in names):
        raise ConfigError("rules", f"stored rule {pattern!r}", "a JSON object of webhook, channel, queue")
    return build_rule(pattern, fields.get("webhook"), fields.get("channel"), fields.get("queue"))


class RuleStore:
    """The rules in Redis: read them, change them (each change one atomic script)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._put = scripts.load(client, "put_rule")
        self._delete = scripts.load(client, "delete_rule")
        self._seed = scripts.load(client, "seed_rules")

    def version(self) -> int:
        return int(self._redis.get(VERSION) or 0)

    def load(self) -> RuleSet:
        """Every rule and the version they belong to, read in one transaction."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(VERSION)
            pipe.zrange(ORDER, 0, -1)
            pipe.hgetall(RULES)
            version, order, stored = pipe.execute()
        rules: list[Rule] = []
        skipped: list[str] = []
        for raw_pattern in order:
            pattern = raw_pattern.decode("utf-8", "surrogateescape")
            raw = stored.get(raw_pattern)
            if raw is None:
                continue
            try:
                rules.append(rule_from_json(pattern, raw))
            except ConfigError as exc:
                skipped.append(f"{pattern}: {exc}")
        return RuleSet(int(version or 0), tuple(rules), tuple(skipped))

    def get(self, pattern: str) -> Rule | None:
        raw = self._redis.hget(RULES, pattern)
        return None if raw is None else rule_from_json(pattern, raw)

    def put(self, rule: Rule) -> PutResult:
        """Add `rule` (last in glob order) or replace the rule of its pattern (keeping its place)."""
        version, created = self._put(keys=[RULES, ORDER, VERSION], args=[rule.pattern, rule_json(rule), CHANGED])
        return PutResult(int(version), bool(created))

    def delete(self, pattern: str) -> int | None:
        """Remove the rule of `pattern`; the new version, or None if there was no such rule."""
        version = int(self._delete(keys=[RULES, ORDER, VERSION], args=[pattern, CHANGED]))
        return version or None

    def seed(self, rules: Iterable[Rule], *, replace: bool = False) -> int | None:
        """Write `rules` if Redis has never held rules (or always, with `replace`); the new version or None."""
        args: list[str] = ["replace" if replace else "missing", CHANGED]
        for rule in rules:
            args += [rule.pattern, rule_json(rule)]
        version = int(self._seed(keys=[RULES, ORDER, VERSION], args=args))
        return version or None


class LiveRules:
    """The current rules of one process, kept up to date from Redis in a background thread.

    `mapping` is what the listener and the workers match keys against (`live.mapping.match(key)`).
    Until the first read from Redis succeeds it is `seed` (KEY_WEBHOOK_MAPPING). Changes arrive
    by the change channel at once, and by a version check every POLL_INTERVAL for a message missed
    during a reconnect. The thread never raises: on any error it logs, keeps the last good
    mapping, and reconnects with backoff.
    """

    def __init__(self, url: str, seed: Mapping, *, poll_interval: float = POLL_INTERVAL) -> None:
        self._seed = seed
        self._poll_interval = poll_interval
        self._store = RuleStore(redis_client(url, pool_size=2))
        self._subscriber = subscriber_client(url)
        self._mapping = seed
        self._version = -1  # nothing read from Redis yet
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def mapping(self) -> Mapping:
        return self._mapping

    @property
    def version(self) -> int:
        """The version of `mapping` in Redis; -1 while it is still the seed."""
        return self._version

    def start(self) -> LiveRules:
        """Seed Redis if it never held rules, read them, then follow changes in the background."""
        try:
            self._seed_and_load()
        except Exception as exc:  # noqa: BLE001 - the thread keeps trying; the seed serves meanwhile
            log.warning("rules: Redis not readable yet (%s); using KEY_WEBHOOK_MAPPING until it is", _brief(exc))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="followup-live-rules", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_for_version(self, version: int, timeout: float) -> bool:
        """Block until rules of at least `version` are in use; False after `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self._version >= version, timeout)

    def wait_until(self, predicate: Callable[[Mapping], bool], timeout: float) -> bool:
        """Block until `predicate(mapping)` holds; False after `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self._mapping), timeout)

    def refresh(self) -> bool:
        """Read the rules again if their version moved; True if the mapping changed."""
        current = self._store.version()
        if current == 0:
            # Redis lost its rules (restarted without persistence, flushed): seed them again,
            # as on a first start, rather than follow up on nothing.
            self._seed_and_load()
            return True
        if current == self._version:
            return False
        return self._load()

    def _load(self) -> bool:
        rule_set = self._store.load()
        if rule_set.version == self._version:
            return False
        for problem in rule_set.skipped:
            log.warning("rules: skipping a stored rule that does not parse: %s", problem)
        with self._changed:
            self._mapping = rule_set.mapping
            self._version = rule_set.version
            self._changed.notify_all()
        log.info("rules: version %d in use (%d rules)", rule_set.version, len(rule_set.rules))
        return True

    def _seed_and_load(self) -> None:
        seeded = self._store.seed(self._seed.rules)
        if seeded:
            log.info("rules: seeded Redis with KEY_WEBHOOK_MAPPING's %d rules", len(self._seed.rules))
        self._load()
        if not seeded and self._mapping.rules != self._seed.rules:
            log.info("rules: Redis holds its own rules (version %d); KEY_WEBHOOK_MAPPING only seeds", self._version)

    def _run(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANGED)
                if self._version < 0:
                    self._seed_and_load()
                else:
                    self.refresh()  # a change published while this process was not subscribed
                delay = 0.2
                self._follow(pubsub)
            except Exception as exc:  # noqa: BLE001 - never raise: keep the last good mapping, retry
                log.warning("rules: following changes failed (%s); retrying in %.1fs", _brief(exc), delay)
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)
            finally:
                if pubsub is not None:
                    _close_quietly(pubsub)

    def _follow(self, pubsub: redis.client.PubSub) -> None:
        next_poll = time.monotonic() + self._poll_interval
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=max(0.0, next_poll - time.monotonic()))
            if message is not None or time.monotonic() >= next_poll:
                self.refresh()
                next_poll = time.monotonic() + self._poll_interval


def live_rules(settings: Settings) -> LiveRules:
    """LiveRules for a process's settings (REDIS_URL, seeded by KEY_WEBHOOK_MAPPING), not started."""
    return LiveRules(settings.redis_url, settings.mapping)


def _brief(exc: BaseException) -> str:
    from followup.redaction import redact_userinfo

    return redact_userinfo(f"{type(exc).__name__}: {exc}")


def _close_quietly(pubsub: redis.client.PubSub) -> None:
    try:
        pubsub.close()
    except Exception:  # closing a broken connection may fail too; nothing to do
        log.debug("rules: closing the subscription failed", exc_info=True)
