"""The whole path on real parts: redis-server, `followup listen`, `followup worker`, an HTTP receiver."""

from __future__ import annotations

import itertools
import json
import subprocess
import uuid

import pytest

from followup.jobs import job_key
from tests.conftest import (
    BOTH_CHANNEL,
    CALLBACK_CHANNEL,
    CHANNEL_ONLY,
    FAILURE_CHANNEL,
    SUCCESS_CHANNEL,
    System,
)
from tests.harness import FOLLOWUP, ROOT, Reply, wait_until


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def test_webhook_body_and_headers_follow_the_contract(system: System) -> None:
    key = unique("t:body-")
    system.receiver.plan(key, Reply(callback="success"))
    system.expire(key, value='{"contact": 7, "name": "Ana"}')

    [call] = system.receiver.wait_calls(key, 1)
    body, headers = call.body, call.headers
    assert call.path == "/hook"
    assert set(body) == {
        "jobId",
        "key",
        "event",
        "message",
        "attempt",
        "maxAttempts",
        "expiredAt",
        "timestamp",
        "callbackChannel",
        "payload",
    }
    assert body["key"] == key
    assert body["event"] == "expired"
    assert body["message"] == f"The key {key} has expired."
    assert body["attempt"] == 1
    assert body["maxAttempts"] == 3
    assert body["callbackChannel"] == CALLBACK_CHANNEL
    assert body["payload"] == {"contact": 7, "name": "Ana"}
    assert isinstance(body["expiredAt"], int) and isinstance(body["timestamp"], int)
    assert 0 <= body["timestamp"] - body["expiredAt"] < 10_000
    uuid.UUID(body["jobId"])
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Followup-Job-Id"] == body["jobId"]
    assert headers["X-Followup-Attempt"] == "1"
    assert "webhook-signature" not in {h.lower() for h in headers}

    event = system.events.wait(SUCCESS_CHANNEL, jobId=body["jobId"])
    assert event["key"] == key and event["status"] == "success" and event["attempts"] == 1
    assert isinstance(event["timestamp"], int)


def test_exact_key_wins_over_a_glob_that_also_matches(system: System) -> None:
    system.receiver.plan("t:exact", Reply(callback="success"))
    system.expire("t:exact")
    [call] = system.receiver.wait_calls("t:exact", 1)
    assert call.path == "/exact"
    system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])


def test_callback_published_before_the_webhook_answers_completes_the_job(system: System) -> None:
    # n8n publishes its callback and only then answers the webhook; the answer here comes 300 ms later.
    key = unique("t:fast-")
    system.receiver.plan(key, Reply(callback="success", callback_first=True, delay=0.3))
    system.expire(key)
    [call] = system.receiver.wait_calls(key, 1)
    event = system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
    assert event["attempts"] == 1
    assert len(system.receiver.calls(key)) == 1


def test_a_success_published_before_a_webhook_answer_that_times_out_still_completes_the_job(system: System) -> None:
    key = unique("t:late-answer-")
    # The flow confirms, then its answer takes longer than WEBHOOK_TIMEOUT (1 s).
    system.receiver.plan(key, Reply(callback="success", callback_first=True, delay=1.6))
    system.expire(key)
    [call] = system.receiver.wait_calls(key, 1)
    event = system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
    assert event["attempts"] == 1
    assert len(system.receiver.calls(key)) == 1


def test_a_json_value_with_half_a_surrogate_pair_goes_as_written(system: System) -> None:
    # JavaScript cuts strings in the middle of an emoji: valid JSON that no UTF-8 can carry on.
    key = unique("t:surrogate-")
    value = '{"name":"Ana \\ud83d"}'
    system.receiver.plan(key, Reply(callback="success"))
    system.redis.set(key, value, px=50)
    [call] = system.receiver.wait_calls(key, 1)
    assert call.body["payload"] == value
    system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])


def test_channel_only_rule_publishes_the_same_body(system: System) -> None:
    key = unique("ch:")
    system.expire(key)
    message = system.events.wait(CHANNEL_ONLY, key=key)
    assert message["event"] == "expired" and message["attempt"] == 1
    assert message["callbackChannel"] == CALLBACK_CHANNEL
    system.receiver.publish_callback(message["jobId"])
    event = system.events.wait(SUCCESS_CHANNEL, jobId=message["jobId"])
    assert event["key"] == key
    assert system.receiver.calls(key) == []


