"""Each measurement of the benchmark, returning plain figures for the report."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
from sqlalchemy import Engine, func, select, text

from bench import harness, messages, naive
from bench.brokers import REDIS, UNREACHABLE_REDIS_URL, Broker
from config.celery import QUEUES
from userpath_client import NotSent, UserPath
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK, WEBHOOK_TASK, WEBHOOKS_QUEUE
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.deadletter.services import Delivery
from userpath_worker.events import verdicts
from userpath_worker.events.models import Event
from userpath_worker.keys.services import KeyIdentity
from userpath_worker.keys.tokens import Environment
from userpath_worker.webhooks import signatures

# Seconds a drain may take per event before the benchmark gives up: 200 events/s, far below any
# target and below Celery's per-message path on RabbitMQ too (about 700 single events/s).
SECONDS_PER_EVENT_ALLOWED = 1 / 200
_TOLERANCE = dt.timedelta(seconds=300)


def count_rows(engine: Engine, model: Any) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(model)) or 0


def highest_id(engine: Engine) -> int:
    """max(id): one index probe, cheap enough to poll while the worker writes (ids are not reused)."""
    with engine.connect() as connection:
        return connection.scalar(select(func.max(Event.id))) or 0


def copy_rate(rows: int) -> dict[str, Any]:
    """PostgreSQL's raw COPY rate from one Python connection, into a table shaped like ``events``."""
    columns = (
        "org_id, api_key_id, environment, source, event_id, name, user_id, anonymous_id, properties, context, "
        "timestamp, sent_at, received_at, occurred_at"
    )
    now = messages.now_iso()
    context = '{"ip":"203.0.113.9","library":{"name":"bench","version":"1"}}'
    with psycopg.connect(harness.DATABASE_URL.replace("+psycopg", "")) as connection:
        connection.execute("DROP TABLE IF EXISTS copy_scratch")
        connection.execute("CREATE TABLE copy_scratch (LIKE events INCLUDING ALL)")
        connection.commit()
        started = time.perf_counter()
        with connection.cursor() as cursor, cursor.copy(f"COPY copy_scratch ({columns}) FROM STDIN") as copy:
            for number in range(rows):
                properties = f'{{"plan":"pro","seats":{number % 50},"path":"/pricing/{number % 7}"}}'
                copy.write_row(
                    (1, 1, "live", "server", f"copy-{number}", "Page Viewed", f"user-{number % 10_000}", None,
                     properties, context, now, now, now, now)
                )  # fmt: skip
        connection.commit()
        seconds = time.perf_counter() - started
        connection.execute("DROP TABLE copy_scratch")
        connection.commit()
    return {"rows": rows, "seconds": seconds, "rows_per_second": rows / seconds}


def naive_baseline(engine: Engine, events: int, concurrency: int) -> dict[str, Any]:
    """The one-task-per-event design, drained by its own worker from its own queue and table."""
    naive.NaiveEvent.metadata.drop_all(engine)
    naive.NaiveEvent.metadata.create_all(engine)
    REDIS.empty()
    REDIS.preload(naive.QUEUE, (messages.task_message(naive.TASK, messages.event(n, "naive")) for n in range(events)))
    environment = {"BENCH_NAIVE_DATABASE_URL": harness.DATABASE_URL, "BENCH_NAIVE_BROKER_URL": REDIS.url}
    with harness.running_worker("bench.naive", [naive.QUEUE], environment, "naive", concurrency) as worker:
        deadline = time.monotonic() + 60 + events / 50
        while count_rows(engine, naive.NaiveEvent) < events:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise harness.BenchError("the naive baseline did not finish in time")
            time.sleep(0.05)
        seconds = time.time() - worker.ready
    return {"events": events, "seconds": seconds, "events_per_second": events / seconds}


