"""`followup api` as a real subprocess on a free port, and a small client for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from followup.embedded import free_port
from tests.conftest import base_env
from tests.harness import FollowupProcess

TOKEN = "api-test-token-5f2b9c"
# Pub/sub channels are global to a redis-server, not per database: the API tests' callbacks must
# not reach the workers that other test files run on the same server.
API_CALLBACK_CHANNEL = "api_test_callback"
READY = "followup api: listening on"


@dataclass
class Api:
    process: FollowupProcess
    base: str
    token: str | None = TOKEN

    def call(self, method: str, path: str, *, token: str | None = ..., **kwargs: Any) -> requests.Response:  # type: ignore[assignment]
        headers = dict(kwargs.pop("headers", {}))
        token = self.token if token is ... else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.base + path, headers=headers, timeout=10, **kwargs)

    def stop(self) -> None:
        self.process.stop()


def api_env(redis_url: str, mapping: str, **overrides: str) -> dict[str, str]:
    settings = {"CALLBACK_CHANNEL": API_CALLBACK_CHANNEL, "API_TOKEN": TOKEN, **overrides}
    return base_env(redis_url, mapping, **settings)


def start_api(env: dict[str, str], log_dir: Path, name: str = "api") -> Api:
    port = free_port()
    env = {**env, "API_PORT": str(port), "API_HOST": "127.0.0.1"}
    process = FollowupProcess(name, ["api"], env, log_dir, ready=READY).start()
    return Api(process, f"http://127.0.0.1:{port}", env.get("API_TOKEN"))
