"""The `followup` command: listen, worker, flower, schedule, callback, dead, dev."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import click

from followup.config import Settings, settings
from followup.durations import parse_duration
from followup.errors import ConfigError

CELERY_APP = "followup.celery_app"
PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def load_settings() -> Settings:
    """The settings, or exit with status 2 and one line that says what is wrong."""
    try:
        return settings()
    except ConfigError as exc:
        click.echo(f"followup: configuration error: {exc}", err=True)
        sys.exit(2)


class FollowupGroup(click.Group):
    """Turns an unreachable Redis into one line and exit status 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        import redis

        try:
            return super().invoke(ctx)
        except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as exc:
            from followup.redaction import redact_userinfo

            click.echo(f"followup: Redis is unreachable: {redact_userinfo(str(exc))}", err=True)
            sys.exit(1)


@click.group(cls=FollowupGroup)
@click.version_option(package_name="followup")
def main() -> None:
    """followup turns Redis key expirations into reliable webhook / channel jobs on Celery."""


@main.command()
def listen() -> None:
    """Turn expired-key events into Celery jobs (one process is enough; see README)."""
    from followup.listener import Listener, celery_enqueue
    from followup.logs import setup_logging
    from followup.notifications import NotificationsOff

    config = load_settings()
    setup_logging(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    listener = Listener(config, celery_enqueue(config))
    if config.metrics_port:
        from followup.metrics import serve

        serve(config.metrics_port, listener.metrics.registry, listener.health)
    try:
        listener.run(stop)
    except NotificationsOff as exc:
        click.echo(f"followup listen: {exc}", err=True)
        sys.exit(2)
    click.echo("followup listen: stopped", err=True)


@main.command(context_settings=PASS_THROUGH)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a Celery worker for followup's queue; further arguments go to `celery worker`.

    The default pool is gevent with 1000 slots (WORKER_CONCURRENCY or --concurrency change it):
    a job waiting for its callback holds a greenlet, not a process.
    """
    config = load_settings()
    extra = list(ctx.args)
    argv = ["worker", "--queues", config.queue_name, "--events", "--loglevel", "DEBUG" if config.debug else "INFO"]
    if not _has_option(extra, "-P", "--pool"):
        argv += ["--pool", "gevent"]
        if not _has_option(extra, "-c", "--concurrency") and not config.worker_concurrency:
            from followup.worker import DEFAULT_CONCURRENCY

            argv += ["--concurrency", str(DEFAULT_CONCURRENCY)]
    _exec_celery(argv + extra)


@main.command(context_settings=PASS_THROUGH)
@click.pass_context
def flower(ctx: click.Context) -> None:
    """Run Flower for followup on port 5555 (FLOWER_BASIC_AUTH protects it)."""
    config = load_settings()
    if not config.flower_basic_auth:
        if not config.flower_unauthenticated:
            click.echo(
                "followup flower: FLOWER_BASIC_AUTH is not set: expected user:password (or FLOWER_BASIC_AUTH_FILE); "
                "set FLOWER_UNAUTHENTICATED=true to run it open, for local use only",
                err=True,
            )
            sys.exit(2)
        click.echo("followup flower: running WITHOUT authentication (FLOWER_UNAUTHENTICATED=true)", err=True)
    # Flower reads FLOWER_BASIC_AUTH from the environment itself (here it may have come from
    # FLOWER_BASIC_AUTH_FILE); passing it as an argument would show the password in `ps`.
    if config.flower_basic_auth:
        os.environ["FLOWER_BASIC_AUTH"] = config.flower_basic_auth
    _exec_celery(["flower", *ctx.args])


@main.command()
@click.argument("key")
@click.option("--in", "delay", required=True, metavar="DURATION", help="when: 30s, 5m, 1h, or bare milliseconds")
@click.option("--payload", metavar="TEXT", help="the key's value, sent back as the webhook's payload (JSON or text)")
def schedule(key: str, delay: str, payload: str | None) -> None:
    """Write KEY with a TTL and its index entry, so that its expiration triggers a follow-up."""
    from followup.connections import redis_client
    from followup.scheduling import schedule as schedule_key

    config = load_settings()
    try:
        seconds = parse_duration(delay, "--in")
    except ConfigError as exc:
        raise click.BadParameter(exc.expected, param_hint="--in") from None
    if seconds <= 0:
        raise click.BadParameter("a duration above 0", param_hint="--in")
    client = redis_client(config.redis_url)
    deadline = schedule_key(key, seconds, payload, client=client, payload_limit=config.payload_max_bytes)
    due = datetime.fromtimestamp(deadline / 1000, UTC)
    click.echo(f"scheduled {key!r}, due {due.isoformat(timespec='milliseconds')}")
    if config.mapping.match(key) is None:
        click.echo(
            f"warning: no rule in KEY_WEBHOOK_MAPPING matches {key!r}: it will expire without a follow-up", err=True
        )


@main.command()
@click.argument("key")
def cancel(key: str) -> None:
    """Delete KEY and its index entry: its follow-up never fires."""
    from followup.connections import redis_client
    from followup.scheduling import cancel as cancel_key

    config = load_settings()
    found = cancel_key(key, client=redis_client(config.redis_url))
    click.echo(f"cancelled {key!r}" if found else f"nothing scheduled for {key!r}")


@main.command()
@click.option("--limit", default=50, show_default=True, help="how many, soonest first")
def pending(limit: int) -> None:
    """List the schedule index: key, when it is due, and the rule it will fire."""
    from followup.connections import redis_client
    from followup.index import ScheduleIndex

    config = load_settings()
    index = ScheduleIndex(redis_client(config.redis_url), config.payload_max_bytes)
    now = datetime.now(UTC).timestamp() * 1000
    for key, deadline in index.pending(limit):
        due = datetime.fromtimestamp(deadline / 1000, UTC).isoformat(timespec="milliseconds")
        rule = config.mapping.match(key)
        left = (deadline - now) / 1000
        when = f"in {left:.1f}s" if left >= 0 else f"{-left:.1f}s ago (firing)"
        click.echo(f"{key}  {due}  {when}  {rule.describe() if rule else '(no rule)'}")
    click.echo(f"{index.size()} follow-up(s) pending", err=True)


@main.command()
@click.argument("job_id")
@click.option("--status", default="success", show_default=True)
@click.option("--error", default=None, help="an error text to send with a status other than success")
def callback(job_id: str, status: str, error: str | None) -> None:
    """Confirm (or fail) a job by hand, as a flow would, on CALLBACK_CHANNEL."""
    from followup.connections import redis_client

    config = load_settings()
    message = {"jobId": job_id, "status": status}
    if error:
        message["error"] = error
    receivers = redis_client(config.redis_url).publish(config.callback_channel, json.dumps(message))
    click.echo(f"published on {config.callback_channel!r} to {receivers} worker process(es)")


@main.group()
def dead() -> None:
    """Jobs that ran out of attempts."""


@dead.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def dead_list(as_json: bool) -> None:
    """List dead letters, oldest first."""
    store = _job_store(load_settings())
    letters = store.dead_letters()
    for letter in letters:
        if as_json:
            click.echo(letter.to_json())
        else:
            failed = datetime.fromtimestamp(letter.failed_at / 1000, UTC)
            click.echo(
                f"{letter.job_id}  {letter.key}  {letter.attempts} attempts  "
                f"{failed:%Y-%m-%d %H:%M:%S} UTC  {letter.error}"
            )
    if not as_json:
        click.echo(f"{len(letters)} dead letter(s)", err=True)


@dead.command("replay")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="replay every dead letter")
def dead_replay(job_ids: tuple[str, ...], replay_all: bool) -> None:
    """Run dead-lettered jobs again from attempt 1, under the same jobId."""
    from followup.listener import celery_enqueue

    if bool(job_ids) == replay_all:
        raise click.UsageError("give JOBID(s) or --all")
    config = load_settings()
    store = _job_store(config)
    enqueue = celery_enqueue(config)
    ids = [letter.job_id for letter in store.dead_letters()] if replay_all else list(job_ids)
    missing = 0
    for job_id in ids:
        letter = store.take_dead_letter(job_id)
        if letter is None:
            click.echo(f"{job_id}: no such dead letter", err=True)
            missing += 1
            continue
        try:
            enqueue([letter.job])
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the letter goes back
            store.restore_dead_letter(letter)
            click.echo(f"{job_id}: could not enqueue ({exc}); left in the dead letters", err=True)
            sys.exit(1)
        click.echo(f"{job_id}: replaying ({letter.key})")
    if missing:
        sys.exit(1)


@main.command()
def check() -> None:
    """The doctor: Redis, notify flags, mapping, webhook hosts, visibility timeout, Flower auth."""
    from followup.doctor import run_checks

    failed = False
    for result in run_checks(load_settings()):
        click.echo(result.line())
        failed |= result.verdict == "fail"
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--role", type=click.Choice(["auto", "listen", "worker", "flower"]), default="auto", show_default=True)
def health(role: str) -> None:
    """Container health check: asks this container's process for /healthz (Flower: /healthcheck)."""
    import urllib.error
    import urllib.request

    config = load_settings()
    if role == "auto":
        role = _container_role()
    if role == "flower":
        url = f"http://127.0.0.1:{os.environ.get('FLOWER_PORT', '5555')}/healthcheck"
    elif config.metrics_port:
        url = f"http://127.0.0.1:{config.metrics_port}/healthz"
    else:
        click.echo("METRICS_PORT is not set: nothing to ask", err=True)
        sys.exit(1)
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            click.echo(response.read().decode(errors="replace").strip())
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"unhealthy: {url}: {exc}", err=True)
        sys.exit(1)


