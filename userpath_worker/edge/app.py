"""The edge as a bare ASGI application: routing, reading bodies within their limits, the access log.

A framework would add nothing the edge needs and cost a share of every request. A track call that
needs no I/O (``Edge.judge_now``: key cached, limit known) is decided on the event loop; decisions
that touch the database or Redis, and every publish, run on a thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from sqlalchemy.orm import Session

from config.settings import Settings, get_settings
from userpath_client.contract import HTTP_MAX_BATCH_BYTES, HTTP_MAX_CALL_BYTES, HTTP_MAX_WEBHOOK_BYTES, MAX_BATCH_EVENTS
from userpath_worker import runtime
from userpath_worker.edge import segment
from userpath_worker.edge.http import WEBHOOK_PREFIX, Answer, Refused, credentials, inflate, refusal, shown, too_large
from userpath_worker.edge.limits import LocalBuckets, OrganizationLimits, RateLimiter, RedisBuckets, RefusalCounts
from userpath_worker.edge.service import Accepted, Call, Edge, Group, Publishers, unavailable
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.exposure import GITHUB_REPORTS_PATH, ExposureService
from userpath_worker.keys.services import configured_pepper
from userpath_worker.organizations.services import default_rate_limit

access_log = logging.getLogger("userpath.edge.access")
logger = logging.getLogger("userpath.edge")

Scope = dict[str, Any]
Result = TypeVar("Result")
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_HEALTHY = Answer(200, {"status": "ok"})
_NOT_FOUND = refusal(
    404,
    "not_found",
    f"no such route: POST /v1/batch, /v1/<call type>, /v1/webhooks/<provider> or {GITHUB_REPORTS_PATH}",
)
_METHOD = refusal(405, "method_not_allowed", "use POST")
# Events that wait for a publish at most: past them they leave at once, so that one publish (a few
# envelopes of 1,000) stays one round trip of a few megabytes.
MAX_WINDOW_EVENTS = 4 * MAX_BATCH_EVENTS
# A compressed body may be a little larger than the same body inflated (incompressible data).
_COMPRESSION_SLACK = 1024


class EdgeApp:
    def __init__(self, edge: Edge, reports: ExposureService, threads: int) -> None:
        self.edge, self.reports = edge, reports
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edge")
        self._judges = Judges(lambda calls: self._run(edge.judge_tracks, calls))
        self._coalescer = Coalescer(lambda groups: self._run(edge.publish_groups, groups))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        try:
            answer = await self._answer(scope, receive)
        except Refused as refused:
            answer = refused.answer
        except Exception as error:  # never a traceback that could carry a body or a key
            logger.error("request failed: %s: %s", type(error).__name__, shown(str(error)))
            answer = refusal(500, "internal_error", "the edge failed; send again")
        body = answer.body
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers.extend((name.encode(), value.encode()) for name, value in answer.headers)
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if access_log.isEnabledFor(logging.INFO):
            client = (scope.get("client") or ("-",))[0]
            access_log.info(
                '%s "%s %s" %d %.1fms',
                client,
                scope["method"],
                shown(scope["path"]),
                answer.status,
                (time.perf_counter() - started) * 1000,
            )

    async def _answer(self, scope: Scope, receive: Receive) -> Answer:
        path, method = scope["path"], scope["method"]
        if path == "/healthz":
            return _HEALTHY
        if not path.startswith("/v1/"):
            return _NOT_FOUND
        if method != "POST":
            return _METHOD
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        if path.startswith(WEBHOOK_PREFIX):
            return await self._webhook(path[len(WEBHOOK_PREFIX) :], headers, receive)
        if path == GITHUB_REPORTS_PATH:  # leaked keys reported by GitHub's secret scanning
            body = await _read(receive, HTTP_MAX_WEBHOOK_BYTES)
            status, document = await self._run(self.reports.github_report, headers, body)
            return Answer(status, document)
        route = path[len("/v1/") :]
        if route in ("batch", "import"):
            route_type, limit = None, HTTP_MAX_BATCH_BYTES
        elif route in segment.CALL_TYPES:
            route_type, limit = route, HTTP_MAX_CALL_BYTES
        else:
            return _NOT_FOUND
        raw = await _read(receive, limit + _COMPRESSION_SLACK)
        document = _json_object(inflate(raw, headers.get("content-encoding"), limit))
        key = credentials(headers.get("authorization"))
        if key is None:
            key = document.get("writeKey")
        decided = self.edge.judge_now(key, document, route_type)
        if decided is None:  # the database or Redis must be asked: on the pool
            decided = await self._judges.judge((key, document, route_type))
        if isinstance(decided, Answer):
            return decided
        try:
            await self._coalescer.send(decided.key, decided.sent_at, decided.events)
        except Exception as error:  # any broker or network failure: the caller sends again
            return unavailable(error)
        return decided.answer

    async def _webhook(self, rest: str, headers: dict[str, str], receive: Receive) -> Answer:
        provider, _, token = rest.partition("/")
        key = token or credentials(headers.get("authorization"))
        body = await _read(receive, HTTP_MAX_WEBHOOK_BYTES)
        return await self._run(self.edge.webhook, key, provider, headers, body)

    async def _run(self, function: Callable[..., Result], *arguments: Any) -> Result:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *arguments)


class Judges:
    """Track requests read in one turn of the event loop are judged together, in one hop to the
    thread pool (the hop costs about as much as judging a call): each gets its own decision, or
    the error its own judging raised. While ``IN_FLIGHT`` batches are being judged, the requests
    that arrive wait for one to end and then go together.

    ``judge_all`` takes the calls and returns each one's decision or error, in order."""

    # Batches judged at once: two, so that one waiting on I/O (a key not cached yet, the rate
    # limiter's Redis) does not hold up the rest; more only contend for the GIL (measured: 1, 2
    # and 16 in flight gave 67,000, 69,000 and 55,000 events a second on /v1/batch).
    IN_FLIGHT = 2

    def __init__(self, judge_all: Callable[[list[Call]], Awaitable[list[Accepted | Answer | Exception]]]) -> None:
        self._judge_all = judge_all
        self._waiting: list[tuple[Call, asyncio.Future[Accepted | Answer]]] = []
        self._in_flight = 0
        self._scheduled = False

    async def judge(self, call: Call) -> Accepted | Answer:
        loop = asyncio.get_running_loop()
        if not self._scheduled and self._in_flight < self.IN_FLIGHT:
            self._scheduled = True
            loop.call_soon(self._start)  # after every request this turn has read
        decided: asyncio.Future[Accepted | Answer] = loop.create_future()
        self._waiting.append((call, decided))
        return await decided

    def _start(self) -> None:
        self._scheduled = False
        if not self._waiting or self._in_flight >= self.IN_FLIGHT:
            return
        waiting, self._waiting = self._waiting, []
        self._in_flight += 1
        judged = asyncio.ensure_future(self._judge_all([call for call, _ in waiting]))
        judged.add_done_callback(lambda done: self._done([decided for _, decided in waiting], done))

    def _done(
        self,
        waiting: list[asyncio.Future[Accepted | Answer]],
        done: asyncio.Future[list[Accepted | Answer | Exception]],
    ) -> None:
        self._in_flight -= 1
        _settle(waiting, done)
        self._start()  # those that waited meanwhile


