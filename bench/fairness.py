"""Fairness (issue 22): while organization A's backlog drains, organization B sends single events.

B's enqueue-to-stored latency and A's drain rate, on each broker, with the worker before lanes
(commit ``BEFORE_LANES``: one FIFO list or queue per ingestion queue, which its producers pushed
onto) and with this checkout's (lanes, which the client publishes into), both stored exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from kombu import Connection, Producer
from sqlalchemy import Engine, text

from bench import harness, messages
from bench.brokers import BROKERS, Broker
from bench.scenarios import SECONDS_PER_EVENT_ALLOWED, count_rows, enqueue_to_stored_ms, highest_id
from config.celery import QUEUES
from userpath_client.contract import DEFAULT_EXCHANGE, EVENTS_QUEUE, exchange_of
from userpath_client.publisher import Publisher
from userpath_client.wire import Encoder, transport_options
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events.models import Event

BEFORE_LANES = "40f75c6"  # the last commit whose worker takes one FIFO list or queue per ingestion queue
PER_ENVELOPE = 100  # A's backlog
SENDS_PER_SECOND = 50  # B's single events, and A's stream of single events beside its backlog
PUBLISH_TIMEOUT = 30.0
# Event id prefixes: whose event it is, and for A whether it was in the backlog or in the stream.
BACKLOG, STREAM, VICTIM = "backlog", "stream", "victim"
TARGETS = {
    "victim_p99_ms_after": 1000.0,  # on each broker
    "flood_drain_after_share_of_before": 0.9,  # A's drain rate may lose at most 10%
}


class Sender(Protocol):
    def publish(
        self, queue: str, body: bytes, message: dict[str, Any], lane: str, events: int = 1, overflow: bool = False
    ) -> None: ...

    def close(self) -> None: ...


class QueuePublisher:
    """The producers before lanes (the client at ``BEFORE_LANES``): every message onto its queue
    itself, pushed onto the queue's list on Redis (kombu's default exchange), to the queue's own
    exchange with the queue's name as routing key on RabbitMQ, confirmed."""

    def __init__(self, broker_url: str) -> None:
        scheme = broker_url.partition("://")[0]
        self._connection = Connection(broker_url, transport_options=transport_options(scheme, PUBLISH_TIMEOUT))
        self._connection.connect()
        self._producer = Producer(self._connection.channel())
        self._amqp = self._connection.transport.driver_type == "amqp"

    def publish(
        self, queue: str, body: bytes, message: dict[str, Any], lane: str, events: int = 1, overflow: bool = False
    ) -> None:
        exchange = exchange_of(queue) if self._amqp else DEFAULT_EXCHANGE
        self._producer.publish(body, exchange=exchange, routing_key=queue, retry=False, **message)

    def close(self) -> None:
        self._connection.close()


@dataclass(frozen=True)
class Way:
    """A worker and the producers of its time."""

    name: str
    tree: Path  # the checkout the worker runs from
    sender: Callable[[str], Sender]  # a producer on the broker URL


def ways() -> tuple[Way, ...]:
    return (
        Way("before", harness.checkout(BEFORE_LANES), QueuePublisher),
        Way("after", harness.REPOSITORY, lambda url: Publisher(url, PUBLISH_TIMEOUT)),
    )


def compare(engine: Engine, brokers: list[Broker], flood_events: int, concurrency: int) -> dict[str, Any]:
    """Each broker's figures before and after, with A's drain after as a share of before and
    whether the issue's targets were met."""
    flooder = harness.new_key(engine, organization="Bench fairness, A: the backlog")
    victim = harness.new_key(engine, organization="Bench fairness, B: single events")
    results: dict[str, Any] = {"flood_events": flood_events, "sends_per_second": SENDS_PER_SECOND}
    for broker in brokers:
        by_way = {way.name: flood(engine, broker, way, flooder, victim, flood_events, concurrency) for way in ways()}
        before, after = by_way["before"], by_way["after"]
        after["flood_drain_share_of_before"] = after["flood_events_per_second"] / before["flood_events_per_second"]
        by_way["targets"] = {
            "victim_p99_ms_after": after["victim_p99_ms"] < TARGETS["victim_p99_ms_after"],
            "flood_drain_after_share_of_before": (
                after["flood_drain_share_of_before"] >= TARGETS["flood_drain_after_share_of_before"]
            ),
        }
        results[broker.name] = by_way
    return results


