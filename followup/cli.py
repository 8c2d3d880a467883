"""The `followup` command: listen, worker, flower, api, schedule, callback, dead, rules, dev."""

from __future__ import annotations

import logging
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
    """Turn expired-key events into jobs for the workers (one process is enough; see README)."""
    from followup.listener import Listener
    from followup.logs import setup_logging
    from followup.notifications import NotificationsOff
    from followup.rules import live_rules

    config = load_settings()
    setup_logging(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    rules = live_rules(config).start()
    listener = Listener(config, rules)
    if config.metrics_port:
        from followup.metrics import serve

        serve(config.metrics_port, listener.metrics.registry, listener.health)
    try:
        listener.run(stop)
    except NotificationsOff as exc:
        click.echo(f"followup listen: {exc}", err=True)
        sys.exit(2)
    finally:
        rules.stop()
    logging.getLogger("followup.listener").info("followup listen: stopped")


@main.command(context_settings=PASS_THROUGH)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a Celery worker for followup's queue; further arguments go to `celery worker`.

    `--queues NAME[,NAME…]` consumes those queues instead of QUEUE_NAME (rules may name a queue).

    The default pool is gevent with 1000 slots (WORKER_CONCURRENCY or --concurrency change it):
    a job waiting for its callback holds a greenlet, not a process.
    """
    config = load_settings()
    extra = list(ctx.args)
    argv = ["worker", "--events", "--loglevel", "DEBUG" if config.debug else "INFO"]
    if not _has_option(extra, "-Q", "--queues"):
        argv += ["--queues", config.queue_name]  # `--queues priority` consumes a rule's queue instead
    if not _has_option(extra, "-P", "--pool"):
        argv += ["--pool", "gevent"]
        if not _has_option(extra, "-c", "--concurrency") and not config.worker_concurrency:
            from followup.worker import DEFAULT_CONCURRENCY

            argv += ["--concurrency", str(DEFAULT_CONCURRENCY)]
    # With LOG_FORMAT=json every line must be JSON: Celery's banner (not a log record) stays out.
    _exec_celery(argv + extra, banner=config.log_format != "json")


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
    os.environ["FOLLOWUP_FLOWER_PROCESS"] = "1"  # celery_app.FLOWER_PROCESS: log set-up for Flower
    _exec_celery(["flower", *ctx.args])


@main.command()
@click.argument("key")
@click.option("--in", "delay", required=True, metavar="DURATION", help="when: 30s, 5m, 1h, or bare milliseconds")
@click.option("--payload", metavar="TEXT", help="the key's value, sent back as the webhook's payload (JSON or text)")
def schedule(key: str, delay: str, payload: str | None) -> None:
    """Write KEY with a TTL and its index entry, so that its expiration triggers a follow-up."""
    from followup.connections import redis_client
    from followup.jobs import check_key
    from followup.scheduling import schedule as schedule_key

    config = load_settings()
    try:
        seconds = parse_duration(delay, "--in")
    except ConfigError as exc:
        raise click.BadParameter(exc.expected, param_hint="--in") from None
    if seconds <= 0:
        raise click.BadParameter("a duration above 0", param_hint="--in")
    from followup.operations import current_mapping

    client = redis_client(config.redis_url)
    try:
        check_key(key)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="KEY") from None
    deadline = schedule_key(key, seconds, payload, client=client, payload_limit=config.payload_max_bytes)
    due = datetime.fromtimestamp(deadline / 1000, UTC)
    click.echo(f"scheduled {key!r}, due {due.isoformat(timespec='milliseconds')}")
    if current_mapping(client, config).match(key) is None:
        click.echo(
            f"warning: no rule in KEY_WEBHOOK_MAPPING matches {key!r} (`followup rules list`): "
            "it will expire without a follow-up",
            err=True,
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
    from followup import operations
    from followup.connections import redis_client

    config = load_settings()
    client = redis_client(config.redis_url)
    mapping = operations.current_mapping(client, config)
    now = datetime.now(UTC).timestamp() * 1000
    for item in operations.pending(client, config, mapping, limit):
        due = datetime.fromtimestamp(item.due / 1000, UTC).isoformat(timespec="milliseconds")
        left = (item.due - now) / 1000
        when = f"in {left:.1f}s" if left >= 0 else f"{-left:.1f}s ago (firing)"
        click.echo(f"{item.key}  {due}  {when}  {item.rule.describe() if item.rule else '(no rule)'}")
    click.echo(f"{operations.pending_count(client, config)} follow-up(s) pending", err=True)


@main.command()
@click.argument("job_id")
@click.option("--status", default="success", show_default=True)
@click.option("--error", default=None, help="an error text to send with a status other than success")
def callback(job_id: str, status: str, error: str | None) -> None:
    """Confirm (or fail) a job by hand, as a flow would, on CALLBACK_CHANNEL.

    With no worker process subscribed, the callback is kept in the job's record for its next attempt.
    """
    from followup.connections import redis_client
    from followup.operations import send_callback

    config = load_settings()
    sent = send_callback(redis_client(config.redis_url), config, job_id, status, error=error)
    click.echo(f"published on {config.callback_channel!r} to {sent.receivers} worker process(es)")
    if not sent.receivers:
        click.echo(f"no worker listens: offered to the job's record ({sent.outcome})", err=True)


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
    from followup.operations import enqueuer, replay_dead_letter

    if bool(job_ids) == replay_all:
        raise click.UsageError("give JOBID(s) or --all")
    config = load_settings()
    store = _job_store(config)
    enqueue = enqueuer(config)
    ids = [letter.job_id for letter in store.dead_letters()] if replay_all else list(job_ids)
    missing = 0
    for job_id in ids:
        replay = replay_dead_letter(store, enqueue, job_id)
        if replay.outcome == "missing":
            click.echo(f"{job_id}: no such dead letter", err=True)
            missing += 1
        elif replay.outcome == "failed":
            click.echo(f"{job_id}: could not enqueue ({replay.error}); left in the dead letters", err=True)
            sys.exit(1)
        else:
            click.echo(f"{job_id}: replaying ({replay.key})")
    if missing:
        sys.exit(1)


@main.group()
def rules() -> None:
    """Mapping rules kept in Redis (seeded by KEY_WEBHOOK_MAPPING); every process follows changes live."""


@rules.command("list")
@click.option("--show-urls", is_flag=True, help="print webhook URLs in full (they may carry tokens)")
def rules_list(show_urls: bool) -> None:
    """List the rules in force, in the order globs are tried (exact keys win over globs)."""
    from followup.rules import RuleStore

    config = load_settings()
    rule_set = RuleStore(_redis(config)).load()
    found = rule_set.rules if rule_set.version else config.mapping.rules
    for rule in found:
        click.echo(f"{rule.pattern}={rule.target()}" if show_urls else rule.describe())
    for problem in rule_set.skipped:
        click.echo(f"skipped (does not parse): {problem}", err=True)
    source = f"Redis, version {rule_set.version}" if rule_set.version else "KEY_WEBHOOK_MAPPING; Redis not seeded yet"
    click.echo(f"{len(found)} rule(s) ({source})", err=True)


@rules.command("set")
@click.argument("pattern")
@click.argument("target")
def rules_set(pattern: str, target: str) -> None:
    """Add or replace the rule for PATTERN; TARGET as in KEY_WEBHOOK_MAPPING: URL, URL|CHANNEL, |CHANNEL, …@QUEUE."""
    from followup.mapping import build_rule, parse_rule
    from followup.rules import RuleStore

    config = load_settings()
    try:
        build_rule(pattern, None, "check")  # the pattern alone: '=' or ',' in it would split the text
        rule = parse_rule(f"{pattern}={target}")
    except ConfigError as exc:
        click.echo(f"followup rules set: {exc.bad}: expected {exc.expected}", err=True)
        sys.exit(2)
    store = RuleStore(_redis(config))
    _seed_once(store, config)
    result = store.put(rule)
    click.echo(f"{'added' if result.created else 'replaced'} {rule.describe()} (version {result.version})")


@rules.command("delete")
@click.argument("pattern")
def rules_delete(pattern: str) -> None:
    """Remove the rule for PATTERN."""
    from followup.rules import RuleStore

    config = load_settings()
    store = RuleStore(_redis(config))
    _seed_once(store, config)
    version = store.delete(pattern)
    if version is None:
        click.echo(f"no rule for {pattern!r}", err=True)
        sys.exit(1)
    click.echo(f"deleted {pattern!r} (version {version})")


@rules.command("seed")
@click.option("--replace", is_flag=True, help="replace the rules in Redis with KEY_WEBHOOK_MAPPING's")
def rules_seed(replace: bool) -> None:
    """Write KEY_WEBHOOK_MAPPING's rules to Redis (only if it never held rules, unless --replace)."""
    from followup.rules import RuleStore

    config = load_settings()
    version = RuleStore(_redis(config)).seed(config.mapping.rules, replace=replace)
    if version is None:
        click.echo("Redis already holds rules: nothing done (--replace overwrites them)", err=True)
        sys.exit(1)
    click.echo(f"seeded {len(config.mapping.rules)} rule(s) (version {version})")


@main.command()
def api() -> None:
    """Serve the HTTP API and its page on API_HOST:API_PORT (bearer token: API_TOKEN)."""
    config = load_settings()
    if not config.api_token:
        if not config.api_unauthenticated:
            click.echo(
                "followup api: API_TOKEN is not set: expected a bearer token (or API_TOKEN_FILE); "
                "set API_UNAUTHENTICATED=true to run it open, for local use only",
                err=True,
            )
            sys.exit(2)
        click.echo("followup api: running WITHOUT authentication (API_UNAUTHENTICATED=true)", err=True)
    from followup.api import serve

    serve(config)


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
@click.option(
    "--role", type=click.Choice(["auto", "listen", "worker", "flower", "api"]), default="auto", show_default=True
)
def health(role: str) -> None:
    """Container health check: asks this container's process for /healthz (Flower: /healthcheck).

    The API answers on API_PORT (it binds API_HOST; 0.0.0.0 in a container includes 127.0.0.1).
    """
    import urllib.error
    import urllib.request

    config = load_settings()
    if role == "auto":
        role = _container_role()
    if role == "flower":
        url = f"http://127.0.0.1:{os.environ.get('FLOWER_PORT', '5555')}/healthcheck"
    elif role == "api":
        url = f"http://127.0.0.1:{config.api_port}/healthz"
    elif config.metrics_port:
        url = f"http://127.0.0.1:{config.metrics_port}/healthz"
    else:
        click.echo("METRICS_PORT is not set: nothing to ask", err=True)
        sys.exit(1)
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            click.echo(response.read().decode(errors="replace").strip())
    except urllib.error.HTTPError as exc:  # the process answers, unhealthy: its reason is the body
        click.echo(f"unhealthy: {exc.read().decode(errors='replace').strip() or exc}", err=True)
        sys.exit(1)
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"unhealthy: {url}: {exc}", err=True)
        sys.exit(1)


