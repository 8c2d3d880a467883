"""Callbacks: flows confirm a job with `{"jobId": …, "status": "success"}` on CALLBACK_CHANNEL.

One subscription per worker process serves every job waiting in it (`CallbackHub`). A job
registers its waiter *before* it dispatches, so a flow that confirms before its webhook even
answers (n8n always does) is caught. A callback for a job that no attempt in this process waits
for goes to the job's record (`JobStore.offer`): if no attempt anywhere waits, a success is kept
there and the next attempt finds it instead of dispatching again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from followup.errors import CallbackError

log = logging.getLogger("followup.callbacks")

MAX_CALLBACK_BYTES = 64 * 1024
MAX_ERROR_CHARS = 2000
RECONNECT_MAX = 10.0


@dataclass(frozen=True)
class Callback:
    job_id: str
    status: str
    error: str | None
    raw: str
    attempt: int | None = None  # the attempt the flow answers, when it says (the webhook body has it)

    @property
    def ok(self) -> bool:
        return self.status == "success"


def parse_callback(data: bytes | str) -> Callback:
    """Parse one callback message; raise CallbackError (and nothing else) when it is unusable."""
    if len(data) > MAX_CALLBACK_BYTES:
        raise CallbackError(f"callback of {len(data)} bytes is over the {MAX_CALLBACK_BYTES}-byte limit")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CallbackError("callback is not UTF-8") from None
    else:
        text = data
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise CallbackError(f"callback is not JSON: {_preview(text)}") from None
    if not isinstance(message, dict):
        raise CallbackError(f"callback is not a JSON object: {_preview(text)}")
    job_id = message.get("jobId")
    # n8n keeps a jobId's JSON type (a number stays a number): compare them as strings.
    if isinstance(job_id, bool) or not isinstance(job_id, (str, int)) or str(job_id) == "":
        raise CallbackError(f"callback has no usable jobId: {_preview(text)}")
    status = message.get("status")
    if not isinstance(status, str) or not status:
        raise CallbackError(f"callback for job {str(job_id)[:100]} has no status")
    error = message.get("error")
    if error is not None and not isinstance(error, str):
        error = json.dumps(error, ensure_ascii=False)
    attempt = message.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        attempt = None
    return Callback(
        job_id=str(job_id),
        status=status.strip().lower(),
        error=error[:MAX_ERROR_CHARS] if error else None,
        raw=text,
        attempt=attempt,
    )


def _preview(text: str) -> str:
    return repr(text[:80]) + ("…" if len(text) > 80 else "")


class Waiter:
    """One attempt's wait for its callback; the first callback that is about it wins.

    A failure is about this attempt only once it has been dispatched (armed), and not when the
    callback names an earlier attempt: a slow flow's answer to the previous attempt must not
    fail this one. A success always counts: the job is done whichever attempt the flow answers.
    """

    def __init__(self, hub: CallbackHub, job_id: str, attempt: int) -> None:
        self._hub = hub
        self.job_id = job_id
        self.attempt = attempt
        self._armed = False
        self._arrived = threading.Event()
        self._callback: Callback | None = None

    def arm(self) -> None:
        """The attempt is about to dispatch: from now on a failure callback is about it."""
        self._armed = True

    def deliver(self, callback: Callback) -> None:
        if self._callback is not None:
            return
        if not callback.ok and (not self._armed or (callback.attempt or self.attempt) < self.attempt):
            log.info("ignored a %r callback for job %s: it answers an earlier attempt", callback.status, self.job_id)
            return
        self._callback = callback
        self._arrived.set()

    def wait(self, timeout: float) -> Callback | None:
        self._arrived.wait(timeout)
        return self._callback

    def close(self) -> Callback | None:
        """Stop listening; returns a callback that arrived until now, even after a timed-out wait."""
        self._hub.unregister(self)
        return self._callback

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


Offer = Callable[[Callback], str]


class CallbackHub:
    """The single callback subscription of one worker process and the attempts waiting on it."""

    def __init__(
        self, client: redis.Redis, channel: str, offer: Offer, signals: dict[str, Callable[[], None]] | None = None
    ) -> None:
        self._client = client
        self._channel = channel
        self._offer = offer
        # Other channels whose every message only rings a bell (the ready lists' wake-up word):
        # they ride on this subscription rather than costing the process another connection.
        self._signals = dict(signals or {})
        self._waiters: dict[str, list[Waiter]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self.connected = False
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Subscribe in the background; return once the subscription is live."""
        self._thread = threading.Thread(target=self._run, name="followup-callbacks", daemon=True)
        self._thread.start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"could not subscribe to callback channel {self._channel!r} in {timeout:g}s")

    def stop(self) -> None:
        self._stopping.set()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def register(self, job_id: str, attempt: int) -> Waiter:
        # A list: a duplicate delivery of the same job in this process registers beside the
        # attempt that runs, and leaving must not take the other's registration with it.
        waiter = Waiter(self, job_id, attempt)
        with self._lock:
            self._waiters.setdefault(job_id, []).append(waiter)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(waiter.job_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(waiter.job_id, None)

    def handle(self, data: bytes | str) -> None:
        """Route one message from the channel: to a local waiter, else to the job's record."""
        try:
            callback = parse_callback(data)
        except CallbackError as exc:
            log.warning("ignored a callback on %s: %s", self._channel, exc)
            return
        with self._lock:
            # Under the lock, so that a waiter closing at the same moment either gets it or
            # is already gone and the offer below keeps it.
            waiters = list(self._waiters.get(callback.job_id, ()))
            for waiter in waiters:
                waiter.deliver(callback)
        if waiters:
            return
        try:
            outcome = self._offer(callback)
        except redis.RedisError as exc:
            log.error("could not record callback for job %s: %s", callback.job_id, exc)
            return
        if outcome == "unknown":
            log.info("ignored callback for unknown job %s", callback.job_id)
        elif outcome == "stored":
            log.info(
                "kept callback for job %s: no attempt waits for it now; the next one will find it", callback.job_id
            )
        else:
            log.debug("callback for job %s: %s", callback.job_id, outcome)

    def _run(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=False)
            try:
                pubsub.subscribe(self._channel, *self._signals)
                for message in pubsub.listen():
                    if message["type"] == "subscribe" and message["channel"] == self._channel.encode():
                        self.connected = True
                        if delay > 0.1:
                            log.info("callback subscription to %s is back", self._channel)
                        delay = 0.1
                        self._subscribed.set()
                    elif message["type"] == "message":
                        ring = self._signals.get(message["channel"].decode("utf-8", "replace"))
                        if ring is not None:
                            ring()
                        else:
                            self.handle(message["data"])
                    if self._stopping.is_set():
                        break
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self.connected = False
                log.warning("callback subscription lost (%s); reconnecting in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
            except Exception:
                log.exception("callback subscription failed; reconnecting in %.1fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
            finally:
                with contextlib.suppress(Exception):  # closing a broken connection may fail too
                    pubsub.close()
