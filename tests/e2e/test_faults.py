"""Fault injection with real processes and the real servers on 127.0.0.1: a worker killed in the
middle of a drain, the database gone for 30 s, the broker gone for 10 s. Afterwards every event
is stored exactly once and nothing is dead-lettered because of the fault.

Late acks give at-least-once delivery (RabbitMQ re-delivers the moment the consumer's connection
dies, Redis after its visibility timeout); the unique constraint on (org_id, event_id) makes
storage exactly-once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select, text

from config.celery import FLAG_STALE_KEYS_TASK, MAINTENANCE_QUEUE
from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.factories import envelope, new_key
from tests.common.proxy import faulty_proxy
from tests.common.workers import (
    FAULTS_RABBITMQ_VHOST,
    FAULTS_REDIS_URL,
    counts,
    database_fixtures,
    empty_queues,
    kill_group,
    pool_children,
    producer,
    queue_depth,
    rabbitmq_vhost,
    running_worker,
    settle_at,
    wait_for,
    worker_environment,
)
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK
from userpath_worker.events.models import Event

pytestmark = pytest.mark.slow

REDIS_PORT, RABBITMQ_PORT, POSTGRES_PORT = 6379, 5672, 5432
# Short enough that Redis re-delivers a dead worker's messages within the test.
VISIBILITY_TIMEOUT_SECONDS = "10"
# Small batches (tasks/ingestion/): many transactions, so a fault lands mid-drain.
BATCH_MESSAGES = "20"


database, clean_database = database_fixtures(f"{TEST_DATABASE_PREFIX}_faults")


@pytest.fixture(scope="module")
def rabbitmq_url() -> str:
    return rabbitmq_vhost(FAULTS_RABBITMQ_VHOST)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        # Our own database: also drops what a killed worker left unacknowledged.
        redis.Redis.from_url(FAULTS_REDIS_URL).flushdb()
        url = FAULTS_REDIS_URL
    else:
        url = request.getfixturevalue("rabbitmq_url")
    empty_queues(url)
    return url


def publish_events(broker_url: str, key: str, prefix: str, total: int, per_envelope: int) -> None:
    app = producer(broker_url)
    with app.producer_or_acquire() as publisher:
        for first in range(0, total, per_envelope):
            message = envelope(key, per_envelope, f"{prefix}-{first // per_envelope}")
            app.send_task(TRACK_TASK, args=[message], queue=EVENTS_QUEUE, producer=publisher)


def stored_with_prefix(engine: Engine, prefix: str) -> int:
    with engine.connect() as connection:
        query = select(func.count(func.distinct(Event.event_id))).where(Event.event_id.startswith(f"{prefix}-"))
        return connection.scalar(query) or 0


def steady_count(engine: Engine, quiet_seconds: float = 1.0, timeout: float = 30.0) -> int:
    """The number of stored events once it has not changed for ``quiet_seconds``."""
    deadline = time.monotonic() + timeout
    seen = counts(engine)[0]
    while time.monotonic() < deadline:
        time.sleep(quiet_seconds)
        now = counts(engine)[0]
        if now == seen:
            return now
        seen = now
    raise AssertionError(f"the stored events kept changing for {timeout:.0f} s")


def inserts_waiting(engine: Engine, table: str) -> bool:
    """An INSERT into ``table`` is running (held by ``slow_inserts``'s trigger)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE state = 'active' AND query ILIKE :insert AND pid <> pg_backend_pid()"
    )
    with engine.connect() as connection:
        return bool(connection.scalar(query, {"insert": f"INSERT INTO {table}%"}))


def through(proxy_port: int, url: str, real_port: int) -> str:
    """``url`` with the server's port replaced by the proxy's."""
    return url.replace(f"127.0.0.1:{real_port}", f"127.0.0.1:{proxy_port}", 1)


