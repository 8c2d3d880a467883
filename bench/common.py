"""What every scenario uses: private redis-servers, real processes, the receiver, event collectors,
percentiles and RSS. Everything binds to 127.0.0.1 and every wait is bounded."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from followup.embedded import RedisServer

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CALLBACK_CHANNEL = "bench_callback"
SUCCESS_CHANNEL = "bench_success"
FAILURE_CHANNEL = "bench_failure"
HZ = "10"

_log_dir: Path | None = None
_started = time.monotonic()
# Everything the bench started, stopped at the end whatever happens (by pid, never by name).
_children: list[Any] = []


def cleanup_all() -> None:
    while _children:
        child = _children.pop()
        try:
            child.stop()
        except Exception as exc:  # noqa: BLE001 - stop the rest whatever one of them did
            print(f"bench: could not stop {child}: {exc}", file=sys.stderr)


def log_dir() -> Path:
    global _log_dir
    if _log_dir is None:
        _log_dir = Path(tempfile.mkdtemp(prefix="followup-bench-"))
    return _log_dir


def progress(message: str) -> None:
    elapsed = time.monotonic() - _started
    print(f"[{elapsed:6.1f}s] {message}", flush=True)


def now_ms() -> float:
    return time.time() * 1000


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# Statistics -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted `values` (math.inf stands for 'never arrived')."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[rank - 1]


def summary(values: Iterable[float], expected: int | None = None) -> dict[str, Any]:
    """p50/p95/p99/max of latencies in ms; `expected - len(values)` missing ones count as inf."""
    data = sorted(values)
    missing = 0 if expected is None else max(0, expected - len(data))
    data += [math.inf] * missing
    return {
        "n": len(data) - missing,
        "missing": missing,
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "max": data[-1] if data else math.nan,
        "min": data[0] if data else math.nan,
    }


def ms(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "never"
    if abs(value) >= 10_000:
        return f"{value / 1000:.1f} s"
    if abs(value) >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.{digits}f} ms"


def ratio(a: float, b: float) -> str:
    if any(math.isnan(x) or math.isinf(x) for x in (a, b)) or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def jsonable(value: Any) -> Any:
    """inf and nan become strings, so the JSON file stays standard JSON."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


