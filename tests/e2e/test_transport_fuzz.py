"""A hypothesis fuzzer over whole messages, through one real worker per broker: good messages
mixed with messages broken at the transport level, exactly one thing broken in each.

After the worker drains them: the good messages' events are stored, exactly; each broken message
is one dead letter with a transport-level reason; nothing is left on the broker; the worker is
alive; batches did not fail over and over; and the raw key, in every broken body, is in no table
and no log line, as it is or in base64.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from tests.common.databases import truncate_all
from tests.common.factories import envelope, new_key
from tests.common.transport import (
    BATCH_FAILED,
    BROKERS,
    DROP,
    TRANSPORT_REASONS,
    TRANSPORT_RESOURCE,
    AmqpPublisher,
    Worker,
    celery_headers,
    changed,
    clean_broker,
    database_text,
    dead_letter_reasons,
    push,
    redis_message,
    secret_in,
    settled,
    stored_event_ids,
    track_body,
    transport_worker,
    wait_until_drained,
)
from tests.common.workers import migrated_database
from userpath_client.contract import EVENTS_QUEUE, JOBS_QUEUE, TRACK_TASK, WEBHOOK_TASK

pytestmark = pytest.mark.slow

EXAMPLES = 8
MAX_MESSAGES = 40
DRAIN_SECONDS = 60  # 40 messages take a second or two; a stalled queue never drains
# Each example is bounded (its waits are); so is the whole run, the final replay of a failing
# example included. Reaching this is a failure: the worker is far too slow, or stalls.
BUDGET_SECONDS = 600

# Text that is broken only where a case says so: no NUL, no lone surrogate.
STORABLE_TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
integers = st.integers(-(2**63), 2**63 - 1)  # what AMQP can carry
json_leaves = st.none() | st.booleans() | integers | st.text(STORABLE_TEXT, max_size=20)


@dataclass
class Draft:
    """A message before it is sent; a breakage changes exactly one thing of it."""

    body: bytes
    headers: Any
    fields: dict[str, Any]  # redis_message's or AmqpPublisher.publish's changes
    item: Callable[[bytes, bytes], bytes] | None = None  # Redis: (item built, body) -> the list item sent


@dataclass(frozen=True)
class Breakage:
    what: str
    apply: Callable[[Draft], None] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Good:
    events: int
    queue: str


@dataclass(frozen=True)
class Broken:
    breakage: Breakage
    queue: str


def header_set(name: str, value: Any) -> Breakage:
    def apply(draft: Draft) -> None:
        draft.headers = changed(draft.headers, {name: value})

    return Breakage(f"header {name} = {value!r}"[:120], apply)


def headers_replaced(value: Any) -> Breakage:
    def apply(draft: Draft) -> None:
        draft.headers = value

    return Breakage(f"headers = {value!r}"[:120], apply)


def field_set(name: str, value: Any) -> Breakage:
    def apply(draft: Draft) -> None:
        draft.fields[name] = value

    return Breakage(f"{name} = {value!r}"[:120], apply)


def stored_body(what: str, encode: Callable[[bytes], str]) -> Breakage:
    """Redis: the body field as stored, made from the body by ``encode`` instead of base64."""

    def apply(draft: Draft) -> None:
        draft.fields["body"] = encode(draft.body)

    return Breakage(f"body field {what}", apply)


def body_replaced(what: str, replace: Callable[[bytes], bytes]) -> Breakage:
    def apply(draft: Draft) -> None:
        draft.body = replace(draft.body)

    return Breakage(f"body {what}", apply)


def item_replaced(what: str, replace: Callable[[bytes, bytes], bytes]) -> Breakage:
    def apply(draft: Draft) -> None:
        draft.item = replace

    return Breakage(f"list item {what}", apply)


def without_properties(item: bytes, body: bytes) -> bytes:
    document = json.loads(item)
    del document["properties"]
    return json.dumps(document).encode()


def reshaped(what: str, shape: Callable[[list[Any], dict[str, Any], dict[str, Any]], Any]) -> Breakage:
    """JSON, but not [args, kwargs, embed]: ``shape`` of the good body's three parts (the key stays in)."""
    return body_replaced(f"JSON, not the triple: {what}", lambda body: json.dumps(shape(*json.loads(body))).encode())