def drain(
    engine: Engine,
    api_key: str,
    broker: Broker,
    kind: str,
    events: int,
    concurrency: int,
    checkpoint: int | None = None,
    tree: Path = harness.REPOSITORY,
) -> dict[str, Any]:
    """Preload ``broker`` with ``events`` events of ``kind`` and time one worker consuming from it,
    from ready to the last stored row. ``tree``: the checkout the worker runs from.

    ``checkpoint``: also note each process's resident memory once that many events are stored, to
    compare with the end of the run.
    """
    harness.empty_events(engine)
    broker.empty()
    if kind in ("webhooks", "webhooks_verified"):
        secret = harness.STRIPE_SECRET if kind == "webhooks_verified" else None
        queue, preloaded = WEBHOOKS_QUEUE, messages.webhooks(api_key, events, kind, secret)
    else:
        per_envelope = 100 if kind == "envelopes_100" else 1
        queue, preloaded = EVENTS_QUEUE, messages.envelopes(api_key, events, per_envelope, kind)
    sent = broker.preload(queue, preloaded)
    waiting = broker.depth(queue)
    if waiting != sent:
        raise harness.BenchError(f"{broker.label} {kind}: {waiting} messages on {queue} of {sent} published")
    result: dict[str, Any] = {"events": events, "messages": sent}
    environment = harness.product_environment(broker.url)
    name = f"{kind}.{broker.name}"
    with harness.running_worker("tasks.app", QUEUES, environment, name, concurrency, tree) as worker:
        deadline = time.monotonic() + 60 + events * SECONDS_PER_EVENT_ALLOWED
        while True:
            highest = highest_id(engine)
            if checkpoint and highest >= checkpoint and "rss_mib_at_checkpoint" not in result:
                result["rss_mib_at_checkpoint"] = worker.memory_mib("VmRSS")
                result["checkpoint_events"] = highest
            if highest >= events and count_rows(engine, Event) >= events:
                break
            worker.check_alive()
            if time.monotonic() > deadline:
                raise harness.BenchError(
                    f"{broker.label} {kind}: {highest} of {events} events stored before the deadline"
                )
            time.sleep(0.05)
        finished = time.time()
        result["rss_mib_at_end"] = worker.memory_mib("VmRSS")
        result["peak_rss_mib"] = worker.memory_mib("VmHWM")
    dead_letters = count_rows(engine, DeadLetter)
    if dead_letters or count_rows(engine, Event) != events:
        raise harness.BenchError(
            f"{broker.label} {kind}: {count_rows(engine, Event)} events stored and {dead_letters} dead letters"
        )
    verified = _count_verified(engine)
    if kind == "webhooks_verified" and verified != events:  # measuring what it says it measures
        raise harness.BenchError(f"{broker.label} {kind}: {verified} of {events} events verified")
    result["startup_seconds"] = worker.ready - worker.started
    result["seconds"] = finished - worker.ready
    result["events_per_second"] = events / result["seconds"]
    return result


def _count_verified(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(Event).where(Event.verified.is_(True))) or 0


def verification_cost(deliveries: int) -> dict[str, Any]:
    """In-process: the µs one Stripe signature check costs (the body of the drain's webhooks), and a
    whole webhook verdict with the organization's secret and without one."""
    key = harness.STRIPE_SECRET.encode()
    message = next(messages.webhooks("up_live_x", 1, "cost", harness.STRIPE_SECRET))
    delivery = orjson.loads(message.body)[0][0]  # a protocol-2 body: [args, kwargs, embed]
    lowered = {name.lower(): value for name, value in delivery["headers"].items()}
    received_at = dt.datetime.fromisoformat(delivery["received_at"])
    scheme = signatures.scheme("stripe")
    assert scheme is not None
    signed = signatures.Signed(lowered, delivery["body"].encode(), (key,), received_at, _TOLERANCE)
    started = time.perf_counter()
    for _ in range(deliveries):
        if scheme.verify(signed) is not None:
            raise harness.BenchError("the bench's own Stripe signature does not verify")
    check_us = (time.perf_counter() - started) / deliveries * 1e6

    identity = KeyIdentity(1, 1, Environment.LIVE, "up_live_...", None)
    arrived = Delivery(WEBHOOK_TASK, WEBHOOKS_QUEUE, dt.datetime.now(dt.UTC))

    def verdict_us(keys: dict[str, tuple[bytes, ...]]) -> float:
        started = time.perf_counter()
        for _ in range(deliveries):
            if not verdicts.webhook_verdicts(delivery, identity, arrived, keys, _TOLERANCE).rows:
                raise harness.BenchError("a bench webhook was refused")
        return (time.perf_counter() - started) / deliveries * 1e6

    without, with_secret = verdict_us({}), verdict_us({"stripe": (key,)})
    return {"deliveries": deliveries, "check_us": check_us, "verdict_us": with_secret, "verdict_us_unverified": without}


