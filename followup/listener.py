"""`followup listen`: expired-key events in, one Celery task per expiration of a mapped key out.

The listener never does the HTTP work itself; it only decides which expirations become jobs.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable

import redis

from followup.config import Settings
from followup.connections import subscriber_client
from followup.jobs import PREFIX, Job, now_ms
from followup.notifications import ensure_flags, expired_channel

log = logging.getLogger("followup.listener")

RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0
# Keys that Celery and kombu keep in the same Redis by default; never followed up, whatever the
# mapping's globs say. (Queue names are added per listener.)
_BROKER_PREFIXES = ("_kombu.", "celery-task-meta-", "celery-taskset-meta-", PREFIX)
_BROKER_KEYS = frozenset({"unacked", "unacked_index", "unacked_mutex"})

Enqueue = Callable[[Job], None]


def is_internal(key: str, queue_name: str) -> bool:
    """Keys of followup itself and of its broker, which a broad glob must not catch."""
    return key.startswith(_BROKER_PREFIXES) or key in _BROKER_KEYS or key == queue_name


class Listener:
    def __init__(self, settings: Settings, enqueue: Enqueue) -> None:
        self._settings = settings
        self._enqueue = enqueue
        self._client = subscriber_client(settings.redis_url)
        self._channel = expired_channel(settings.redis_db)

    def run(self, stop: threading.Event) -> None:
        """Listen until `stop` is set, reconnecting with backoff whenever Redis goes away."""
        delay = RECONNECT_MIN
        while not stop.is_set():
            try:
                self._listen(stop)
                delay = RECONNECT_MIN
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if stop.is_set():
                    break
                wait = delay * random.uniform(1.0, 1.25)
                log.warning("lost Redis at %s (%s); reconnecting in %.1fs", self._settings.masked_redis_url, exc, wait)
                stop.wait(wait)
                delay = min(delay * 2, RECONNECT_MAX)

    def handle(self, raw_key: bytes) -> None:
        """One expired event: enqueue a job if the key is mapped, otherwise ignore it."""
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("ignored expired key that is not UTF-8: %r", raw_key[:200])
            return
        if is_internal(key, self._settings.queue_name):
            return
        rule = self._settings.mapping.match(key)
        if rule is None:
            log.debug("ignored expired key %r: no rule", key)
            return
        job = Job(id=str(uuid.uuid4()), key=key, expired_at=now_ms())
        try:
            self._enqueue(job)
        except Exception:
            log.exception("could not enqueue job %s for expired key %r: this follow-up is lost", job.id, key)
            return
        log.info("key %r expired: job %s queued (rule %s)", key, job.id, rule.describe())

    def _listen(self, stop: threading.Event) -> None:
        report = ensure_flags(self._client, self._settings.redis_db)
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._channel)
            log.info(
                "listening on %s at %s (%d rules; %s)",
                self._channel,
                self._settings.masked_redis_url,
                len(self._settings.mapping.rules),
                report,
            )
            while not stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message and message["type"] == "message":
                    self.handle(message["data"])
        finally:
            pubsub.close()


def celery_enqueue(settings: Settings) -> Enqueue:
    """Enqueue jobs as Celery tasks on QUEUE_NAME, the task id being the jobId."""
    from followup.celery_app import app
    from followup.tasks import TASK_NAME

    retry_policy = {"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3.0}

    def enqueue(job: Job) -> None:
        app.send_task(
            TASK_NAME,
            kwargs={"key": job.key, "expired_at": job.expired_at, "payload": job.payload},
            task_id=job.id,
            queue=settings.queue_name,
            retry=True,
            retry_policy=retry_policy,
        )

    return enqueue
