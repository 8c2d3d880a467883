"""Bad configuration stops `followup listen` / `followup worker` at once: exit 2, one line on stderr.

Real subprocesses of the installed `followup` command, in an environment built from scratch and a
temporary working directory, so that neither the developer's environment nor a `.env` interferes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from followup import config

FOLLOWUP = Path(sys.executable).with_name("followup")
GOOD_MAPPING = "key01=https://a.example/x"
PASSWORD = "s3cretpw"
CONTRACT_VARIABLES = {
    *("REDIS_URL", "CELERY_BROKER_URL", "KEY_WEBHOOK_MAPPING", "QUEUE_NAME", "BULLMQ_QUEUE_NAME"),
    *("CALLBACK_CHANNEL", "SUCCESS_CHANNEL", "FAILURE_CHANNEL", "WORKER_CALLBACK_TIMEOUT", "MAX_ATTEMPTS"),
    *("BULLMQ_ATTEMPTS", "BACKOFF_DELAY", "BULLMQ_BACKOFF_DELAY", "BACKOFF_MAX", "WORKER_CONCURRENCY"),
    *("BULLMQ_CONCURRENCY", "WEBHOOK_TIMEOUT", "WEBHOOK_SECRET", "METRICS_PORT", "API_PORT", "API_TOKEN"),
    *("FLOWER_BASIC_AUTH", "DEBUG", "BROKER_VISIBILITY_TIMEOUT"),
}


def run_followup(command: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), **variables}
    return subprocess.run(
        [str(FOLLOWUP), command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def assert_config_failure(result: subprocess.CompletedProcess[str], variable: str, bad_part: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert variable in line
    assert bad_part in line
    assert "expected" in line
    assert "Traceback" not in result.stderr
    return line


CASES = [
    # variables, variable named, bad part shown
    pytest.param({"KEY_WEBHOOK_MAPPING": "key01=ftp://files.example/x"}, "KEY_WEBHOOK_MAPPING", "ftp://", id="rule"),
    pytest.param({"KEY_WEBHOOK_MAPPING": "key01"}, "KEY_WEBHOOK_MAPPING", "key01", id="rule-without-equals"),
    pytest.param(
        {"KEY_WEBHOOK_MAPPING": GOOD_MAPPING, "WORKER_CALLBACK_TIMEOUT": "-5s"},
        "WORKER_CALLBACK_TIMEOUT",
        "-5s",
        id="duration",
    ),
    pytest.param({"KEY_WEBHOOK_MAPPING": GOOD_MAPPING, "MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS", "'0'", id="attempts"),
    pytest.param({}, "KEY_WEBHOOK_MAPPING", "not set", id="mapping-missing"),
]


@pytest.mark.parametrize(("variables", "variable", "bad_part"), CASES)
def test_listen_bad_config_exits_2_with_one_line(tmp_path, variables, variable, bad_part):
    assert_config_failure(run_followup("listen", tmp_path, **variables), variable, bad_part)


@pytest.mark.parametrize("command", ["listen", "worker"])
def test_redis_password_not_in_output(tmp_path, command):
    result = run_followup(
        command, tmp_path, KEY_WEBHOOK_MAPPING=GOOD_MAPPING, REDIS_URL=f"redis://:{PASSWORD}@host:notaport/0"
    )
    assert_config_failure(result, "REDIS_URL", "notaport")
    assert PASSWORD not in result.stderr
    assert PASSWORD not in result.stdout


def test_worker_bad_config_exits_2_before_starting_celery(tmp_path):
    result = run_followup("worker", tmp_path, KEY_WEBHOOK_MAPPING="key01=|")
    assert_config_failure(result, "KEY_WEBHOOK_MAPPING", "key01")
    assert result.stdout == ""  # no Celery banner: it never started


def test_dotenv_in_working_directory_is_read(tmp_path):
    (tmp_path / ".env").write_text(f"KEY_WEBHOOK_MAPPING={GOOD_MAPPING}\nBACKOFF_MAX=ten minutes\n")
    result = run_followup("listen", tmp_path)
    assert_config_failure(result, "BACKOFF_MAX", "ten minutes")


def test_dotenv_quoted_value_and_comments(tmp_path):
    (tmp_path / ".env").write_text(f'# followup settings\nKEY_WEBHOOK_MAPPING="{GOOD_MAPPING}"\nAPI_PORT=70000\n')
    result = run_followup("worker", tmp_path)
    assert_config_failure(result, "API_PORT", "70000")


def test_environment_wins_over_dotenv(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(f"KEY_WEBHOOK_MAPPING={GOOD_MAPPING}\nMAX_ATTEMPTS=0\nQUEUE_NAME=fromfile\n")
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name in CONTRACT_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("MAX_ATTEMPTS", "3")
    settings = config.load_settings(config.environment())
    assert settings.max_attempts == 3  # the environment's, not the .env's 0
    assert settings.queue_name == "fromfile"  # only in .env
    assert [rule.pattern for rule in settings.mapping.rules] == ["key01"]


def test_huge_max_attempts_does_not_crash(tmp_path):
    # BROKER_VISIBILITY_TIMEOUT is checked last, against longest_hold: too short whatever MAX_ATTEMPTS is.
    result = run_followup(
        "listen", tmp_path, KEY_WEBHOOK_MAPPING=GOOD_MAPPING, MAX_ATTEMPTS="2000", BROKER_VISIBILITY_TIMEOUT="1s"
    )
    # Either MAX_ATTEMPTS is accepted (then the visibility timeout is refused) or it is refused itself.
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "BROKER_VISIBILITY_TIMEOUT" in result.stderr or "MAX_ATTEMPTS" in result.stderr
