"""Keys and values no follow-up can carry: each is contained with one clear line, nothing else disturbed."""

from __future__ import annotations

import subprocess

import pytest

import followup
from followup.jobs import MAX_KEY_BYTES
from tests.conftest import System
from tests.harness import FOLLOWUP, ROOT, Reply, wait_until
from tests.test_end_to_end import unique


def test_a_mapped_key_not_utf8_or_too_long_is_ignored_with_a_warning(system: System) -> None:
    offset = len(system.listener.output())
    not_utf8 = b"t:not-utf8-\xff\xfe-" + unique("").encode()
    too_long = unique("t:too-long-") + "x" * (2 * 1024 * 1024)  # 2 MB: a webhook body and a log line each
    system.redis.set(not_utf8, "1", px=50)
    system.redis.set(too_long, "1", px=50)
    marker = unique("t:after-hostile-keys-")
    system.receiver.plan(marker, Reply(callback="success"))
    system.expire(marker, ttl_ms=300)
    system.receiver.wait_calls(marker, 1)

    wait_until(
        lambda: "not UTF-8" in system.listener.output(offset) and "at most" in system.listener.output(offset),
        10,
        "the listener's warnings about both keys",
    )
    lines = [line for line in system.listener.output(offset).splitlines() if "ignored key" in line]
    assert any("not UTF-8" in line and "\\xff\\xfe" in line for line in lines), lines
    assert any(f"{len(too_long.encode()):d} bytes" in line for line in lines), lines
    assert all(len(line) < 600 for line in lines), "a warning line carries the whole key"
    keys = {request.body["key"] for request in system.receiver.requests}
    assert not any(key.startswith(("t:not-utf8-", "t:too-long-")) for key in keys)


def test_schedule_refuses_a_key_the_listener_would_ignore(system: System) -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_KEY_BYTES} bytes"):
        followup.schedule("t:" + "é" * MAX_KEY_BYTES, 60, client=system.redis)  # 2 bytes a character
    assert not system.redis.exists("t:" + "é" * MAX_KEY_BYTES)


def test_a_value_that_is_not_utf8_fires_without_its_payload_and_says_why(system: System) -> None:
    key = unique("t:binary-value-")
    system.receiver.plan(key, Reply(callback="success"))
    system.redis.set(key, b"\x80\x81 binary", px=100)
    [call] = system.receiver.wait_calls(key, 1)
    assert call.body["payload"] is None
    assert "UTF-8" in call.body["payloadError"], call.body


def test_the_schedule_command_refuses_such_a_key_with_exit_status_2(system: System) -> None:
    key = "t:" + "x" * MAX_KEY_BYTES
    done = subprocess.run(
        [*FOLLOWUP, "schedule", key, "--in", "1m"],
        env=system.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and f"at most {MAX_KEY_BYTES} bytes" in done.stderr, done.stderr
    assert not system.redis.exists(key)
