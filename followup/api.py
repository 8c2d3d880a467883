"""`followup api`: the HTTP API and its page (FastAPI on uvicorn).

FastAPI because the typed request/response models give validation, clear 422 messages and the
OpenAPI document from one declaration, on Starlette's small, well-kept ASGI core.

Every route but `/`, `/healthz` and `/openapi.json` needs `Authorization: Bearer <API_TOKEN>`.
Each route calls the same function the CLI does (followup.operations, followup.scheduling,
followup.rules); none holds logic of its own beyond turning HTTP into arguments and back.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from followup import operations
from followup.callbacks import MAX_CALLBACK_BYTES
from followup.config import Settings
from followup.connections import redis_client
from followup.durations import parse_duration
from followup.errors import ConfigError
from followup.jobs import MAX_KEY_BYTES, DeadLetter, JobStore, check_key
from followup.mapping import Rule, build_rule
from followup.redaction import redact_userinfo
from followup.rules import LiveRules, RuleStore
from followup.scheduling import cancel, schedule

log = logging.getLogger(__name__)
MAX_DELAY_MS = 10 * 365 * 24 * 3600 * 1000  # ten years: beyond that a follow-up is a mistake


# --- models ------------------------------------------------------------------------------------


class Problem(BaseModel):
    detail: str = Field(description="what was wrong, naming the bad part")


class ScheduleRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    key: str = Field(
        min_length=1,
        max_length=MAX_KEY_BYTES,
        description=f"the Redis key to write and follow up (≤ {MAX_KEY_BYTES} bytes)",
    )
    in_: str | int | float | None = Field(
        default=None, alias="in", description='delay: "30s", "5m", "1h", "500ms", or a number of milliseconds'
    )
    at: str | int | float | None = Field(
        default=None, description="due time: ISO 8601 (UTC if no offset) or milliseconds since the epoch"
    )
    payload: Any = Field(default=None, description="stored as the key's value; the webhook's `payload`")

    @field_validator("key")
    @classmethod
    def _key_fits(cls, key: str) -> str:
        check_key(key)
        return key

    @model_validator(mode="after")
    def _one_of_in_or_at(self) -> ScheduleRequest:
        if (self.in_ is None) == (self.at is None):
            raise ValueError("give exactly one of `in` (a delay) or `at` (a due time)")
        return self


class Scheduled(BaseModel):
    key: str
    dueAt: int = Field(description="ms since the epoch")
    due: str = Field(description="ISO 8601, UTC")
    rule: str | None = Field(description="the rule it will fire (URL path hidden), or null: none matches")


class PendingItem(BaseModel):
    key: str
    dueAt: int
    due: str
    dueInMs: int = Field(description="negative: due and firing")
    rule: str | None


class PendingPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[PendingItem]


class Cancelled(BaseModel):
    key: str
    cancelled: bool


class CallbackRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: str = Field(min_length=1, max_length=100, description='"success", or anything else to fail the attempt')
    error: str | None = Field(default=None, description="kept as the attempt's error")
    attempt: int | None = Field(default=None, ge=1, le=1_000_000, description="the webhook body's `attempt`")


class CallbackResult(BaseModel):
    jobId: str
    receivers: int = Field(description="worker processes that received it")
    outcome: str = Field(description="published, or with no worker listening: stored, noted, finished")


class JobOut(BaseModel):
    jobId: str
    key: str | None
    state: str = Field(description="succeeded, failed, running, retrying or waiting")
    attempts: int
    lastError: str | None
    updated: int | None = Field(description="ms since the epoch of the last attempt's start")
    callbackStored: bool


class JobsPage(BaseModel):
    items: list[JobOut]


class DeadLetterOut(BaseModel):
    jobId: str
    key: str
    expiredAt: int
    attempts: int
    error: str
    failedAt: int
    payload: Any = None
    payloadError: str | None = None


class ReplayOut(BaseModel):
    jobId: str
    key: str | None
    outcome: str


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: str | None = Field(default=None, description="http(s) URL to POST to")
    channel: str | None = Field(default=None, description="Redis channel to PUBLISH on")
    queue: str | None = Field(default=None, description="Celery queue for its jobs (default: QUEUE_NAME)")


class RuleOut(BaseModel):
    pattern: str
    webhook: str | None
    channel: str | None
    queue: str | None
    target: str = Field(description="the rule as KEY_WEBHOOK_MAPPING writes it, after `pattern=`")


class RulesOut(BaseModel):
    version: int = Field(description="bumped by every change; 0: Redis not seeded yet (KEY_WEBHOOK_MAPPING)")
    rules: list[RuleOut]


class RuleChanged(BaseModel):
    pattern: str
    version: int
    created: bool


class RuleDeleted(BaseModel):
    pattern: str
    version: int


class Health(BaseModel):
    status: str
    rulesVersion: int


# --- helpers -----------------------------------------------------------------------------------


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _rule_out(rule: Rule) -> RuleOut:
    return RuleOut(
        pattern=rule.pattern, webhook=rule.webhook_url, channel=rule.channel, queue=rule.queue, target=rule.target()
    )


def _job_out(state: operations.JobState) -> JobOut:
    return JobOut(
        jobId=state.job_id,
        key=state.key,
        state=state.state,
        attempts=state.attempts,
        lastError=state.last_error,
        updated=state.updated,
        callbackStored=state.callback_stored,
    )


def _problem(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def _delay_seconds(request: ScheduleRequest, now_ms: int) -> float:
    """The request's `in` or `at` as seconds from now; HTTPException 422 naming the field."""
    seconds = _seconds_from_now(request, now_ms)
    field, value = ("in", request.in_) if request.in_ is not None else ("at", request.at)
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "…"
    if not seconds > 0:
        raise _problem(422, f"{field}: {shown}: expected a time in the future")
    if seconds * 1000 > MAX_DELAY_MS:
        raise _problem(422, f"{field}: {shown}: expected at most ten years ahead")
    return seconds


