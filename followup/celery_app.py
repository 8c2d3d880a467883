"""The Celery application, configured from celeryconfig.py (itself read from followup's settings)."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_ready, worker_shutdown

from followup.redelivery import UnackedSweeper

app = Celery("followup")
app.config_from_object("celeryconfig")
app.conf.include = ["followup.tasks"]


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_secrets(logger: logging.Logger, **_: object) -> None:
    from followup.config import settings
    from followup.redaction import SecretFilter

    secret_filter = SecretFilter(settings().secrets())
    for handler in logger.handlers:
        handler.addFilter(secret_filter)


_sweeper: UnackedSweeper | None = None


@worker_ready.connect
def _start_worker_services(**_: object) -> None:
    global _sweeper
    from followup.worker import runtime

    # Subscribe to callbacks before the first job arrives rather than on its first attempt.
    runtime()
    _sweeper = UnackedSweeper(app)
    _sweeper.start()


@worker_shutdown.connect
def _stop_worker_services(**_: object) -> None:
    from followup.worker import stop_runtime

    if _sweeper is not None:
        _sweeper.stop()
    stop_runtime()
