"""The ready lists' take and reap steps on a real Redis, without a worker around them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from followup.embedded import RedisServer
from followup.jobs import Job
from followup.ready import LEASED, LEASES, WAKE_CHANNEL, ReadyJob, ReadyQueue, ready_list


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url(9))
    client.flushdb()
    yield client
    client.flushdb()


def test_a_message_that_does_not_parse_is_dropped_and_the_rest_of_the_batch_runs(client: redis.Redis) -> None:
    good = ReadyJob(Job("job-good", "t:good", 1_000, None, None), 1, "q")
    # Oldest at the right: the broken one is taken first, in the same batch as the good one.
    client.lpush(ready_list("q"), good.to_message(), "job-broken\nq\n{not json")
    taken = ReadyQueue(client).take(["q"], 10)
    assert [ready.job.id for ready in taken] == ["job-good"]
    # Its lease ended with it: no reaper puts it back, over and over, with the batch it came in.
    assert client.zscore(LEASES, "job-broken") is None and not client.hexists(LEASED, "job-broken")
    assert client.zscore(LEASES, "job-good") is not None


def test_reaped_jobs_wake_the_workers(client: redis.Redis) -> None:
    queue = ReadyQueue(client)
    client.lpush(ready_list("q"), ReadyJob(Job("job-1", "t:1", 1_000, None, None), 1, "q").to_message())
    assert len(queue.take(["q"], 10, lease_ms=1)) == 1
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(WAKE_CHANNEL)
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    time.sleep(0.01)  # the 1 ms lease runs out
    assert queue.reap() == 1
    message = pubsub.get_message(timeout=5)
    pubsub.close()
    assert message is not None and message["data"] == b"reaped", message
    assert client.llen(ready_list("q")) == 1
