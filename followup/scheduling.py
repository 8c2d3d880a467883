"""Scheduling from Python: `followup.schedule(key, delay, payload)` and `followup.cancel(key)`.

Both write the key and its schedule-index entry in one atomic step (a Lua script), so a follow-up
scheduled here fires even if it is written and expires entirely while no listener runs.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import redis

from followup import scripts
from followup.durations import parse_duration
from followup.index import DUE, LIMBO, VALUES
from followup.jobs import check_key
from followup.payloads import DEFAULT_PAYLOAD_LIMIT, tag_value


def schedule(
    key: str,
    delay: float | str | timedelta,
    payload: Any = None,
    *,
    client: redis.Redis | None = None,
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
) -> int:
    """Follow up on `key` after `delay` (seconds, a timedelta, or "30s" / "5m" / bare ms).

    `payload` is stored as the key's value: a str or bytes as is, anything else as JSON. The
    webhook receives it back in `payload`. Returns the deadline in ms since the epoch.
    """
    seconds = _seconds(delay)
    if seconds <= 0:
        raise ValueError(f"delay must be above 0, got {delay!r}")
    check_key(key)
    value = _value(payload)
    client = client or _default_client()
    ttl_ms = max(1, round(seconds * 1000))
    script = scripts.load(client, "schedule_key")
    return int(script(keys=[key, DUE, VALUES, LIMBO], args=[ttl_ms, value, tag_value(value, payload_limit)]))


def cancel(key: str, *, client: redis.Redis | None = None) -> bool:
    """Delete `key` and its index entry: the follow-up never fires. True if there was one."""
    client = client or _default_client()
    return bool(scripts.load(client, "cancel_key")(keys=[key, DUE, VALUES, LIMBO]))


def _seconds(delay: float | str | timedelta) -> float:
    if isinstance(delay, timedelta):
        return delay.total_seconds()
    if isinstance(delay, str):
        return parse_duration(delay, "delay")
    return float(delay)


def _value(payload: Any) -> bytes:
    if payload is None:
        return b"null"
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _default_client() -> redis.Redis:
    from followup.config import environment

    return redis.Redis.from_url(environment()("REDIS_URL") or "redis://localhost:6379/0")
