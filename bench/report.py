"""The table on the terminal, the JSON file and docs/BENCHMARKS.md, from one run's results."""

from __future__ import annotations

import math
from typing import Any

from bench.common import ms


def fmt_count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def fmt_cpu(cpu: dict[str, float] | None) -> str:
    if not cpu:
        return "—"
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu.items())


def times(a: float, b: float) -> str:
    """a ÷ b, written as a factor."""
    if any(not isinstance(x, (int, float)) or math.isnan(x) or math.isinf(x) for x in (a, b)) or b == 0:
        return "—"
    factor = a / b
    return f"{factor:,.0f}×" if factor >= 100 else f"{factor:.2f}×" if factor < 10 else f"{factor:.1f}×"


def render(headers: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


# One table per scenario: (title, headers, rows, notes) ------------------------------------------


def lateness_table(result: dict[str, Any]) -> tuple[str, list[str], list[list[str]], list[str]]:
    c = result["conditions"]
    title = (
        f"Lateness — {c['keys']:,} keys due at {c['rate_per_s']}/s; deadline → arrival (of the webhook at the "
        "receiver; for raw Redis and the poller, of the event or the fire itself) "
        f"(followup ÷ this: followup's figure as a multiple of the baseline's; above 1× followup is later)"
    )
    headers = [
        "background keys",
        "system",
        "arrived",
        "p50",
        "p95",
        "p99",
        "max",
        "followup p50 ÷ this",
        "followup p99 ÷ this",
    ]
    rows, notes = [], []
    followup = {row["background"]: row for row in result["rows"] if row["system"] == "followup"}
    for row in result["rows"]:
        mine = followup[row["background"]]
        arrived = f"{row['n']:,}/{row['n'] + row['missing']:,}"
        rows.append(
            [
                f"{row['background']:,}",
                row["system"],
                arrived,
                ms(row["p50"]),
                ms(row["p95"]),
                ms(row["p99"]),
                ms(row["max"]),
                "" if row is mine else times(mine["p50"], row["p50"]),
                "" if row is mine else times(mine["p99"], row["p99"]),
            ]
        )
        if row["missing"] and "waited_s" in row:
            notes.append(
                f"{row['system']} with {row['background']:,} background keys: {row['missing']:,} events had not "
                f"arrived {row['waited_s']} s after the last deadline ('never' = still missing then)."
            )
    for row in followup.values():
        notes.append(
            f"followup, {row['background']:,} background keys: listener enqueued p50 "
            f"{ms(row['listener_enqueue_p50'], 0)}, p99 {ms(row['listener_enqueue_p99'], 0)} after the deadline "
            f"(its log); {row['doubled']} doubled; {row['wrong_deadline']} with an expiredAt other than the deadline; "
            f"CPU s during the run: {fmt_cpu(row['cpu_s'])}."
        )
    for row in result["rows"]:
        if row["system"] == "Celery countdown":
            notes.append(
                f"Celery countdown, {row['background']:,} background keys: CPU s {fmt_cpu(row['cpu_s'])}"
                + (
                    ""
                    if row.get("fetched_before_first_deadline", True)
                    else " (worker still fetching at the first deadline)"
                )
                + "."
            )
    return title, headers, rows, notes


def throughput_table(result: dict[str, Any]) -> tuple[str, list[str], list[list[str]], list[str]]:
    c = result["conditions"]
    title = f"Throughput — {c['keys']:,} keys due in the same second; completed = success (or done) event out"
    headers = ["system", "completed", "per s", "time to last", "unfinished", "doubled", "followup ÷ this"]
    followup = result["rows"][0]
    rows, notes = [], []
    for row in result["rows"]:
        rows.append(
            [
                row["system"],
                f"{row['completed']:,}/{row['expected']:,}",
                f"{row['per_s']:,.0f}",
                f"{row['time_to_last_s']:.1f} s" if row["time_to_last_s"] is not None else "—",
                f"{row['unfinished']:,}",
                f"{row['doubled_success'] + row['doubled_webhook']:,}",
                "" if row is followup else times(followup["per_s"], row["per_s"]),
            ]
        )
        notes.append(f"{row['system']}: CPU s during the run: {fmt_cpu(row.get('cpu_s'))}.")
    if not followup.get("indexed_before_due", True):
        notes.append("followup: the index did not hold every key before the due second started.")
    return title, headers, rows, notes


def waiting_table(result: dict[str, Any]) -> tuple[str, list[str], list[list[str]], list[str]]:
    c = result["conditions"]
    title = (
        f"Waiting — {c['jobs']:,} jobs waiting on callbacks in one worker; callbacks then published at "
        f"{c['callback_rate_per_s']:g}/s; callback PUBLISH → success event"
    )
    headers = [
        "system",
        "waiting",
        "RSS at rest",
        "RSS waiting",
        "per waiting job",
        "p50",
        "p99",
        "max",
        "followup ÷ this p50",
    ]
    followup = result["rows"][0]
    rows = []
    for row in result["rows"]:
        rows.append(
            [
                row["system"],
                f"{row.get('waiting', 0):,}" if "waiting" in row else "—",
                f"{row['rss_rest_mb']:.0f} MB",
                f"{row['rss_waiting_mb']:.0f} MB" if "rss_waiting_mb" in row else "—",
                f"{row['kb_per_waiting_job']:.0f} KB" if "kb_per_waiting_job" in row else "—",
                ms(row["p50"], 2),
                ms(row["p99"], 2),
                ms(row["max"], 2),
                "" if row is followup else times(followup["p50"], row["p50"]),
            ]
        )
    notes = [f"followup: CPU s from the first webhook to the last success: {fmt_cpu(followup.get('cpu_s'))}."]
    return title, headers, rows, notes


def flood_table(result: dict[str, Any]) -> tuple[str, list[str], list[list[str]], list[str]]:
    c = result["conditions"]
    title = f"Flood — {c['keys']:,} keys due in the same second"
    headers = ["system", "delivered once", "unfinished", "doubled", "drain time", "per s", "dropped", "peak out-buffer"]
    rows = []
    for row in result["rows"]:
        followup = row["system"] == "followup"
        rows.append(
            [
                row["system"],
                f"{row['delivered_once']:,}",
                f"{row['unfinished']:,}",
                f"{row.get('doubled_success', 0) + row.get('doubled_webhook', 0):,}" if followup else "—",
                f"{row['drain_s']:.1f} s" if row["drain_s"] is not None else f"> {c['bound_s']:g} s",
                f"{row['completed_per_s']:,.0f}" if followup else "—",
                (
                    f"{row['listener_lost_redis']} ('lost Redis'), {row['listener_connections_seen']} conn."
                    if followup
                    else "—"
                ),
                f"{row.get('peak_listener_omem_mb', row.get('peak_subscriber_omem_mb', 0)):.1f} MB",
            ]
        )
    f = result["rows"][0]
    notes = [
        f"followup: the listener indexed {f['indexed_from_events']:,} of the keys from their set/expire events "
        f"in {f['index_s']:.1f} s (writing them included); CPU s during the run: {fmt_cpu(f.get('cpu_s'))}.",
        "peak out-buffer: the largest output buffer (CLIENT LIST omem) of the listener's subscription, "
        "sampled every 0.5 s; Redis drops a subscriber at 32 MB, or after 60 s over 8 MB.",
    ]
    if not f.get("indexed_before_due", True):
        notes.append(
            "followup: the listener had not indexed every key (from their set events) when the second came due."
        )
    return title, headers, rows, notes


def footprint_table(result: dict[str, Any]) -> tuple[str, list[str], list[list[str]], list[str]]:
    c = result["conditions"]
    title = f"Footprint — RSS at rest and with {c['keys']:,} keys in the schedule index (TTL {c['ttl_s'] // 3600} h)"
    headers = ["process", "at rest", f"with {c['keys']:,} indexed", "peak (VmHWM)"]
    f, base = result["rows"]
    rows = [
        [
            "followup listener",
            f"{f['listener_rest_mb']:.0f} MB",
            f"{f['listener_full_mb']:.0f} MB",
            f"{f['listener_peak_mb']:.0f} MB",
        ],
        ["followup worker (gevent)", f"{f['worker_rest_mb']:.0f} MB", f"{f['worker_full_mb']:.0f} MB", "—"],
        [base["system"], f"{base['worker_rest_mb']:.0f} MB (all processes)", "—", "—"],
    ]
    slow = ", ".join(f"{name} ×{n}" for name, n in f["redis_slow_commands"].items())
    done = f"after {f['scan_done_s']:.0f} s" if f.get("scan_done_s") else f"not within {f['scan_bound_s']:.0f} s"
    notes = [
        f"a new listener's start-up scan indexed {f['indexed']:,} keys in {f['index_s']:.0f} s "
        f"({f['indexed_per_s']:,}/s); the scan reported itself done {done}; Redis used_memory "
        f"{f['redis_used_mb']:.0f} MB; listener 'lost Redis': {f['listener_lost_redis']}; "
        f"CPU s while indexing: {fmt_cpu(f.get('cpu_s'))}.",
        f"Redis commands over 10 ms during the start-up scan: {f['redis_commands_over_10ms']} "
        f"({slow or 'none'}), the longest {f['redis_longest_command_ms']:.0f} ms "
        "(SLOWLOG keeps the last 1,000): each one stalls every client of this Redis.",
    ]
    return title, headers, rows, notes


TABLES = {
    "lateness": lateness_table,
    "throughput": throughput_table,
    "waiting": waiting_table,
    "flood": flood_table,
    "footprint": footprint_table,
}


def targets_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, result in results.items():
        for t in result.get("targets", []):
            verdict = "not run" if t["pass"] is None else "PASS" if t["pass"] else "MISS"
            rows.append([name, t["what"], t["target"], t["value"], verdict])
    return rows


def terminal(results: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, result in results.items():
        if result.get("not_run"):
            parts.append(f"{name.upper()}: not run ({result['not_run']})")
            continue
        title, headers, rows, notes = TABLES[name](result)
        parts.append(title + "\n" + render(headers, rows) + "".join(f"\n  · {n}" for n in notes))
    parts.append(
        "TARGETS (issue 4)\n" + render(["scenario", "figure", "target", "measured", ""], targets_rows(results))
    )
    return "\n\n".join(parts)


def markdown(run: dict[str, Any], results: dict[str, dict[str, Any]], methods: dict[str, str], findings: str) -> str:
    m = run["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Rewritten by `make bench` on {run['started']} (full run: {'no, --quick' if run['quick'] else 'yes'}; "
        f"took {run['duration_s']:.0f} s). Do not edit the figures by hand; the JSON of every run is in "
        "`bench/results/` (not committed).",
        "",
        "`make bench` (or `.venv/bin/python -m bench`, `--quick` for a smaller run, `--only lateness,waiting` "
        "for some scenarios) starts everything it measures itself: private `redis-server`s on free "
        "loopback ports at `hz 10` (never the Redis at 6379), `followup listen`, `followup worker` (its defaults: "
        "gevent, 1000 slots), a Celery countdown worker for the baselines, and a receiver standing in for n8n "
        "(`bench/receiver.py`: asyncio, TCP_NODELAY, records each webhook's arrival on its own clock, PUBLISHes "
        "the callback and waits for Redis to take it *before* answering 200). Every scenario runs its baselines "
        "in the same run, one system at a time, and every wait is bounded: a figure that did not finish in its "
        "bound is shown as such, never waited for.",
        "",
        "## Machine and conditions",
        "",
        f"- {m['nproc']} cores ({m['cpu']}), {m['memory_gb']:.0f} GiB; {m['os']}",
        f"- Redis {m['redis_version']} (`{m['redis_binary']}`), `hz {m['hz']}`, no persistence, loopback only",
        f"- Python {m['python']}; celery {m['celery']}, kombu {m['kombu']}, redis-py {m['redis_py']}, "
        f"gevent {m['gevent']}, requests {m['requests']}",
        f"- followup at {run['git']}; one listener and one worker; WORKER_CALLBACK_TIMEOUT 60 s unless stated",
        "- the bench, the receiver, Redis, the listener and the worker share the machine's cores",
        "",
        "## Targets (issue 4)",
        "",
        render(["scenario", "figure", "target", "measured", ""], targets_rows(results), markdown=True),
        "",
    ]
    for name, result in results.items():
        lines += [f"## {name.capitalize()}", "", methods.get(name, "").strip(), ""]
        if result.get("not_run"):
            lines += [f"**Not run** in this run: {result['not_run']}.", ""]
            continue
        title, headers, rows, notes = TABLES[name](result)
        lines += [f"*{title}*", "", render(headers, rows, markdown=True), ""]
        lines += [f"- {n}" for n in notes] + [""]
    if findings.strip():
        lines += [findings.strip(), ""]
    return "\n".join(lines)