@pytest.mark.parametrize("victim", ["main process", "pool child"])
def test_a_killed_worker_loses_and_duplicates_nothing(
    clean_database: tuple[str, Engine], broker_url: str, victim: str, tmp_path: Path
) -> None:
    database_url, engine = clean_database
    _, _, key = new_key(engine)
    total = 60_000
    publish_events(broker_url, key, "kill", total, per_envelope=20)
    environment = worker_environment(
        database_url,
        broker_url,
        USERPATH_VISIBILITY_TIMEOUT=VISIBILITY_TIMEOUT_SECONDS,
        USERPATH_INGEST_BATCH_MESSAGES=BATCH_MESSAGES,
    )
    log = tmp_path / "worker.log"

    with running_worker(environment, log, "--concurrency=2") as worker:
        wait_for(lambda: counts(engine)[0] >= 2_000, 120, "the drain to be under way")
        children = pool_children(worker.pid)
        assert len(children) == 2
        if victim == "main process":
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(20)  # the pool is orphaned, as after a real crash; then make sure it is gone
            kill_group(worker)
        else:
            os.kill(children[0], signal.SIGKILL)
        stored_at_kill = counts(engine)[0]
        assert stored_at_kill < total, "the drain finished before the kill: the test proved nothing"
        if victim == "pool child":
            settle_at(engine, (total, 0), timeout=240)
            assert worker.poll() is None, "the worker survives the loss of a pool process"
    if victim == "main process":
        with running_worker(environment, log, "--concurrency=2"):
            settle_at(engine, (total, 0), timeout=240)

    assert stored_with_prefix(engine, "kill") == total


def test_a_30_second_database_outage_loses_duplicates_and_dead_letters_nothing(
    clean_database: tuple[str, Engine], broker_url: str, tmp_path: Path
) -> None:
    database_url, engine = clean_database
    _, _, key = new_key(engine)
    total = 50_000
    publish_events(broker_url, key, "outage", total, per_envelope=10)
    log = tmp_path / "worker.log"
    with faulty_proxy(POSTGRES_PORT) as database_proxy:
        environment = worker_environment(
            through(database_proxy.port, database_url, POSTGRES_PORT),
            broker_url,
            USERPATH_INGEST_BATCH_MESSAGES=BATCH_MESSAGES,
        )
        with running_worker(environment, log, "--concurrency=2") as worker:
            wait_for(lambda: counts(engine)[0] >= 500, 120, "the drain to be under way")
            database_proxy.cut()
            cut_at = time.monotonic()
            # A commit already on its way when the link dropped still lands; then nothing moves.
            stored_at_cut = steady_count(engine)  # through our own connection, not the proxy
            time.sleep(max(0.0, 30 - (time.monotonic() - cut_at)))  # the outage lasts 30 s
            assert counts(engine) == (stored_at_cut, 0), "nothing is written, and nothing dead-lettered, while cut"
            assert stored_at_cut < total, "the drain finished before the outage: the test proved nothing"
            database_proxy.restore()
            # Retries back off up to 60 s, so the last of them may come a minute after the outage.
            settle_at(engine, (total, 0), timeout=240)
            assert worker.poll() is None, "the worker recovered without a restart"
    assert stored_with_prefix(engine, "outage") == total
    assert "database unavailable" in log.read_text()


def test_a_10_second_broker_outage_is_survived_by_reconnecting(
    clean_database: tuple[str, Engine], broker_url: str, tmp_path: Path
) -> None:
    # On Redis the batched consumer (tasks/ingestion/) runs: it pops and records a batch as
    # unacknowledged in one Lua call. kombu's own consumer pops (BRPOP) and only then records, and
    # lost one message in about 1 run of 4 here.
    database_url, engine = clean_database
    _, _, key = new_key(engine)
    total = 50_000
    publish_events(broker_url, key, "broker", total, per_envelope=10)
    log = tmp_path / "worker.log"
    broker_port = REDIS_PORT if broker_url.startswith("redis") else RABBITMQ_PORT
    with faulty_proxy(broker_port) as broker_proxy:
        environment = worker_environment(
            database_url,
            through(broker_proxy.port, broker_url, broker_port),
            USERPATH_VISIBILITY_TIMEOUT=VISIBILITY_TIMEOUT_SECONDS,
            USERPATH_INGEST_BATCH_MESSAGES=BATCH_MESSAGES,
        )
        with running_worker(environment, log, "--concurrency=2") as worker:
            wait_for(lambda: counts(engine)[0] >= 1_000, 120, "the drain to be under way")
            broker_proxy.cut()
            time.sleep(10)
            stored_during_outage = counts(engine)[0]
            assert stored_during_outage < total, "the drain finished before the outage: the test proved nothing"
            refused_during_outage = broker_proxy.refused
            broker_proxy.restore()
            settle_at(engine, (total, 0), timeout=240)
            assert worker.poll() is None, "the worker reconnected by itself, without a restart"
    assert refused_during_outage > 0, "the worker tried to reconnect during the outage"
    assert stored_with_prefix(engine, "broker") == total


