"""Handing a follow-up to the flow: the webhook POST and/or the channel PUBLISH of one attempt."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from email.utils import parsedate_to_datetime
from typing import Any

import redis
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as HttpTimeout

from followup.config import Settings
from followup.errors import DispatchError
from followup.http_client import HttpClient
from followup.jobs import Job, now_ms
from followup.mapping import Rule
from followup.metrics import WorkerMetrics, outcome_of
from followup.signing import signature_headers

log = logging.getLogger("followup.dispatch")

# What is read of a webhook's answer: only its status matters, the rest is for the log line.
MAX_RESPONSE_BYTES = 64 * 1024
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


class Dispatcher:
    def __init__(self, settings: Settings, client: redis.Redis, http: HttpClient, metrics: WorkerMetrics) -> None:
        self._settings = settings
        self._redis = client
        self._http = http
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
            # A total budget, not only a per-read one: a receiver that drips its answer a byte
            # at a time must not hold an attempt past WEBHOOK_TIMEOUT. Redirects are not followed.
            with _deadline(timeout):
                response = self._http.post(url, body, headers, timeout)
                status = response.status
                retry_after = response.headers.get("Retry-After")
                read = _drain(response, deadline=started + timeout)
        except NewConnectionError as exc:
            # Before the timeouts: urllib3 2 makes a refused connection a ConnectTimeoutError too.
            raise self._failed(job, started, exc) from None
        except (HttpTimeout, WebhookDeadline):
            self._metrics.webhook_duration.labels("timeout").observe(time.monotonic() - started)
            raise DispatchError(f"webhook timed out after {timeout:g}s") from None
        except (HTTPError, OSError) as exc:
            raise self._failed(job, started, exc) from None
        elapsed = time.monotonic() - started
        self._metrics.webhook_duration.labels(outcome_of(status)).observe(elapsed)
        log.debug("webhook for job %s answered %s in %.0f ms", job.id, status, elapsed * 1000)
        if read is not None:
            log.info("webhook for job %s: its answer was not read past %d bytes (only the status counts)", job.id, read)
        if status == 410:
            raise DispatchError("webhook answered HTTP 410 Gone: the receiver will never take it", final=True)
        if status in (429, 503):
            pause = parse_retry_after(retry_after)
            asked = f", Retry-After {pause:g}s" if pause is not None else ""
            raise DispatchError(f"webhook answered HTTP {status}{asked}", retry_after=pause)
        if not 200 <= status < 300:
            raise DispatchError(f"webhook answered HTTP {status}")

    def _failed(self, job: Job, started: float, exc: Exception) -> DispatchError:
        self._metrics.webhook_duration.labels("error").observe(time.monotonic() - started)
        log.debug("webhook for job %s failed", job.id, exc_info=True)
        return DispatchError(f"webhook failed: {type(exc).__name__}: {_reason(exc)}")

    def _publish(self, channel: str, body: bytes) -> None:
        try:
            receivers = self._redis.publish(channel, body)
        except redis.RedisError as exc:
            raise DispatchError(f"publish on {channel!r} failed: {exc}") from None
        if receivers == 0:
            raise DispatchError(f"no subscriber on channel {channel!r}: nobody received the follow-up")


class WebhookDeadline(Exception):
    """WEBHOOK_TIMEOUT passed while the webhook call was still going on."""


def _deadline(seconds: float) -> contextlib.AbstractContextManager:
    """Under gevent (the worker's default pool), a hard deadline for the whole call.

    urllib3's timeouts bound each read, so a receiver dripping bytes could hold an attempt much
    longer. gevent can interrupt the greenlet at any blocking point; in a thread pool only the
    per-read timeouts apply.
    """
    if "gevent" in sys.modules:
        from gevent import Timeout
        from gevent.monkey import is_module_patched

        if is_module_patched("socket"):
            return Timeout(seconds, WebhookDeadline)
    return contextlib.nullcontext()


def _drain(response: urllib3.BaseHTTPResponse, deadline: float) -> int | None:
    """Read at most MAX_RESPONSE_BYTES before `deadline`: a huge or endless answer costs no more.

    Only the status matters; the body is read so that the connection can be reused, and a
    connection whose answer was not read to its end is closed rather than reused. Returns how
    many bytes were read when the answer was cut there, else None.
    """
    read, complete = 0, False
    try:
        for chunk in response.stream(16 * 1024):
            read += len(chunk)
            if read >= MAX_RESPONSE_BYTES or time.monotonic() >= deadline:
                break
        else:
            complete = True
    except (HTTPError, OSError):
        pass  # the status has arrived; a body cut short does not change it
    finally:
        if not complete:
            response.close()
        response.release_conn()
    return None if complete else read


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date (RFC 9110); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _reason(exc: Exception) -> str:
    """Why a request failed, without its URL (a webhook's path may be its only secret)."""
    found = _ERRNO.search(str(exc))
    return found.group(0).strip() if found else "see DEBUG log"
