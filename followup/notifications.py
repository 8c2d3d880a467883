"""Making sure Redis sends the expired-key events followup listens to."""

from __future__ import annotations

import time
import uuid

import redis

from followup.jobs import PREFIX

SETTING = "notify-keyspace-events"
PROBE_WAIT = 3.0


class NotificationsOff(RuntimeError):
    """Redis does not send expired events and followup may not switch them on."""


def missing_flags(flags: str, wanted: str) -> str:
    """The flags of `wanted` that `flags` lacks ('A' stands for every event class, 'x' included)."""
    have = set(flags)
    if "A" in have:
        have |= set("g$lshzxetdm")
    return "".join(flag for flag in wanted if flag not in have)


def ensure_flags(client: redis.Redis, db: int, wanted: str = "Ex") -> str:
    """Add `wanted` to notify-keyspace-events, keeping the flags already set; return a report.

    Where CONFIG is refused (managed Redis), a probe key with a 1 ms TTL shows whether expired
    events are on anyway; if they are not, NotificationsOff names the setting to change.
    """
    try:
        current = _text(client.config_get(SETTING).get(SETTING, b""))
    except redis.ResponseError as exc:
        return probe_events(client, db, wanted, f"CONFIG GET is refused ({exc})")
    missing = missing_flags(current, wanted)
    if not missing:
        return f"{SETTING} is {current!r}"
    try:
        client.config_set(SETTING, current + missing)
    except redis.ResponseError as exc:
        raise NotificationsOff(
            f"Redis refuses CONFIG SET ({exc}): set {SETTING} to include {wanted!r} "
            f"(now {current!r}) in redis.conf or your provider's settings"
        ) from None
    return f"{SETTING} was {current!r}, added {missing!r}"


# Events a probe can provoke, and the flag that turns each on.
_PROBED = {b"set": "$", b"expire": "g", b"del": "g", b"expired": "x"}


def probe_events(client: redis.Redis, db: int, wanted: str, why: str = "CONFIG is refused") -> str:
    """Whether Redis sends the events of `wanted`, found out with probe keys (where CONFIG is refused).

    A probe key is written (set), given a 1 ms TTL (expire), touched once due (expired), and
    another one deleted (del); the events that arrive tell which flags are on.
    """
    probe, other = (f"{PREFIX}probe:{uuid.uuid4().hex}".encode() for _ in range(2))
    expected = {event for event, flag in _PROBED.items() if flag in wanted}
    seen: set[bytes] = set()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.psubscribe(f"__keyevent@{db}__:*")
        client.set(probe, b"1")
        client.pexpire(probe, 1)
        client.set(other, b"1")
        client.delete(other)
        deadline = time.monotonic() + PROBE_WAIT
        while seen < expected and time.monotonic() < deadline:
            client.exists(probe)  # an access expires the key on the spot
            message = pubsub.get_message(timeout=0.1)
            if message and message["type"] == "pmessage" and message["data"] in (probe, other):
                seen.add(message["channel"].rpartition(b":")[2])
    finally:
        pubsub.close()
    missing = sorted({_PROBED[event] for event in expected - seen})
    if missing:
        raise NotificationsOff(
            f"{why} and the probe keys' events show flags {''.join(missing)!r} are off: set {SETTING} to "
            f"include {wanted!r} in redis.conf or your provider's settings"
        )
    return f"{why}; probe keys' events show the flags are in place"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
