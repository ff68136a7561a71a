"""Per-organization rate limits at the edge (issue 21, item 5): a token bucket per organization that
holds ``burst`` events and refills at ``events_per_second``; a request of N events takes N tokens.

A request larger than the burst would never fit: it is taken when the bucket is full and leaves it
in debt, which the refill repays before anything else is taken. So every request the contract
allows is taken eventually, and the organization's long-run rate is still its events a second.

The buckets live in Redis, shared by every edge process (``RedisBuckets``: one Lua script a request,
on Redis' own clock), or, without a Redis, in the process (``LocalBuckets``: each edge process then
limits on its own). An organization's limits are read from the database and kept ``ttl`` seconds,
as the key authenticator keeps keys.

Each refusal is counted for the organization's owners (``RefusalCounts``): added to the keys' hourly
counters in the database, which the Settings pages read for every other refusal, batched in memory
and written at most every ``FLUSH_SECONDS``. The database and not Redis: the embedded default has no
Redis, and the pages would need a second place to read. Batched: a flood of 429s must not become a
write to the database for each request.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from userpath_worker import metrics
from userpath_worker.db import utcnow
from userpath_worker.edge.http import Refused, broker_unavailable
from userpath_worker.events import rollups
from userpath_worker.organizations.services import RateLimit, own_rate_limit

logger = logging.getLogger("userpath.edge")

BUCKET_KEY = "userpath:edge:bucket:{org_id}"
FLUSH_SECONDS = 10.0

# KEYS[1] the bucket; ARGV: events a second, burst, events wanted. Returns {wait, tokens left} as
# text (Lua numbers would come back truncated to integers). Time is Redis' own, so edge hosts'
# clocks do not matter, kept as TIME gives it (seconds, microseconds: Lua's numbers print 14 digits).
# The key expires once the bucket would be full again: no key is a full bucket.
_TAKE = """
local rate, burst, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = redis.call('TIME')
local state = redis.call('HMGET', KEYS[1], 'tokens', 'seconds', 'micros')
local tokens = tonumber(state[1])
if tokens == nil then
  tokens = burst
else
  local elapsed = (tonumber(now[1]) - tonumber(state[2])) + (tonumber(now[2]) - tonumber(state[3])) / 1000000
  tokens = math.min(burst, tokens + math.max(0, elapsed) * rate)
end
local needed = math.min(wanted, burst)
local wait = 0
if tokens >= needed then
  tokens = tokens - wanted
