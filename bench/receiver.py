"""The flow stand-in: an HTTP receiver that answers at once and confirms like n8n does.

Run as its own process (`python -m bench.receiver`), so that its clock and its CPU are not shared
with the bench's bookkeeping. For every POST it records the arrival time (its own clock, ms since
the epoch), then — unless holding — PUBLISHes `{"jobId", "status": "success"}` on the callback
channel and waits for Redis to acknowledge that publish, and only then answers 200: the callback
always reaches the worker before the webhook's answer, as with n8n. TCP_NODELAY is set on every
accepted socket (without it a small reply can wait ≈ 40 ms for a delayed ACK).

asyncio and a hand-written HTTP/1.1 keep-alive parser: one process answers many thousands of
requests a second, so the receiver is never what a scenario measures. Control endpoints:
  GET  /_records?from=N   the records from index N on, as JSON lists
  GET  /_count            how many records
  POST /_hold             stop publishing callbacks (the waiting scenario publishes them itself)
  POST /_release          publish callbacks again
  POST /_reset            forget the records
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import socket
import sys
import time
from urllib.parse import parse_qs, urlsplit

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def _json_reply(payload: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class Publisher:
    """One Redis connection, pipelined: PUBLISH replies come back in order (RESP2)."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._pending: collections.deque[asyncio.Future[int]] = collections.deque()
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                while self._pending:
                    self._pending.popleft().set_exception(ConnectionError("Redis closed the connection"))
                return
            future = self._pending.popleft()
            if line.startswith(b":"):
                future.set_result(int(line[1:]))
            else:
                future.set_exception(RuntimeError(line.decode(errors="replace").strip()))

    async def publish(self, channel: bytes, message: bytes) -> int:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        self._writer.write(_resp(b"PUBLISH", channel, message))
        return await future


class Receiver:
    def __init__(self, publisher: Publisher, callback_channel: bytes) -> None:
        self.publisher = publisher
        self.channel = callback_channel
        self.hold = False
        # arrival ms, path, key, jobId, expiredAt, attempt, callback subscribers (-1: held)
        self.records: list[list] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrived = time.time() * 1000
                request_line, _, header_block = head.partition(b"\r\n")
                method, target, _ = request_line.split(b" ", 2)
                length = 0
                for line in header_block.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                if length:
                    arrived = time.time() * 1000
                writer.write(await self.answer(method, target.decode(), body, arrived))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def answer(self, method: bytes, target: str, body: bytes, arrived: float) -> bytes:
        url = urlsplit(target)
        if not url.path.startswith("/_"):
            message = json.loads(body)
            record = [
                arrived,
                url.path,
                message.get("key"),
                message.get("jobId"),
                message.get("expiredAt"),
                message.get("attempt"),
                -1,
            ]
            self.records.append(record)
            if not self.hold:
                callback = json.dumps({"jobId": message["jobId"], "status": "success"}).encode()
                record[6] = await self.publisher.publish(self.channel, callback)
            return OK
        if url.path == "/_records":
            start = int(parse_qs(url.query).get("from", ["0"])[0])
            return _json_reply(json.dumps(self.records[start:], separators=(",", ":")).encode())
        if url.path == "/_count":
            return _json_reply(str(len(self.records)).encode())
        if url.path == "/_hold":
            self.hold = True
        elif url.path == "/_release":
            self.hold = False
        elif url.path == "/_reset":
            self.records = []
        return OK


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--callback-channel", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    publisher = Publisher(args.redis_host, args.redis_port)
    await publisher.connect()
    receiver = Receiver(publisher, args.callback_channel.encode())
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", args.port, backlog=4096, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    print(f"receiver ready on {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
