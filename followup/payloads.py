"""The `payload` of a follow-up: the key's value as written, kept by the index until expiry.

The index stores each value tagged by its first byte:
  v<bytes>   a string value, carried: JSON-decoded when it parses, else the text
  o<size>    a string value over PAYLOAD_MAX_BYTES: not carried
  t<type>    a hash, list, set, zset or stream: not carried (only string values are)
  n          no value known (the key expired before any listener saw it written)
"""

from __future__ import annotations

import json
from typing import Any

# What PAYLOAD_MAX_BYTES defaults to: larger values are not carried.
DEFAULT_PAYLOAD_LIMIT = 256 * 1024


def tag_value(value: bytes, limit: int) -> bytes:
    return b"v" + value if len(value) <= limit else b"o" + str(len(value)).encode()


def decode_payload(tagged: bytes, limit: int) -> tuple[Any, str | None]:
    """(payload, payloadError): the payload for the webhook body, or None and why."""
    tag, body = tagged[:1], tagged[1:]
    if tag == b"v":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None, f"the value is not UTF-8 text ({len(body)} bytes)"
        try:
            decoded = json.loads(text)
            # JSON may escape half of a surrogate pair (JavaScript cuts strings in the middle of
            # an emoji): valid JSON, but no UTF-8 can carry it on. Such a value goes as written.
            json.dumps(decoded, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):
            return text, None
        return decoded, None
    if tag == b"o":
        return None, f"the value has {int(body)} bytes, over PAYLOAD_MAX_BYTES ({limit})"
    if tag == b"t":
        return None, f"the value is a {body.decode()}; only string values are carried"
    return None, "the value was not recorded: no listener saw the key written before it expired"