def _seconds_from_now(request: ScheduleRequest, now_ms: int) -> float:
    if request.in_ is not None:
        value = request.in_
        if isinstance(value, str):
            try:
                seconds = parse_duration(value, "in")
            except ConfigError as exc:
                raise _problem(422, f"in: {exc.bad}: expected {exc.expected}") from None
        else:
            seconds = _float(value) / 1000
    else:
        value = request.at
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                raise _problem(422, f"at: {value[:60]!r}: expected an ISO 8601 time or ms since the epoch") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp() - now_ms / 1000
        else:
            seconds = (_float(value) - now_ms) / 1000
    return seconds


def _float(value: float) -> float:
    """An int too large for a float (JSON allows 1e400 as an integer) becomes ±infinity, past every limit."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's error list as one line: `body.in: Input should be …; query.limit: …`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body" or len(error["loc"]) == 1)
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# --- the app -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What every route works with: one Redis pool, the job store, the rules."""

    settings: Settings
    client: redis.Redis
    jobs: JobStore
    rules: RuleStore
    live: LiveRules


COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or wrong bearer token"},
    # Any path can miss: a path parameter with a newline, say, matches no route.
    404: {"model": Problem, "description": "no such thing (or no such route)"},
    422: {"model": Problem, "description": "bad input, named"},
    503: {"model": Problem, "description": "Redis (or the broker) is unavailable"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such thing"}}
# Module-level: FastAPI resolves the (string) annotations of a dependency in the module's globals.
BEARER = HTTPBearer(auto_error=False, description="API_TOKEN")


def create_app(settings: Settings, *, live: LiveRules | None = None) -> FastAPI:
    """The API for `settings`; `live` (the rules in force) is started with the app unless given."""
    client = redis_client(settings.redis_url, pool_size=16)
    own_live = live is None
    live = live or LiveRules(settings.redis_url, settings.mapping)
    ctx = Context(settings, client, JobStore(client, settings), RuleStore(client), live)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if own_live:
            live.start()
        yield
        if own_live:
            live.stop()

    app = FastAPI(
        title="followup",
        version="0.1.0",
        description="Redis key expirations turned into confirmed webhook / channel jobs.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        responses=COMMON_RESPONSES,
    )
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(redis.RedisError, _redis_down)
    app.add_exception_handler(UnicodeEncodeError, _not_utf8)
    app.include_router(_open_routes(ctx))
    auth = [Depends(_token_check(settings.api_token))]
    for router in (_followup_routes(ctx), _job_routes(ctx), _rule_routes(ctx)):
        app.include_router(router, dependencies=auth)
    return app


def _token_check(api_token: str | None) -> Callable[..., None]:
    """The bearer-token dependency: a constant-time comparison with API_TOKEN."""
    token = api_token.encode() if api_token else None

    def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if token is None:
            return  # API_UNAUTHENTICATED=true, checked by `followup api`
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, token):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    return authorized


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _validation_message(exc)}, status_code=422)


