"""`followup api` on a real port and a real Redis: auth, every endpoint's success and error paths."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from followup.config import load_settings
from followup.embedded import RedisServer
from followup.jobs import Job, JobStore
from followup.rules import RuleStore
from tests.api_support import API_CALLBACK_CHANNEL, TOKEN, Api, api_env, start_api
from tests.harness import FOLLOWUP, ROOT, wait_until

DB = 12  # no other test file uses it
MAPPING = "t:*=https://hooks.example/hook/SECRETPATH,k=|chan"


@pytest.fixture(scope="module")
def env(redis_server: RedisServer) -> dict[str, str]:
    return api_env(redis_server.url(DB), MAPPING)


@pytest.fixture(scope="module")
def db(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url(DB))
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="module")
def api(db: redis.Redis, env: dict[str, str], log_dir: Path) -> Iterator[Api]:
    server = start_api(env, log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(db: redis.Redis, env: dict[str, str]) -> JobStore:
    return JobStore(db, load_settings(env.get))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FOLLOWUP, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )


def queued(db: redis.Redis) -> int:
    """Jobs waiting for a worker: on the Celery queue, or on a ready list (whichever path enqueues)."""
    return db.llen("followup") + sum(db.llen(key) for key in db.scan_iter("_followup:ready:*"))


def new_job(store: JobStore, name: str) -> Job:
    job = Job(f"job-{name}", f"t:{name}", 1_700_000_000_000)
    assert store.begin(job, 1).verdict == "go"
    return job


# --- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", ""])
def test_every_route_but_the_open_ones_needs_the_token(api: Api, token: str | None) -> None:
    for method, path in [("GET", "/followups"), ("GET", "/rules"), ("GET", "/dead"), ("DELETE", "/rules/x")]:
        answer = api.call(method, path, token=token)
        assert answer.status_code == 401, (method, path)
        assert answer.json() == {"detail": "a valid bearer token is required"}
        assert answer.headers["www-authenticate"] == "Bearer"


def test_open_routes_and_a_right_token(api: Api) -> None:
    assert api.call("GET", "/healthz", token=None).json()["status"] == "ok"
    assert "text/html" in api.call("GET", "/", token=None).headers["content-type"]
    schema = api.call("GET", "/openapi.json", token=None).json()
    assert {"/followups", "/callbacks/{jobId}", "/rules/{pattern}", "/dead/{jobId}/replay"} <= set(schema["paths"])
    assert api.call("GET", "/followups").status_code == 200
    assert api.call("GET", "/followups", headers={"Authorization": f"Basic {TOKEN}"}, token=None).status_code == 401


def test_the_token_is_never_logged(api: Api) -> None:
    api.call("GET", "/followups", token="wrong")
    api.call("GET", "/followups")
    assert TOKEN not in api.process.output()


def test_refuses_to_start_without_a_token(env: dict[str, str]) -> None:
    bare = {k: v for k, v in env.items() if k != "API_TOKEN"}
    result = cli(bare, "api")
    assert result.returncode == 2
    assert "API_TOKEN is not set" in result.stderr and "API_UNAUTHENTICATED" in result.stderr


def test_unauthenticated_only_when_asked_and_token_file(env: dict[str, str], log_dir: Path, tmp_path: Path) -> None:
    bare = {k: v for k, v in env.items() if k != "API_TOKEN"}
    open_api = start_api({**bare, "API_UNAUTHENTICATED": "true"}, log_dir, name="api-open")
    try:
        assert open_api.call("GET", "/rules", token=None).status_code == 200
        assert "WITHOUT authentication" in open_api.process.output()
    finally:
        open_api.stop()
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    filed = start_api({**bare, "API_TOKEN_FILE": str(secret)}, log_dir, name="api-file")
    try:
        assert filed.call("GET", "/rules", token="from-a-file").status_code == 200
        assert filed.call("GET", "/rules", token=None).status_code == 401
    finally:
        filed.stop()


# --- follow-ups ---------------------------------------------------------------------------------


def test_schedule_list_and_cancel(api: Api, db: redis.Redis) -> None:
    made = api.call("POST", "/followups", json={"key": "t:api-1", "in": "1h", "payload": {"contact": 42}})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["rule"] == "t:*=https://hooks.example/…"  # the path (a secret, maybe) is not shown
    assert db.pttl("t:api-1") > 3_500_000
    assert json.loads(db.get("t:api-1")) == {"contact": 42}

    at = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    assert api.call("POST", "/followups", json={"key": "t:api-2", "at": at}).status_code == 201
    epoch_ms = int((datetime.now(UTC) + timedelta(hours=3)).timestamp() * 1000)
    assert api.call("POST", "/followups", json={"key": "nobody:x", "at": epoch_ms}).json()["rule"] is None
    assert api.call("POST", "/followups", json={"key": "t:api-ms", "in": 5_400_000}).status_code == 201

    page = api.call("GET", "/followups", params={"limit": 2}).json()
    assert page["total"] == 4 and page["limit"] == 2
    assert [item["key"] for item in page["items"]] == ["t:api-1", "t:api-ms"]  # soonest first
    assert 3_500_000 < page["items"][0]["dueInMs"] <= 3_600_000
    rest = api.call("GET", "/followups", params={"limit": 10, "offset": 2}).json()
    assert [item["key"] for item in rest["items"]] == ["t:api-2", "nobody:x"]

    assert api.call("DELETE", "/followups/t:api-1").json() == {"key": "t:api-1", "cancelled": True}
    assert not db.exists("t:api-1")
    gone = api.call("DELETE", "/followups/t:api-1")
    assert gone.status_code == 404 and "nothing scheduled" in gone.json()["detail"]
    for key in ("t:api-2", "nobody:x", "t:api-ms"):
        api.call("DELETE", f"/followups/{key}")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"key": "t:x"}, "exactly one of `in`"),
        ({"key": "t:x", "in": "1s", "at": 1}, "exactly one of `in`"),
        ({"key": "t:x", "in": "soon"}, "in: 'soon'"),
        ({"key": "t:x", "in": -5}, "in: -5: expected a time in the future"),
        ({"key": "t:x", "in": 0}, "in: 0"),
        ({"key": "t:x", "in": 10**15}, "ten years"),
        ({"key": "t:x", "in": 10**400}, "ten years"),
        ({"key": "t:x", "at": -(10**400)}, "expected a time in the future"),
        ({"key": "t:x", "in": "99999999h"}, "in: '99999999h'"),
        ({"key": "t:x", "at": "2001-01-01T00:00:00Z"}, "at: '2001-01-01T00:00:00Z': expected a time in the future"),
        ({"key": "t:x", "at": "tomorrow"}, "at: 'tomorrow': expected an ISO 8601"),
        ({"key": "", "in": "1s"}, "key"),
        ({"in": "1s"}, "key: Field required"),
        ({"key": "_followup:due", "in": "1s"}, "_followup:"),
        ({"key": "t:x", "in": "1s", "payload": "x" * 5000}, "PAYLOAD_MAX_BYTES"),
        ({"key": "t:x", "in": "1s", "extra": 1}, "extra"),
    ],
)
def test_bad_schedule_requests_are_422_naming_the_part(api: Api, db: redis.Redis, body: dict, named: str) -> None:
    answer = api.call("POST", "/followups", json=body)
    assert answer.status_code == 422, answer.text
    assert named in answer.json()["detail"]
    assert not db.exists("t:x")


def test_bad_paging_is_422(api: Api) -> None:
    for params in ({"limit": 0}, {"limit": 5000}, {"offset": -1}, {"limit": "many"}):
        answer = api.call("GET", "/followups", params=params)
        assert answer.status_code == 422 and "query." in answer.json()["detail"]


def test_not_json_is_422(api: Api) -> None:
    answer = api.call("POST", "/followups", data="{nope", headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    assert "JSON" in answer.json()["detail"]


# --- callbacks and jobs -------------------------------------------------------------------------


def test_callback_with_no_worker_listening_is_kept_for_the_next_attempt(api: Api, store: JobStore) -> None:
    job = new_job(store, "cb-kept")
    answer = api.call("POST", f"/callbacks/{job.id}", json={"status": "success"})
    assert answer.json() == {"jobId": job.id, "receivers": 0, "outcome": "stored"}
    assert store.begin(job, 2).verdict == "callback"  # the next attempt completes without dispatching


def test_failure_callback_is_noted_as_the_last_error(api: Api, store: JobStore) -> None:
    job = new_job(store, "cb-failed")
    answer = api.call("POST", f"/callbacks/{job.id}", json={"status": "failed", "error": "no answer", "attempt": 1})
    assert answer.json()["outcome"] == "noted"
    state = api.call("GET", f"/jobs/{job.id}").json()
    assert state == {
        "jobId": job.id,
        "key": job.key,
        "state": "running",
        "attempts": 1,
        "lastError": "no answer",
        "updated": state["updated"],
        "callbackStored": False,
    }
    assert job.id in [item["jobId"] for item in api.call("GET", "/jobs").json()["items"]]


def test_callback_is_published_when_workers_listen(api: Api, store: JobStore, db: redis.Redis) -> None:
    job = new_job(store, "cb-published")
    hub = db.pubsub(ignore_subscribe_messages=True)
    hub.subscribe(API_CALLBACK_CHANNEL)
    try:
        wait_until(lambda: db.pubsub_numsub(API_CALLBACK_CHANNEL)[0][1] == 1, 5, "the subscription")
        answer = api.call("POST", f"/callbacks/{job.id}", json={"status": "success", "attempt": 1})
        assert answer.json() == {"jobId": job.id, "receivers": 1, "outcome": "published"}
        message = wait_until(lambda: hub.get_message(timeout=0.5), 5, "the callback on the channel")
        assert json.loads(message["data"]) == {"jobId": job.id, "status": "success", "attempt": 1}
    finally:
        hub.close()
    assert store.begin(job, 2).verdict == "go"  # published, not stored: the hub's business now


def test_callback_errors(api: Api, store: JobStore) -> None:
    unknown = api.call("POST", "/callbacks/no-such-job", json={"status": "success"})
    assert unknown.status_code == 404 and "no-such-job" in unknown.json()["detail"]
    job = new_job(store, "cb-bad")
    for body, named in [({}, "status"), ({"status": ""}, "status"), ({"status": "success", "attempt": 0}, "attempt")]:
        answer = api.call("POST", f"/callbacks/{job.id}", json=body)
        assert answer.status_code == 422 and named in answer.json()["detail"], body
    huge = api.call("POST", f"/callbacks/{job.id}", json={"status": "failed", "error": "x" * 70_000})
    assert huge.status_code == 422 and "bytes" in huge.json()["detail"]
    assert api.call("GET", "/jobs/no-such-job").status_code == 404
    assert api.call("GET", "/jobs", params={"limit": 0}).status_code == 422


# --- dead letters -------------------------------------------------------------------------------


def test_dead_letters_list_and_replay(api: Api, store: JobStore, db: redis.Redis) -> None:
    job = new_job(store, "dead-1")
    assert store.dead_letter(job, 3, "receiver said 500") == "dead-lettered"
    listed = api.call("GET", "/dead").json()
    assert [(d["jobId"], d["attempts"], d["error"]) for d in listed] == [(job.id, 3, "receiver said 500")]
    assert api.call("GET", f"/jobs/{job.id}").json()["state"] == "failed"

    queued_before = queued(db)
    replayed = api.call("POST", f"/dead/{job.id}/replay")
    assert replayed.json() == {"jobId": job.id, "key": job.key, "outcome": "replaying"}
    assert queued(db) == queued_before + 1
    assert api.call("GET", "/dead").json() == []
    again = api.call("POST", f"/dead/{job.id}/replay")
    assert again.status_code == 404 and "no dead letter" in again.json()["detail"]


# --- rules --------------------------------------------------------------------------------------


def test_rules_seeded_then_put_get_delete(api: Api, env: dict[str, str]) -> None:
    seeded = api.call("GET", "/rules").json()
    assert seeded["version"] > 0
    assert [r["pattern"] for r in seeded["rules"]][:2] == ["t:*", "k"]

    added = api.call("PUT", "/rules/vip:*", json={"webhook": "https://h.example/vip", "queue": "priority"})
    assert added.json() == {"pattern": "vip:*", "version": seeded["version"] + 1, "created": True}
    replaced = api.call("PUT", "/rules/vip:*", json={"channel": "vips", "queue": "priority"}).json()
    assert replaced["created"] is False
    slashed = api.call("PUT", "/rules/a/b*", json={"channel": "slashes"})
    assert slashed.status_code == 200
    rules = api.call("GET", "/rules").json()["rules"]
    vip = next(r for r in rules if r["pattern"] == "vip:*")
    assert vip == {
        "pattern": "vip:*",
        "webhook": None,
        "channel": "vips",
        "queue": "priority",
        "target": "|vips@priority",
    }
    assert rules[-1]["pattern"] == "a/b*"

    listed = cli(env, "rules", "list")  # the CLI reads the same rules
    assert "vip:*=|vips@priority" in listed.stdout

    assert api.call("DELETE", "/rules/vip:*").status_code == 200
    assert api.call("DELETE", "/rules/a/b*").status_code == 200
    missing = api.call("DELETE", "/rules/vip:*")
    assert missing.status_code == 404 and "no rule" in missing.json()["detail"]


@pytest.mark.parametrize(
    ("pattern", "body", "named"),
    [
        ("x", {"webhook": "ftp://h/p"}, "'ftp://h/p': expected an http:// or https:// URL"),
        ("x", {}, "expected a webhook URL, a |CHANNEL, or both"),
        ("x", {"channel": "c", "queue": "no spaces"}, "queue 'no spaces'"),
        ("x", {"channel": "a|b"}, "channel 'a|b'"),
        ("x[", {"channel": "c"}, "balanced"),
        ("a,b", {"channel": "c"}, "','"),
        ("x", {"channel": "c", "color": "red"}, "color"),
    ],
)
def test_invalid_rules_are_422_naming_the_bad_part(api: Api, pattern: str, body: dict, named: str) -> None:
    answer = api.call("PUT", f"/rules/{pattern}", json=body)
    assert answer.status_code == 422, answer.text
    assert named in answer.json()["detail"]
    assert pattern not in [r["pattern"] for r in api.call("GET", "/rules").json()["rules"]]


def test_cli_rules_set_and_delete_use_the_same_store(api: Api, env: dict[str, str], db: redis.Redis) -> None:
    made = cli(env, "rules", "set", "cli:*", "https://h.example/cli@priority")
    assert made.returncode == 0, made.stderr
    assert RuleStore(db).get("cli:*").queue == "priority"
    assert api.call("GET", "/rules").json()["rules"][-1]["pattern"] == "cli:*"
    bad = cli(env, "rules", "set", "cli:*", "ftp://h/x")
    assert bad.returncode == 2 and "ftp://h/x" in bad.stderr
    assert cli(env, "rules", "delete", "cli:*").returncode == 0
    assert cli(env, "rules", "delete", "cli:*").returncode == 1


# --- Redis down ---------------------------------------------------------------------------------


def test_redis_down_is_503_not_500(log_dir: Path) -> None:
    server = RedisServer().start()
    api = start_api(api_env(server.url(0), MAPPING), log_dir, name="api-redis-down")
    try:
        assert api.call("GET", "/followups").status_code == 200
        server.stop()
        for method, path, body in [
            ("GET", "/followups", None),
            ("POST", "/followups", {"key": "t:1", "in": "1s"}),
            ("GET", "/rules", None),
            ("GET", "/healthz", None),
        ]:
            answer = api.call(method, path, json=body)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.json()["detail"].startswith("Redis is unavailable")
    finally:
        api.stop()
        server.stop()


def test_a_lone_surrogate_is_422_not_500(api: Api) -> None:
    answer = api.call(
        "POST", "/followups", data='{"key": "t:\\ud800", "in": "1h"}', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422 and "key" in answer.json()["detail"]
