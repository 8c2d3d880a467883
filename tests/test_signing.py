"""Standard Webhooks signatures: the published vector, verify(), and signed webhooks end to end."""

from __future__ import annotations

import time

import pytest
import redis

from followup.embedded import RedisServer
from followup.signing import SignatureError, sign, signature_headers, verify
from tests.conftest import CALLBACK_CHANNEL, SUCCESS_CHANNEL, base_env
from tests.harness import Events, Receiver, Reply, start_listener, start_worker

# The example published with the Standard Webhooks specification.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MESSAGE_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_published_vector() -> None:
    assert sign(SECRET, MESSAGE_ID, TIMESTAMP, BODY) == SIGNATURE
    headers = signature_headers((SECRET, "whsec_b2xkc2VjcmV0"), MESSAGE_ID, TIMESTAMP, BODY)
    assert headers == {"webhook-id": MESSAGE_ID, "webhook-timestamp": str(TIMESTAMP), "webhook-signature": SIGNATURE}


def fresh(secret: str = SECRET, body: bytes = BODY) -> dict[str, str]:
    return signature_headers((secret,), "job-1-1", int(time.time()), body)


def test_verify_accepts_a_fresh_signature_in_any_header_case() -> None:
    headers = {name.title(): value for name, value in fresh().items()}
    assert verify(headers, BODY, SECRET) == "job-1-1"


def test_verify_accepts_any_of_the_secrets_and_any_of_the_signatures() -> None:
    old, new = SECRET, "plain-new-secret"
    headers = fresh(old)
    assert verify(headers, BODY, f"{new} {old}") == "job-1-1"  # the receiver rotated first
    headers["webhook-signature"] = f"v1,bm90aGluZw== {headers['webhook-signature']}"
    assert verify(headers, BODY, old) == "job-1-1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, b: (h, b + b" "), "no signature matches"),
        (lambda h, b: ({**h, "webhook-id": "job-1-2"}, b), "no signature matches"),
        (lambda h, b: ({**h, "webhook-timestamp": str(int(time.time()) - 301)}, b), "timestamp"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing header"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "not a number"),
    ],
    ids=["tampered body", "other id", "old timestamp", "no signature", "bad timestamp"],
)
def test_verify_rejects(change, message: str) -> None:
    headers, body = change(fresh(), BODY)
    with pytest.raises(SignatureError, match=message):
        verify(headers, body, SECRET)


def test_verify_rejects_the_wrong_secret() -> None:
    with pytest.raises(SignatureError):
        verify(fresh(), BODY, "whsec_d3Jvbmdfc2VjcmV0")


def test_signed_webhooks_end_to_end(redis_server: RedisServer, log_dir) -> None:
    url = redis_server.url(6)
    receiver = Receiver(url, CALLBACK_CHANNEL)
    secret = "whsec_" + "c2lnbmluZy1zZWNyZXQtZm9yLXRlc3Rz"
    env = base_env(
        url,
        f"s:*={receiver.url('/signed')}",
        WEBHOOK_SECRET=f"{secret} whsec_b2xkc2VjcmV0",
        QUEUE_NAME="signed",
        DEBUG="true",
    )
    events = Events(url, SUCCESS_CHANNEL)
    worker = start_worker(env, log_dir, name="signing-worker")
    listener = start_listener(env, log_dir, name="signing-listener")
    try:
        receiver.plan("s:1", Reply(status=500), Reply(callback="success"))
        redis.Redis.from_url(url).set("s:1", '{"a": 1}', px=100)
        first, second = receiver.wait_calls("s:1", 2)
        events.wait(SUCCESS_CHANNEL, jobId=first.body["jobId"])
        for call, attempt in ((first, 1), (second, 2)):
            assert verify(call.headers, call.raw, secret) == f"{call.body['jobId']}-{attempt}"
        assert first.headers["webhook-id"] != second.headers["webhook-id"]
        for process in (worker, listener):
            assert "c2lnbmluZy1zZWNyZXQ" not in process.output(), f"the secret leaked into {process.name}'s log"
    finally:
        listener.stop()
        worker.stop()
        events.close()
        receiver.stop()