@dataclass
class _Envelope:
    sent: asyncio.Future[None]
    events: list[bytes] = field(default_factory=list)


class Coalescer:
    """Calls of one key with one ``sentAt`` travel together (issue 21 allows it): one envelope for
    many requests. And every envelope, whatever its key or ``sentAt``, goes to the broker with the
    others of its turn in one publish (one round trip on Redis), which is most of a request's cost.
    A publish leaves as soon as the event loop has read what arrived with it, unless ``IN_FLIGHT``
    publishes are under way: then what arrives meanwhile waits for one of them to end and leaves
    together (group commit: no waiting when the edge is quiet, large envelopes when it is busy).
    Each request is answered only once the broker has the envelope that carried its events.

    ``publish`` takes the groups (key, sentAt, events) and returns what became of each (None: the
    broker has it; else the error to answer with)."""

    # One: measured against the 2 ms window it replaces (track 7,500 -> 9,700 requests a second,
    # /v1/batch 69,000 -> 80,000 events a second on Redis), and against 2 and 4 in flight, which
    # gave as much on Redis and less on RabbitMQ.
    IN_FLIGHT = 1

    def __init__(self, publish: Callable[[list[Group]], Awaitable[list[Exception | None]]]) -> None:
        self._publish = publish
        self._open: dict[tuple[str, str | None], _Envelope] = {}
        self._events = 0  # waiting to leave
        self._in_flight = 0
        self._scheduled = False

    async def send(self, key: str, sent_at: str | None, events: list[bytes]) -> None:
        if not events:
            return
        slot = (key, sent_at)
        envelope = self._open.get(slot)
        if envelope is None:
            loop = asyncio.get_running_loop()
            envelope = self._open[slot] = _Envelope(loop.create_future())
            if not self._scheduled and self._in_flight < self.IN_FLIGHT:
                self._scheduled = True
                loop.call_soon(self._close)  # after every request this turn has read
        envelope.events.extend(events)
        self._events += len(events)
        if self._events >= MAX_WINDOW_EVENTS:
            self._close(full=True)
        await asyncio.shield(envelope.sent)  # a caller that goes away does not cancel the others'

    def _close(self, full: bool = False) -> None:
        """What waits to the broker, together."""
        if not full:
            self._scheduled = False
            if self._in_flight >= self.IN_FLIGHT:
                return  # a publish that ends takes it
        closed, self._open, self._events = self._open, {}, 0
        if not closed:
            return
        self._in_flight += 1
        groups = [(key, sent_at, envelope.events) for (key, sent_at), envelope in closed.items()]
        published = asyncio.ensure_future(self._publish(groups))
        published.add_done_callback(lambda done: self._published([envelope.sent for envelope in closed.values()], done))

    def _published(self, sent: list[asyncio.Future[None]], done: asyncio.Future[list[Exception | None]]) -> None:
        self._in_flight -= 1
        _settle(sent, done)
        self._close()  # what arrived meanwhile


