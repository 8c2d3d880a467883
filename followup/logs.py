"""Log set-up for followup's own processes (Celery sets up the worker's, see celery_app.py)."""

from __future__ import annotations

import logging
import sys

from followup.config import Settings
from followup.redaction import SecretFilter

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(SecretFilter(settings.secrets()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    if not settings.debug:
        # Without DEBUG, one line per event that matters; the libraries' chatter stays out.
        for noisy in ("urllib3", "celery", "kombu", "amqp"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
