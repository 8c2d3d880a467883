"""Real parts for end-to-end tests: followup processes, an HTTP receiver, an event collector."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis

FOLLOWUP = [sys.executable, "-m", "followup"]
ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class FollowupProcess:
    """`followup <command>` as a real subprocess, its output in a log file for failure messages."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path, ready: str) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> FollowupProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*FOLLOWUP, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()
        wait_until(
            lambda: self.ready in self.output(offset) or self.proc.poll() is not None,
            timeout,
            f"{self.name} to be ready ({self.ready!r})",
        )
        assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
        return self

    def output(self, offset: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group: nothing gets to clean up."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def followup_env(**settings: str) -> dict[str, str]:
    """A clean environment for a followup process: only PATH, HOME and the given settings."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
    }
    env.update(settings)
    return env


def start_listener(env: dict[str, str], log_dir: Path, name: str = "listener") -> FollowupProcess:
    return FollowupProcess(name, ["listen"], env, log_dir, ready="listening on").start()


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker", concurrency: int = 50) -> FollowupProcess:
    args = [
        "worker",
        "--concurrency",
        str(concurrency),
        "--without-mingle",
        "--without-gossip",
        "--hostname",
        f"{name}@%h",
    ]
    return FollowupProcess(name, args, env, log_dir, ready=" ready.").start()


@dataclass
class Reply:
    """How the receiver answers one webhook call."""

    status: int = 200
    callback: str | None = None  # a status to publish on the callback channel, or None
    error: str | None = None
    callback_first: bool = True  # n8n publishes before its webhook answers
    delay: float = 0.0  # seconds before answering
    raw_before: list[bytes] = field(default_factory=list)  # messages published before the callback
    headers: dict[str, str] = field(default_factory=dict)
    body_bytes: int = 0  # a body of this many bytes (-1: one that never ends, for up to 20 s)
    drip: float = 0.0  # send the status line and headers one byte every `drip` seconds


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # time.time()
    raw: bytes = b""


class _ReceiverServer(ThreadingHTTPServer):
    # A worker connects for a whole burst of jobs at once; socketserver's backlog of 5 would
    # drop the rest of the SYNs, and the kernel retries them only after a second.
    request_queue_size = 1024


class Receiver:
    """A real HTTP server standing in for the flow: records every call, answers as planned."""

    def __init__(self, redis_url: str, callback_channel: str) -> None:
        self.requests: list[Request] = []
        self._plans: dict[str, list[Reply]] = {}
        self.default_reply = Reply()  # for keys without a plan
        self._cond = threading.Condition()
        self._redis = redis.Redis.from_url(redis_url)
        self._callback_channel = callback_channel
        self._server = _ReceiverServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(self, key: str, *replies: Reply) -> None:
        """Replies for the calls for `key`, one per call; the last one repeats."""
        with self._cond:
            self._plans[key] = list(replies)

    def calls(self, key: str) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if r.body.get("key") == key]

    def wait_calls(self, key: str, count: int, timeout: float = 15.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(calls := [r for r in self.requests if r.body.get("key") == key]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout:g}s waiting for {count} webhook call(s) for "
                        f"{key!r}; got {len(calls)}"
                    )
                self._cond.wait(left)
            return calls

    def publish_callback(self, job_id: str, status: str = "success", error: str | None = None) -> None:
        message = {"jobId": job_id, "status": status}
        if error:
            message["error"] = error
        self._redis.publish(self._callback_channel, json.dumps(message))

    def stop(self) -> None:
        self._server.shutdown()

    def _reply_for(self, key: str, call_number: int) -> Reply:
        replies = self._plans.get(key) or [self.default_reply]
        return replies[min(call_number, len(replies) - 1)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                request = Request(self.path, dict(self.headers.items()), body, time.time(), raw)
                with receiver._cond:
                    number = len([r for r in receiver.requests if r.body.get("key") == body.get("key")])
                    reply = receiver._reply_for(body.get("key"), number)
                    receiver.requests.append(request)
                    receiver._cond.notify_all()
                for message in reply.raw_before:
                    receiver._redis.publish(receiver._callback_channel, message)
                if reply.callback and reply.callback_first:
                    receiver.publish_callback(body["jobId"], reply.callback, reply.error)
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self._answer(reply)
                except OSError:
                    return  # the worker gave up (a timeout or a body it stopped reading)
                if reply.callback and not reply.callback_first:
                    receiver.publish_callback(body["jobId"], reply.callback, reply.error)

            def _answer(self, reply: Reply) -> None:
                head = f"HTTP/1.1 {reply.status} X\r\n"
                headers = {**reply.headers}
                if reply.body_bytes >= 0:
                    headers["Content-Length"] = str(reply.body_bytes)
                else:
                    headers["Transfer-Encoding"] = "chunked"
                head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
                if reply.drip:
                    for byte in head.encode():
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(reply.drip)
                else:
                    self.wfile.write(head.encode())
                if reply.body_bytes > 0:
                    self.wfile.write(b"x" * reply.body_bytes)
                elif reply.body_bytes < 0:
                    chunk = b"x" * 65536
                    stop = time.monotonic() + 20
                    while time.monotonic() < stop:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()

            def log_message(self, *_: object) -> None:
                pass

        return Handler


class Events:
    """Collects the final events (success and failure channels) and any other channels asked for."""

    def __init__(self, redis_url: str, *channels: str) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._client = redis.Redis.from_url(redis_url, socket_timeout=None)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(*channels)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        wait_until(lambda: self._client.pubsub_numsub(channels[0])[0][1] >= 1, 5, "the event subscription")

    def _run(self) -> None:
        try:
            for message in self._pubsub.listen():
                with self._cond:
                    self.messages.append((message["channel"].decode(), json.loads(message["data"])))
                    self._cond.notify_all()
        except (redis.ConnectionError, ValueError):
            return

    def matching(self, channel: str, **fields: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [m for c, m in self.messages if c == channel and all(m.get(k) == v for k, v in fields.items())]

    def wait(self, channel: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (found := self.matching(channel, **fields)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout:g}s waiting for {fields} on {channel!r}; "
                        f"saw {[m for c, m in self.messages if c == channel][-5:]}"
                    )
                self._cond.wait(left)
            return found[0]

    def close(self) -> None:
        self._pubsub.close()
