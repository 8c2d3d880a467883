"""Log set-up: one line per event that matters, text or JSON lines, secrets masked.

Celery sets up the worker's handlers itself; celery_app.py applies the same filter and, with
LOG_FORMAT=json, the same formatter to them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from followup.config import Settings
from followup.redaction import SecretFilter

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def formatter(settings: Settings) -> logging.Formatter:
    return JsonFormatter() if settings.log_format == "json" else logging.Formatter(FORMAT)


def prepare_handler(handler: logging.Handler, settings: Settings) -> None:
    """Mask secrets on `handler` and give it followup's format."""
    handler.addFilter(SecretFilter(settings.secrets()))
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings))
    prepare_handler(handler, settings)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    if not settings.debug:
        # Without DEBUG, one line per event that matters; the libraries' chatter stays out.
        for noisy in ("urllib3", "celery", "kombu", "amqp"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