def _settle(futures: list[asyncio.Future[Any]], done: asyncio.Future[list[Any]]) -> None:
    """Each of ``futures`` gets its own outcome from the list ``done`` holds (an exception is
    raised to its caller), or, when ``done`` failed as a whole, that error."""
    error = done.exception()
    outcomes = [error] * len(futures) if error is not None else done.result()
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.done():  # its caller went away
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
            future.exception()  # marked as retrieved: a future whose callers all went away is not an error
        else:
            future.set_result(outcome)


async def _read(receive: Receive, limit: int) -> bytes:
    """The request's body; 413 as soon as it is over ``limit`` (the rest is never read)."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(refusal(400, "invalid_body", "the client went away"))
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise Refused(too_large(f"the body is over {limit} bytes"))
        parts.append(part)
        if not message.get("more_body"):
            return b"".join(parts)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise Refused(refusal(400, "invalid_json", f"the body is not JSON: {error}")) from None
    if not isinstance(document, dict):
        raise Refused(refusal(400, "invalid_body", "the body is a JSON object"))
    return document


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def rate_limiter(settings: Settings, sessions: Callable[[], Session]) -> RateLimiter:
    """Buckets in USERPATH_EDGE_REDIS_URL, else in the broker's Redis, else in this process."""
    limits = OrganizationLimits(sessions, default_rate_limit(settings), settings.auth_cache_seconds)
    redis_url = settings.edge_redis_url
    if redis_url is None and settings.broker_url.startswith(("redis://", "rediss://")):
        redis_url = settings.broker_url
    buckets = LocalBuckets() if redis_url is None else RedisBuckets(redis_url, settings.edge_broker_timeout_seconds)
    return RateLimiter(limits, buckets, RefusalCounts(sessions))


def build(settings: Settings | None = None) -> EdgeApp:
    """The application of one server process, from the settings."""
    settings = settings or get_settings()
    sessions = runtime.session_factory()
    pepper = configured_pepper(settings)
    edge = Edge(
        sessions,
        KeyAuthenticator(pepper, settings.auth_cache_seconds),
        Publishers(settings.broker_url, settings.edge_broker_timeout_seconds),
        rate_limiter(settings, sessions),
        settings.slow_keys,
    )
    return EdgeApp(edge, ExposureService(settings, sessions.begin, pepper), settings.edge_threads)
