"""Redis clients, made one way everywhere: bounded pools, keepalive, health checks."""

from __future__ import annotations

import redis

# Enough for every busy greenlet of one worker to talk to Redis at once; more would only queue
# inside Redis. Callers beyond it wait for a free connection rather than open a new one.
POOL_SIZE = 64
POOL_WAIT = 20.0


def redis_client(url: str, *, pool_size: int = POOL_SIZE) -> redis.Redis:
    """A client for commands: bounded pool, 10 s socket timeout, health-checked connections."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=POOL_WAIT,
        socket_timeout=10,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        decode_responses=False,
    )
    return redis.Redis(connection_pool=pool)


def subscriber_client(url: str) -> redis.Redis:
    """A client for one long-lived subscription.

    redis-py 8 gives every socket a 5 s read timeout by default; an idle subscription would then
    fail every 5 s. Reads block instead, and the health check (a PING every 15 s through the
    subscription) finds a dead connection.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=None,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=15,
        decode_responses=False,
    )
