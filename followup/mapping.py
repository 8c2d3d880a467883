"""KEY_WEBHOOK_MAPPING: which expired key calls which webhook and/or channel.

The syntax is the Node tool's, unchanged: comma-separated `KEY=WEBHOOK_URL`,
`KEY=WEBHOOK_URL|CHANNEL` or `KEY=|CHANNEL`. KEY may be a glob (`followup:*`); an exact key
wins over any glob, then globs are tried in the order they are written.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from followup.errors import ConfigError
from followup.redaction import redact_userinfo

VARIABLE = "KEY_WEBHOOK_MAPPING"
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Rule:
    """One mapping rule: what a matching key's expiration triggers."""

    pattern: str
    webhook_url: str | None
    channel: str | None

    @property
    def is_glob(self) -> bool:
        return any(char in _GLOB_CHARS for char in self.pattern)

    def describe(self) -> str:
        """The rule as written, for logs (the URL may carry a token: only its origin is shown)."""
        target = _origin(self.webhook_url) if self.webhook_url else ""
        if self.channel:
            target += f"|{self.channel}"
        return f"{self.pattern}={target}"


@dataclass(frozen=True)
class Mapping:
    """All rules, indexed for the lookup the listener makes on every expired key."""

    rules: tuple[Rule, ...]
    _exact: dict[str, Rule] = field(init=False, repr=False, compare=False)
    _globs: tuple[tuple[re.Pattern[str], Rule], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = {rule.pattern: rule for rule in self.rules if not rule.is_glob}
        globs = tuple(
            (re.compile(fnmatch.translate(rule.pattern), re.DOTALL), rule) for rule in self.rules if rule.is_glob
        )
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_globs", globs)

    def match(self, key: str) -> Rule | None:
        """The rule for `key`: its exact rule, else the first glob that matches, else None."""
        rule = self._exact.get(key)
        if rule is not None:
            return rule
        for regex, glob_rule in self._globs:
            if regex.match(key):
                return glob_rule
        return None


def parse_mapping(text: str) -> Mapping:
    """Parse KEY_WEBHOOK_MAPPING; raise ConfigError naming the first bad rule."""
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.split(","), start=1):
        entry = raw.strip()
        if not entry:
            continue  # a trailing comma is harmless, and the Node tool accepted it
        rule = parse_rule(entry, number)
        if rule.pattern in seen:
            raise ConfigError(
                VARIABLE,
                f"rule {number} {rule.pattern!r}",
                f"each KEY once (it is already rule {seen[rule.pattern]})",
            )
        seen[rule.pattern] = number
        rules.append(rule)
    if not rules:
        raise ConfigError(VARIABLE, "no rules", "at least one KEY=WEBHOOK_URL or KEY=|CHANNEL")
    return Mapping(tuple(rules))


def parse_rule(entry: str, number: int = 1) -> Rule:
    """Parse one `KEY=WEBHOOK_URL|CHANNEL` rule."""
    key, equals, target = entry.partition("=")
    key = key.strip()
    if not equals or not key:
        raise ConfigError(
            VARIABLE, f"rule {number} {entry!r}", "KEY=WEBHOOK_URL, KEY=WEBHOOK_URL|CHANNEL or KEY=|CHANNEL"
        )
    where = f"rule {number} ({key!r})"
    url, bar, channel = target.rpartition("|") if "|" in target else (target, "", "")
    url, channel = url.strip(), channel.strip()
    if bar and not channel:
        raise ConfigError(VARIABLE, where, "a channel name after '|'")
    if not url and not channel:
        raise ConfigError(VARIABLE, where, "a webhook URL, a |CHANNEL, or both")
    if url:
        check_http_url(url, VARIABLE, where)
    if key.count("[") != key.count("]"):
        raise ConfigError(VARIABLE, where, "a glob whose [ and ] are balanced")
    return Rule(pattern=key, webhook_url=url or None, channel=channel or None)


def check_http_url(url: str, variable: str, where: str) -> None:
    """Raise ConfigError unless `url` is an absolute http(s) URL with a host."""
    shown = f"{where}: {redact_userinfo(url)!r}" if where else repr(redact_userinfo(url))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a bad port only raises when read
    except ValueError as exc:
        raise ConfigError(variable, shown, f"a valid http(s) URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(variable, shown, "an http:// or https:// URL with a host")


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL, without path, query or credentials (they may be secret)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme:
        return "<not a URL>"
    return f"{parts.scheme}://{host}{port}/…" if parts.path not in ("", "/") else f"{parts.scheme}://{host}{port}"
