"""The edge's decisions for one request, synchronous (run on the server's thread pool): who the key
is (the worker's cached authenticator), whether its scopes permit the call, what the events are
(the contract's models), and whether the broker took them (the client's publishing rule).

The answer tells the truth: 200 only once the broker has every message of the request.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.orm import Session

from userpath_client.contract import (
    DELIVERY_ID_MAX,
    EVENTS_QUEUE,
    HTTP_MAX_BATCH_EVENTS,
    MAX_BATCH_EVENTS,
    MAX_ENVELOPE_BYTES,
    PROVIDER_PATTERN,
    WEBHOOKS_QUEUE,
    lane_of,
)
from userpath_client.errors import BacklogFull, InvalidEvent
from userpath_client.publisher import Outgoing, Publisher
from userpath_client.validation import webhook_json
from userpath_client.wire import Encoder
from userpath_worker.db import utcnow
from userpath_worker.edge import segment
from userpath_worker.edge.http import Answer, Refused, backlog_full, broker_unavailable, refusal, success, too_large
from userpath_worker.edge.limits import NeedsIO, RateLimiter
from userpath_worker.events.models import Source
from userpath_worker.keys import scopes
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.services import KeyIdentity
from userpath_worker.keys.tokens import AuthFailure

logger = logging.getLogger("userpath.edge")
SLOW_LOG_SECONDS = 60.0

# What each refused key is told; the code is the dead-letter reason the worker would give it.
_AUTH_ANSWERS = {
    AuthFailure.MALFORMED: ("malformed_key", "the key is not up_live_ or up_test_ followed by 38 letters and digits"),
    AuthFailure.BAD_CHECKSUM: ("bad_checksum", "the key's checksum is wrong: it was mistyped or cut"),
    AuthFailure.UNKNOWN: ("unknown_key", "no such key"),
    AuthFailure.DELETED: ("deleted_key", "the key was deleted"),
    AuthFailure.EXPIRED: ("expired_key", "the key has expired"),
}
# Headers of a delivery that are never sent on: they carry the caller's credentials.
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})
# Where providers put the id of a delivery, which a retry of it repeats (the worker prefers a
# delivery id the signature covers, such as Standard Webhooks' webhook-id).
_DELIVERY_ID_HEADERS = ("x-github-delivery", "x-shopify-webhook-id", "webhook-id", "svix-id", "x-request-id")
_PROVIDER = re.compile(PROVIDER_PATTERN)

# A track request as the edge read it: its key (if any), its body, its call type (None: a batch).
Call = tuple[object, dict[str, Any], str | None]
# Events of one key with one sentAt (or none), which travel in envelopes of their own.
Group = tuple[str, str | None, list[bytes]]


@dataclass(frozen=True)
class Accepted:
    """A track request's events to send on (empty when every call was refused and none can travel)
    and its answer once the broker has them."""

    key: str
    sent_at: str | None
    events: list[bytes]
    answer: Answer


class Publishers:
    """A ``Publisher`` per thread of the pool (kombu's connections are not shared between threads)."""

    def __init__(self, broker_url: str, timeout: float) -> None:
        self._broker_url = broker_url
        self._timeout = timeout
        self._local = threading.local()

    def publish(self, queue: str, encoder: Encoder, chunk: list[bytes], sent_at: str | None, slow: bool) -> None:
        """``chunk`` of ``encoder``'s key as one message in its lane (``slow``: to the overflow queue)."""
        publisher = self._publisher()
        body, message = encoder.message(queue, chunk, sent_at)
        reused = publisher.connected
        try:
            publisher.publish(queue, body, message, encoder.lane, len(chunk), slow)
        except BacklogFull:
            raise
        except Exception:
            if not reused:
                raise
            # A connection idle in this thread may have died meanwhile (a broker restart, a
            # failover): once more on a new one before answering 503. A message RabbitMQ took
            # without its confirm arriving is then sent twice: its events are stored once.
            publisher.publish(queue, body, message, encoder.lane, len(chunk), slow)

    def publish_many(self, queue: str, messages: list[Outgoing]) -> list[Exception | None]:
        """``messages`` in one go (one round trip on Redis), and what became of each (None: the broker
        has it). Those that failed on a connection made earlier are sent once more on a new one."""
        publisher = self._publisher()
        reused = publisher.connected
        try:
            outcomes = publisher.publish_many(queue, messages)
        except Exception as error:
            outcomes = [error] * len(messages)
        again = [
            index
            for index, outcome in enumerate(outcomes)
            if outcome is not None and not isinstance(outcome, BacklogFull)
        ]
        if reused and again:
            # As in ``publish``: a connection idle in this thread may have died meanwhile.
            try:
                retried = publisher.publish_many(queue, [messages[index] for index in again])
            except Exception as error:
                retried = [error] * len(again)
            for index, outcome in zip(again, retried, strict=True):
                outcomes[index] = outcome
        return outcomes

    def _publisher(self) -> Publisher:
        publisher = getattr(self._local, "publisher", None)
        if publisher is None:
            publisher = self._local.publisher = Publisher(self._broker_url, self._timeout)
        return publisher


class Edge:
    def __init__(
        self,
        sessions: Callable[[], Session],
        authenticator: KeyAuthenticator,
        publishers: Publishers,
        limiter: RateLimiter,
        slow_keys: frozenset[int] = frozenset(),
    ) -> None:
        self._sessions = sessions
        self._authenticator = authenticator
        self._publishers = publishers
        self._limiter = limiter
        self._slow_keys = slow_keys
        self._slow_lanes: dict[str, int] = {}  # lane -> key id, of the slow keys, as requests show them
        self._slow_said: dict[str, float] = {}  # lane -> when the log last said it is slow

    def track(self, key: object, body: dict[str, Any], route_type: str | None) -> Answer:
        """One Segment call (``route_type`` its type) or a /v1/batch (None), decided and published."""
        decided = self.judge_track(key, body, route_type)
        if isinstance(decided, Answer):
            return decided
        try:
            self.publish_events(decided.key, decided.events, decided.sent_at)
        except Exception as error:  # any broker or network failure: the caller sends again
            return unavailable(error)
        return decided.answer

    def judge_tracks(self, calls: list[Call]) -> list[Accepted | Answer | Exception]:
        """``judge_track`` on each of ``calls``; an error judging one is its own."""
        decisions: list[Accepted | Answer | Exception] = []
        for key, body, route_type in calls:
            try:
                decisions.append(self.judge_track(key, body, route_type))
            except Exception as error:
                decisions.append(error)
        return decisions

    def judge_now(self, key: object, body: dict[str, Any], route_type: str | None) -> Accepted | Answer | None:
        """``judge_track`` when it needs no I/O (the key and its organization's limit known here,
        the buckets in this process), so that the event loop can decide at once; None when it
        needs the database or Redis."""
        try:
            return self.judge_track(key, body, route_type, wait=False)
        except NeedsIO:
            return None

    def judge_track(
        self, key: object, body: dict[str, Any], route_type: str | None, wait: bool = True
    ) -> Accepted | Answer:
        """What to send on and the answer once the broker has it, or the refusal to answer now."""
        try:
            identity = self._permitted(key, Source.SERVER, wait=wait)
            calls = _calls(body, route_type)
            sent_at = segment.sent_at(body)
            # The limit before judging: a decision that must wait is given up before its work is done.
            limit_headers = self._admit(identity, len(calls), wait)
            judged = segment.judge(calls, route_type, {"context": body.get("context"), "timestamp": sent_at})
        except Refused as refused:
            return refused.answer
        except segment.UnusableBody as error:
            return refusal(400, "invalid_body", str(error))
        assert isinstance(key, str)  # _permitted said so
        if not judged.refusals:
            answer = success(limit_headers)
        elif judged.accepted:
            answer = Answer(200, {"success": True, "refused": judged.refusals}, limit_headers)
        else:
            message = judged.refusals[0]["reason"] if len(calls) == 1 else "every call was refused"
            document = {**refusal(400, "invalid_events", message).document, "refused": judged.refusals}
            answer = Answer(400, document, limit_headers)
        return Accepted(key, sent_at, judged.events, answer)

    def publish_events(self, key: str, events: list[bytes], sent_at: str | None) -> None:
        """``events`` of ``key`` in envelopes on the events queue; returns once the broker has them all."""
        (outcome,) = self.publish_groups([(key, sent_at, events)])
        if outcome is not None:
            raise outcome

    def publish_groups(self, groups: list[Group]) -> list[Exception | None]:
        """Each group's events (a key, a sentAt, events) in envelopes of their own on the events queue,
        every envelope of every group in one go; what became of each group: None once the broker
        has all of its envelopes, else the error of one that it does not have."""
        messages: list[Outgoing] = []
        owners: list[int] = []  # the group of each message
        for number, (key, sent_at, events) in enumerate(groups):
            encoder = Encoder(key)
            slow = self._is_slow(encoder.lane)
            for chunk in _envelopes(events, encoder.envelope_overhead):
                body, message = encoder.message(EVENTS_QUEUE, chunk, sent_at)
                messages.append((body, message, encoder.lane, len(chunk), slow))
                owners.append(number)
        outcomes: list[Exception | None] = [None] * len(groups)
        for number, outcome in zip(owners, self._publishers.publish_many(EVENTS_QUEUE, messages), strict=True):
            if outcome is not None and outcomes[number] is None:
                outcomes[number] = outcome
        return outcomes

    def webhook(self, key: object, provider: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """A provider's delivery, as received, wrapped into one ``userpath.webhook`` message."""
        try:
            if not _PROVIDER.fullmatch(provider):
                raise Refused(refusal(404, "unknown_provider", "a provider is 1 to 50 of a-z, 0-9, - and _"))
            identity = self._permitted(key, Source.WEBHOOK, provider)
            limit_headers = self._admit(identity, 1)
        except Refused as refused:
            return refused.answer
        assert isinstance(key, str)
        forwarded = {name: value for name, value in headers.items() if name not in _CREDENTIAL_HEADERS}
        try:
            data = webhook_json(key, provider, delivery_id(headers, body), forwarded, body)
        except InvalidEvent as error:
            return refusal(400, "invalid_webhook", str(error))
        encoder = Encoder(key)
        try:
            self._publishers.publish(WEBHOOKS_QUEUE, encoder, [data], None, self._is_slow(encoder.lane))
        except Exception as error:  # the provider retries on anything but 2xx
            return unavailable(error)
        return success(limit_headers)

    def _is_slow(self, lane: str) -> bool:
        """Whether ``lane`` is a slow key's (USERPATH_SLOW_KEYS), said in the log once a minute per key."""
        key_id = self._slow_lanes.get(lane)
        if key_id is None:
            return False
        now = time.monotonic()
        if now - self._slow_said.get(lane, -SLOW_LOG_SECONDS) >= SLOW_LOG_SECONDS:
            self._slow_said[lane] = now
            logger.info("key %s is in the slow lane (USERPATH_SLOW_KEYS): on RabbitMQ, to overflow", key_id)
        return True

    def _permitted(self, key: object, source: Source, provider: str | None = None, wait: bool = True) -> KeyIdentity:
        """The key's identity, or ``Refused``: 401 for a key that cannot be used, 403 for a call its
        scopes do not cover. ``wait`` False: ``NeedsIO`` rather than ask the database."""
        if key is None:
            raise Refused(refusal(401, "missing_key", "send the key as Basic user name, Bearer token or writeKey"))
        found = self._authenticator.answer_at_once(key)
        if found is None:  # a session only when the database must be asked (it is a tenth of a call's cost)
            if not wait:
                raise NeedsIO
            with self._sessions() as session:
                found = self._authenticator.authenticate(session, key)
        failure = found if isinstance(found, AuthFailure) else found.refusal(utcnow())
        if failure is not None:
            raise Refused(refusal(401, *_AUTH_ANSWERS[failure]))
        assert isinstance(found, KeyIdentity)
        if found.key_id in self._slow_keys:
            self._slow_lanes[lane_of(key)] = found.key_id
        if not scopes.permits(found.scopes, source, provider):
            what = f"{provider} webhooks" if source == Source.WEBHOOK else "track calls"
            raise Refused(
                refusal(
                    403,
                    "scope_denied",
                    f"this key may not send {what}: its scopes are {scopes.described(found.scopes)}",
                )
            )
        return found

    def _admit(self, identity: KeyIdentity, events: int, wait: bool = True) -> tuple[tuple[str, str], ...]:
        """The X-RateLimit-* headers once ``events`` are taken from the organization's bucket, or
        ``Refused`` with 429 when it does not hold them yet."""
        verdict = self._limiter.take(identity.org_id, identity.key_id, events, wait)
        if verdict is None:
            return ()
        if verdict.wait > 0:
            limit = verdict.limit
            message = (
                f"over the organization's rate of {limit.events_per_second} events a second "
                f"(bursts of {limit.burst}); nothing was kept: send them again after Retry-After"
            )
            retry_after = ("retry-after", str(verdict.retry_after))
            raise Refused(refusal(429, "rate_limited", message, retry_after, *verdict.headers))
        return verdict.headers


def _calls(body: dict[str, Any], route_type: str | None) -> list[Any]:
    if route_type is not None:
        return [body]
    batch = body.get("batch")
    if not isinstance(batch, list) or not batch:
        raise segment.UnusableBody("batch: a list of 1 or more calls")
    if len(batch) > HTTP_MAX_BATCH_EVENTS:
        raise Refused(too_large(f"batch: {len(batch)} calls; at most {HTTP_MAX_BATCH_EVENTS}"))
    return batch


def _envelopes(events: list[bytes], overhead: int) -> list[list[bytes]]:
    """``events`` cut into envelopes within the contract's limits, in order."""
    envelopes: list[list[bytes]] = []
    chunk: list[bytes] = []
    size = overhead
    for event in events:
        if chunk and (len(chunk) == MAX_BATCH_EVENTS or size + len(event) + 1 > MAX_ENVELOPE_BYTES):
            envelopes.append(chunk)
            chunk, size = [], overhead
        chunk.append(event)
        size += len(event) + 1
    if chunk:
        envelopes.append(chunk)
    return envelopes


def unavailable(error: Exception) -> Answer:
    if isinstance(error, BacklogFull):
        logger.warning("a key's lane is full (%s); answered 503", error)
        return backlog_full()
    logger.warning("the broker did not take a request's messages (%s: %s); answered 503", type(error).__name__, error)
    return broker_unavailable()


def delivery_id(headers: Mapping[str, str], body: bytes) -> str:
    """The provider's id of a delivery: a header that names it, else the body's ``id`` (Stripe's
    event id), else the body's digest. Each is the same when the provider retries the delivery,
    so the worker stores it once."""
    for name in _DELIVERY_ID_HEADERS:
        value = headers.get(name)
        if value and len(value) <= DELIVERY_ID_MAX:
            return value
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    found = document.get("id") if isinstance(document, dict) else None
    if isinstance(found, str) and 0 < len(found) <= DELIVERY_ID_MAX:
        return found
    return "sha256:" + hashlib.sha256(body).hexdigest()
