"""Real worker processes for end-to-end tests, and bounded waiting for their results."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue
from sqlalchemy import Engine, func, select

from config.celery import QUEUES
from tasks.ingestion.amqp_transport import lane_declarations
from tests.common.brokers import lanes_of
from tests.common.databases import TEST_DATABASE_PREFIX, fresh_postgres_database, truncate_all
from tests.common.signing import TEST_KEY_PEPPER, TEST_SECRET_KEY
from userpath_client.contract import INGESTION_QUEUES, exchange_of
from userpath_worker import schema
from userpath_worker.db import make_engine
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events.models import Event

REPOSITORY = Path(__file__).resolve().parents[2]
# The brokers of the fault, bad-input, security and soak tests. Two runs of the suite on one
# machine need different ones: the vhost follows the database prefix, Redis is set here.
FAULTS_REDIS_URL = os.environ.get("USERPATH_TEST_FAULTS_REDIS_URL", "redis://127.0.0.1:6379/12")
FAULTS_RABBITMQ_VHOST = f"{TEST_DATABASE_PREFIX}_faults"


def migrated_database(name: str) -> tuple[str, Engine]:
    """A fresh PostgreSQL database ``name`` at the current schema: (url, engine)."""
    url = fresh_postgres_database(name)
    engine = make_engine(url)
    schema.upgrade(engine)
    return url, engine


def database_fixtures(name: str) -> tuple[Any, Any]:
    """A test module's ``database`` fixture (a fresh PostgreSQL database ``name`` at the current
    schema, for the module: (url, engine)) and ``clean_database`` (the same, emptied first)."""

    @pytest.fixture(scope="module")
    def database() -> Iterator[tuple[str, Engine]]:
        url, engine = migrated_database(name)
        yield url, engine
        engine.dispose()

    @pytest.fixture
    def clean_database(database: tuple[str, Engine]) -> tuple[str, Engine]:
        truncate_all(database[1])
        return database

    return database, clean_database


def rabbitmq_vhost(name: str) -> str:
    """The URL of RabbitMQ virtual host ``name`` on 127.0.0.1, created if need be (idempotent)."""
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], capture_output=True, timeout=60)  # fails if it exists
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return f"amqp://guest:guest@127.0.0.1:5672/{name}"


def worker_environment(database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    # Nothing of this process's own settings, nor its metrics directory, leaks into the worker.
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("USERPATH_") and name != "PROMETHEUS_MULTIPROC_DIR"
    }
    # Several workers and edges run at once in the tests: none binds a metrics port unless asked.
    environment.update(
        USERPATH_DATABASE_URL=database_url,
        USERPATH_BROKER_URL=broker_url,
        USERPATH_METRICS_PORT="0",
        USERPATH_EDGE_METRICS_PORT="0",
        USERPATH_SECRET_KEY=TEST_SECRET_KEY,  # required against PostgreSQL
        USERPATH_KEY_PEPPER=TEST_KEY_PEPPER,  # required against PostgreSQL
    )
    environment.update(extra)
    return environment


@contextlib.contextmanager
def running_worker(
    environment: dict[str, str],
    log_path: Path,
    *arguments: str,
    ready_within: float = 60.0,  # a bound, not a wait: a busy machine starts a worker slower
    loglevel: str | None = "INFO",
    command: list[str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery -A tasks.app worker`` process (or ``command``, such as ``userpath worker``),
    stopped (and killed if need be) on exit. ``loglevel=None`` leaves ``--loglevel`` out, as an
    operator typing the command might."""
    command = command or [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.app",
        "worker",
        f"--queues={','.join(QUEUES)}",
        "--without-gossip",
        "--without-mingle",
        *([f"--loglevel={loglevel}"] if loglevel else []),
        *arguments,
    ]
    with log_path.open("ab") as log:
        earlier = log.tell()  # a worker restarted into the same log: its predecessor's "ready." does not count
        process = subprocess.Popen(
            command, env=environment, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for(
            lambda: "ready." in log_path.read_bytes()[earlier:].decode(errors="replace") or process.poll() is not None,
            ready_within,
            "the worker to start",
        )
        if process.poll() is not None:
            raise AssertionError(f"the worker exited at start:\n{log_path.read_text(errors='replace')[-3000:]}")
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker started by ``running_worker`` and whatever is left of its pool."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(20)


def pool_children(pid: int) -> list[int]:
    """The direct children of process ``pid`` (a prefork worker's pool processes)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def resident_kib(pids: list[int]) -> int:
    """The summed resident memory (VmRSS) of ``pids``, in KiB; processes gone meanwhile count 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def counts(engine: Engine) -> tuple[int, int]:
    """(stored events, dead letters)."""
    with engine.connect() as connection:
        return (
            connection.scalar(select(func.count()).select_from(Event)) or 0,
            connection.scalar(select(func.count()).select_from(DeadLetter)) or 0,
        )


def settle_at(engine: Engine, expected: tuple[int, int], timeout: float, quiet_seconds: float = 2.0) -> None:
    """Wait until (stored events, dead letters) is ``expected``, then check that it stays there."""
    try:
        wait_for(lambda: counts(engine) == expected, timeout, f"{expected} (events, dead letters)")
    except AssertionError as timed_out:  # what there is at the end, not at the start
        raise AssertionError(f"{timed_out}; have {counts(engine)}") from None
    time.sleep(quiet_seconds)  # a duplicate or a late extra would show up now
    assert counts(engine) == expected


def producer(broker_url: str) -> Celery:
    """A bare Celery producer that knows only task names, as any other producer would."""
    app = Celery("producer", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    return app


def queue_depth(broker_url: str, queue: str) -> int:
    """Messages ready in ``queue`` and its lanes (not those a consumer has taken), on Redis or RabbitMQ."""
    if broker_url.startswith("redis"):  # kombu's passive declare asks for bindings, not the list
        with contextlib.closing(redis.Redis.from_url(broker_url)) as client:
            return sum(client.llen(name) for name in lanes_of(broker_url, queue))
    with Connection(broker_url) as connection:
        channel = connection.default_channel
        return sum(
            channel.queue_declare(name, durable=True, passive=True).message_count
            for name in lanes_of(broker_url, queue)
        )


def empty_queues(broker_url: str) -> None:
    """Start from empty queues. On Redis the whole test database goes, bindings included, so that
    bindings left by an older configuration cannot route a message twice."""
    if broker_url.startswith("redis"):
        redis.Redis.from_url(broker_url).flushdb()
        return
    with Connection(broker_url) as connection:
        channel = connection.channel()
        for queue in QUEUES:
            # As the worker declares them: producers publish to the queue's own exchange.
            Queue(queue, Exchange(exchange_of(queue)), routing_key=queue)(channel).declare()
            channel.queue_purge(queue)
        for lane in lane_declarations(INGESTION_QUEUES, "classic"):  # the shards and overflow queues
            lane.declare(connection.connection.channel())
            channel.queue_purge(lane.name)
