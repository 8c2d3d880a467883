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
def _prepare_handlers(logger: logging.Logger, **_: object) -> None:
    from followup.config import settings
    from followup.logs import prepare_handler

    for handler in logger.handlers:
        prepare_handler(handler, settings())


_sweeper: UnackedSweeper | None = None


@worker_ready.connect
def _start_worker_services(**_: object) -> None:
    global _sweeper
    from followup.worker import runtime

    # Subscribe to callbacks before the first job arrives rather than on its first attempt.
    worker_runtime = runtime()
    if worker_runtime.settings.metrics_port:
        from followup.metrics import serve

        serve(worker_runtime.settings.metrics_port, worker_runtime.metrics.registry, worker_runtime.health)
    _sweeper = UnackedSweeper(app)
    _sweeper.start()


@worker_shutdown.connect
def _stop_worker_services(**_: object) -> None:
    from followup.worker import stop_runtime

    if _sweeper is not None:
        _sweeper.stop()
    stop_runtime()
