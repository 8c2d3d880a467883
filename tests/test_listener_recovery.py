"""What a running listener decides on its own: another listener's abandoned claims, evicted keys,
and keys deleted while no listener ran — each on a private redis-server, the listener in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

import followup
from followup import listener as listener_module
from followup.config import load_settings
from followup.embedded import RedisServer
from followup.index import DUE, FIRING, LIMBO, job_id
from followup.listener import Listener
from followup.ready import ready_list
from tests.harness import wait_until

MAPPING = "t:*=|c"


@contextmanager
def running_listener(url: str) -> Iterator[Listener]:
    listener = Listener(load_settings({"REDIS_URL": url, "KEY_WEBHOOK_MAPPING": MAPPING}.get))
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: listener.health()[0], 15, "the listener to start")
        yield listener
    finally:
        stop.set()
        thread.join(10)


def queued(client: redis.Redis) -> list[str]:
    """The keys of the jobs on the default ready list, in order (message: jobId, queue, JSON)."""
    import json

    return [json.loads(message.split(b"\n", 2)[2])["key"] for message in client.lrange(ready_list("followup"), 0, -1)]


def enqueued(listener: Listener, path: str) -> float:
    return listener.metrics.enqueued.labels(path)._value.get()


def test_a_running_listener_takes_over_claims_another_listener_abandoned(monkeypatch) -> None:
    # Listener B runs on; listener A died between its claim (the outbox entry) and its enqueue.
    monkeypatch.setattr(listener_module, "OUTBOX_ABANDONED_MS", 500)
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url())
        with running_listener(server.url()) as listener:
            seconds, _ = client.time()
            deadline = seconds * 1000
            client.hset(FIRING, f"{deadline}:t:orphan", f'{deadline}:v"orphan"')
            wait_until(lambda: queued(client) == ["t:orphan"], 10, "the abandoned claim to be enqueued")
            assert client.hlen(FIRING) == 0
            assert enqueued(listener, "outbox") == 1
            message = client.lindex(ready_list("followup"), 0)
            assert message.split(b"\n", 1)[0].decode() == job_id("t:orphan", deadline)
    finally:
        server.stop()


def test_an_evicted_key_fires_at_its_deadline_not_after_the_grace() -> None:
    server = RedisServer(args=("--maxmemory", "8mb", "--maxmemory-policy", "volatile-ttl")).start()
    try:
        client = redis.Redis.from_url(server.url())
        with running_listener(server.url()) as listener:
            client.set("t:evicted", '"v"', px=1500)
            wait_until(lambda: client.zscore(DUE, "t:evicted") is not None, 10, "t:evicted to be indexed")
            fillers = 0
            while client.exists("t:evicted"):  # longer TTLs: volatile-ttl evicts t:evicted first
                client.set(f"filler:{fillers}", "x" * 10_000, ex=3600)
                fillers += 1
                assert fillers < 5000, "Redis never evicted t:evicted"
            wait_until(lambda: queued(client) == ["t:evicted"], 10, "the evicted key's job")
            assert client.zscore(DUE, "t:evicted") is None
            # At its deadline, not after the grace that waits for an expired event (none comes).
            assert enqueued(listener, "timer") == 1
            assert enqueued(listener, "timer_no_event") == 0
    finally:
        server.stop()


def test_a_key_deleted_while_no_listener_ran_is_forgotten_before_the_start_up_scan(monkeypatch) -> None:
    # A large keyspace, as the scan sees it: 2,000 keys at 5 ms each, 10 s in all, longer than
    # the deleted key has left.
    looked_at = Listener._mapped_key

    def slowly(self: Listener, raw: bytes) -> str | None:
        if threading.current_thread().name == "followup-scan":
            time.sleep(0.005)
        return looked_at(self, raw)

    monkeypatch.setattr(Listener, "_mapped_key", slowly)
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url())
        client.mset({f"filler:{n}": "x" for n in range(2000)})
        followup.schedule("t:deleted", 5, "v", client=client)
        client.delete("t:deleted")  # by another tool, while no listener runs: no one hears it
        with running_listener(server.url()) as listener:
            # Out of the index, and not in limbo either (where a due entry waits before it fires).
            wait_until(
                lambda: client.zscore(DUE, "t:deleted") is None and client.zscore(LIMBO, "t:deleted") is None,
                15,
                "the deleted key's entry to be forgotten",
            )
            assert queued(client) == [], "a key deleted while no listener ran fired"
            assert enqueued(listener, "timer") + enqueued(listener, "timer_no_event") == 0
    finally:
        server.stop()
