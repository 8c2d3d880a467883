"""`followup worker --queues NAME` consumes that queue instead of QUEUE_NAME (passed to `celery worker`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from followup import cli
from followup.config import settings


@pytest.fixture
def argv(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    seen: list[str] = []
    monkeypatch.setattr(cli, "_exec_celery", lambda args, **_: seen.extend(args))
    settings.cache_clear()  # read this test's environment, and leave none behind
    yield seen
    settings.cache_clear()


def run_worker(*args: str) -> None:
    env = {"KEY_WEBHOOK_MAPPING": "k=|c", "QUEUE_NAME": "followup"}
    result = CliRunner().invoke(cli.main, ["worker", *args], env=env)
    assert result.exit_code == 0, result.output


def test_worker_consumes_queue_name_by_default(argv: list[str]) -> None:
    run_worker()
    assert argv[argv.index("--queues") + 1] == "followup"


@pytest.mark.parametrize("given", [["--queues", "priority"], ["-Q", "priority"], ["--queues=priority"]])
def test_worker_queues_option_replaces_queue_name(argv: list[str], given: list[str]) -> None:
    run_worker(*given)
    assert "followup" not in argv
    assert argv[-len(given) :] == given
