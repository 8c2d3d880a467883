"""`python -m bench` (`make bench`): run the scenarios, print the table, write the JSON and the docs."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench import report
from bench.common import HZ, ROOT, cleanup_all, jsonable, log_dir, progress, target
from followup.embedded import redis_server_binary

SCENARIOS = ["lateness", "throughput", "waiting", "flood", "footprint"]
FULL = {
    "lateness_seconds": 10,
    "background": 100_000,
    "tail": 15.0,
    "raw_tail": 8.0,
    "throughput_keys": 20_000,
    "throughput_bound": 40.0,
    "waiting_jobs": 2_000,
    "callback_rate": 400.0,
    "waiting_bound": 60.0,
    "flood_keys": 100_000,
    "flood_bound": 150.0,
    "footprint_keys": 1_000_000,
    "footprint_bound": 90.0,
    "footprint_scan_bound": 30.0,
}
QUICK = {
    **FULL,
    "lateness_seconds": 3,
    "tail": 10.0,
    "raw_tail": 5.0,
    "throughput_keys": 5_000,
    "throughput_bound": 30.0,
    "waiting_jobs": 500,
    "flood_keys": 20_000,
    "flood_bound": 45.0,
    "footprint_keys": 200_000,
    "footprint_bound": 60.0,
    "footprint_scan_bound": 15.0,
}
# Roughly how long each scenario takes at most (full run), to keep the whole run in its budget.
ESTIMATE_S = {"lateness": 150, "throughput": 120, "waiting": 40, "flood": 180, "footprint": 85}
# What each scenario would have reported, for the targets table when it is not run.
TARGETS = {
    "lateness": [
        ("lateness p50, 0 background keys", "≤ 3 ms"),
        ("lateness p99, 0 background keys", "≤ 10 ms"),
        ("lateness p50, 100,000 background keys", "≤ 3 ms"),
        ("lateness p99, 100,000 background keys", "≤ 10 ms"),
    ],
    "throughput": [("completed follow-ups/s", "≥ 1,500/s"), ("lost", "0"), ("doubled", "0")],
    "waiting": [("worker RSS with 2,000 jobs waiting", "< 300 MB"), ("callback → success p99", "≤ 5 ms")],
    "flood": [
        ("flood: delivered exactly once (of 100,000)", "100,000"),
        ("flood: listener never dropped by Redis", "0 drops"),
    ],
    "footprint": [("listener RSS with 1,000,000 keys indexed", "≤ 60 MB")],
}
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "BENCHMARKS.md"
FINDINGS = ROOT / "bench" / "findings.md"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    binary = redis_server_binary()
    redis_version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": memory_kb / 2**20,
        "os": f"{platform.system()} {platform.release()}",
        "redis_binary": binary,
        "redis_version": redis_version.split("v=")[1].split()[0] if "v=" in redis_version else redis_version.strip(),
        "hz": int(HZ),
        "python": platform.python_version(),
        **{
            name: version(dist)
            for name, dist in [
                ("celery", "celery"),
                ("kombu", "kombu"),
                ("redis_py", "redis"),
                ("gevent", "gevent"),
                ("requests", "requests"),
            ]
        },
    }


def git_state() -> str:
    """Which followup was measured: the commit, and whether followup/ had uncommitted changes."""
    if os.environ.get("FOLLOWUP_BENCH_SOURCE"):  # a run from an exported tree (git archive) says so itself
        return os.environ["FOLLOWUP_BENCH_SOURCE"]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "followup", "celeryconfig.py")
    return f"commit {commit}" + (" with uncommitted changes in followup/" if dirty else "")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (≈ 3 minutes); docs untouched unless --docs")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated, of: {','.join(SCENARIOS)}")
    parser.add_argument("--budget", type=float, default=520.0, help="seconds; scenarios that would not fit are skipped")
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite docs/BENCHMARKS.md (default: only after a full run of every scenario)",
    )
    parser.add_argument(
        "--render", metavar="JSON", help="run nothing: print and write docs/BENCHMARKS.md from a saved run's JSON"
    )
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def not_run(name: str, why: str) -> dict[str, Any]:
    return {
        "name": name,
        "not_run": why,
        "targets": [target(what, goal, "not run", None) for what, goal in TARGETS[name]],
    }


def unjson(value: Any) -> Any:
    """The inverse of common.jsonable: "inf" and "nan" strings back to floats."""
    if value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: unjson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unjson(v) for v in value]
    return value


def write_docs(run: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    methods = {name: (importlib.import_module(f"bench.scenarios.{name}").__doc__ or "") for name in SCENARIOS}
    findings = FINDINGS.read_text() if FINDINGS.exists() else ""
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(report.markdown(run, results, methods, findings))
    print(f"bench: rewrote {DOCS.relative_to(ROOT)}")


def render(path: str) -> int:
    saved = unjson(json.loads(Path(path).read_text()))
    results = saved.pop("results")
    print(report.terminal(results))
    write_docs(saved, results)
    return 0


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.render:
        return render(args.render)
    options = SimpleNamespace(**(QUICK if args.quick else FULL))
    started = datetime.now(UTC)
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    progress(f"bench: {'quick' if args.quick else 'full'} run of {', '.join(args.only)}; logs in {log_dir()}")
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in SCENARIOS:
            if name not in args.only:
                results[name] = not_run(name, "not selected (--only)")
                continue
            elapsed = time.monotonic() - t0
            estimate = ESTIMATE_S[name] * (0.5 if args.quick else 1.0)
            if elapsed + estimate > args.budget:
                results[name] = not_run(name, f"time budget: {elapsed:.0f} s used of {args.budget:.0f} s")
                progress(f"== {name}: skipped ({results[name]['not_run']})")
                continue
            progress(f"== {name}")
            begun = time.monotonic()
            try:
                results[name] = importlib.import_module(f"bench.scenarios.{name}").run(options)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not cost the others
                progress(f"== {name} failed: {type(exc).__name__}: {exc}")
                results[name] = not_run(name, f"failed: {type(exc).__name__}: {exc}")
            results[name]["duration_s"] = round(time.monotonic() - begun, 1)
            progress(f"== {name} done in {results[name]['duration_s']:.0f} s")
    finally:
        cleanup_all()
    duration = time.monotonic() - t0
    run = {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        "quick": args.quick,
        "scenarios": args.only,
        "options": vars(options),
        "machine": machine(),
        "git": git_state(),
        "logs": str(log_dir()),
    }
    print()
    print(report.terminal(results))
    print(f"\nbench: {duration:.0f} s in all; logs in {log_dir()}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(jsonable({**run, "results": results}), indent=1, ensure_ascii=False) + "\n")
    print(f"bench: wrote {out.relative_to(ROOT)}")
    docs = args.docs if args.docs is not None else (not args.quick and args.only == SCENARIOS)
    if docs:
        write_docs(run, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
