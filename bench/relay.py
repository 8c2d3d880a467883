"""The floor under callback → success: a plain redis-py subscriber that republishes each message.

`python -m bench.relay --redis-port P --source A --sink B`: every message on channel A is
PUBLISHed unchanged on channel B, from one process with one subscription — one pub/sub hop, one
Python handler and one PUBLISH, which is the least any worker can do between a callback and its
success event.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import redis


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay")
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    args = parser.parse_args(argv)
    client = redis.Redis(host="127.0.0.1", port=args.redis_port)
    pubsub = redis.Redis(host="127.0.0.1", port=args.redis_port, socket_timeout=None).pubsub(
        ignore_subscribe_messages=True
    )
    pubsub.subscribe(args.source)
    print("relay ready", flush=True)
    for message in pubsub.listen():
        if message["type"] == "message":
            client.publish(args.sink, message["data"])


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
