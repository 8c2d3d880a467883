"""Handing a dead worker's jobs to the living: the sweep of the broker's unacked messages.

kombu's Redis transport restores messages whose visibility timeout has passed only from its event
loop, which Celery runs for the prefork pool alone. Under gevent or threads the worker drains the
broker synchronously, and an idle queue's BRPOP times out through a path that skips the restore:
a SIGKILLed worker's jobs would stay unacked for good. Every worker therefore sweeps on a timer;
kombu's own mutex keeps two workers from restoring the same message.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

log = logging.getLogger("followup.redelivery")

SWEEP_INTERVAL = 5.0


class UnackedSweeper:
    def __init__(self, app: Celery, interval: float = SWEEP_INTERVAL) -> None:
        self._app = app
        self._interval = interval
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="followup-unacked-sweeper", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def sweep(self) -> None:
        with self._app.connection_for_write() as connection:
            qos = connection.default_channel.qos
            if hasattr(qos, "restore_visible"):  # only kombu's Redis transport emulates acks
                qos.restore_visible(num=None, interval=1)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sweep()
            except Exception as exc:  # noqa: BLE001 - a broker outage must not end the sweeps
                log.warning("could not sweep unacked messages: %s", exc)
