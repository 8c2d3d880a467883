"""A watched database other than 0, with WORKER_CALLBACK_TIMEOUT=0 (dispatch, do not wait)."""

from __future__ import annotations

import redis

from followup.embedded import RedisServer
from tests.conftest import base_env
from tests.harness import Events, Receiver, start_listener, start_worker


def test_db_3_is_watched_and_timeout_0_succeeds_on_dispatch(redis_server: RedisServer, log_dir) -> None:
    url = redis_server.url(3)
    receiver = Receiver(url, "db3_callback")
    env = base_env(
        url,
        f"d3:*={receiver.url('/d3')}",
        WORKER_CALLBACK_TIMEOUT="0",
        CALLBACK_CHANNEL="db3_callback",
        SUCCESS_CHANNEL="db3_success",
        FAILURE_CHANNEL="db3_failure",
        QUEUE_NAME="db3",
    )
    events = Events(url, "db3_success")
    worker = start_worker(env, log_dir, name="db3-worker")
    listener = start_listener(env, log_dir, name="db3-listener")
    try:
        assert "__keyevent@3__:*" in listener.output()
        db0 = redis.Redis.from_url(redis_server.url(0))
        db3 = redis.Redis.from_url(url)
        db0.set("d3:in-db0", "1", px=50)  # same pattern, wrong database: not this listener's
        db3.set("d3:in-db3", "1", px=200)
        [call] = receiver.wait_calls("d3:in-db3", 1)
        event = events.wait("db3_success", jobId=call.body["jobId"])
        assert event["attempts"] == 1  # no callback was sent: timeout 0 means success on a 2xx
        assert receiver.calls("d3:in-db0") == []
        assert db3.llen("db3") == 0 and db0.exists("db3") == 0
    finally:
        listener.stop()
        worker.stop()
        events.close()
        receiver.stop()
