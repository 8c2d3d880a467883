"""Deploy files, checked without a Docker engine: the stack, its env, the image, n8n, Grafana."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from followup.config import ALIASES, SECRET_FILES, VARIABLES, load_settings
from followup.metrics import ListenerMetrics, WorkerMetrics
from tests.harness import FOLLOWUP, ROOT

KNOWN = VARIABLES | set(ALIASES) | {f"{name}_FILE" for name in SECRET_FILES}
ENV_EXAMPLE = ROOT / "docker" / "followup.env.example"


def env_file(path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


@pytest.fixture(scope="module")
def stack() -> dict:
    """stack.yml as Docker resolves it where the client exists, else as written."""
    if shutil.which("docker"):
        result = subprocess.run(
            ["docker", "stack", "config", "-c", "stack.yml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "FOLLOWUP_ENV_FILE": str(ENV_EXAMPLE)},
        )
        assert result.returncode == 0, f"docker stack config rejected stack.yml:\n{result.stderr}"
        return yaml.safe_load(result.stdout)
    return yaml.safe_load((ROOT / "stack.yml").read_text())


def test_stack_has_the_services_and_settings_the_issue_names(stack: dict) -> None:
    services = stack["services"]
    assert set(services) == {"redis", "listener", "worker", "worker-priority", "api", "flower"}
    redis_command = " ".join(map(str, services["redis"]["command"]))
    assert "--appendonly yes" in redis_command
    assert "--maxmemory-policy noeviction" in redis_command
    # noeviction only refuses writes under a maxmemory, which must sit below the container's limit
    # (else the kernel kills Redis first and the last second of writes is lost).
    maxmemory = re.search(r"--maxmemory (\d+)mb", redis_command)
    assert maxmemory, redis_command
    limit = services["redis"]["deploy"]["resources"]["limits"]["memory"]
    limit_mb = int(limit) // 2**20 if str(limit).isdigit() else int(str(limit).rstrip("G")) * 1024
    assert int(maxmemory.group(1)) < limit_mb, (maxmemory.group(0), limit)
    assert any(
        str(volume).endswith(":/data") or (isinstance(volume, dict) and volume.get("target") == "/data")
        for volume in services["redis"]["volumes"]
    ), services["redis"]["volumes"]
    assert re.search(r"--notify-keyspace-events Eg\$+xe", redis_command)
    assert services["listener"]["deploy"]["replicas"] == 2
    worker = services["worker"]
    assert worker["deploy"]["update_config"]["parallelism"] == 1
    grace = str(worker["stop_grace_period"])
    assert grace in ("6m", "6m0s"), grace
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH_FILE"].startswith("/run/secrets/")
    assert "FLOWER_BASIC_AUTH" not in services["flower"]["environment"]
    assert services["api"]["environment"]["API_TOKEN_FILE"].startswith("/run/secrets/")
    assert "API_TOKEN" not in services["api"]["environment"]
    assert services["worker-priority"]["command"] == ["worker", "--queues", "priority"]
    for name in ("listener", "worker", "worker-priority", "api", "flower", "redis"):
        assert services[name]["deploy"]["resources"]["limits"], name
        assert services[name]["networks"], name
    assert stack["networks"]["followup"]["driver"] == "overlay"


def test_stop_grace_period_outlasts_one_attempt() -> None:
    settings = load_settings(env_file(ENV_EXAMPLE).get)
    assert settings.longest_attempt < 6 * 60


def test_every_variable_the_stack_sets_is_one_followup_knows(stack: dict) -> None:
    set_by_stack = set(env_file(ENV_EXAMPLE))
    for service in ("listener", "worker", "worker-priority", "api", "flower"):
        set_by_stack |= set(stack["services"][service].get("environment") or {})
    unknown = set_by_stack - KNOWN
    assert not unknown, f"not in the contract: {sorted(unknown)}"


def test_the_env_example_is_a_valid_configuration() -> None:
    settings = load_settings(env_file(ENV_EXAMPLE).get)
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.metrics_port == 9808


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.M)
    assert len(stages) == 2 and all(re.match(r"python:3\.1[1-9]", stage) for stage in stages)
    final = dockerfile.split("\nFROM ")[-1]
    assert "USER followup" in final
    assert "HEALTHCHECK" in final and '"followup", "health"' in final
    assert "gcc" not in final and "build-essential" not in final
    assert "-r requirements.txt" in dockerfile
    assert (ROOT / ".dockerignore").read_text().count(".venv") == 1


@pytest.mark.parametrize("role", ["listen", "worker", "flower", "api", "health", "check", "dead", "rules"])
def test_every_role_the_image_runs_is_a_followup_command(role: str) -> None:
    env = {**os.environ, **env_file(ENV_EXAMPLE), "FLOWER_BASIC_AUTH": "admin:a-password"}  # the stack's secret
    result = subprocess.run(
        [*FOLLOWUP, role, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False, env=env
    )
    assert result.returncode == 0, result.stderr


EXAMPLES = ROOT / "examples" / "n8n"


def nodes(name: str) -> dict[str, dict]:
    workflow = json.loads((EXAMPLES / name).read_text())
    assert {"name", "nodes", "connections"} <= set(workflow)
    for source in workflow["connections"]:
        assert source in {node["name"] for node in workflow["nodes"]}
    return {node["name"]: node for node in workflow["nodes"]}


def test_n8n_example_schedule_sets_a_key_with_expiry() -> None:
    found = nodes("a-schedule-followup.json")
    redis_node = next(n for n in found.values() if n["type"] == "n8n-nodes-base.redis")
    params = redis_node["parameters"]
    assert params["operation"] == "set" and params["expire"] is True and params["ttl"] > 0
    assert params["key"].startswith("=followup:")


def test_n8n_example_receive_confirms_with_a_publish_of_job_id_and_status() -> None:
    found = nodes("b-receive-and-confirm.json")
    webhook = next(n for n in found.values() if n["type"] == "n8n-nodes-base.webhook")
    assert webhook["parameters"]["httpMethod"] == "POST"
    publish = next(n for n in found.values() if n["parameters"].get("operation") == "publish")
    assert publish["type"] == "n8n-nodes-base.redis"
    assert "callbackChannel" in publish["parameters"]["channel"]
    assert "jobId" in publish["parameters"]["messageData"] and "'success'" in publish["parameters"]["messageData"]


def test_n8n_example_reset_sets_again_or_deletes() -> None:
    operations = {n["parameters"].get("operation") for n in nodes("c-reset-timer.json").values()}
    assert {"set", "delete"} <= operations


def test_grafana_dashboard_only_plots_metrics_followup_exports() -> None:
    dashboard = json.loads((ROOT / "docker" / "grafana" / "followup-dashboard.json").read_text())
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    exported = set()
    registries = (ListenerMetrics().registry, WorkerMetrics().registry)
    for registry in registries:
        for family in registry.collect():
            exported |= {family.name + suffix for suffix in suffixes[family.type]}
    plotted = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            plotted |= set(re.findall(r"followup_[a-z_]+", target["expr"]))
    assert plotted, "the dashboard plots nothing"
    missing = {name for name in plotted if name not in exported}
    assert not missing, f"the dashboard plots metrics nobody exports: {sorted(missing)}"
    families = {family.name for registry in registries for family in registry.collect()}
    unplotted = {name for name in families if not any(plot.startswith(name) for plot in plotted)}
    assert not unplotted, f"metrics no panel plots: {sorted(unplotted)}"


def test_the_list_of_known_variables_is_what_the_settings_read() -> None:
    asked: set[str] = set()

    def lookup(name: str) -> str | None:
        asked.add(name)
        return "k=|c" if name == "KEY_WEBHOOK_MAPPING" else None

    load_settings(lookup)
    assert asked == KNOWN