def latency(engine: Engine, api_key: str, rate: int, seconds: float, concurrency: int) -> dict[str, Any]:
    """Enqueue-to-stored latency at a steady offered load, in envelopes of 10 events.

    Each event carries its enqueue time; the worker stamps ``received_at`` (same machine, same clock).
    """
    per_envelope = 10
    harness.empty_events(engine)
    REDIS.empty()
    client = REDIS.client()
    total_messages = int(rate * seconds / per_envelope)
    environment = harness.product_environment(REDIS.url)
    with harness.running_worker("tasks.app", QUEUES, environment, "latency", concurrency) as worker:
        started = time.time()
        for number in range(total_messages):
            delay = started + number * per_envelope / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            enqueued_at = time.time()
            first = number * per_envelope
            batch = [messages.event(n, "latency", enqueued_at) for n in range(first, first + per_envelope)]
            envelope = {"api_key": api_key, "sent_at": messages.now_iso(), "batch": batch}
            client.lpush(EVENTS_QUEUE, messages.task_message(TRACK_TASK, envelope).redis_document(EVENTS_QUEUE))
        offered_seconds = time.time() - started
        events = total_messages * per_envelope
        harness.wait_until(lambda: count_rows(engine, Event) >= events, 60, "the latency run's last events")
        worker.check_alive()
    p50_ms, p99_ms = enqueue_to_stored_ms(engine)
    return {
        "offered_events_per_second": events / offered_seconds,
        "events": events,
        "events_per_envelope": per_envelope,
        "p50_ms": p50_ms,
        "p99_ms": p99_ms,
    }


def enqueue_to_stored_ms(engine: Engine, org_id: int | None = None) -> tuple[float, float]:
    """p50 and p99 of the stored events' (``org_id``'s only, when given) delay from the enqueue time
    they carry (``messages.event``'s ``enqueued_at``) to the ``received_at`` the worker stamped."""
    with engine.connect() as connection:
        p50, p99 = connection.execute(
            text(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY delay), "
                "percentile_cont(0.99) WITHIN GROUP (ORDER BY delay) FROM ("
                "SELECT extract(epoch FROM received_at) - (properties->>'enqueued_at')::float8 AS delay FROM events"
                " WHERE CAST(:org_id AS bigint) IS NULL OR org_id = :org_id"
                ") AS delays"
            ),
            {"org_id": org_id},
        ).one()
    return p50 * 1000, p99 * 1000


def client_track(api_key: str, calls: int) -> dict[str, Any]:
    """How fast ``UserPath.track()`` takes events: into its buffer alone (no broker to send to, so
    the sender thread only waits), and while its sender thread publishes to Redis."""
    properties = {"plan": "pro", "seats": 3}

    def calls_per_second(broker_url: str) -> float:
        client = UserPath(api_key, broker_url, max_queue_size=calls + 1)
        # The unreachable broker is deliberate: keep the sender's retry warnings off the report.
        logging.getLogger("userpath.client").setLevel(logging.ERROR)
        try:
            started = time.perf_counter()
            for number in range(calls):
                client.track("Page Viewed", user_id=f"user-{number % 1000}", properties=properties)
            return calls / (time.perf_counter() - started)
        finally:
            with contextlib.suppress(NotSent):  # the unreachable broker's events are given up
                client.close(timeout=60 if broker_url == REDIS.url else 0)
            REDIS.empty()

    REDIS.empty()
    return {
        "calls": calls,
        "calls_per_second": calls_per_second(UNREACHABLE_REDIS_URL),
        "calls_per_second_while_sending": calls_per_second(REDIS.url),
    }
