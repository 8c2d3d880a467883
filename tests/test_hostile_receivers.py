"""Receivers that misbehave get exactly the documented outcome, and nothing else is disturbed."""

from __future__ import annotations

import re

from followup.dispatch import MAX_RESPONSE_BYTES
from tests.conftest import FAILURE_CHANNEL, SUCCESS_CHANNEL, System
from tests.harness import Reply, wait_until
from tests.test_end_to_end import unique


def test_410_gone_dead_letters_at_once(system: System) -> None:
    key = unique("t:gone-")
    system.receiver.plan(key, Reply(status=410))
    system.expire(key)
    event = system.events.wait(FAILURE_CHANNEL, key=key)
    assert event["attempts"] == 1 and "410 Gone" in event["error"]
    assert len(system.receiver.calls(key)) == 1


def test_429_retry_after_is_honoured(system: System) -> None:
    key = unique("t:busy-")
    system.receiver.plan(key, Reply(status=429, headers={"Retry-After": "3"}), Reply(callback="success"))
    system.expire(key)
    first, second = system.receiver.wait_calls(key, 2)
    # The backoff alone would be 1-1.25 s; the receiver asked for 3.
    assert 3.0 <= second.at - first.at < 3.0 + 1.5, second.at - first.at
    system.events.wait(SUCCESS_CHANNEL, jobId=first.body["jobId"])


def test_503_retry_after_is_capped_by_backoff_max(system: System) -> None:
    key = unique("t:down-")
    system.receiver.plan(key, Reply(status=503, headers={"Retry-After": "3600"}), Reply(callback="success"))
    system.expire(key)
    first, second = system.receiver.wait_calls(key, 2, timeout=20)
    assert 5.0 <= second.at - first.at < 5.0 + 1.5, second.at - first.at  # BACKOFF_MAX is 5 s here
    system.events.wait(SUCCESS_CHANNEL, jobId=first.body["jobId"])


def test_redirect_is_not_followed_and_fails_the_attempt(system: System) -> None:
    key = unique("t:moved-")
    target = system.receiver.url("/elsewhere")
    system.receiver.plan(key, Reply(status=307, headers={"Location": target}), Reply(callback="success"))
    system.expire(key)
    first, second = system.receiver.wait_calls(key, 2)
    assert first.path == second.path == "/hook"
    system.events.wait(SUCCESS_CHANNEL, jobId=first.body["jobId"])


def test_a_dripping_answer_is_cut_at_the_webhook_timeout(system: System) -> None:
    key = unique("t:drip-")
    # 40-odd header bytes, one every 0.2 s: 8 s in all, each read well within any read timeout.
    system.receiver.plan(key, Reply(drip=0.2), Reply(callback="success"))
    system.expire(key)
    first, second = system.receiver.wait_calls(key, 2)
    # WEBHOOK_TIMEOUT (1 s) + backoff (1-1.25 s), not the 8 s the drip would take.
    assert second.at - first.at < 1.0 + 1.25 + 1.0, second.at - first.at
    system.events.wait(SUCCESS_CHANNEL, jobId=first.body["jobId"])


def test_huge_and_endless_answers_are_not_read_past_the_limit(system: System) -> None:
    huge, endless = unique("t:huge-"), unique("t:endless-")
    system.receiver.plan(huge, Reply(body_bytes=20_000_000, callback="success"))
    system.receiver.plan(endless, Reply(body_bytes=-1, callback="success"))
    system.expire(huge)
    system.expire(endless)
    for key in (huge, endless):
        [call] = system.receiver.wait_calls(key, 1)
        event = system.events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
        assert event["attempts"] == 1  # a 2xx answer: delivered, whatever its body
        line = wait_until(
            lambda job=call.body["jobId"]: next(
                (line for line in system.worker.output().splitlines() if f"job {job}: its answer" in line), None
            ),
            10,
            f"the worker's line about cutting {key}'s answer",
        )
        read = int(re.search(r"not read past (\d+) bytes", line).group(1))
        assert read <= MAX_RESPONSE_BYTES, line
