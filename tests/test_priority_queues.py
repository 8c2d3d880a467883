"""Priority queues: a rule's `@queue` sends its jobs, first attempts and retries alike, to the
workers that consume that queue (`followup worker --queues …`), and to no other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from followup.embedded import RedisServer
from followup.ready import ready_list
from tests.conftest import CALLBACK_CHANNEL, SUCCESS_CHANNEL, base_env
from tests.harness import Events, FollowupProcess, Receiver, Reply, start_listener, start_worker, wait_until
from tests.test_end_to_end import unique


@pytest.fixture(scope="module")
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_a_queue_named_by_a_rule_is_served_only_by_its_workers(private_redis: RedisServer, log_dir: Path) -> None:
    url = private_redis.url()
    client = redis.Redis.from_url(url)
    receiver = Receiver(url, CALLBACK_CHANNEL)
    env = base_env(url, f"vip:*={receiver.url('/vip')}@priority,n:*={receiver.url('/n')}")
    events = Events(url, SUCCESS_CHANNEL)
    default = start_worker(env, log_dir, name="default-queue-worker")
    listener = start_listener(env, log_dir, name="priority-listener")
    priority = None
    try:
        vip, plain = unique("vip:"), unique("n:")
        receiver.plan(vip, Reply(callback="failed"), Reply(callback="success"))
        receiver.plan(plain, Reply(callback="success"))
        client.set(vip, "1", px=50)
        client.set(plain, "1", px=50)
        [call] = receiver.wait_calls(plain, 1)
        events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
        # The default worker took the plain job; the VIP one waits for a worker of its queue.
        wait_until(lambda: client.llen(ready_list("priority")) == 1, 10, "the VIP job on the priority list")
        assert receiver.calls(vip) == []
        priority = FollowupProcess(
            "priority-queue-worker",
            ["worker", "--queues", "priority", "--concurrency", "20", "--without-mingle", "--without-gossip"],
            env,
            log_dir,
            ready=" ready.",
        ).start()
        first, second = receiver.wait_calls(vip, 2)
        events.wait(SUCCESS_CHANNEL, jobId=first.body["jobId"])
        assert (first.body["attempt"], second.body["attempt"]) == (1, 2)
        # Both attempts, the retry (a Celery task) included, ran in the priority worker.
        job_id = first.body["jobId"]
        done = f"job {job_id} ({vip}) succeeded on attempt 2"
        wait_until(lambda: done in priority.output(), 5, f"the priority worker to log {done!r}")
        assert f"job {job_id} (" not in default.output()  # it only heard the callbacks
    finally:
        listener.stop()
        default.stop()
        if priority:
            priority.stop()
        events.close()
        receiver.stop()
