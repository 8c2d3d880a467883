"""The worker's HTTP client: urllib3 pools, keep-alive, and the proxies the environment names.

requests cost a worker about a fifth of its CPU per follow-up on top of urllib3, which does the
actual work (preparing the request, hooks, cookies, looking the proxy environment up on every
call; see bench/findings.md). followup sends one kind of request, so it talks to urllib3 directly
and keeps what users rely on from requests: HTTP_PROXY / HTTPS_PROXY / NO_PROXY, and the system's
CA bundle.
"""

from __future__ import annotations

import os
import threading
import urllib.request
from urllib.parse import urlsplit

import certifi
import urllib3

USER_AGENT = "followup"


class HttpClient:
    """One per worker process: a pool of keep-alive connections per origin, shared by all jobs."""

    def __init__(self, pool_size: int) -> None:
        # The CA bundle requests would use, so that moving off requests changes no one's trust.
        ca_certs = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or certifi.where()
        self._options = {"maxsize": pool_size, "block": False, "retries": False, "num_pools": 64, "ca_certs": ca_certs}
        self._direct = urllib3.PoolManager(**self._options)
        self._proxied: dict[str, urllib3.ProxyManager] = {}
        self._route: dict[tuple[str, str], urllib3.PoolManager] = {}
        self._proxies = urllib.request.getproxies_environment()
        self._lock = threading.Lock()

    def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> urllib3.BaseHTTPResponse:
        """POST without following redirects or retrying; the caller reads and releases the answer."""
        return self._manager(url).request(
            "POST",
            url,
            body=body,
            headers={"User-Agent": USER_AGENT, **headers},
            timeout=urllib3.Timeout(total=timeout),
            redirect=False,
            retries=False,
            preload_content=False,
        )

    def _manager(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        manager = self._route.get(origin)
        if manager is None:
            manager = self._route[origin] = self._choose(parts.scheme, parts.hostname or "")
        return manager

    def _choose(self, scheme: str, host: str) -> urllib3.PoolManager:
        proxy = self._proxies.get(scheme) or self._proxies.get("all")
        if not proxy or urllib.request.proxy_bypass_environment(host, self._proxies):
            return self._direct
        with self._lock:
            if proxy not in self._proxied:
                self._proxied[proxy] = urllib3.ProxyManager(proxy, **self._options)
            return self._proxied[proxy]