unknown_task_names = st.text(STORABLE_TEXT, min_size=1, max_size=40).map("proj.{}".format)
# Broken in the same way on both brokers: a header, or the body.
COMMON_BREAKAGES = st.one_of(
    st.just(header_set("task", DROP)),
    integers.map(lambda number: header_set("task", number)),
    st.lists(st.sampled_from([TRACK_TASK, WEBHOOK_TASK]), max_size=2).map(lambda names: header_set("task", names)),
    st.sampled_from(["userpath.track\x00", "\x00userpath.track", "userpath\x00.track"]).map(
        lambda name: header_set("task", name)
    ),
    st.just(header_set("task", "userpath.track." + "x" * 385)),  # 400 characters
    unknown_task_names.map(lambda name: header_set("task", name)),
    st.just(header_set("id", DROP)),
    integers.map(lambda number: header_set("id", number)),
    st.lists(st.text(STORABLE_TEXT, max_size=8), max_size=2).map(lambda ids: header_set("id", ids)),
    st.sampled_from(["twice", "one", "0x"]).map(lambda word: header_set("retries", word)),
    st.integers(-(2**63), -1).map(lambda number: header_set("retries", number)),
    st.sampled_from(["not a time", "tomorrow", "2026-13-45T99:00:00"]).map(lambda text: header_set("eta", text)),
    st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)).map(
        lambda moment: header_set("expires", moment.isoformat())
    ),
    st.sampled_from([[1], "x", [1, 2, 3]]).map(lambda limits: header_set("timelimit", limits)),
    st.sampled_from(["application/x-gzip", "zlib", "application/x-bz2"]).map(
        lambda compression: header_set("compression", compression)
    ),
    st.sampled_from(
        [
            body_replaced("prefixed: not JSON", lambda body: b"not json " + body),
            body_replaced("cut short: not JSON", lambda body: body[:-3]),
            body_replaced("after a NUL: not JSON", lambda body: b"\x00" + body),
        ]
    ),
    st.sampled_from(
        [
            reshaped("the envelope alone", lambda args, kwargs, embed: args[0]),
            reshaped("[args]", lambda args, kwargs, embed: [args]),
            reshaped("[args, kwargs]", lambda args, kwargs, embed: [args, kwargs]),
            reshaped("four items", lambda args, kwargs, embed: [args, kwargs, embed, {}]),
            reshaped("kwargs a list", lambda args, kwargs, embed: [args, [], embed]),
            reshaped("a string", lambda args, kwargs, embed: json.dumps([args, kwargs, embed])),
        ]
    ),
)

