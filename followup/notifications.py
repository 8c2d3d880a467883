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


def expired_channel(db: int) -> str:
    return f"__keyevent@{db}__:expired"


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
        return probe_expired_events(client, db, f"CONFIG GET is refused ({exc})")
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


def probe_expired_events(client: redis.Redis, db: int, why: str = "CONFIG is refused") -> str:
    """Whether Redis sends expired events, found out with a key that expires at once."""
    probe = f"{PREFIX}probe:{uuid.uuid4().hex}".encode()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(expired_channel(db))
        client.set(probe, b"1", px=1)
        deadline = time.monotonic() + PROBE_WAIT
        while time.monotonic() < deadline:
            client.exists(probe)  # an access expires the key on the spot
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message" and message["data"] == probe:
                return f"{why}; a probe key's expired event arrived, so the flags are in place"
    finally:
        pubsub.close()
    raise NotificationsOff(
        f"{why} and no expired event arrived for a probe key: set {SETTING} to include 'Ex' "
        "in redis.conf or your provider's settings"
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
