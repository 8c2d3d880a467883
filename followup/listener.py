"""`followup listen`: keyspace events in, exactly one job per expiration of a mapped key out.

One loop, one thread for the events and the timer: it reads every key event of the watched
database in batches, keeps the schedule index (index.py) in step with them, and sleeps until the
next deadline or the next event, whichever comes first — no polling. At a deadline it touches the
due keys, which makes Redis expire them on the spot and claims them in the same step; an expired event
claims the key's entry and enqueues its job. On start and after every reconnect it catches up on
what came due while nobody listened, and a background scan indexes mapped keys it has not seen.
The listener never does the HTTP work itself.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from itertools import groupby

import redis

from followup.config import Settings
from followup.connections import redis_client, subscriber_client
from followup.index import Claimed, FireResult, ScheduleIndex, parse_claims
from followup.jobs import MAX_KEY_BYTES, PREFIX
from followup.mapping import Mapping
from followup.metrics import ListenerMetrics
from followup.notifications import ensure_flags
from followup.ready import ReadyQueue, ready_jobs
from followup.rules import LiveRules

log = logging.getLogger("followup.listener")

RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0
# Events read and handled together, in one pipeline of scripts.
BATCH = 1000
# Entries the timer touches per step.
TOUCH_LIMIT = 1000
# How long a due entry may wait in limbo for the event that decides it (see fire_due.lua) before
# the listener decides itself: a vanished key fires (it was evicted, or its event was lost), a
# key that exists is re-indexed (its TTL was moved). Five times as long while events pile up.
EVENT_GRACE = 2.0
# A claim left in the outbox this long was abandoned by its listener (see reclaim_firing.lua).
OUTBOX_ABANDONED_MS = 10_000
# Entries whose deadline is at least this far off and whose key is gone were deleted while no
# listener heard it: the start-up scan forgets them.
PRUNE_MARGIN_MS = 1000
# The longest the loop sleeps without a deadline: how soon it notices a hint from the scan.
MAX_SLEEP = 1.0
# Keys a listener remembers at most, in each of its notes (Listener._claimed_by_timer, _evicted).
REMEMBERED_KEYS_MAX = 100_000
SCAN_COUNT = 1000
# Keys indexed per script call by the scan: short calls, so other clients of Redis are not held up.
SCAN_INDEX_BATCH = 200
# Expired (x), generic (g: del, expire, rename, persist), string writes ($), evicted (e), as keyevents.
NOTIFY_FLAGS = "Eg$xe"

# What each key event means for the index.
_OPS = {
    **dict.fromkeys(
        b"set expire persist rename_to append setrange incrby incrbyfloat restore copy_to move_to".split(), "index"
    ),
    **dict.fromkeys(b"del rename_from move_from".split(), "forget"),
    b"expired": "claim",
    b"evicted": "evicted",
}

# Keys that Celery and kombu keep in the same Redis by default; never followed up, whatever the
# mapping's globs say. (Queue names are added per listener.)
_BROKER_PREFIXES = ("_kombu.", "celery-task-meta-", "celery-taskset-meta-", PREFIX)
_BROKER_KEYS = frozenset({"unacked", "unacked_index", "unacked_mutex"})


def is_internal(key: str, queue_name: str) -> bool:
    """Keys of followup itself and of its broker, which a broad glob must not catch."""
    return key.startswith(_BROKER_PREFIXES) or key in _BROKER_KEYS or key == queue_name


class Listener:
    def __init__(self, settings: Settings, rules: LiveRules | None = None) -> None:
        self._settings = settings
        self._rules = rules  # None: KEY_WEBHOOK_MAPPING as it is (tests that need no live rules)
        self._subscriber = subscriber_client(settings.redis_url)
        self._redis = redis_client(settings.redis_url, pool_size=8)
        self._index = ScheduleIndex(self._redis, settings.payload_max_bytes)
        self._ready = ReadyQueue(self._redis)
        self._pattern = f"__keyevent@{settings.redis_db}__:*"
        # Entries in limbo this listener waits to see decided: key -> (since, "gone" | "moved").
        self._awaiting: dict[str, tuple[float, str]] = {}
        # Keys whose expiration this listener's timer claimed and whose expired event (which the
        # touch itself caused) has not come yet: that event is known to claim nothing, so it
        # costs no round trip. Insertion-ordered, so the oldest go first when it is full.
        self._claimed_by_timer: dict[str, None] = {}
        # Keys Redis evicted (maxmemory) before their deadline: when the timer finds one gone at its
        # deadline, no expired event is on its way, so it fires then instead of after the grace.
        self._evicted: dict[str, None] = {}
        # Deadlines are Redis time; the loop sleeps on its own clock, corrected by the skew.
        self._skew_ms = 0.0
        self._next_wake: float | None = None  # Redis ms
        self._outbox_check_at: float | None = None  # Redis ms
        self._wake_lock = threading.Lock()
        self._connected = False
        self._heartbeat = time.monotonic()
        self.metrics = ListenerMetrics()
        self.metrics.index_size.set_function(self._index_size)

    def health(self) -> tuple[bool, str]:
        """For /healthz: subscribed to Redis, and the loop turning."""
        if not self._connected:
            return False, f"not connected to Redis at {self._settings.masked_redis_url}"
        stalled = time.monotonic() - self._heartbeat
        if stalled > 10 * MAX_SLEEP:
            return False, f"the event loop has not turned for {stalled:.0f}s"
        return True, f"listening on {self._pattern}"

    @property
    def _mapping(self) -> Mapping:
        return self._rules.mapping if self._rules is not None else self._settings.mapping

    def _index_size(self) -> float:
        try:
            return float(self._index.size())
        except redis.RedisError:
            return float("nan")

    # The loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Listen until `stop` is set, reconnecting with backoff whenever Redis goes away."""
        delay = RECONNECT_MIN
        while not stop.is_set():
            try:
                self._session(stop)
                delay = RECONNECT_MIN
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError) as exc:
                # A ResponseError too (READONLY after a failover, OOM, MISCONF, LOADING): the
                # session starts over, catch-up included, rather than the process dying.
                self._connected = False
                if stop.is_set():
                    break
                self.metrics.reconnects.inc()
                wait = delay * random.uniform(1.0, 1.25)
                log.warning("lost Redis at %s (%s); reconnecting in %.1fs", self._settings.masked_redis_url, exc, wait)
                stop.wait(wait)
                delay = min(delay * 2, RECONNECT_MAX)

    def _session(self, stop: threading.Event) -> None:
        self._index.reset_connection_facts()
        self._index.load_scripts()
        self._awaiting.clear()
        self._claimed_by_timer.clear()
        report = ensure_flags(self._redis, self._settings.redis_db, NOTIFY_FLAGS)
        pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
        scan_stop = threading.Event()
        try:
            pubsub.psubscribe(self._pattern)
            # Subscribed first, then caught up: nothing can fall between the two.
            self._catch_up()
            threading.Thread(target=self._scan, args=(scan_stop,), name="followup-scan", daemon=True).start()
            log.info(
                "listening on %s at %s (%d rules, %d follow-ups indexed; %s)",
                self._pattern,
                self._settings.masked_redis_url,
                len(self._mapping.rules),
                self._index.size(),
                report,
            )
            self._wake_at(self._redis_now())
            self._connected = True
            while not stop.is_set():
                self._heartbeat = time.monotonic()
                messages = _read_batch(pubsub, self._sleep_seconds())
                if messages:
                    self.handle(messages)
                if self._due():
                    self._on_timer(backlog_drained=len(messages) < BATCH)
        finally:
            self._connected = False
            scan_stop.set()
            pubsub.close()

    def _redis_now(self) -> float:
        """Redis's clock, in ms, to the fraction: the timer wakes for a deadline to the
        millisecond, and a clock read in whole ms would wake it up to 1 ms late."""
        return time.time() * 1000 + self._skew_ms

    def _sleep_seconds(self) -> float:
        with self._wake_lock:
            wake = self._next_wake
        if wake is None:
            return MAX_SLEEP
        return min(max(0.0, (wake - self._redis_now()) / 1000), MAX_SLEEP)

    def _due(self) -> bool:
        with self._wake_lock:
            return self._next_wake is not None and self._redis_now() >= self._next_wake

    def _wake_at(self, redis_ms: float) -> None:
        with self._wake_lock:
            if self._next_wake is None or redis_ms < self._next_wake:
                self._next_wake = redis_ms

    # Events -------------------------------------------------------------------------------

    def handle(self, messages: list[dict]) -> None:
        """One batch of key events, in order: index, forget and claim, in one pipeline."""
        ops = self._operations(messages)
        if not ops:
            return
        self.metrics.matched.inc(len(ops))
        ops = self._without_own_expirations(self._without_evictions(ops))
        if not ops:
            return
        pipe = self._redis.pipeline(transaction=False)
        runs = [(op, [key for _, key in group]) for op, group in groupby(ops, key=lambda pair: pair[0])]
        for op, keys in runs:
            if op == "index":
                self._index.index(keys, pipe)
            elif op == "forget":
                self._index.forget(keys, pipe)
            else:
                self._index.claim(keys, unknown_too=True, pipe=pipe)
        claims: list[Claimed] = []
        for (op, keys), result in zip(runs, pipe.execute(), strict=True):
            if op == "index":
                self._indexed(keys, result)
            elif op == "forget":
                for key in keys:
                    self._awaiting.pop(key, None)
            else:
                claimed = parse_claims(result)
                self.metrics.duplicates.inc(len(keys) - len(claimed))
                claims += claimed
        self._fire(claims, "event")

    def _without_own_expirations(self, ops: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Drop the expired events of keys the timer claimed (a write in between starts a new
        life of the key, whose expiration must be claimed again)."""
        if not self._claimed_by_timer:
            return ops
        kept = []
        for op, key in ops:
            if op == "claim" and key in self._claimed_by_timer:
                del self._claimed_by_timer[key]  # its own touch's echo: not a duplicate anyone made
                continue
            if op == "index":
                self._claimed_by_timer.pop(key, None)
            kept.append((op, key))
        return kept

    def _without_evictions(self, ops: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Note evicted keys (their entries stay: they fire at their deadlines); a write or a
        delete after the eviction starts a new life of the key, which the note must not outlive."""
        kept = []
        for op, key in ops:
            if op == "evicted":
                self._evicted[key] = None
                continue
            self._evicted.pop(key, None)
            kept.append((op, key))
        _keep_newest(self._evicted, REMEMBERED_KEYS_MAX)
        return kept

    def _operations(self, messages: list[dict]) -> list[tuple[str, str]]:
        """(index | forget | claim, key) for each event of a mapped key, in order."""
        ops: list[tuple[str, str]] = []
        for message in messages:
            event = message["channel"].rpartition(b":")[2]
            self.metrics.events.labels(event.decode("ascii", "replace")).inc()
            op = _OPS.get(event)
            if op is None:
                continue
            key = self._mapped_key(message["data"])
            if key is not None:
                ops.append((op, key))
        return ops

    def _indexed(self, keys: list[str], deadlines: list[int]) -> None:
        """Results of index_keys.lua: wake for the new deadlines; those keys are out of limbo."""
        upcoming = [deadline for deadline in deadlines if deadline > 0]
        if upcoming:
            self._wake_at(min(upcoming) + 1)
        for key, deadline in zip(keys, deadlines, strict=True):
            if deadline >= 0:
                self._awaiting.pop(key, None)

    def _mapped_key(self, raw: bytes) -> str | None:
        try:
            key, readable = raw.decode("utf-8"), True
        except UnicodeDecodeError:
            key, readable = raw.decode("utf-8", "surrogateescape"), False
        if not key or is_internal(key, self._settings.queue_name) or self._mapping.match(key) is None:
            return None
        if not readable:
            log.warning("ignored key %r: a rule matches it, but it is not UTF-8 (a webhook carries text)", raw[:100])
            return None
        if len(raw) > MAX_KEY_BYTES:
            log.warning(
                "ignored key %r… (%d bytes): a rule matches it, but a follow-up's key may have at most %d bytes",
                key[:100],
                len(raw),
                MAX_KEY_BYTES,
            )
            return None
        return key

    # The timer ----------------------------------------------------------------------------

    def _on_timer(self, backlog_drained: bool) -> None:
        with self._wake_lock:
            self._next_wake = None
        result = self._fire_due()
        self._fire(result.claimed, "timer")
        for claim in result.claimed:
            self._claimed_by_timer[claim.key] = None
        _keep_newest(self._claimed_by_timer, REMEMBERED_KEYS_MAX)
        evicted = {key for key in result.gone if key in self._evicted}
        if evicted:
            for key in evicted:
                del self._evicted[key]
            self._fire(parse_claims(self._index.claim(list(evicted), unknown_too=False)), "timer")
        since = time.monotonic()
        for keys, kind in ((result.gone, "gone"), (result.moved, "moved")):
            for key in keys:
                if key not in evicted:
                    self._awaiting.setdefault(key, (since, kind))
        if result.looked_at >= TOUCH_LIMIT:
            self._wake_at(result.redis_now)  # more are due
        elif result.next_deadline is not None:
            self._wake_at(result.next_deadline + 1)  # Redis expires a key once its deadline has passed
        self._settle_limbo(backlog_drained)
        if self._outbox_check_at is not None:
            if result.redis_now >= self._outbox_check_at:
                self._reclaim_outbox()
            else:
                self._wake_at(self._outbox_check_at)  # this timer's start cleared the wake

    def _fire_due(self) -> FireResult:
        before = time.time() * 1000
        result = self._index.fire_due(TOUCH_LIMIT)
        after = time.time() * 1000
        # Redis read its clock about halfway through the round trip.
        self._skew_ms = result.redis_now + result.micros / 1000 - (before + after) / 2
        return result

    def _settle_limbo(self, backlog_drained: bool) -> None:
        """Decide the entries whose event has not come within the grace period."""
        now = time.monotonic()
        grace = EVENT_GRACE if backlog_drained else 5 * EVENT_GRACE
        overdue = [(key, kind) for key, (since, kind) in self._awaiting.items() if now - since >= grace]
        for key, _ in overdue:
            del self._awaiting[key]
        moved = [key for key, kind in overdue if kind == "moved"]
        if moved:
            self._indexed(moved, self._index.index(moved))
        gone = [key for key, kind in overdue if kind == "gone"]
        if gone:
            # No expired event came, nor a del event: the key was evicted, or its event lost.
            self._fire(parse_claims(self._index.claim(gone, unknown_too=False)), "timer_no_event")
        if self._awaiting:
            oldest = min(since for since, _ in self._awaiting.values())
            self._wake_at(self._redis_now() + 1000 * (oldest + EVENT_GRACE - now))

    def _reclaim_outbox(self) -> None:
        claims, oldest_left = self._index.reclaim_firing(OUTBOX_ABANDONED_MS)
        if claims:
            log.info("enqueueing %d claimed follow-up(s) that a listener left unfinished", len(claims))
            self._fire(claims, "outbox")
        # Another listener may die between its claim and its enqueue at any time: look again once
        # the oldest claim left would count as abandoned, or, with none left, after that long.
        since = self._redis_now() if oldest_left is None else oldest_left
        self._outbox_check_at = since + OUTBOX_ABANDONED_MS
        self._wake_at(self._outbox_check_at)

    # Catching up --------------------------------------------------------------------------

    def _catch_up(self) -> None:
        """Enqueue what a listener claimed but never enqueued, and fire what came due unheard."""
        self._reclaim_outbox()
        total = 0
        # Limbo entries a listener left undecided: decided now, since their events are lost.
        for keys in self._index.limbo_keys():
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.exists(key)
            exists = pipe.execute()
            gone = [key for key, found in zip(keys, exists, strict=True) if not found]
            there = [key for key, found in zip(keys, exists, strict=True) if found]
            if there:
                self._indexed(there, self._index.index(there))
            claims = parse_claims(self._index.claim(gone, unknown_too=False)) if gone else []
            total += len(claims)
            self._fire(claims, "catch_up")
        while True:
            result = self._fire_due()
            # Nobody listened when the gone ones came due: their events are lost, so they fire now.
            claims = result.claimed + parse_claims(self._index.claim(result.gone, unknown_too=False))
            if result.moved:
                self._indexed(result.moved, self._index.index(result.moved))
            total += len(claims)
            self._fire(claims, "catch_up")
            if result.looked_at < TOUCH_LIMIT:
                break
        if total:
            self.metrics.caught_up.inc(total)
            log.info("caught up: %d follow-up(s) came due while no listener ran", total)

    def _scan(self, stop: threading.Event) -> None:
        """Forget entries whose key was deleted while nobody listened, then index mapped keys that
        carry a TTL but have no entry yet (written while nobody listened)."""
        try:
            # Forget first: on a large keyspace the scan takes a while, and an entry whose key was
            # deleted meanwhile must not come due (and fire) before it is forgotten.
            pruned = self._prune(stop)
            scanned = indexed = 0
            batch: list[str] = []
            for raw in self._redis.scan_iter(count=SCAN_COUNT):
                if stop.is_set():
                    return
                scanned += 1
                key = self._mapped_key(raw)
                if key is not None:
                    batch.append(key)
                if len(batch) >= SCAN_INDEX_BATCH:
                    indexed += self._index_scanned(batch)
                    batch = []
                if scanned % 100_000 == 0:
                    log.info("scan: %d keys looked at, %d mapped keys with a TTL indexed so far", scanned, indexed)
            if batch:
                indexed += self._index_scanned(batch)
            log.info(
                "scan done: %d keys looked at, %d mapped keys with a TTL indexed, %d deleted ones forgotten",
                scanned,
                indexed,
                pruned,
            )
        except redis.RedisError as exc:
            log.warning("scan stopped: %s (it runs again after the reconnect)", exc)

    def _index_scanned(self, keys: list[str]) -> int:
        deadlines = [d for d in self._index.index(keys) if d > 0]
        if deadlines:
            self._wake_at(min(deadlines) + 1)
        return len(deadlines)

    def _prune(self, stop: threading.Event) -> int:
        pruned = 0
        for keys in self._index.future_entries(self._redis_now() + PRUNE_MARGIN_MS):
            if stop.is_set():
                break
            pruned += self._index.forget_gone(keys)
        return pruned

    # Enqueueing ---------------------------------------------------------------------------

    def _fire(self, claims: list[Claimed], path: str) -> None:
        """Enqueue the jobs of these claims; `path` (event, timer, timer_no_event, outbox, catch_up)
        says what fired them, in logs and in the enqueued metric."""
        if not claims:
            return
        for claim in claims:
            self._awaiting.pop(claim.key, None)
        jobs = [claim.job(self._settings.payload_max_bytes) for claim in claims]
        # Onto the ready lists and out of the outbox in one transaction. Should it fail, the
        # claims stay in the outbox, and the catch-up after the reconnect enqueues them.
        pipe = self._redis.pipeline(transaction=True)
        self._ready.push(ready_jobs(jobs, self._mapping, self._settings.queue_name), pipe)
        self._index.enqueued(claims, pipe)
        pipe.execute()
        self.metrics.enqueued.labels(path).inc(len(jobs))
        enqueued_at = self._redis_now()
        for job in jobs:
            lateness = enqueued_at - job.expired_at
            self.metrics.lateness.observe(max(lateness, 0) / 1000)
            log.info("key %r expired: job %s queued (%s, %d ms after its deadline)", job.key, job.id, path, lateness)
            if job.payload_error:
                log.warning("job %s carries no payload: %s", job.id, job.payload_error)


def _keep_newest(notes: dict[str, None], most: int) -> None:
    """Forget the oldest keys of an insertion-ordered note beyond `most`."""
    while len(notes) > most:
        del notes[next(iter(notes))]


def _read_batch(pubsub: redis.client.PubSub, timeout: float) -> list[dict]:
    """The next events: wait up to `timeout` for one, then take what is already there."""
    first = pubsub.get_message(timeout=timeout)
    if first is None:
        return []
    messages = [first]
    while len(messages) < BATCH:
        message = pubsub.get_message(timeout=0)
        if message is None:
            break
        messages.append(message)
    return [m for m in messages if m["type"] == "pmessage"]
