"""The API beside a running listener and worker: HTTP callbacks complete jobs; API rules fire live."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_support import TOKEN, Api, start_api
from tests.conftest import SUCCESS_CHANNEL, System
from tests.harness import Reply


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def api(system: System, log_dir: Path) -> Iterator[Api]:
    # The system's own settings (its db, its CALLBACK_CHANNEL), plus a token.
    server = start_api({**system.env, "API_TOKEN": TOKEN}, log_dir, name="api-live")
    yield server
    server.stop()


def test_an_http_callback_completes_a_waiting_job(system: System, api: Api) -> None:
    key = unique("t:http-cb-")
    system.receiver.plan(key, Reply())  # answers 200, never calls back on Redis
    system.expire(key)
    [call] = system.receiver.wait_calls(key, 1)
    job_id = call.body["jobId"]
    answer = api.call("POST", f"/callbacks/{job_id}", json={"status": "success"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "published" and answer.json()["receivers"] >= 1
    event = system.events.wait(SUCCESS_CHANNEL, jobId=job_id)
    assert event["attempts"] == 1
    assert api.call("GET", f"/jobs/{job_id}").json()["state"] == "succeeded"


def test_an_http_callback_before_the_webhook_has_answered_still_counts(system: System, api: Api) -> None:
    key = unique("t:http-early-")
    system.receiver.plan(key, Reply(delay=0.5))  # held (under WEBHOOK_TIMEOUT) while the flow calls back
    system.expire(key)
    [call] = system.receiver.wait_calls(key, 1)
    job_id = call.body["jobId"]
    answer = api.call("POST", f"/callbacks/{job_id}", json={"status": "success", "attempt": 1})
    assert answer.status_code == 200, answer.text
    assert time.time() < call.at + 0.5, "the callback came after the webhook answered: not the case under test"
    event = system.events.wait(SUCCESS_CHANNEL, jobId=job_id)
    assert event["attempts"] == 1
    assert len(system.receiver.calls(key)) == 1  # completed by that callback, not by a retry


def test_a_rule_added_through_the_api_fires_without_a_restart(system: System, api: Api) -> None:
    key = unique("live:")
    added = api.call("PUT", "/rules/live:*", json={"webhook": system.receiver.url("/live")})
    assert added.status_code == 200, added.text
    try:
        system.receiver.plan(key, Reply(callback="success"))
        system.redis.set(key, "1", px=1000)
        [call] = system.receiver.wait_calls(key, 1, timeout=6)
        assert call.path == "/live"
        system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
    finally:
        api.call("DELETE", "/rules/live:*")
