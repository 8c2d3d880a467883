"""The OpenAPI document, exercised by schemathesis: no 500s, every answer as the schema says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from followup.embedded import RedisServer
from tests.api_support import TOKEN, Api, api_env, start_api

DB = 13  # no other test file uses it
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 12  # bounded: about 200 requests in all, a few seconds


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, log_dir: Path) -> Iterator[Api]:
    client = redis.Redis.from_url(redis_server.url(DB))
    client.flushdb()
    server = start_api(api_env(redis_server.url(DB), "t:*=https://h.example/p,k=|c"), log_dir, name="api-schema")
    yield server
    server.stop()
    client.flushdb()


def test_every_operation_answers_as_its_schema_says(api: Api) -> None:
    schema = schemathesis.openapi.from_url(f"{api.base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 12
    failures: list[str] = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=api.base, headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

        try:
            exercise()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    assert "Traceback" not in api.process.output()
