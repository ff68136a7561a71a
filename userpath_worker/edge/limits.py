"""Per-organization rate limits at the edge (issue 21, item 5): a token bucket per organization that
holds ``burst`` events and refills at ``events_per_second``; a request of N events takes N tokens.

A request larger than the burst would never fit: it is taken when the bucket is full and leaves it
in debt, which the refill repays before anything else is taken. So every request the contract
allows is taken eventually, and the organization's long-run rate is still its events a second.

The buckets live in Redis, shared by every edge process (``RedisBuckets``: one Lua script a request,
on Redis' own clock), or, without a Redis, in the process (``LocalBuckets``: each edge process then
limits on its own). An organization's limits are read from the database and kept ``ttl`` seconds,
as the key authenticator keeps keys.
"""

from __future__ import annotations

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
from userpath_worker.edge.http import Refused, broker_unavailable
from userpath_worker.organizations.services import RateLimit, own_rate_limit

logger = logging.getLogger("userpath.edge")

BUCKET_KEY = "userpath:edge:bucket:{org_id}"

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


class Buckets(Protocol):
    def take(self, org_id: int, limit: RateLimit, events: int) -> tuple[float, float]:
        """Refill the organization's bucket and take ``events`` from it if it holds them (or is
        full): (seconds to wait before they would be taken, 0 when they were; tokens left)."""
        ...


class RedisBuckets:
    """Buckets every edge process shares: one atomic Lua script a request."""

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

    def of(self, org_id: int) -> RateLimit | None:
        now = self._clock()
        cached = self._cache.get(org_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
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


class RateLimiter:
    def __init__(self, limits: OrganizationLimits, buckets: Buckets) -> None:
        self._limits = limits
        self._buckets = buckets

    def take(self, org_id: int, events: int) -> Verdict | None:
        """The bucket's verdict on ``events`` more of the organization (counted when refused), or
        None when it has no limit."""
        limit = self._limits.of(org_id)
        if limit is None:
            return None
        verdict = Verdict(limit, *self._buckets.take(org_id, limit, events))
        if verdict.wait > 0:
            metrics.EDGE_RATE_LIMITED.labels(str(org_id)).inc()
            metrics.EDGE_RATE_LIMITED_EVENTS.labels(str(org_id)).inc(events)
        return verdict