def test_rule_with_webhook_and_channel_does_both_under_one_job_id(system: System) -> None:
    key = unique("both:")
    system.receiver.plan(key, Reply(callback="success"))
    system.expire(key)
    [call] = system.receiver.wait_calls(key, 1)
    assert call.path == "/both"
    message = system.events.wait(BOTH_CHANNEL, key=key)
    assert message["jobId"] == call.body["jobId"]
    system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])


def test_failure_status_retries_and_the_next_attempt_can_succeed(system: System) -> None:
    key = unique("t:fails-once-")
    system.receiver.plan(key, Reply(callback="failed", error="contact not found"), Reply(callback="success"))
    system.expire(key)
    first, second = system.receiver.wait_calls(key, 2)
    assert first.body["jobId"] == second.body["jobId"]
    assert (first.body["attempt"], second.body["attempt"]) == (1, 2)
    assert second.headers["X-Followup-Attempt"] == "2"
    # The first backoff is BACKOFF_DELAY (1 s) lengthened by at most 25 %.
    assert 1.0 <= second.at - first.at < 1.25 + 1.0, second.at - first.at
    event = system.events.wait(SUCCESS_CHANNEL, jobId=first.body["jobId"])
    assert event["attempts"] == 2


def test_no_callback_retries_with_growing_gaps_then_fails_and_dead_letters(system: System) -> None:
    key = unique("t:silent-")
    system.expire(key)
    calls = system.receiver.wait_calls(key, 3, timeout=20)
    job_id = calls[0].body["jobId"]
    assert {c.body["jobId"] for c in calls} == {job_id}
    assert [c.body["attempt"] for c in calls] == [1, 2, 3]
    # Each gap is the 1.5 s callback wait plus a backoff that doubles: 1 s, then 2 s (+ jitter).
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert 2.5 <= gaps[0] < 3.5 + 0.5, gaps
    assert 3.5 <= gaps[1] < 6.0 + 0.5, gaps
    assert gaps[1] > gaps[0]

    event = system.events.wait(FAILURE_CHANNEL, jobId=job_id)
    assert event["status"] == "failed" and event["attempts"] == 3 and event["key"] == key
    assert "no callback within 1500ms" in event["error"]
    assert len(system.receiver.calls(key)) == 3

    listed = run_cli(system, "dead", "list", "--json")
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [letter["key"] for letter in letters if letter["job_id"] == job_id] == [key]

    # Replay: attempts start over at 1 under the same jobId, and this time the flow confirms.
    system.receiver.plan(key, Reply(callback="success"))
    replayed = run_cli(system, "dead", "replay", job_id)
    assert f"{job_id}: replaying" in replayed.stdout
    calls = system.receiver.wait_calls(key, 4)
    assert calls[3].body["jobId"] == job_id and calls[3].body["attempt"] == 1
    system.events.wait(SUCCESS_CHANNEL, jobId=job_id)
    assert job_id not in run_cli(system, "dead", "list", "--json").stdout
    missing = run_cli(system, "dead", "replay", job_id, check=False)
    assert missing.returncode == 1 and "no such dead letter" in missing.stderr


@pytest.mark.parametrize(
    "reply", [Reply(status=500), Reply(status=302), Reply(delay=1.6)], ids=["500", "302", "timeout"]
)
def test_webhook_failure_fails_the_attempt_and_the_retry_succeeds(system: System, reply: Reply) -> None:
    key = unique("t:webhook-fails-")
    system.receiver.plan(key, reply, Reply(callback="success"))
    system.expire(key)
    first, second = system.receiver.wait_calls(key, 2)
    assert second.body["attempt"] == 2 and second.body["jobId"] == first.body["jobId"]
    event = system.events.wait(SUCCESS_CHANNEL, jobId=first.body["jobId"])
    assert event["attempts"] == 2


def test_refused_connection_fails_every_attempt_then_the_job(system: System) -> None:
    key = unique("refused:")
    system.expire(key)
    event = system.events.wait(FAILURE_CHANNEL, key=key, timeout=20)
    assert event["attempts"] == 3
    assert "Connection refused" in event["error"], event["error"]