else
  wait = (needed - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'seconds', now[1], 'micros', now[2])
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {tostring(wait), tostring(tokens)}
"""


class NeedsIO(Exception):
    """A decision asked not to wait would have to: it needs the database or Redis."""


class Buckets(Protocol):
    # Whether ``take`` stays in this process (no I/O).
    local: bool

    def take(self, org_id: int, limit: RateLimit, events: int) -> tuple[float, float]:
        """Refill the organization's bucket and take ``events`` from it if it holds them (or is
        full): (seconds to wait before they would be taken, 0 when they were; tokens left)."""
        ...


class RedisBuckets:
    """Buckets every edge process shares: one atomic Lua script a request."""

    local = False

    def __init__(self, url: str, timeout: float) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._take = self._redis.register_script(_TAKE)

    def take(self, org_id: int, limit: RateLimit, events: int) -> tuple[float, float]:
        try:
            wait, tokens = self._take(
                keys=[BUCKET_KEY.format(org_id=org_id)], args=[limit.events_per_second, limit.burst, events]
            )
        except redis.RedisError as error:  # nothing taken: the caller sends again, as after a broker failure
            logger.warning("the rate limits' Redis did not answer (%s: %s); answered 503", type(error).__name__, error)
            raise Refused(broker_unavailable()) from None
        return float(wait), float(tokens)


class LocalBuckets:
    """Buckets of this process alone, for an edge without a Redis (the embedded default, or RabbitMQ
    without USERPATH_EDGE_REDIS_URL): each edge process limits on its own. The arithmetic of
    ``_TAKE``."""

    local = True

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[int, tuple[float, float]] = {}  # org id: (tokens, when)

    def take(self, org_id: int, limit: RateLimit, events: int) -> tuple[float, float]:
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(org_id, (limit.burst, now))
            tokens = min(limit.burst, tokens + max(0.0, now - at) * limit.events_per_second)
            needed = min(events, limit.burst)
            wait = 0.0
            if tokens >= needed:
                tokens -= events
            else:
                wait = (needed - tokens) / limit.events_per_second
            self._buckets[org_id] = (tokens, now)
        return wait, tokens


class OrganizationLimits:
    """Each organization's limit (its own, else the default; None: no limit), kept ``ttl`` seconds."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        default: RateLimit | None,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._default = default
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[int, tuple[float, RateLimit | None]] = {}

    def of(self, org_id: int, wait: bool = True) -> RateLimit | None:
        """The organization's limit; ``wait`` False: ``NeedsIO`` unless it is kept here."""
        now = self._clock()
        cached = self._cache.get(org_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        if not wait:
            raise NeedsIO
        try:
            with self._sessions() as session:
                own = own_rate_limit(session, org_id)
        except DBAPIError as error:
            # The table arrives with an online migration (0018) that may still be pending; the
            # default is what the organization had before it.
            logger.warning("an organization's rate limit could not be read (%s); the default applies", error.orig)
            own = None
        limit = own or self._default
        self._cache[org_id] = (now, limit)
        return limit


@dataclass(frozen=True)
class Verdict:
    """What the bucket said to one request: ``wait`` seconds before it would be taken (0: taken)."""

    limit: RateLimit
    wait: float
    tokens: float

    @property
    def retry_after(self) -> int:
        """Whole seconds, at least 1: what Retry-After says (Segment's libraries read an integer)."""
        return max(1, math.ceil(self.wait))

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """X-RateLimit-*: the events the bucket holds, those left in it now, and the seconds until
        it is full again."""
        full_in = max(0.0, self.limit.burst - self.tokens) / self.limit.events_per_second
        return (
            ("x-ratelimit-limit", str(self.limit.burst)),
            ("x-ratelimit-remaining", str(max(0, math.floor(self.tokens)))),
            ("x-ratelimit-reset", str(math.ceil(full_in))),
        )


class RefusalCounts:
    """The events each key was refused with 429, by the hour, added to its counters (outcome
    ``rate_limited``) by a thread of this process: at once after a quiet while, then at most every
    ``every`` seconds, one upsert for all that was counted meanwhile. An edge process that stops
    (uvicorn ends on the signal it was sent) loses at most its last ``every`` seconds' counts:
    figures for an owner, not a ledger (the events themselves were never taken)."""

    def __init__(
        self, sessions: Callable[[], Session], every: float = FLUSH_SECONDS, clock: Callable[[], dt.datetime] = utcnow
    ) -> None:
        self._sessions = sessions
        self._every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one flush at a time: a flush returns once its counts are in
        self._due = threading.Event()
        self._pending: dict[dt.datetime, tuple[rollups.Tally, dt.datetime]] = {}  # hour: (counts, latest)
        self._flushing: threading.Thread | None = None

    def add(self, org_id: int, key_id: int, events: int) -> None:
        now = self._clock()
        with self._lock:
            hour = rollups.hour_of(now)
            tally = self._pending[hour][0] if hour in self._pending else rollups.Tally()
            tally.add(org_id, key_id, rollups.RATE_LIMITED, events)
            self._pending[hour] = (tally, now)
            if self._flushing is None:  # the first refusal of this process starts the flushes
                self._flushing = threading.Thread(target=self._flush_when_due, name="edge-429-counts", daemon=True)
                self._flushing.start()
        self._due.set()

    def flush(self) -> None:
        """Write what was counted until now; kept for the next flush if the database fails."""
        with self._writing:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return
            try:
                with self._sessions() as session, session.begin():
                    for tally, latest in pending.values():
                        rollups.add_counts(session, tally, latest)
            except Exception as error:  # the thread must go on: the database may be back next time
                logger.warning(
                    "the 429 counts could not be written (%s: %s); kept for the next try", type(error).__name__, error
                )
                with self._lock:
                    for hour, (tally, latest) in pending.items():
                        if hour in self._pending:
                            newer, newer_latest = self._pending[hour]
                            tally.counts.update(newer.counts)
                            latest = max(latest, newer_latest)
                        self._pending[hour] = (tally, latest)
                self._due.set()

    def _flush_when_due(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            self.flush()
            time.sleep(self._every)


class RateLimiter:
    def __init__(self, limits: OrganizationLimits, buckets: Buckets, refusals: RefusalCounts) -> None:
        self._limits = limits
        self._buckets = buckets
        self._refusals = refusals

    def take(self, org_id: int, key_id: int, events: int, wait: bool = True) -> Verdict | None:
        """The bucket's verdict on ``events`` more of the organization, sent with key ``key_id``
        (counted when refused), or None when it has no limit. ``wait`` False: ``NeedsIO`` rather
        than ask the database or Redis."""
        limit = self._limits.of(org_id, wait)
        if limit is None:
            return None
        if not (wait or self._buckets.local):
            raise NeedsIO
        verdict = Verdict(limit, *self._buckets.take(org_id, limit, events))
        if verdict.wait > 0:
            metrics.EDGE_RATE_LIMITED.labels(str(org_id)).inc()
            metrics.EDGE_RATE_LIMITED_EVENTS.labels(str(org_id)).inc(events)
            self._refusals.add(org_id, key_id, events)
        return verdict
