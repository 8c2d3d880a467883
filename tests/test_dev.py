"""`make run` as a newcomer meets it: `followup dev` with no Redis to be found and no rules set.

It must start an embedded Redis, show a demo follow-up succeed, print next steps that work as
printed in another terminal, list the job in Flower, and stop every child process on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from followup.embedded import free_port
from tests.harness import ROOT, followup_env, wait_until


class Dev:
    def __init__(self, log_path: Path, env: dict[str, str], flower_port: int) -> None:
        self.log_path = log_path
        self.flower_port = flower_port
        log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "followup", "dev"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float, what: str) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.proc.poll() is None, f"followup dev exited with {self.proc.returncode}:\n{self.output()}"
            return re.search(pattern, self.output(), re.MULTILINE)

        try:
            return wait_until(found, timeout, what, interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- followup dev said:\n{self.output()[-4000:]}") from None


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    flower_port = free_port()
    env = followup_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", FLOWER_PORT=str(flower_port))
    dev = Dev(tmp_path / "dev.log", env, flower_port)
    yield dev
    if dev.proc.poll() is None:
        for child in psutil.Process(dev.proc.pid).children(recursive=True):
            child.kill()
        os.killpg(dev.proc.pid, signal.SIGKILL)
        dev.proc.wait()


def _flower_tasks(port: int) -> dict[str, dict]:
    query = "draw=1&start=0&length=50&search[value]=&order[0][column]=0&order[0][dir]=asc&columns[0][data]=name"
    url = f"http://127.0.0.1:{port}/tasks/datatable?{query.replace('[', '%5B').replace(']', '%5D')}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            rows = json.load(response)["data"]
    except OSError:
        return {}
    return {_job_key(row): row for row in rows}


def _job_key(row: dict) -> str:
    found = re.search(r"'key': '([^']*)'", row.get("kwargs") or "")
    return found.group(1) if found else ""


def test_make_run_shows_a_follow_up_succeed_and_ctrl_c_stops_everything(dev: Dev) -> None:
    dev.wait_for(r"started an embedded redis-server at redis://", 30, "the embedded Redis to be announced")
    dev.wait_for(
        r"Flower runs without authentication here \(FLOWER_UNAUTHENTICATED=true\)", 30, "the open-Flower notice"
    )
    dev.wait_for(r"^Ctrl-C stops everything", 90, "followup dev to say it is running")
    welcome = dev.wait_for(r"job (\S+) \(demo:welcome\): success after 1 attempt", 30, "demo:welcome to succeed")
    children = psutil.Process(dev.proc.pid).children(recursive=True)
    names = " ".join(" ".join(child.cmdline()) for child in children)
    for part in ("redis-server", " listen", " worker", " flower"):
        assert part in names, f"no child process running {part!r}: {names}"

    # The next steps, run as printed from a shell that knows nothing of this one's settings.
    steps = dev.output().split("Try next, in another terminal:\n", 1)[1].split("Ctrl-C stops everything")[0]
    lines = [line.strip() for line in steps.splitlines() if line.strip()]
    assert lines[0].startswith("export REDIS_URL="), lines
    script = "\n".join(["set -e", *lines])
    done = subprocess.run(
        ["bash", "-c", script], check=False, cwd=ROOT, env=followup_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"the printed next steps failed:\n{script}\n{done.stdout}{done.stderr}"
    assert "demo:hello" in done.stdout, f"`followup pending` did not list demo:hello:\n{done.stdout}"
    dev.wait_for(r"\(demo:hello\): success after 1 attempt", 30, "the printed `followup schedule` to succeed")
    if "redis-cli" in steps:
        dev.wait_for(r"\(demo:bye\): success after 1 attempt", 30, "the printed redis-cli SET to succeed")

    tasks = wait_until(
        lambda: (found := _flower_tasks(dev.flower_port)).get("demo:welcome", {}).get("state") == "SUCCESS" and found,
        30,
        "Flower to list demo:welcome as SUCCESS",
        interval=0.2,
    )
    assert tasks["demo:welcome"]["uuid"] == welcome.group(1)

    dev.proc.send_signal(signal.SIGINT)
    try:
        dev.proc.wait(40)
    except subprocess.TimeoutExpired:
        pytest.fail(f"followup dev did not stop on Ctrl-C:\n{dev.output()[-3000:]}")
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after Ctrl-C: {[child.cmdline() for child in alive]}"