def test_unmapped_and_internal_keys_are_ignored(system: System) -> None:
    unmapped = unique("nobody:")
    system.expire(unmapped)
    system.expire("_followup:job:not-a-real-job")
    marker = unique("t:after-unmapped-")
    system.expire(marker, ttl_ms=300)  # expires after the others, so the listener saw them first
    system.receiver.plan(marker, Reply(callback="success"))
    [call] = system.receiver.wait_calls(marker, 1)
    system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
    keys = {r.body["key"] for r in system.receiver.requests}
    assert unmapped not in keys and "_followup:job:not-a-real-job" not in keys


def test_malformed_callbacks_are_ignored_while_a_job_completes(system: System) -> None:
    key = unique("t:noisy-")
    garbage = [
        b"not json at all",
        b"[1, 2, 3]",
        json.dumps({"status": "success"}).encode(),
        json.dumps({"jobId": "", "status": "success"}).encode(),
        json.dumps({"jobId": "no-such-job-" + uuid.uuid4().hex, "status": "success"}).encode(),
        b"\xff\xfe\xfd not utf-8",
        json.dumps({"jobId": "big", "status": "success", "pad": "x" * 100_000}).encode(),
    ]
    system.receiver.plan(key, Reply(callback="success", raw_before=garbage))
    system.expire(key)
    [call] = system.receiver.wait_calls(key, 1)
    event = system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
    assert event["attempts"] == 1
    output = system.worker.output()
    assert "callback is not JSON" in output
    assert "over the 65536-byte limit" in output
    assert "unknown job no-such-job-" in output
    assert system.worker.proc.poll() is None


def test_a_success_that_arrives_between_attempts_completes_the_job_without_a_second_call(system: System) -> None:
    key = unique("t:late-")
    system.expire(key)
    [call] = system.receiver.wait_calls(key, 1)
    job_id = call.body["jobId"]
    record_key = job_key(job_id)
    # Wait for attempt 1 to give up (its waiter released), then confirm during the 1 s backoff.
    wait_until(lambda: system.redis.hget(record_key, "waiter_until") == b"0", 5, "attempt 1 to stop waiting")
    system.receiver.publish_callback(job_id)
    event = system.events.wait(SUCCESS_CHANNEL, jobId=job_id)
    assert event["attempts"] == 2
    assert len(system.receiver.calls(key)) == 1, "the stored callback should have spared the second webhook"


def test_one_success_event_per_job_even_with_duplicate_callbacks(system: System) -> None:
    key = unique("t:dupes-")
    duplicate = Reply(callback="success")
    system.receiver.plan(key, duplicate)
    system.expire(key)
    [call] = system.receiver.wait_calls(key, 1)
    job_id = call.body["jobId"]
    system.events.wait(SUCCESS_CHANNEL, jobId=job_id)
    for _ in range(3):
        system.receiver.publish_callback(job_id)
    # A later job's success proves the worker has handled the duplicates above by now.
    marker = unique("t:dupes-marker-")
    system.receiver.plan(marker, Reply(callback="success"))
    system.expire(marker)
    [marker_call] = system.receiver.wait_calls(marker, 1)
    system.events.wait(SUCCESS_CHANNEL, jobId=marker_call.body["jobId"])
    assert len(system.events.matching(SUCCESS_CHANNEL, jobId=job_id)) == 1
    assert system.redis.hget(job_key(job_id), "status") == b"success"


def test_schedule_and_callback_commands(system: System) -> None:
    key = unique("t:cli-")
    scheduled = run_cli(system, "schedule", key, "--in", "200ms")
    assert f"scheduled {key!r}" in scheduled.stdout
    [call] = system.receiver.wait_calls(key, 1)
    published = run_cli(system, "callback", call.body["jobId"])
    assert "to 1 worker process(es)" in published.stdout
    system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])

    unmapped = run_cli(system, "schedule", unique("nobody:"), "--in", "1h")
    assert "no rule in KEY_WEBHOOK_MAPPING matches" in unmapped.stderr
    bad = run_cli(system, "schedule", key, "--in", "soon", check=False)
    assert bad.returncode == 2 and "--in" in bad.stderr


def run_cli(system: System, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*FOLLOWUP, *args], check=False, env=system.env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    if check:
        assert result.returncode == 0, f"followup {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    return result
