"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp`, `webhook-signature`."""

from __future__ import annotations

import base64
import hashlib
import hmac

from followup.config import secret_bytes


def signature_headers(secrets: tuple[str, ...], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers that sign `body` with the first secret (the others are for receivers mid-rotation)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secrets[0]), signed, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }
