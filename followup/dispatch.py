"""Handing a follow-up to the flow: the webhook POST and/or the channel PUBLISH of one attempt."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import redis
import requests
from requests.adapters import HTTPAdapter

from followup.config import Settings
from followup.errors import DispatchError
from followup.jobs import Job, now_ms
from followup.mapping import Rule
from followup.metrics import WorkerMetrics, outcome_of
from followup.signing import signature_headers

log = logging.getLogger("followup.dispatch")

# What is read of a webhook's answer: only its status matters, the rest is for the log line.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "followup"
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")]+")


def followup_message(job: Job, attempt: int, settings: Settings) -> dict[str, Any]:
    """The body of the webhook and of the channel message (the contract's format)."""
    message = {
        "jobId": job.id,
        "key": job.key,
        "event": "expired",
        "message": f"The key {job.key} has expired.",
        "attempt": attempt,
        "maxAttempts": settings.max_attempts,
        "expiredAt": job.expired_at,
        "timestamp": now_ms(),
        "callbackChannel": settings.callback_channel,
        "payload": job.payload,
    }
    if job.payload_error:
        message["payloadError"] = job.payload_error
    return message


def http_session(pool_size: int) -> requests.Session:
    """One session per worker process: keep-alive connections shared by all its jobs."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


class Dispatcher:
    def __init__(
        self, settings: Settings, client: redis.Redis, session: requests.Session, metrics: WorkerMetrics
    ) -> None:
        self._settings = settings
        self._redis = client
        self._session = session
        self._metrics = metrics

    def send(self, job: Job, rule: Rule, attempt: int) -> None:
        """POST the webhook, then PUBLISH on the channel; raise DispatchError if either fails."""
        body = json.dumps(
            followup_message(job, attempt, self._settings), separators=(",", ":"), ensure_ascii=False
        ).encode()
        if rule.webhook_url:
            self._post(rule.webhook_url, job, attempt, body)
        if rule.channel:
            self._publish(rule.channel, body)

    def _post(self, url: str, job: Job, attempt: int, body: bytes) -> None:
        headers = {
            "Content-Type": "application/json",
            "X-Followup-Job-Id": job.id,
            "X-Followup-Attempt": str(attempt),
        }
        if self._settings.webhook_secrets:
            headers.update(
                signature_headers(self._settings.webhook_secrets, f"{job.id}-{attempt}", int(time.time()), body)
            )
        timeout = self._settings.webhook_timeout
        started = time.monotonic()
        try:
            with self._session.post(
                url, data=body, headers=headers, timeout=(timeout, timeout), allow_redirects=False, stream=True
            ) as response:
                status = response.status_code
                _drain(response)
        except requests.Timeout:
            self._metrics.webhook_duration.labels("timeout").observe(time.monotonic() - started)
            raise DispatchError(f"webhook timed out after {timeout:g}s") from None
        except requests.RequestException as exc:
            self._metrics.webhook_duration.labels("error").observe(time.monotonic() - started)
            log.debug("webhook for job %s failed", job.id, exc_info=True)
            raise DispatchError(f"webhook failed: {type(exc).__name__}: {_reason(exc)}") from None
        elapsed = time.monotonic() - started
        self._metrics.webhook_duration.labels(outcome_of(status)).observe(elapsed)
        log.debug("webhook for job %s answered %s in %.0f ms", job.id, status, elapsed * 1000)
        if not 200 <= status < 300:
            raise DispatchError(f"webhook answered HTTP {status}")

    def _publish(self, channel: str, body: bytes) -> None:
        try:
            receivers = self._redis.publish(channel, body)
        except redis.RedisError as exc:
            raise DispatchError(f"publish on {channel!r} failed: {exc}") from None
        if receivers == 0:
            raise DispatchError(f"no subscriber on channel {channel!r}: nobody received the follow-up")


def _drain(response: requests.Response) -> None:
    """Read at most MAX_RESPONSE_BYTES, so that a huge or endless answer costs nothing more."""
    read = 0
    for chunk in response.iter_content(chunk_size=16 * 1024):
        read += len(chunk)
        if read >= MAX_RESPONSE_BYTES:
            break


def _reason(exc: requests.RequestException) -> str:
    """Why a request failed, without its URL (a webhook's path may be its only secret)."""
    found = _ERRNO.search(str(exc))
    return found.group(0).strip() if found else "see DEBUG log"