def flood(
    engine: Engine, broker: Broker, way: Way, flooder: str, victim: str, flood_events: int, concurrency: int
) -> dict[str, Any]:
    """A's backlog waits before the worker starts; from ready, each tick B sends one event and A
    one more of its stream, until the backlog and every event sent a second ago are stored. A's
    drain: from ready to the poll that found its backlog stored."""
    harness.empty_events(engine)
    broker.empty()
    broker.declare(EVENTS_QUEUE)
    flooder_org, victim_org = harness.organization_of(engine, flooder), harness.organization_of(engine, victim)
    flooder_encoder, victim_encoder = Encoder(flooder), Encoder(victim)
    flooder_sender, victim_sender = way.sender(broker.url), way.sender(broker.url)
    label = f"{broker.label} {way.name}"
    try:
        for chunk in _backlog(flood_events):
            body, message = flooder_encoder.message(EVENTS_QUEUE, chunk)
            flooder_sender.publish(EVENTS_QUEUE, body, message, flooder_encoder.lane, len(chunk))
        environment = harness.product_environment(broker.url)
        name = f"fairness.{way.name}.{broker.name}"
        with harness.running_worker("tasks.app", QUEUES, environment, name, concurrency, way.tree) as worker:
            allowed_seconds = 60 + flood_events * SECONDS_PER_EVENT_ALLOWED
            backlog_stored_at = 0.0
            for ticks in range(int(allowed_seconds * SENDS_PER_SECOND)):  # ticks: each sent two events
                highest = highest_id(engine)
                # Counting A's rows costs a scan: only once the ids say that its backlog may be stored.
                if not backlog_stored_at and highest >= flood_events and _stored(engine, flooder_org) >= flood_events:
                    backlog_stored_at = time.time()
                if backlog_stored_at and highest >= flood_events + 2 * (ticks - SENDS_PER_SECOND):
                    break  # and the events of a second ago are stored too
                worker.check_alive()
                _send_one(victim_sender, victim_encoder, messages.event(ticks, VICTIM, time.time()))
                _send_one(flooder_sender, flooder_encoder, messages.event(ticks, STREAM))
                time.sleep(max(0.0, worker.ready + (ticks + 1) / SENDS_PER_SECOND - time.time()))
            else:
                raise harness.BenchError(f"{label}: {highest_id(engine)} events stored in {allowed_seconds:.0f} s")
            total = flood_events + 2 * ticks
            harness.wait_until(lambda: count_rows(engine, Event) >= total, 60, f"{label}: the last events")
            worker.check_alive()
    finally:
        flooder_sender.close()
        victim_sender.close()
    _check_exactly_once(engine, label, {flooder_org: flood_events + ticks, victim_org: ticks})
    p50_ms, p99_ms = enqueue_to_stored_ms(engine, victim_org)
    flood_seconds = backlog_stored_at - worker.ready
    return {
        "victim_events": ticks,
        "victim_p50_ms": p50_ms,
        "victim_p99_ms": p99_ms,
        "flood_stream_events": ticks,
        "flood_seconds": flood_seconds,
        "flood_events_per_second": flood_events / flood_seconds,
        "exactly_once": True,  # else _check_exactly_once raised
        "startup_seconds": worker.ready - worker.started,
    }


def _backlog(events: int) -> Iterator[list[bytes]]:
    """A's backlog as the client queues it: each event's JSON, in chunks of ``PER_ENVELOPE``."""
    for start in range(0, events, PER_ENVELOPE):
        numbers = range(start, min(start + PER_ENVELOPE, events))
        yield [orjson.dumps(messages.event(number, BACKLOG)) for number in numbers]


def _send_one(sender: Sender, encoder: Encoder, event: dict[str, Any]) -> None:
    body, message = encoder.message(EVENTS_QUEUE, [orjson.dumps(event)])
    sender.publish(EVENTS_QUEUE, body, message, encoder.lane)


def _check_exactly_once(engine: Engine, label: str, expected: dict[int, int]) -> None:
    """Each organization's rows and distinct event ids are exactly what it sent, and nothing was
    dead-lettered: else the figures measure something else, and the benchmark fails."""
    with engine.connect() as connection:
        stored = {
            org_id: (rows, distinct)
            for org_id, rows, distinct in connection.execute(
                text("SELECT org_id, count(*), count(DISTINCT event_id) FROM events GROUP BY org_id")
            )
        }
    wanted = {org_id: (sent, sent) for org_id, sent in expected.items()}
    dead_letters = count_rows(engine, DeadLetter)
    if stored != wanted or dead_letters:
        raise harness.BenchError(
            f"{label}: not exactly once: (rows, distinct event ids) by organization {stored}, sent {wanted}; "
            f"{dead_letters} dead letters"
        )


def _stored(engine: Engine, org_id: int) -> int:
    """How many events of ``org_id``'s backlog are stored."""
    with engine.connect() as connection:
        return connection.scalar(
            text("SELECT count(*) FROM events WHERE org_id = :org AND event_id LIKE :ids"),
            {"org": org_id, "ids": f"{BACKLOG}-%"},
        )


def table(results: dict[str, Any]) -> str:
    """Markdown: a row per broker and worker, then whether the targets were met."""
    lines = [
        f"fairness: A's backlog of {results['flood_events']:,} events in envelopes of {PER_ENVELOPE} plus a stream "
        f"of single events, B sending {SENDS_PER_SECOND} single events a second during the drain",
        "",
        "| broker | worker | B events | B p50 ms | B p99 ms | A backlog drain events/s | A after / before "
        "| exactly once |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    verdicts = []
    for name, broker in BROKERS.items():
        if name not in results:
            continue
        by_way = results[name]
        for way in ("before", "after"):
            figures = by_way[way]
            share = f"{figures['flood_drain_share_of_before']:.0%}" if way == "after" else ""
            lines.append(
                f"| {broker.label} | {way} | {figures['victim_events']:,} | {figures['victim_p50_ms']:,.1f} "
                f"| {figures['victim_p99_ms']:,.1f} | {figures['flood_events_per_second']:,.0f} | {share} "
                f"| {'yes' if figures['exactly_once'] else 'NO'} |"
            )
        met = by_way["targets"]
        verdicts.append(
            f"  {broker.label}: B's p99 after under {TARGETS['victim_p99_ms_after']:,.0f} ms: "
            f"{'yes' if met['victim_p99_ms_after'] else 'NO'}; A's drain after at least "
            f"{TARGETS['flood_drain_after_share_of_before']:.0%} of before: "
            f"{'yes' if met['flood_drain_after_share_of_before'] else 'NO'}"
        )
    return "\n".join([*lines, "", "fairness targets (meaningful at the full size only):", *verdicts])
