"""Keeping secrets out of logs and messages: passwords in URLs, webhook secrets, tokens."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# Everything from "://" to the last "@" of the same token: a password may itself hold "/", "?"
# or "@" (redis-py accepts them), and none of it may show.
_USERINFO = re.compile(r"(?<=://)[^\s'\"]*@")
# redis-py also takes the password from the query (`?password=…`).
_QUERY_PASSWORD = re.compile(r"(?i)(?<=[?&]password=)[^&#\s'\"]*")
MASK = "***"


def redact_userinfo(url: str) -> str:
    """The URL with any `user:password@` part and `password=` query value masked, to be shown."""
    # The query first: a password there may hold an "@", which the userinfo pattern stops at.
    return _USERINFO.sub(f"{MASK}@", _QUERY_PASSWORD.sub(MASK, url))


class SecretFilter(logging.Filter):
    """Masks known secret strings in every record that passes through a handler.

    A last line of defence: code already avoids logging secrets, but a library's exception text
    (a connection error quoting its URL, say) can still carry one.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact_userinfo(message)
        for secret in self._secrets:
            masked = masked.replace(secret, MASK)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            text = redact_userinfo(record.exc_text)
            for secret in self._secrets:
                text = text.replace(secret, MASK)
            record.exc_text = text
        return True