REDIS_BREAKAGES = st.one_of(
    COMMON_BREAKAGES,
    st.one_of(
        st.just([["task", TRACK_TASK], ["id", "pairs"]]),  # dict() would make it look right
        st.lists(json_leaves, max_size=3),
        st.text(STORABLE_TEXT, max_size=20),
        integers,
        st.none(),
    ).map(headers_replaced),
    st.one_of(
        st.just(["application/json"]),
        integers,
        st.sampled_from(["application/x-userpath-unknown", "text/csv"]),
    ).map(lambda content_type: field_set("content_type", content_type)),
    st.one_of(integers, st.sampled_from(["x-unknown", "utf-99"])).map(
        lambda encoding: field_set("content_encoding", encoding)
    ),
    # Not here: an odd delivery_info. It is kombu's bookkeeping; the worker reads the queue from the
    # list it took the message from, and stores such a message (tests/e2e/test_transport_regressions.py).
    st.one_of(integers, st.floats(allow_nan=False, allow_infinity=False)).map(lambda number: field_set("body", number)),
    st.sampled_from(
        [
            stored_body("not base64", lambda body: "not base64! " + body.decode()),
            stored_body("line-wrapped base64", lambda body: base64.encodebytes(body).decode()),
        ]
    ),
    st.sampled_from(["rot13", DROP]).map(lambda encoding: field_set("body_encoding", encoding)),
    st.sampled_from(
        [
            item_replaced("not JSON: text around the body", lambda item, body: b"LPUSH " + body),
            item_replaced("not JSON: cut short", lambda item, body: item[: len(item) // 2]),
            item_replaced("JSON: the body, not kombu's document", lambda item, body: body),
            item_replaced("JSON: [document]", lambda item, body: b"[" + item + b"]"),
            item_replaced("JSON: the document as a string", lambda item, body: json.dumps(item.decode()).encode()),
            item_replaced("JSON: no properties", without_properties),
        ]
    ),
)

odd_amqp_values = st.sampled_from(
    [b"\xff\xfe", Decimal("1.5"), dt.datetime(2026, 5, 1, 12), 1.5, {"name": TRACK_TASK}, True, None]
)
AMQP_BREAKAGES = st.one_of(
    COMMON_BREAKAGES,
    st.just(headers_replaced(None)),  # no application headers at all
    odd_amqp_values.map(lambda value: header_set("task", value)),
    odd_amqp_values.map(lambda value: header_set("id", value)),
    st.sampled_from(["application/x-userpath-unknown", "text/csv"]).map(
        lambda content_type: field_set("content_type", content_type)
    ),
    st.sampled_from(["x-unknown", "utf-99"]).map(lambda encoding: field_set("content_encoding", encoding)),
)

queues = st.sampled_from([EVENTS_QUEUE, JOBS_QUEUE])
good_messages = st.builds(Good, events=st.integers(1, 3), queue=queues)


def traffic(broker: str) -> st.SearchStrategy[list[Good | Broken]]:
    breakages = REDIS_BREAKAGES if broker == "redis" else AMQP_BREAKAGES
    return st.lists(
        good_messages | st.builds(Broken, breakage=breakages, queue=queues), min_size=1, max_size=MAX_MESSAGES
    )


@dataclass
class Sent:
    """What an example sent: the good events' ids, and each broken message by event id."""

    good_event_ids: set[str] = field(default_factory=set)
    broken: dict[str, str] = field(default_factory=dict)  # its envelope's event id -> what is broken


def send(worker: Worker, key: str, messages: list[Good | Broken]) -> Sent:
    sent = Sent()
    redis_items: dict[str, list[bytes]] = {}
    with AmqpPublisher(worker.url) if worker.broker == "rabbitmq" else contextlib.nullcontext() as publisher:
        for number, message in enumerate(messages):
            headers = celery_headers(str(uuid.uuid4()))
            if isinstance(message, Good):
                draft = Draft(track_body(envelope(key, message.events, f"good-{number}")), headers, {})
                sent.good_event_ids |= {f"good-{number}-{n}" for n in range(message.events)}
            else:  # the key in every broken body: none of its dead letter's forms may keep it
                draft = Draft(track_body(envelope(key, 1, f"broken-{number}")), headers, {})
                message.breakage.apply(draft)
                sent.broken[f"broken-{number}-0"] = message.breakage.what
            if publisher is None:
                item = redis_message(draft.body, draft.headers, message.queue, **draft.fields)
                redis_items.setdefault(message.queue, []).append(draft.item(item, draft.body) if draft.item else item)
            else:
                publisher.publish(message.queue, draft.body, draft.headers, **draft.fields)
    if redis_items:
        with contextlib.closing(redis.Redis.from_url(worker.url)) as client:
            for queue, items in redis_items.items():
                push(client, queue, items)
    return sent


def diagnosis(engine: Engine, sent: Sent, log: str) -> str:
    """What went wrong, for a failing example: which broken messages were stored, and so on."""
    stored = stored_event_ids(engine)
    return "; ".join(
        [
            f"stored though broken: {sorted(sent.broken[event_id] for event_id in stored.keys() & sent.broken.keys())}",
            f"good events not stored: {len(sent.good_event_ids - stored.keys())} of {len(sent.good_event_ids)}",
            f"dead letters: {dict(dead_letter_reasons(engine))} for {len(sent.broken)} broken messages",
            f"'{BATCH_FAILED}' {log.count(BATCH_FAILED)} times in the log",
        ]
    )


def check_example(worker: Worker, engine: Engine, messages: list[Good | Broken]) -> None:
    assert worker.is_alive(), worker.death_notice()
    truncate_all(engine)
    _, _, key = new_key(engine)
    log_offset = worker.log_size()

    sent = send(worker, key, messages)
    try:
        settled(worker, engine, (len(sent.good_event_ids), len(sent.broken)), timeout=DRAIN_SECONDS)
        assert stored_event_ids(engine) == Counter(sent.good_event_ids)
    except AssertionError as wrong:
        raise AssertionError(f"{wrong}\n{diagnosis(engine, sent, worker.log_since(log_offset))}") from None
    reasons = dead_letter_reasons(engine)
    assert set(reasons) <= TRANSPORT_REASONS, reasons
    wait_until_drained(worker)
    assert worker.is_alive(), worker.death_notice()

    log = worker.log_since(log_offset)
    failures = log.count(BATCH_FAILED)
    assert failures <= len(sent.broken), f"{failures} batches failed for {len(sent.broken)} broken messages"
    assert secret_in(database_text(engine), key) is None, "the raw key is in a table"
    assert secret_in(log, key) is None, "the raw key is in the worker's log"


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[str, Engine]]:
    url, engine = migrated_database(TRANSPORT_RESOURCE)
    yield url, engine
    engine.dispose()


@pytest.fixture(scope="module", params=BROKERS)
def worker(
    request: pytest.FixtureRequest, database: tuple[str, Engine], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """One worker per broker, kept across the examples."""
    url = clean_broker(request.param)
    log = tmp_path_factory.mktemp(f"transport-{request.param}") / "worker.log"
    with transport_worker(url, database[0], log) as running:
        yield running
    clean_broker(request.param)


def test_whole_messages_broken_at_the_transport_level_are_each_dead_lettered_once(
    worker: Worker, database: tuple[str, Engine]
) -> None:
    engine = database[1]
    stop_at = time.monotonic() + BUDGET_SECONDS

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking against a real worker: each run takes seconds
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        print_blob=True,
    )
    @given(messages=traffic(worker.broker))
    def example(messages: list[Good | Broken]) -> None:
        assert time.monotonic() < stop_at, f"the fuzzer ran out of its {BUDGET_SECONDS} s"
        check_example(worker, engine, messages)

    example()