async def _not_utf8(_: Request, exc: Exception) -> JSONResponse:
    # JSON can carry a lone surrogate ("\\ud800"), which no Redis key or value can hold.
    return JSONResponse({"detail": "text that cannot be encoded as UTF-8 (a lone surrogate?)"}, status_code=422)


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("api: Redis error: %s", redact_userinfo(str(exc)))
    return JSONResponse({"detail": f"Redis is unavailable: {type(exc).__name__}"}, status_code=503)


def _open_routes(ctx: Context) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(files("followup").joinpath("page.html").read_text(encoding="utf-8"))

    @router.get("/healthz", response_model=Health, tags=["ops"])
    def healthz() -> Health:
        """Redis answers (no token needed: for health checks)."""
        ctx.client.ping()
        return Health(status="ok", rulesVersion=ctx.live.version)

    return router


def _followup_routes(ctx: Context) -> APIRouter:
    router = APIRouter(tags=["followups"])
    settings, client = ctx.settings, ctx.client

    @router.post("/followups", status_code=201, response_model=Scheduled)
    def create_followup(body: ScheduleRequest) -> Scheduled:
        """Schedule a follow-up: write `key` with a TTL and its index entry (as `followup schedule`)."""
        if operations.is_reserved_key(body.key):
            raise _problem(422, f"key: {body.key[:60]!r}: expected a key outside followup's own '_followup:' prefix")
        seconds = _delay_seconds(body, int(time.time() * 1000))
        if body.payload is not None:
            size = len(body.payload.encode() if isinstance(body.payload, str) else json.dumps(body.payload).encode())
            if size > settings.payload_max_bytes:
                raise _problem(422, f"payload: {size} bytes: expected at most PAYLOAD_MAX_BYTES")
        deadline = schedule(body.key, seconds, body.payload, client=client, payload_limit=settings.payload_max_bytes)
        rule = ctx.live.mapping.match(body.key)
        return Scheduled(key=body.key, dueAt=deadline, due=_iso(deadline), rule=rule.describe() if rule else None)

    @router.get("/followups", response_model=PendingPage)
    def list_followups(
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    ) -> PendingPage:
        """Pending follow-ups, soonest first, with the rule each will fire."""
        now = int(time.time() * 1000)
        items = [
            PendingItem(
                key=item.key,
                dueAt=item.due,
                due=_iso(item.due),
                dueInMs=item.due - now,
                rule=item.rule.describe() if item.rule else None,
            )
            for item in operations.pending(client, settings, ctx.live.mapping, limit, offset)
        ]
        return PendingPage(total=operations.pending_count(client, settings), limit=limit, offset=offset, items=items)

    @router.delete("/followups/{key:path}", response_model=Cancelled, responses=NOT_FOUND)
    def cancel_followup(key: Annotated[str, Path(min_length=1)]) -> Cancelled:
        """Cancel: delete the key and its index entry (as `followup cancel`)."""
        if not cancel(key, client=client):
            raise _problem(404, f"nothing scheduled for {key[:100]!r}")
        return Cancelled(key=key, cancelled=True)

    return router


