"""Prometheus metrics and the /healthz + /metrics endpoint (METRICS_PORT) of listeners and workers.

Each process owns its registry (made with its listener or worker runtime), so nothing here is
global. Celery's own task metrics come from Flower's /metrics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("followup.metrics")

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
Health = Callable[[], tuple[bool, str]]


class ListenerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("followup_listener_events", "Key events received, by event", ["event"], registry=r)
        self.matched = Counter("followup_listener_matched", "Key events of mapped keys", registry=r)
        self.enqueued = Counter("followup_listener_enqueued", "Jobs enqueued, by what fired them", ["path"], registry=r)
        self.duplicates = Counter(
            "followup_listener_duplicates_suppressed",
            "Expirations this listener saw claimed already (by another listener, or by its own earlier path), "
            "so not enqueued again; the echo of its own timer's touch is not counted",
            registry=r,
        )
        self.caught_up = Counter(
            "followup_listener_caught_up", "Follow-ups that came due while no listener ran", registry=r
        )
        self.reconnects = Counter("followup_listener_reconnects", "Times the listener lost Redis", registry=r)
        self.index_size = Gauge("followup_listener_index_size", "Follow-ups in the schedule index", registry=r)
        self.lateness = Histogram(
            "followup_listener_lateness_seconds", "Enqueue time minus deadline", buckets=LATENCY_BUCKETS, registry=r
        )


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhook_duration = Histogram(
            "followup_webhook_duration_seconds",
            "Webhook call duration, by outcome (2xx, 3xx, 4xx, 5xx, timeout, error)",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.callback_wait = Histogram(
            "followup_callback_wait_seconds",
            "From dispatch to the callback, for attempts that got one",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attempts = Histogram(
            "followup_job_attempts",
            "Attempts a job took, by how it ended",
            ["outcome"],
            buckets=(1, 2, 3, 4, 5, 7, 10, 15, 20),
            registry=r,
        )
        self.dead_lettered = Counter("followup_jobs_dead_lettered", "Jobs that ran out of attempts", registry=r)
        self.waiting = Gauge("followup_jobs_waiting", "Attempts waiting for their callback now", registry=r)


def outcome_of(status: int) -> str:
    return f"{status // 100}xx"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_: object) -> None:
        pass


def serve(port: int, registry: CollectorRegistry, health: Health, host: str = "0.0.0.0") -> WSGIServer:
    """Serve /healthz (200 or 503 with a one-line reason) and /metrics on `port`, in a thread."""

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest(registry)]
        if path == "/healthz":
            healthy, reason = health()
            start_response("200 OK" if healthy else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"{'ok' if healthy else 'unhealthy'}: {reason}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"/healthz or /metrics\n"]

    try:
        server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as exc:
        # Metrics are not worth stopping the follow-ups for; a clash (two processes given the
        # same METRICS_PORT on one host) is said loudly instead.
        log.error("cannot serve /healthz and /metrics on port %d: %s", port, exc)
        return None
    threading.Thread(target=server.serve_forever, name="followup-metrics", daemon=True).start()
    log.info("serving /healthz and /metrics on port %d", port)
    return server