# Processes --------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident set size of one process, from /proc/<pid>/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its children (a prefork worker), from /proc."""
    total = rss_mb(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(tree_rss_mb(int(child)) for child in children)


class Process:
    """A child process in its own session, its output in a log file, stopped by its pid only."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir() / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: str | None, timeout: float = 60.0) -> Process:
        with self.log_path.open("ab") as out:
            self.offset = out.tell()
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
        _children.append(self)
        if ready:
            self.wait_for(ready, timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            return text in self.output()

        wait_until(seen, timeout, f"{self.name} to log {text!r}", interval=0.05)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_redis(name: str, *extra: str) -> RedisServer:
    """A private redis-server on a free loopback port, at `hz 10`, no persistence."""
    server = RedisServer(args=("--hz", HZ, "--maxclients", "10000", *extra))
    _children.append(server)
    return server.start()


def followup_env(redis_url: str, mapping: str, **settings: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
        "REDIS_URL": redis_url,
        "KEY_WEBHOOK_MAPPING": mapping,
        "CALLBACK_CHANNEL": CALLBACK_CHANNEL,
        "SUCCESS_CHANNEL": SUCCESS_CHANNEL,
        "FAILURE_CHANNEL": FAILURE_CHANNEL,
        "WORKER_CALLBACK_TIMEOUT": "60s",
        "WEBHOOK_TIMEOUT": "10s",
    }
    env.update(settings)
    return env


def start_listener(env: dict[str, str], name: str, scan_done: bool = True) -> Process:
    process = Process(name, [PYTHON, "-m", "followup", "listen"], env).start("listening on")
    if scan_done:
        process.wait_for("scan done", 120)
    return process


def start_worker(env: dict[str, str], name: str, *extra: str) -> Process:
    argv = [PYTHON, "-m", "followup", "worker", "--without-mingle", "--without-gossip", "--hostname", f"{name}@%h"]
    return Process(name, [*argv, *extra], env).start(" ready.")


# The receiver -----------------------------------------------------------------------------------


@dataclass
class Hit:
    arrived: float  # ms since the epoch, the receiver's clock
    path: str
    key: str
    job_id: str
    expired_at: int
    attempt: int
    subscribers: int  # workers that got the callback; -1 when held


class ReceiverProcess:
    def __init__(self, redis_port: int, name: str = "receiver") -> None:
        argv = [
            PYTHON,
            "-m",
            "bench.receiver",
            "--redis-port",
            str(redis_port),
            "--callback-channel",
            CALLBACK_CHANNEL,
        ]
        self.process = Process(name, argv, {**os.environ, "PYTHONUNBUFFERED": "1"}).start("receiver ready on")
        found = re.search(r"receiver ready on (\d+)", self.process.output())
        assert found
        self.port = int(found.group(1))

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _call(self, path: str, method: str = "POST") -> bytes:
        request = urllib.request.Request(self.url(path), method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    def hits(self, start: int = 0) -> list[Hit]:
        return [Hit(*row) for row in json.loads(self._call(f"/_records?from={start}", "GET"))]

    def count(self) -> int:
        return int(self._call("/_count", "GET"))

    def hold(self, on: bool) -> None:
        self._call("/_hold" if on else "/_release")

    def reset(self) -> None:
        self._call("/_reset")

    def stop(self) -> None:
        self.process.stop()


# Event collectors -------------------------------------------------------------------------------


@dataclass
class Collector:
    """A plain redis-py subscriber in a thread: (arrival ms, channel, data) for every message."""

    url: str
    channels: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    messages: list[tuple[float, bytes, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._client = redis.Redis.from_url(self.url, socket_timeout=None)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        if self.channels:
            self._pubsub.subscribe(*self.channels)
        if self.patterns:
            self._pubsub.psubscribe(*self.patterns)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        append = self.messages.append
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except (redis.ConnectionError, ValueError):
                return
            if message is not None and message["type"] in ("message", "pmessage"):
                append((time.time() * 1000, message["channel"], message["data"]))

    def count(self) -> int:
        return len(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()
        self._client.close()


# SET … EX for a range of numbered keys, run inside Redis: a million keys take seconds, not minutes.
_FILL = """
for n = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  redis.call('SET', ARGV[3] .. n, ARGV[4], 'EX', ARGV[5])
end
return 1
"""


def fill(
    client: redis.Redis, prefix: str, count: int, ttl_s: int, *, value: str = "x" * 16, chunk: int = 20000
) -> None:
    """`count` keys `<prefix>0…` each SET with a TTL (`SET … EX`), in chunks of `chunk` per script call."""
    script = client.register_script(_FILL)
    for start in range(0, count, chunk):
        script(args=[start, min(count, start + chunk) - 1, prefix, value, ttl_s])


def populate_background(client: redis.Redis, count: int, ttl_s: int = 3600) -> None:
    """`count` unrelated keys with a 1-hour TTL (a cache sharing the Redis): `cache:N`, SET … EX 3600."""
    fill(client, "cache:", count, ttl_s)


def write_deadlines(client: redis.Redis, schedule: list[tuple[str, int]], batch: int = 5_000) -> None:
    """Each key SET with its absolute deadline (PXAT), in pipelined batches."""
    for start in range(0, len(schedule), batch):
        pipe = client.pipeline(transaction=False)
        for key, deadline in schedule[start : start + batch]:
            pipe.set(key, "1", pxat=deadline)
        pipe.execute()


def redis_version(client: redis.Redis) -> str:
    return str(client.info("server")["redis_version"])


def wait_progress(label: str, count: Callable[[], int], total: int, until: float, every: float = 2.0) -> int:
    """Wait until count() >= total or time.time() >= until, printing progress; returns the count."""
    last_print = time.monotonic()
    while True:
        done = count()
        if done >= total or time.time() >= until:
            progress(f"{label}: {done:,}/{total:,}" + ("" if done >= total else " (stopped waiting)"))
            return done
        if time.monotonic() - last_print >= every:
            progress(f"{label}: {done:,}/{total:,}")
            last_print = time.monotonic()
        time.sleep(0.05)


def target(what: str, goal: str, value: str, ok: bool | None, raw: Any = None) -> dict[str, Any]:
    """One line of the targets table: the figure beside its target, PASS/MISS (None: not measured)."""
    return {"what": what, "target": goal, "value": value, "pass": ok, "raw": raw}


def pubsub_clients(client: redis.Redis) -> list[dict[str, Any]]:
    """CLIENT LIST of the subscribers (id, age, omem = output buffer bytes, psub/sub counts)."""
    return [c for c in client.client_list() if int(c.get("psub", 0)) or int(c.get("sub", 0))]
