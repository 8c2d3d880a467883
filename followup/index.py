"""The schedule index: every live mapped key's deadline and value, kept in Redis by the listener.

Keyspace notifications are fire-and-forget: a listener that is down misses expirations, two
listeners see each one twice, the value is gone at expiry, and the expired event comes when Redis
gets round to it. The index answers all four. The listener records each mapped key's deadline and
value as it sees the key written (`index_keys.lua`); an expiration is enqueued only by whoever
claims its entry (`claim_due.lua`, atomic, so exactly one listener does); a listener catches up on
entries that came due while nobody listened; and a timer touches each key at its deadline, which
makes Redis expire it on the spot — and claims it in the same step (`fire_due.lua`).

Layout (all in the watched database):
  _followup:due     ZSET  key -> deadline (ms since the epoch)
  _followup:values  HASH  key -> tagged value (see payloads.py)
  _followup:firing  HASH  "<deadline>:<key>" -> "<claimed ms>:<tagged value>"  (claimed, not yet enqueued)
  _followup:fired   ZSET  key -> claim time, the last 10 s (tells unknown keys from claimed ones)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script

from followup import scripts
from followup.jobs import PREFIX, Job
from followup.payloads import decode_payload

DUE = f"{PREFIX}due"
VALUES = f"{PREFIX}values"
LIMBO = f"{PREFIX}limbo"
FIRING = f"{PREFIX}firing"
FIRED = f"{PREFIX}fired"
JOB_NAMESPACE = uuid.UUID("5b6f0c1e-8d0a-4f4e-9a53-6f6c6c6f7775")


def job_id(key: str, deadline: int) -> str:
    """The jobId of one expiration: the same from every path that fires it (event, timer, catch-up)."""
    return str(uuid.uuid5(JOB_NAMESPACE, f"{key}\0{deadline}"))


def _key(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Claimed:
    key: str
    deadline: int
    tagged: bytes

    def job(self, payload_limit: int) -> Job:
        payload, error = decode_payload(self.tagged, payload_limit)
        return Job(job_id(self.key, self.deadline), self.key, self.deadline, payload, error)

    @property
    def firing_field(self) -> bytes:
        return f"{self.deadline}:".encode() + self.key.encode("utf-8", "surrogateescape")

    @classmethod
    def from_firing(cls, field: bytes, tagged: bytes) -> Claimed:
        deadline, _, key = field.partition(b":")
        return cls(_key(key), int(deadline), tagged)


@dataclass(frozen=True)
class FireResult:
    claimed: list[Claimed]  # due keys this touch expired: claimed, to enqueue
    gone: list[str]  # due keys already gone (now in limbo): their expired or del event decides
    moved: list[str]  # due keys that exist with another TTL (now in limbo): their events decide
    next_deadline: int | None  # the deadline to wake for next (Redis time)
    looked_at: int
    redis_now: int  # Redis's clock when it ran, in ms
    micros: int  # and the microseconds past that millisecond


class ScheduleIndex:
    def __init__(self, client: redis.Redis, payload_limit: int) -> None:
        self._redis = client
        self._payload_limit = payload_limit
        self._index = scripts.load(client, "index_keys")
        self._forget = scripts.load(client, "forget_keys")
        self._forget_gone = scripts.load(client, "forget_gone")
        self._claim = scripts.load(client, "claim_due")
        self._fire_due = scripts.load(client, "fire_due")
        self._reclaim = scripts.load(client, "reclaim_firing")
        self._exact: str | None = None

    def exact_flag(self) -> str:
        """'1' when Redis has PEXPIRETIME (7.0+): deadlines then come to the millisecond from Redis."""
        if self._exact is None:
            version = str(self._redis.info("server").get("redis_version", "0"))
            self._exact = "1" if int(version.split(".", maxsplit=1)[0]) >= 7 else "0"
        return self._exact

    def reset_connection_facts(self) -> None:
        """After a reconnect the server may be another (version included)."""
        self._exact = None

    # The listener's writes --------------------------------------------------------------------

    def load_scripts(self) -> None:
        """Load the scripts that go into pipelines (see scripts.queue); once per connection."""
        scripts.ensure_loaded(self._redis, self._index, self._forget, self._claim)

    def index(self, keys: list[str], pipe: redis.client.Pipeline | None = None) -> list[int] | None:
        return self._call(
            self._index, [DUE, VALUES, LIMBO, FIRED], [self._payload_limit, self.exact_flag(), *keys], pipe
        )

    def forget(self, keys: list[str], pipe: redis.client.Pipeline | None = None) -> None:
        self._call(self._forget, [DUE, VALUES, LIMBO], keys, pipe)

    def forget_gone(self, keys: list[str]) -> int:
        """Forget the entries of those keys that no longer exist; returns how many."""
        return int(self._forget_gone(keys=[DUE, VALUES, LIMBO], args=keys))

    def claim(self, keys: list[str], unknown_too: bool, pipe: redis.client.Pipeline | None = None) -> object:
        args = ["1" if unknown_too else "0", *keys]
        return self._call(self._claim, [DUE, VALUES, FIRING, FIRED, LIMBO], args, pipe)

    def _call(self, script: Script, keys: list[str], args: list, pipe: redis.client.Pipeline | None) -> Any:
        if pipe is None:
            return script(keys=keys, args=args)
        scripts.queue(pipe, script, keys, args)
        return None

    def fire_due(self, limit: int) -> FireResult:
        """Touch the entries whose deadline has come; claim those the touch expired."""
        raw = iter(self._fire_due(keys=[DUE, VALUES, FIRING, FIRED, LIMBO], args=[limit, self.exact_flag()]))
        claimed = [Claimed(_key(next(raw)), int(next(raw)), next(raw)) for _ in range(int(next(raw)))]
        gone = [_key(next(raw)) for _ in range(int(next(raw)))]
        moved = [_key(next(raw)) for _ in range(int(next(raw)))]
        next_deadline, looked_at, redis_now, micros = (int(next(raw)) for _ in range(4))
        return FireResult(
            claimed, gone, moved, next_deadline if next_deadline >= 0 else None, looked_at, redis_now, micros
        )

    def enqueued(self, claims: Iterable[Claimed], pipe: redis.client.Pipeline) -> None:
        """The jobs of these claims are on their ready lists (in the same transaction): drop them
        from the outbox."""
        fields = [claim.firing_field for claim in claims]
        if fields:
            pipe.hdel(FIRING, *fields)

    def reclaim_firing(self, older_than_ms: int) -> tuple[list[Claimed], int | None]:
        """Claims abandoned in the outbox for longer than that, taken over (by this listener only),
        and when the oldest one left there (younger) was made, if any."""
        raw = self._reclaim(keys=[FIRING], args=[older_than_ms])
        claims = [Claimed.from_firing(raw[i], raw[i + 1]) for i in range(0, len(raw) - 1, 2)]
        oldest_left = int(raw[-1])
        return claims, oldest_left if oldest_left >= 0 else None

    def limbo_keys(self, batch: int = 1000) -> Iterator[list[str]]:
        """Entries that came due undecided (see fire_due.lua), in batches; the caller settles each
        batch (which takes it out of limbo) before asking for the next."""
        first = None
        while keys := self._redis.zrange(LIMBO, 0, batch - 1):
            if keys[0] == first:
                return  # nothing was settled: stop rather than go round
            first = keys[0]
            yield [_key(key) for key in keys]

    def future_entries(self, after_ms: int, batch: int = 1000) -> Iterator[list[str]]:
        """Keys whose deadline is after `after_ms`, in batches (a cursor walk: each call is short,
        where paging by offset would grow with the index)."""
        keys: list[str] = []
        for key, deadline in self._redis.zscan_iter(DUE, count=batch):
            if deadline > after_ms:
                keys.append(_key(key))
            if len(keys) >= batch:
                yield keys
                keys = []
        if keys:
            yield keys

    def pending(self, limit: int, offset: int = 0) -> list[tuple[str, int]]:
        rows = self._redis.zrange(DUE, offset, offset + limit - 1, withscores=True)
        return [(_key(key), int(score)) for key, score in rows]

    def size(self) -> int:
        return int(self._redis.zcard(DUE)) + int(self._redis.zcard(LIMBO))


def parse_claims(raw: list[bytes]) -> list[Claimed]:
    return [Claimed(_key(raw[i]), int(raw[i + 1]), raw[i + 2]) for i in range(0, len(raw), 3)]