def _container_role() -> str:
    """What PID 1 runs: flower, worker, api or listen (a container's main process)."""
    try:
        command = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "listen"
    for role in (b"flower", b"worker", b"api"):
        if role in command:
            return role.decode()
    return "listen"


@main.command()
def dev() -> None:
    """Run the whole system locally: listener, worker, Flower, a demo receiver (`make run`)."""
    from followup.dev import run_dev

    sys.exit(run_dev())


def _redis(config: Settings):  # noqa: ANN202 - keeps the Redis imports out of start-up
    from followup.connections import redis_client

    return redis_client(config.redis_url)


def _seed_once(store, config: Settings) -> None:  # noqa: ANN001 - RuleStore, imported late
    """A first change made before any process started must not keep KEY_WEBHOOK_MAPPING from seeding."""
    if store.seed(config.mapping.rules):
        click.echo("seeded Redis with KEY_WEBHOOK_MAPPING's rules first", err=True)


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


def _exec_celery(argv: list[str], banner: bool = True) -> None:
    """Replace this process with Celery's, so that signals from Docker reach it directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    # gevent warns that ssl was imported before its patch: only redis.asyncio, which followup
    # does not use, holds the unpatched module.
    quiet = "ignore:Monkey-patching ssl after ssl:Warning"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
    quiet_banner = [] if banner else ["--quiet"]
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", CELERY_APP, *quiet_banner, *argv])
