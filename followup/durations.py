"""Durations as the Node tool wrote them (bare milliseconds) and as people write them (30s)."""

from __future__ import annotations

import re

from followup.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)?")
MAX_SECONDS = 10 * 365 * 24 * 3600.0
EXPECTED = "milliseconds (e.g. 300000) or a number with a unit: 500ms, 30s, 5m, 1h"


def parse_duration(text: str, variable: str) -> float:
    """Return the duration in seconds; a bare number is milliseconds, as in the Node tool."""
    cleaned = text.strip().lower()
    match = _DURATION.fullmatch(cleaned)
    if not match:
        if cleaned.startswith("-"):
            raise ConfigError(variable, repr(text), "a duration that is not negative")
        raise ConfigError(variable, repr(text), EXPECTED)
    seconds = float(match["number"]) * _UNITS[match["unit"] or "ms"]
    if seconds > MAX_SECONDS:
        raise ConfigError(variable, repr(text), "a duration of at most 10 years")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact way to write a duration, for messages and `followup pending`."""
    if seconds and seconds == int(seconds):
        whole = int(seconds)
        for unit, size in (("h", 3600), ("m", 60)):
            if whole % size == 0:
                return f"{whole // size}{unit}"
        return f"{whole}s"
    return f"{round(seconds * 1000)}ms"
