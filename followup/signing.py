"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp`, `webhook-signature`.

followup signs with the first of WEBHOOK_SECRET's space-separated secrets; receivers verify with
any of theirs, so a secret can be rotated without a moment when signatures fail. `verify` is for
Python receivers (the README has the same check as an n8n Code node).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from followup.config import secret_bytes


class SignatureError(ValueError):
    """A webhook's signature headers are missing, stale, or match none of the secrets."""


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with one secret (whsec_… or plain text)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()).decode()


def signature_headers(secrets: tuple[str, ...], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers that sign `body` with the first secret."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets[0], message_id, timestamp, body),
    }


def verify(headers: Mapping[str, str], body: bytes, secret: str, tolerance: int = 300) -> str:
    """Check a followup webhook; return its `webhook-id`, or raise SignatureError.

    `secret` may hold several space-separated secrets (during a rotation); `tolerance` is how far,
    in seconds, the timestamp may be from now either way (replays older than that are refused).
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        offered = lowered["webhook-signature"].split()
    except KeyError as missing:
        raise SignatureError(f"missing header {missing}") from None
    except ValueError:
        raise SignatureError("webhook-timestamp is not a number") from None
    if abs(time.time() - timestamp) > tolerance:
        raise SignatureError(f"timestamp is more than {tolerance}s away from now")
    for candidate in secret.split():
        try:
            expected = sign(candidate, message_id, timestamp, body)
        except binascii.Error:
            raise SignatureError("a secret starting with whsec_ is not base64") from None
        if any(hmac.compare_digest(expected, signature) for signature in offered):
            return message_id
    raise SignatureError("no signature matches")