def _job_routes(ctx: Context) -> APIRouter:
    router = APIRouter(tags=["jobs"])
    settings, client = ctx.settings, ctx.client

    @router.post("/callbacks/{jobId}", response_model=CallbackResult, responses=NOT_FOUND)
    def post_callback(jobId: str, body: CallbackRequest) -> CallbackResult:
        """Confirm (or fail) a job as a PUBLISH on CALLBACK_CHANNEL would (kept if no worker listens)."""
        raw = operations.callback_message(jobId, body.status, body.error, body.attempt)
        if len(raw.encode()) > MAX_CALLBACK_BYTES:
            raise _problem(422, f"callback: over {MAX_CALLBACK_BYTES} bytes")
        try:
            sent = operations.send_callback(
                client, settings, jobId, body.status, error=body.error, attempt=body.attempt, require_known=True
            )
        except operations.UnknownJob:
            raise _problem(404, f"no job {jobId[:100]!r} (never began, or long finished)") from None
        return CallbackResult(jobId=jobId, receivers=sent.receivers, outcome=sent.outcome)

    @router.get("/jobs", response_model=JobsPage)
    def list_jobs(limit: Annotated[int, Query(ge=1, le=200)] = 20) -> JobsPage:
        """Recently updated jobs, newest first (a bounded SCAN of job records)."""
        return JobsPage(items=[_job_out(state) for state in operations.recent_jobs(client, limit)])

    @router.get("/jobs/{jobId}", response_model=JobOut, responses=NOT_FOUND)
    def get_job(jobId: str) -> JobOut:
        """A job's state, attempts and last error."""
        try:
            return _job_out(operations.get_job(client, settings, jobId))
        except operations.UnknownJob:
            raise _problem(404, f"no job {jobId[:100]!r} (never began, or long finished)") from None

    @router.get("/dead", response_model=list[DeadLetterOut])
    def list_dead() -> list[DeadLetterOut]:
        """Jobs that ran out of attempts, oldest first."""
        return [_dead_out(letter) for letter in ctx.jobs.dead_letters()]

    @router.post("/dead/{jobId}/replay", response_model=ReplayOut, responses=NOT_FOUND)
    def replay(jobId: str) -> ReplayOut:
        """Run a dead job again from attempt 1 under the same jobId (as `followup dead replay`)."""
        result = operations.replay_dead_letter(ctx.jobs, operations.enqueuer(settings), jobId)
        if result.outcome == "missing":
            raise _problem(404, f"no dead letter {jobId[:100]!r}")
        if result.outcome == "failed":
            raise _problem(503, f"could not enqueue ({result.error}); left in the dead letters")
        return ReplayOut(jobId=jobId, key=result.key, outcome=result.outcome)

    return router


def _rule_routes(ctx: Context) -> APIRouter:
    router = APIRouter(tags=["rules"])

    @router.get("/rules", response_model=RulesOut)
    def list_rules() -> RulesOut:
        """The rules in force, in the order globs are tried (an exact key wins over every glob)."""
        rule_set = ctx.rules.load()
        found = rule_set.rules if rule_set.version else ctx.settings.mapping.rules
        return RulesOut(version=rule_set.version, rules=[_rule_out(rule) for rule in found])

    @router.put("/rules/{pattern:path}", response_model=RuleChanged)
    def put_rule(pattern: str, body: RuleIn) -> RuleChanged:
        """Add the rule for `pattern` (tried after every other glob) or replace it (keeping its place)."""
        try:
            rule = build_rule(pattern, body.webhook, body.channel, body.queue)
        except ConfigError as exc:
            raise _problem(422, f"{exc.bad}: expected {exc.expected}") from None
        result = ctx.rules.put(rule)
        return RuleChanged(pattern=pattern, version=result.version, created=result.created)

    @router.delete("/rules/{pattern:path}", response_model=RuleDeleted, responses=NOT_FOUND)
    def delete_rule(pattern: str) -> RuleDeleted:
        """Remove the rule for `pattern`."""
        version = ctx.rules.delete(pattern)
        if version is None:
            raise _problem(404, f"no rule for {pattern[:100]!r}")
        return RuleDeleted(pattern=pattern, version=version)

    return router


def _dead_out(letter: DeadLetter) -> DeadLetterOut:
    return DeadLetterOut(
        jobId=letter.job_id,
        key=letter.key,
        expiredAt=letter.expired_at,
        attempts=letter.attempts,
        error=letter.error,
        failedAt=letter.failed_at,
        payload=letter.payload,
        payloadError=letter.payload_error,
    )


def serve(settings: Settings) -> None:
    """Serve the API on API_HOST:API_PORT until SIGTERM / SIGINT."""
    import uvicorn

    from followup.logs import setup_logging

    setup_logging(settings)
    sock = _listen(settings.api_host, settings.api_port)
    config = uvicorn.Config(
        create_app(settings), log_config=None, access_log=settings.debug, timeout_graceful_shutdown=5
    )
    shown_host = f"[{settings.api_host}]" if ":" in settings.api_host else settings.api_host
    log.info("followup api: listening on http://%s:%d", shown_host, settings.api_port)
    uvicorn.Server(config).run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    """Bind first, so a taken port fails at once with one line, before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