def _container_role() -> str:
    """What PID 1 runs: flower, worker or listen (a container's main process)."""
    try:
        command = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "listen"
    for role in (b"flower", b"worker"):
        if role in command:
            return role.decode()
    return "listen"


@main.command()
def dev() -> None:
    """Run the whole system locally: listener, worker, Flower, a demo receiver (`make run`)."""
    from followup.dev import run_dev

    sys.exit(run_dev())


def _job_store(config: Settings):  # noqa: ANN202 - keeps the Redis imports out of start-up
    from followup.connections import redis_client
    from followup.jobs import JobStore

    return JobStore(redis_client(config.redis_url), config)


def _has_option(args: list[str], short: str, long: str) -> bool:
    """Whether the user passed this option (`-P x`, `-Px`, `--pool x`, `--pool=x`)."""
    for arg in args:
        if arg in (short, long) or arg.startswith(long + "="):
            return True
        if arg.startswith(short) and not arg.startswith("--"):
            return True
    return False


def _exec_celery(argv: list[str]) -> None:
    """Replace this process with Celery's, so that signals from Docker reach it directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    # gevent warns that ssl was imported before its patch: only redis.asyncio, which followup
    # does not use, holds the unpatched module.
    quiet = "ignore:Monkey-patching ssl after ssl:Warning"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", CELERY_APP, *argv])