def test_the_proxy_really_cuts() -> None:
    """The fault tests rely on the proxy: while cut, a live connection is closed and a new one
    is refused; after restore() connections work again."""
    with faulty_proxy(REDIS_PORT) as proxy:
        live = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        live.sendall(b"PING\r\n")
        assert live.recv(64) == b"+PONG\r\n"
        proxy.cut()
        assert live.recv(64) == b"", "the live connection is closed"
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as refused:
            assert refused.recv(64) == b"", "a new connection is closed at once"
        proxy.restore()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as restored:
            restored.sendall(b"PING\r\n")
            assert restored.recv(64) == b"+PONG\r\n"
        live.close()


@contextlib.contextmanager
def slow_inserts(engine: Engine, table: str, seconds: float) -> Iterator[None]:
    """Every INSERT statement into ``table`` takes ``seconds`` longer (a batch is one statement)."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$"
            )
        )
        connection.execute(text(f"CREATE TRIGGER slow_insert BEFORE INSERT ON {table} EXECUTE FUNCTION slow_insert()"))
    try:
        yield
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TRIGGER slow_insert ON {table}"))
            connection.execute(text("DROP FUNCTION slow_insert()"))


def test_a_reconnect_while_a_batch_waits_for_a_pool_slot_loses_nothing_and_stalls_nothing(
    clean_database: tuple[str, Engine], broker_url: str, tmp_path: Path
) -> None:
    # A slow rotation pass holds the only pool process; a batch is dispatched behind it and waits
    # in the pool's buffer. The reconnect's pool.flush() drops that job, and its callbacks never
    # run: the step must not go on counting it as in flight, or it never takes another batch.
    database_url, engine = clean_database
    _, _, key = new_key(engine)
    log = tmp_path / "worker.log"
    broker_port = REDIS_PORT if broker_url.startswith("redis") else RABBITMQ_PORT
    with slow_inserts(engine, "rotation_passes", 6), faulty_proxy(broker_port) as broker_proxy:
        proxied = through(broker_proxy.port, broker_url, broker_port)
        environment = worker_environment(database_url, proxied, USERPATH_VISIBILITY_TIMEOUT=VISIBILITY_TIMEOUT_SECONDS)
        with running_worker(environment, log, "--concurrency=1") as worker:
            producer(broker_url).send_task(FLAG_STALE_KEYS_TASK, queue=MAINTENANCE_QUEUE)
            wait_for(lambda: inserts_waiting(engine, "rotation_passes"), 30, "the rotation pass to hold the pool")
            publish_events(broker_url, key, "waiting", 100, per_envelope=10)
            wait_for(lambda: queue_depth(broker_url, EVENTS_QUEUE) == 0, 30, "the batch to be taken, behind the pass")
            broker_proxy.cut()
            time.sleep(2)
            broker_proxy.restore()
            settle_at(engine, (100, 0), timeout=60)
            publish_events(broker_url, key, "after", 10, per_envelope=10)
            settle_at(engine, (110, 0), timeout=30)
            assert worker.poll() is None
    assert stored_with_prefix(engine, "waiting") == 100


def test_a_worker_of_the_ingestion_queues_only_restores_what_a_killed_worker_held(
    clean_database: tuple[str, Engine], tmp_path: Path
) -> None:
    # The README offers `-Q userpath.events,userpath.jobs,userpath.webhooks`. kombu restores a dead
    # worker's messages only on channels that consume, and the batching step consumes none; and
    # one item that is not JSON made kombu's restore raise on every cycle.
    database_url, engine = clean_database
    redis.Redis.from_url(FAULTS_REDIS_URL).flushdb()
    _, _, key = new_key(engine)
    publish_events(FAULTS_REDIS_URL, key, "held", 200, per_envelope=10)
    redis.Redis.from_url(FAULTS_REDIS_URL).lpush(EVENTS_QUEUE, b"not JSON \xff")
    environment = worker_environment(
        database_url, FAULTS_REDIS_URL, USERPATH_VISIBILITY_TIMEOUT="5", USERPATH_INGEST_BATCH_MESSAGES="1000"
    )
    ingestion_only = "--queues=userpath.events,userpath.jobs,userpath.webhooks"
    with (
        slow_inserts(engine, "events", 8),
        running_worker(environment, tmp_path / "first.log", "--concurrency=1", ingestion_only) as first,
    ):
        wait_for(lambda: not redis.Redis.from_url(FAULTS_REDIS_URL).llen(EVENTS_QUEUE), 30, "the batch taken")
        kill_group(first)
    assert counts(engine) == (0, 0)
    log = tmp_path / "second.log"
    with running_worker(environment, log, "--concurrency=1", ingestion_only):
        settle_at(engine, (200, 1), timeout=60)
    assert "[queues]" in log.read_text() and ".> userpath.maintenance" not in log.read_text()
    assert "restored 21 message(s)" in log.read_text()
