"""Authenticated and encrypted Redis, secrets kept out of every output, Flower's auth."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from followup.embedded import RedisServer, free_port
from tests.conftest import CALLBACK_CHANNEL, FAILURE_CHANNEL, SUCCESS_CHANNEL, base_env
from tests.harness import (
    FOLLOWUP,
    ROOT,
    Events,
    FollowupProcess,
    Receiver,
    Reply,
    start_listener,
    start_worker,
    wait_until,
)

PASSWORD = "Zq8-pw-never-shown"


def documented_acl() -> list[str]:
    """The ACL rules the README documents for the listener and the workers, as written there."""
    line = next(
        line.strip()
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.strip().startswith("ACL SETUSER followup ")
    )
    return [f">{PASSWORD}" if rule == ">PASSWORD" else rule for rule in line.split()[3:]]


def round_trip(
    url: str,
    log_dir: Path,
    name: str,
    more: Callable[[dict, Receiver, Events], None] | None = None,
    **settings: str,
) -> dict:
    """Listener + worker on `url`: a key expires, the receiver confirms, the job succeeds; then
    `more` (env, receiver, events), while they still run."""
    receiver = Receiver(url, CALLBACK_CHANNEL)
    env = base_env(url, f"sec:*={receiver.url('/sec')}", DEBUG="true", **settings)
    events = Events(url, SUCCESS_CHANNEL, FAILURE_CHANNEL)
    worker = start_worker(env, log_dir, name=f"{name}-worker")
    listener = start_listener(env, log_dir, name=f"{name}-listener")
    try:
        receiver.plan("sec:1", Reply(callback="success"))
        redis.Redis.from_url(url).set("sec:1", '{"private": true}', px=100)
        [call] = receiver.wait_calls("sec:1", 1)
        events.wait(SUCCESS_CHANNEL, jobId=call.body["jobId"])
        if more:
            more(env, receiver, events)
        check = subprocess.run(
            [*FOLLOWUP, "check"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        return {"worker": worker.output(), "listener": listener.output(), "check": check.stdout + check.stderr}
    finally:
        listener.stop()
        worker.stop()
        events.close()
        receiver.stop()


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_requirepass_with_debug_logs_never_shows_the_password(log_dir: Path, form: str) -> None:
    server = RedisServer(args=("--requirepass", PASSWORD)).start()
    try:
        # Both forms redis-py takes; the broker (kombu) only understands the first.
        url = {
            "userinfo": f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0",
            "query": f"redis://127.0.0.1:{server.port}/0?password={PASSWORD}",
        }[form]
        outputs = round_trip(url, log_dir, f"requirepass-{form}")
        for name, text in outputs.items():
            assert PASSWORD not in text, f"the password shows in {name}'s output"
        assert "DEBUG" in outputs["listener"] or "DEBUG" in outputs["worker"]
        assert "ok    redis: reachable at redis://***@127.0.0.1" in outputs["check"]
    finally:
        server.stop()


def test_every_part_works_under_the_documented_acl(log_dir: Path) -> None:
    server = RedisServer().start()
    try:
        admin = redis.Redis(port=server.port)
        admin.config_set("notify-keyspace-events", "Eg$xe")  # the ACL grants no CONFIG: set beforehand
        admin.execute_command("ACL", "SETUSER", "followup", *documented_acl())
        admin.execute_command("ACL", "SETUSER", "default", "off")  # only the ACL user may work
        url = f"redis://followup:{PASSWORD}@127.0.0.1:{server.port}/0"
        outputs = round_trip(url, log_dir, "acl", more=_retries_dead_letters_and_commands)
        assert all(PASSWORD not in text for text in outputs.values())
        # CONFIG GET alone may be refused: the listener and `check` then look with probe keys.
        denied = [entry for entry in admin.execute_command("ACL", "LOG") if entry[b"object"] != b"config|get"]
        assert not denied, f"Redis denied the followup user: {denied}"
    finally:
        server.stop()


def _retries_dead_letters_and_commands(env: dict, receiver: Receiver, events: Events) -> None:
    receiver.plan("sec:retry", Reply(status=500), Reply(callback="success"))  # a retry: a Celery task
    receiver.plan("sec:gone", Reply(status=410))  # dead-lettered at once
    client = redis.Redis.from_url(env["REDIS_URL"])
    client.set("sec:retry", "1", px=50)
    client.set("sec:gone", "1", px=50)
    first, _ = receiver.wait_calls("sec:retry", 2)
    events.wait(SUCCESS_CHANNEL, jobId=first.body["jobId"])
    [gone] = receiver.wait_calls("sec:gone", 1)
    events.wait(FAILURE_CHANNEL, jobId=gone.body["jobId"])

    def followup(*args: str) -> str:
        done = subprocess.run(
            [*FOLLOWUP, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"followup {' '.join(args)} under the ACL: {done.stdout}{done.stderr}"
        return done.stdout

    assert gone.body["jobId"] in followup("dead", "list")
    followup("rules", "set", "acl:*", "|acl-channel")
    assert "acl:*" in followup("rules", "list")
    followup("schedule", "sec:later", "--in", "1h")
    assert "sec:later" in followup("pending")
    followup("cancel", "sec:later")


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is needed to make a throwaway CA")
def test_tls_redis_through_rediss_urls(tmp_path: Path, log_dir: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True, timeout=60)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=followup test CA",
    )
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", "ext.cnf",
        )  # fmt: skip
    ca, cert, key = (str(tmp_path / name) for name in ("ca.pem", "client.pem", "client.key"))

    def tls_server() -> RedisServer:
        # Mutual TLS: the server asks every client for a certificate signed by the CA.
        return RedisServer(
            args=(
                "--port", "0", "--tls-port", "{port}",
                "--tls-cert-file", str(tmp_path / "server.pem"), "--tls-key-file", str(tmp_path / "server.key"),
                "--tls-ca-cert-file", ca, "--tls-auth-clients", "yes",
            ),
            tls_ca=ca,
            tls_client=(cert, key),
        )  # fmt: skip

    watched, broker = tls_server(), tls_server()
    try:
        watched.start()
    except RuntimeError:
        pytest.skip("this redis-server was built without TLS")
    try:
        broker.start()
        with pytest.raises(redis.ConnectionError):  # the server really demands a client certificate
            redis.Redis.from_url(f"rediss://127.0.0.1:{watched.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}").ping()
        tls = f"ssl_cert_reqs=required&ssl_ca_certs={ca}&ssl_certfile={cert}&ssl_keyfile={key}"
        url = f"rediss://127.0.0.1:{watched.port}/0?{tls}"
        broker_url = f"rediss://127.0.0.1:{broker.port}/0?{tls}"
        outputs = round_trip(url, log_dir, "tls", CELERY_BROKER_URL=broker_url)
        assert f"rediss://127.0.0.1:{watched.port}" in outputs["listener"]
        assert f"Connected to rediss://***@127.0.0.1:{broker.port}/0" in outputs["worker"], "not the second server"
        assert redis.Redis.from_url(broker_url).exists("_kombu.binding.followup"), "nothing went through the broker"
    finally:
        watched.stop()
        broker.stop()


def test_flower_refuses_to_start_without_auth() -> None:
    env = base_env("redis://127.0.0.1:1/0", "k=|c")
    result = subprocess.run(
        [*FOLLOWUP, "flower"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "FLOWER_BASIC_AUTH is not set" in result.stderr and "FLOWER_UNAUTHENTICATED=true" in result.stderr


def test_flower_with_basic_auth_asks_for_it_and_never_prints_it(redis_server: RedisServer, log_dir: Path) -> None:
    port = free_port()
    secret = "flower-Pw-7x"
    env = base_env(redis_server.url(), "k=|c", FLOWER_BASIC_AUTH=f"ops:{secret}")
    args = ["flower", f"--port={port}", "--address=127.0.0.1"]
    flower = FollowupProcess("flower-auth", args, env, log_dir, ready="Visit me").start()
    try:
        url = f"http://127.0.0.1:{port}/"
        # Flower prints its banner a moment before it listens.
        wait_until(lambda: _accepts(port), 15, f"Flower to listen on port {port}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 401
        login = base64.b64encode(f"ops:{secret}".encode()).decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {login}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        # As the README warns: Flower serves its metrics without asking for the login.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200 and secret not in response.read().decode()
    finally:
        flower.stop()
    assert secret not in flower.output(), "Flower's output shows its password"


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
