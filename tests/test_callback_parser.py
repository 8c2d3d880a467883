"""followup.callbacks.parse_callback: what a flow sends on CALLBACK_CHANNEL, and what it must not break."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from followup.callbacks import MAX_CALLBACK_BYTES, Callback, parse_callback
from followup.errors import CallbackError


@pytest.mark.parametrize("as_bytes", [True, False])
def test_success(as_bytes):
    text = '{"jobId": "job-1", "status": "success"}'
    callback = parse_callback(text.encode() if as_bytes else text)
    assert callback == Callback(job_id="job-1", status="success", error=None, raw=text)
    assert callback.ok


def test_numeric_job_id_becomes_string():
    callback = parse_callback(b'{"jobId": 12345, "status": "success"}')
    assert callback.job_id == "12345"
    assert callback.ok


def test_zero_job_id_is_a_job_id():
    assert parse_callback(b'{"jobId": 0, "status": "success"}').job_id == "0"


@pytest.mark.parametrize("status", ["failed", "error", "retry", "succes", "successful"])
def test_other_status_is_not_ok(status):
    callback = parse_callback(json.dumps({"jobId": "j", "status": status}))
    assert callback.status == status
    assert not callback.ok


def test_error_string_is_kept():
    callback = parse_callback(b'{"jobId": "j", "status": "failed", "error": "CRM answered 500"}')
    assert not callback.ok
    assert callback.error == "CRM answered 500"


@pytest.mark.parametrize(
    "error",
    [{"code": 500, "message": "boom"}, ["a", 1], 42, True, "não"],
)
def test_non_string_error_is_json_encoded(error):
    callback = parse_callback(json.dumps({"jobId": "j", "status": "failed", "error": error}))
    if isinstance(error, str):
        assert callback.error == error
    else:
        assert isinstance(callback.error, str)
        assert json.loads(callback.error) == error


def test_error_absent_or_null_is_none():
    assert parse_callback(b'{"jobId": "j", "status": "failed"}').error is None
    assert parse_callback(b'{"jobId": "j", "status": "failed", "error": null}').error is None


def test_extra_fields_are_ignored():
    callback = parse_callback(b'{"jobId": "j", "status": "success", "data": {"x": 1}, "key": "key01"}')
    assert (callback.job_id, callback.ok) == ("j", True)


def test_utf8_bytes():
    callback = parse_callback('{"jobId": "ação-1", "status": "success"}'.encode())
    assert callback.job_id == "ação-1"


def test_just_under_the_limit_is_accepted():
    padding = "x" * (MAX_CALLBACK_BYTES - 200)
    data = json.dumps({"jobId": "j", "status": "failed", "error": padding}).encode()
    assert len(data) <= MAX_CALLBACK_BYTES
    assert parse_callback(data).job_id == "j"


BAD = [
    pytest.param(b"", id="empty"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"success", id="bare-word"),
    pytest.param(b'{"jobId": "j", "status": "success"', id="truncated"),
    pytest.param(b'"job-1"', id="json-string"),
    pytest.param(b"[]", id="json-array"),
    pytest.param(b"null", id="json-null"),
    pytest.param(b"42", id="json-number"),
    pytest.param(b'{"status": "success"}', id="no-jobId"),
    pytest.param(b'{"jobId": "", "status": "success"}', id="empty-jobId"),
    pytest.param(b'{"jobId": null, "status": "success"}', id="null-jobId"),
    pytest.param(b'{"jobId": true, "status": "success"}', id="bool-jobId"),
    pytest.param(b'{"jobId": false, "status": "success"}', id="false-jobId"),
    pytest.param(b'{"jobId": 1.5, "status": "success"}', id="float-jobId"),
    pytest.param(b'{"jobId": ["j"], "status": "success"}', id="list-jobId"),
    pytest.param(b'{"jobId": {"id": "j"}, "status": "success"}', id="object-jobId"),
    pytest.param(b'{"jobId": "j"}', id="no-status"),
    pytest.param(b'{"jobId": "j", "status": ""}', id="empty-status"),
    pytest.param(b'{"jobId": "j", "status": null}', id="null-status"),
    pytest.param(b'{"jobId": "j", "status": true}', id="bool-status"),
    pytest.param(b'{"jobId": "j", "status": 1}', id="number-status"),
    pytest.param(b'{"jobId": "j\xff", "status": "success"}', id="non-utf8"),
    pytest.param(b"\xff\xfe{}", id="non-utf8-start"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested-too-big"),
    pytest.param(b"[" * 30_000 + b"]" * 30_000, id="deeply-nested"),
    pytest.param(
        json.dumps({"jobId": "j", "status": "success", "pad": "x" * MAX_CALLBACK_BYTES}).encode(), id="over-64KiB"
    ),
]


@pytest.mark.parametrize("data", BAD)
def test_unusable_callback_raises_callback_error(data):
    with pytest.raises(CallbackError):
        parse_callback(data)


def test_over_limit_is_rejected_before_parsing():
    data = b'{"jobId": "j", "status": "success"}' + b" " * MAX_CALLBACK_BYTES
    with pytest.raises(CallbackError, match="limit"):
        parse_callback(data)


def test_error_message_is_short():
    with pytest.raises(CallbackError) as caught:
        parse_callback(b"x" * 10_000)
    assert len(str(caught.value)) < 300


# --- properties -------------------------------------------------------------------------------


def _check(data: bytes | str) -> None:
    try:
        callback = parse_callback(data)
    except CallbackError:
        return
    assert isinstance(callback, Callback)
    assert isinstance(callback.job_id, str)
    assert callback.job_id
    assert isinstance(callback.status, str)
    assert callback.error is None or isinstance(callback.error, str)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    _check(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text(data):
    _check(data)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_arbitrary_json_value(value):
    _check(json.dumps(value))


@settings(max_examples=200, deadline=None)
@given(job_id=JSON, status=JSON, error=JSON, include=st.sets(st.sampled_from(["jobId", "status", "error"])))
def test_arbitrary_callback_shaped_object(job_id, status, error, include):
    message = {"jobId": job_id, "status": status, "error": error}
    message = {name: value for name, value in message.items() if name in include}
    data = json.dumps(message).encode()
    try:
        callback = parse_callback(data)
    except CallbackError:
        # Only an object without a usable jobId or status is refused.
        usable_id = isinstance(job_id, (str, int)) and not isinstance(job_id, bool) and str(job_id) != ""
        usable_status = isinstance(status, str) and status != ""
        assert not ("jobId" in include and usable_id and "status" in include and usable_status)
        return
    assert callback.job_id == str(job_id)
    assert callback.ok == (status.strip().lower() == "success")
