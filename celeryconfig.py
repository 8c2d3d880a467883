"""Celery settings, derived from followup's configuration (see followup/config.py).

Jobs are acknowledged only after they finish (acks_late), handed back when a worker dies
(reject_on_worker_lost), and taken one at a time per slot (prefetch 1). The broker's visibility
timeout follows from the attempt and backoff settings: longer than a worker can hold a job, short
enough that a killed worker's jobs come back within minutes rather than Celery's default hour.
"""

from followup.config import settings

_settings = settings()

broker_url = _settings.broker_url
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout,
    # Sweep for a dead worker's messages every 5 s, not every 100 s (10 s x throttle 10).
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
    "health_check_interval": 25,
    "socket_keepalive": True,
    # kombu gives a channel 10 connections by default; under gevent up to every slot acks at once,
    # and an ack that finds no connection is lost (the job comes back after the visibility
    # timeout, and the slot stays taken).
    "max_connections": (_settings.worker_concurrency or 1000) + 50,
}
broker_heartbeat = 0

task_default_queue = _settings.queue_name
task_acks_late = True
task_reject_on_worker_lost = True
task_ignore_result = True
task_serializer = "json"
accept_content = ["json"]
task_track_started = True

worker_prefetch_multiplier = 1
worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = True
worker_redirect_stdouts = False
if _settings.worker_concurrency:
    worker_concurrency = _settings.worker_concurrency

timezone = "UTC"
enable_utc = True
