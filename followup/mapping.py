"""KEY_WEBHOOK_MAPPING: which expired key calls which webhook and/or channel.

The syntax is the Node tool's: comma-separated `KEY=WEBHOOK_URL`, `KEY=WEBHOOK_URL|CHANNEL` or
`KEY=|CHANNEL`. KEY may be a glob (`followup:*`); an exact key wins over any glob, then globs are
tried in the order they are written.

followup adds one thing: a rule may end in `@QUEUE` (`vip:*=https://host/path@priority`,
`k=|channel@priority`) to send its jobs to that Celery queue instead of QUEUE_NAME. A trailing
`@name` is a queue only when the name is `[A-Za-z0-9_.-]+` and what comes before it is a complete
target: a channel, or a URL whose authority has already ended (a `/`, `?` or `#` after the host).
So `https://user:pass@host` stays a URL with credentials; an `@` at the very end of a URL's query
must be written `%40` to stay part of the URL.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from followup.errors import ConfigError
from followup.redaction import MASK, redact_userinfo

# Anything up to an "@" in a parser's message: the userinfo of a netloc it quotes.
_CREDENTIALS = re.compile(r"[^\s'\"]*@")

VARIABLE = "KEY_WEBHOOK_MAPPING"
_GLOB_CHARS = frozenset("*?[")
QUEUE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Rule:
    """One mapping rule: what a matching key's expiration triggers."""

    pattern: str
    webhook_url: str | None
    channel: str | None
    queue: str | None = None  # the Celery queue for its jobs; None: QUEUE_NAME

    @property
    def is_glob(self) -> bool:
        return any(char in _GLOB_CHARS for char in self.pattern)

    def describe(self) -> str:
        """The rule as written, for logs (the URL may carry a token: only its origin is shown)."""
        target = _origin(self.webhook_url) if self.webhook_url else ""
        if self.channel:
            target += f"|{self.channel}"
        if self.queue:
            target += f"@{self.queue}"
        return f"{self.pattern}={target}"

    def target(self) -> str:
        """The rule's right-hand side, in full, such that `parse_rule(f"{pattern}={target}")` gives it back."""
        url = self.webhook_url or ""
        if self.queue and url and not self.channel and not _authority_ended(url):
            # "https://host@q" would read as credentials "host" at host "q": end the authority.
            url += "/"
        text = url + (f"|{self.channel}" if self.channel else "")
        return text + (f"@{self.queue}" if self.queue else "")


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
    """Parse one `KEY=WEBHOOK_URL|CHANNEL@QUEUE` rule (every part but KEY optional, see above)."""
    key, equals, target = entry.partition("=")
    key = key.strip()
    if not equals or not key:
        raise ConfigError(
            VARIABLE, f"rule {number} {entry!r}", "KEY=WEBHOOK_URL, KEY=WEBHOOK_URL|CHANNEL or KEY=|CHANNEL"
        )
    where = f"rule {number} ({key!r})"
    target, queue = _split_queue(target, where)
    url, bar, channel = target.rpartition("|") if "|" in target else (target, "", "")
    url, channel = url.strip(), channel.strip()
    if bar and not channel:
        raise ConfigError(VARIABLE, where, "a channel name after '|'")
    return build_rule(key, url or None, channel or None, queue, where)


def build_rule(
    pattern: str, webhook_url: str | None, channel: str | None, queue: str | None = None, where: str = ""
) -> Rule:
    """Check the parts of one rule (from the mapping's text or from the HTTP API) and make it.

    Raises ConfigError naming `where` (or the pattern) and the bad part.
    """
    where = where or f"rule {pattern!r}"
    if not pattern or pattern != pattern.strip():
        raise ConfigError(VARIABLE, where, "a KEY without leading or trailing spaces")
    if "=" in pattern or "," in pattern:
        raise ConfigError(VARIABLE, where, "a KEY without '=' or ',' (they separate rules)")
    if not webhook_url and not channel:
        raise ConfigError(VARIABLE, where, "a webhook URL, a |CHANNEL, or both")
    if webhook_url:
        check_http_url(webhook_url, VARIABLE, where)
        if not channel and not queue and _ends_like_a_queue(webhook_url):
            # Written out (`KEY=URL`), the end of this URL would read as a queue name.
            raise ConfigError(VARIABLE, where, "a URL that does not end in '@NAME' (write that '@' as %40)")
    if channel is not None and (not channel.strip() or any(char in channel for char in "|,@")):
        raise ConfigError(VARIABLE, f"{where}: channel {channel!r}", "a channel name without '|', ',' or '@'")
    if queue is not None and not QUEUE_NAME_PATTERN.fullmatch(queue):
        raise ConfigError(VARIABLE, f"{where}: queue {queue!r}", "a queue name of letters, digits, '_', '.', '-'")
    if pattern.count("[") != pattern.count("]"):
        raise ConfigError(VARIABLE, where, "a glob whose [ and ] are balanced")
    return Rule(pattern=pattern, webhook_url=webhook_url or None, channel=channel or None, queue=queue)


def _split_queue(target: str, where: str) -> tuple[str, str | None]:
    """Take a trailing `@QUEUE` off a rule's target, when it is one (see the module's docstring)."""
    body, at, name = target.rpartition("@")
    if not at:
        return target, None
    name = name.strip()
    if name and not QUEUE_NAME_PATTERN.fullmatch(name):
        return target, None  # e.g. the '@' of credentials, with the host and path after it
    if "|" in body:
        complete = True  # the '@' is in the channel part: the channel came before it
    else:
        stripped = body.strip()
        complete = "://" in stripped and _authority_ended(stripped)
    if not complete:
        return target, None
    if not name:
        raise ConfigError(VARIABLE, where, "a queue name after '@' (letters, digits, '_', '.', '-')")
    return body, name


def _ends_like_a_queue(url: str) -> bool:
    try:
        return _split_queue(url, "")[1] is not None
    except ConfigError:
        return True  # a bare '@' at the end


def _authority_ended(url: str) -> bool:
    """Whether a '/', '?' or '#' follows the host: an '@' after that cannot be the URL's credentials."""
    _, sep, rest = url.partition("://")
    return bool(sep) and any(char in rest for char in "/?#")


def check_http_url(url: str, variable: str, where: str) -> None:
    """Raise ConfigError unless `url` is an absolute http(s) URL with a host."""
    # Whatever precedes the last "@" after the scheme counts as credentials here: an error must
    # not show them even where they hold a space or a quote, which end the pattern's match.
    userinfo = url.partition("://")[2].rpartition("@")[0]
    masked = redact_userinfo(url.replace(userinfo, MASK, 1) if userinfo else url)
    shown = f"{where}: {masked!r}" if where else repr(masked)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a bad port only raises when read
    except ValueError as exc:
        # The parser's message quotes the netloc, credentials and all.
        reason = redact_userinfo(str(exc).replace(userinfo, MASK) if userinfo else str(exc))
        raise ConfigError(variable, shown, f"a valid http(s) URL ({_CREDENTIALS.sub(f'{MASK}@', reason)})") from None
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
