"""The baseline scheduler: plain Celery with `apply_async(eta=deadline)`, no TTL trigger, no callbacks.

A task that runs at its ETA POSTs the same body followup would to the receiver (keep-alive session,
one per worker process), then PUBLISHes `{"jobId"}` on BENCH_DONE_CHANNEL: the counterpart of
followup's success event. Its worker is the stock prefork pool with one process per core.

Configured from the environment: BENCH_BROKER_URL, BENCH_RECEIVER_URL, BENCH_DONE_CHANNEL.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
import requests
from celery import Celery

app = Celery("bench_countdown", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:1/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue="bench_countdown",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
    worker_redirect_stdouts=False,
    timezone="UTC",
    enable_utc=True,
)

TASK_NAME = "bench.countdown.fire"
_clients: dict[str, Any] = {}


def _client(name: str) -> Any:
    """One HTTP session and one Redis client per worker process, made after the fork."""
    if name not in _clients:
        if name == "http":
            _clients[name] = requests.Session()
        else:
            _clients[name] = redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])
    return _clients[name]


@app.task(name=TASK_NAME)
def fire(job_id: str, key: str, deadline: int) -> None:
    body = {
        "jobId": job_id,
        "key": key,
        "event": "expired",
        "message": f"The key {key} has expired.",
        "attempt": 1,
        "maxAttempts": 1,
        "expiredAt": deadline,
        "timestamp": int(time.time() * 1000),
        "callbackChannel": "none",
        "payload": None,
    }
    response = _client("http").post(
        os.environ["BENCH_RECEIVER_URL"],
        data=json.dumps(body, separators=(",", ":")),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    response.raise_for_status()
    _client("redis").publish(os.environ["BENCH_DONE_CHANNEL"], json.dumps({"jobId": job_id}))
