"""The Celery application, configured from celeryconfig.py (itself read from followup's settings)."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from followup.feeder import Feeder
from followup.job_events import JobEvents
from followup.redaction import redact_userinfo
from followup.redelivery import UnackedSweeper

# Set by `followup flower` for the Celery process it becomes.
FLOWER_PROCESS = "FOLLOWUP_FLOWER_PROCESS"

app = Celery("followup")
app.config_from_object("celeryconfig")
app.conf.include = ["followup.tasks"]

if os.environ.get(FLOWER_PROCESS) == "1":
    # Flower logs through the root logger, and tornado adds its own handler only where the root
    # has none: followup's goes first, so Flower's lines get LOG_FORMAT and the secret filter too.
    from followup.config import settings as _settings
    from followup.logs import setup_logging

    setup_logging(_settings())


@after_setup_logger.connect
@after_setup_task_logger.connect
def _prepare_handlers(logger: logging.Logger, **_: object) -> None:
    from followup.config import settings
    from followup.logs import prepare_handler

    for handler in logger.handlers:
        prepare_handler(handler, settings())


_sweeper: UnackedSweeper | None = None
_feeder: Feeder | None = None
_stopping = False


@worker_ready.connect
def _start_worker_services(sender: object = None, **_: object) -> None:
    # Celery sends worker_ready once and swallows what its receivers raise: Redis being away
    # at that moment must not leave a worker that runs retries but never takes a first attempt.
    threading.Thread(target=_start_until_it_works, args=(sender,), name="followup-start", daemon=True).start()


def _start_until_it_works(sender: object) -> None:
    delay = 0.5
    while not _stopping:
        try:
            _start(sender)
            return
        except Exception as exc:  # noqa: BLE001 - Redis away, or slow to load: try again
            logging.getLogger("followup.worker").warning(
                "could not start taking jobs (%s); trying again in %.0fs", redact_userinfo(str(exc)), delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _start(sender: object) -> None:
    global _sweeper, _feeder
    from followup.worker import DEFAULT_CONCURRENCY, runtime

    # Subscribe to callbacks before the first job arrives rather than on its first attempt.
    worker_runtime = runtime()
    if worker_runtime.settings.metrics_port:
        from followup.metrics import serve

        serve(worker_runtime.settings.metrics_port, worker_runtime.metrics.registry, worker_runtime.health)
    _sweeper = UnackedSweeper(app)
    _sweeper.start()
    # The queues this worker consumes (`--queues`): their ready lists, in the same order.
    queues = [queue.name for queue in (app.amqp.queues.consume_from or app.amqp.queues).values()]
    slots = getattr(getattr(sender, "controller", None), "concurrency", None) or DEFAULT_CONCURRENCY
    events = None
    if app.conf.worker_send_task_events:
        events = JobEvents(app, getattr(sender, "hostname", None) or "followup")
        events.start()
    # A stop signal may come while this runs: the feeder must then not take jobs behind the
    # shutdown's back (they would wait for their leases to run out). No lock: the signal's
    # handler may run in this very greenlet. Published first, checked after: whichever order
    # the two run in, either the handler stops the feeder or the feeder is not started.
    _feeder = Feeder(worker_runtime, queues or [worker_runtime.settings.queue_name], slots, events)
    if not _stopping:
        _feeder.start()
    # Everything made so far (Celery, kombu, the runtime) lives as long as the process: out of
    # the collector's way, a full collection no longer walks it and stalls every waiting job.
    gc.freeze()


@worker_shutting_down.connect
def _stop_taking(**_: object) -> None:
    global _stopping
    _stopping = True
    if _feeder is not None:
        _feeder.stop_taking()


@worker_shutdown.connect
def _stop_worker_services(**_: object) -> None:
    from followup.worker import runtime, stop_runtime

    if _feeder is not None:
        # Warm shutdown: the jobs waiting for callbacks may finish, as Celery lets its tasks.
        left = _feeder.drain(runtime().settings.longest_attempt)
        if left:
            logging.getLogger("followup.feeder").warning(
                "stopped with %d job(s) unfinished: they run again elsewhere once their leases run out", left
            )
    if _sweeper is not None:
        _sweeper.stop()
    stop_runtime()
