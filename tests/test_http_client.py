"""The worker's HTTP client keeps what requests gave users: the proxy environment."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from urllib3.exceptions import HTTPError

from followup.http_client import HttpClient


@pytest.fixture
def proxy() -> Iterator[tuple[str, list[str]]]:
    """A stand-in proxy: answers 204 and records the request line it was sent."""
    lines: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            lines.append(self.requestline)
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", lines
    server.shutdown()


def test_http_proxy_from_the_environment_carries_the_post(proxy, monkeypatch) -> None:
    address, lines = proxy
    monkeypatch.setenv("HTTP_PROXY", address)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    response = HttpClient(4).post("http://flow.invalid/hook", b"{}", {"Content-Type": "application/json"}, 5)
    assert response.status == 204
    assert lines == ["POST http://flow.invalid/hook HTTP/1.1"]


def test_no_proxy_sends_the_post_directly(proxy, monkeypatch) -> None:
    address, lines = proxy
    monkeypatch.setenv("HTTP_PROXY", address)
    monkeypatch.setenv("NO_PROXY", "flow.invalid")
    with pytest.raises(HTTPError):  # direct: the name does not resolve
        HttpClient(4).post("http://flow.invalid/hook", b"{}", {}, 5)
    assert lines == []
