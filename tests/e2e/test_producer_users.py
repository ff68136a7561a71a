"""Least privilege for producers that stay on the broker (issue 21, item 7): a user made by
``userpath broker producer-user --apply`` publishes with the Python client (and, on Redis, the
contract's Node producer) and a real worker stores the events, while everything the issue's
hostile tenant did with the worker's credentials is refused: reading, taking, deleting or purging
queued messages, pub/sub, and the worker's remote control, which keeps running and answering.

Each test makes its own users, with names unique to the run, and removes them; the servers'
default users and configuration are not touched.
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import amqp
import pytest
import redis
from celery import Celery
from sqlalchemy import Engine

from tests.common.cli import ok
from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.factories import new_key
from tests.common.node import contract_node_producer, run_node
from tests.common.workers import (
    FAULTS_RABBITMQ_VHOST,
    FAULTS_REDIS_URL,
    database_fixtures,
    empty_queues,
    rabbitmq_vhost,
    running_worker,
    settle_at,
    wait_for,
    worker_environment,
)
from userpath_client import UserPath
from userpath_client.contract import EVENTS_QUEUE, JOBS_QUEUE, WEBHOOKS_QUEUE, lane_list, ready_lanes

pytestmark = pytest.mark.slow

database, clean_database = database_fixtures(f"{TEST_DATABASE_PREFIX}_producer_users")
NODE = f"producers@{socket.gethostname()}"  # the worker's node name: its remote-control queue is NODE.celery.pidbox


def unique_name() -> str:
    return f"{TEST_DATABASE_PREFIX}_producer_{uuid.uuid4().hex[:8]}"


def make_producer_user(broker_url: str, name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``userpath broker producer-user NAME --apply --json`` against ``broker_url``."""
    monkeypatch.setenv("USERPATH_BROKER_URL", broker_url)
    return json.loads(ok("broker", "producer-user", name, "--apply", "--json").stdout)


def refused(action: Callable[[], Any]) -> str:
    """Run ``action``, which the broker must refuse; the refusal's text."""
    try:
        action()
    except Exception as error:  # the client library's own refusal, whatever its class
        return f"{type(error).__name__}: {error}"
    raise AssertionError("the broker allowed it")


def send_with_the_python_client(key: str, producer_url: str) -> None:
    with UserPath(key, broker_url=producer_url) as client:
        client.track("Signed Up", user_id="u1")
        client.job_event("Invoices Sent", user_id="billing", job_name="send-invoices", run_id="1")
        client.webhook("stripe", "evt_1", {}, '{"type": "invoice.paid"}')
        client.flush(timeout=15)


def answers_ping(broker_url: str) -> bool:
    app = Celery(broker=broker_url, set_as_current=False)
    try:
        return bool(app.control.ping(destination=[NODE], timeout=3))
    finally:
        app.close()


def shutdown_broadcast(broker_url: str) -> None:
    app = Celery(broker=broker_url, set_as_current=False)
    app.conf.broker_connection_retry = False
    try:
        app.control.broadcast("shutdown", connection=app.connection_for_write(), reply=False)
    finally:
        app.close()


@pytest.fixture(scope="module")
def node_producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return contract_node_producer(tmp_path_factory.mktemp("node-producer"))


@pytest.fixture
def redis_producer(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    empty_queues(FAULTS_REDIS_URL)
    name = unique_name()
    try:
        yield make_producer_user(FAULTS_REDIS_URL, name, monkeypatch)
    finally:
        redis.Redis.from_url(FAULTS_REDIS_URL).acl_deluser(name)


@pytest.fixture
def rabbitmq_producer(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, Any]]]:
    broker_url = rabbitmq_vhost(FAULTS_RABBITMQ_VHOST)
    empty_queues(broker_url)
    name = unique_name()
    try:
        yield broker_url, make_producer_user(broker_url, name, monkeypatch)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", name], capture_output=True, timeout=60, check=False)


def test_a_redis_producer_user_only_pushes_onto_the_ingestion_queues(
    clean_database: tuple[str, Engine],
    redis_producer: dict[str, Any],
    node_producer: Path,
    tmp_path: Path,
) -> None:
    database_url, engine = clean_database
    _, _, key = new_key(engine)
    producer_url = redis_producer["url"]
    assert redis_producer["notes"][-1] == f"connected as {redis_producer['name']}"
    admin = redis.Redis.from_url(FAULTS_REDIS_URL)
    admin.lpush(EVENTS_QUEUE, b"another tenant's message")
    lane = lane_list(EVENTS_QUEUE, "0123456789abcdef")  # another tenant's lane
    admin.lpush(lane, b"another tenant's message")
    admin.zadd(ready_lanes(EVENTS_QUEUE), {"0123456789abcdef": 0})
    producer = redis.Redis.from_url(producer_url)
    for action in (
        lambda: producer.lrange(EVENTS_QUEUE, 0, -1),
        lambda: producer.get(EVENTS_QUEUE),
        lambda: producer.lrem(EVENTS_QUEUE, 0, b"another tenant's message"),
        lambda: producer.rpop(EVENTS_QUEUE),
        lambda: producer.publish(f"/{producer.connection_pool.connection_kwargs['db']}.celery.pidbox", b"{}"),
        lambda: producer.keys("*"),
        lambda: producer.smembers(f"_kombu.binding.{EVENTS_QUEUE}"),
        lambda: producer.lpush("userpath.maintenance", b"{}"),
        lambda: producer.delete(EVENTS_QUEUE),
        lambda: producer.lrange(lane, 0, -1),
        lambda: producer.rpop(lane),
        lambda: producer.lrem(lane, 0, b"another tenant's message"),
        lambda: producer.zrange(ready_lanes(EVENTS_QUEUE), 0, -1),
        lambda: producer.zrem(ready_lanes(EVENTS_QUEUE), "0123456789abcdef"),
        lambda: producer.eval("return redis.call('LRANGE', KEYS[1], 0, -1)", 1, lane),  # scripts obey the ACL
        lambda: producer.eval("return redis.call('LPOP', KEYS[1])", 1, lane),
    ):
        refusal = refused(action)
        assert "permission" in refusal.lower() or "can't run this command" in refusal, refusal
    # A length is all it may read (the publishing script checks a lane's against the ceiling).
    assert producer.llen(EVENTS_QUEUE) == 1 and producer.llen(lane) == 1
    assert admin.lrange(EVENTS_QUEUE, 0, -1) == [b"another tenant's message"]  # nothing taken or removed
    assert admin.lrange(lane, 0, -1) == [b"another tenant's message"]
    admin.delete(EVENTS_QUEUE, lane, ready_lanes(EVENTS_QUEUE))

    log = tmp_path / "worker.log"
    with running_worker(worker_environment(database_url, FAULTS_REDIS_URL), log, f"--hostname={NODE}") as worker:
        assert "no permissions to run the 'publish' command" in refused(lambda: shutdown_broadcast(producer_url))
        send_with_the_python_client(key, producer_url)
        sent = run_node(node_producer, key, producer_url)
        assert sent.returncode == 0, sent.stderr
        settle_at(engine, (4, 0), timeout=60)
        assert worker.poll() is None and answers_ping(FAULTS_REDIS_URL)
    assert redis_producer["password"] not in log.read_text()


def test_a_rabbitmq_producer_user_only_publishes_to_the_ingestion_queues(
    clean_database: tuple[str, Engine], rabbitmq_producer: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    database_url, engine = clean_database
    broker_url, user = rabbitmq_producer
    _, _, key = new_key(engine)
    log = tmp_path / "worker.log"
    with running_worker(worker_environment(database_url, broker_url), log, f"--hostname={NODE}") as worker:
        with amqp.Connection(
            "127.0.0.1:5672", userid=user["name"], password=user["password"], virtual_host=FAULTS_RABBITMQ_VHOST
        ) as connection:
            for action in (
                lambda channel: channel.basic_get(EVENTS_QUEUE),
                lambda channel: channel.basic_consume(JOBS_QUEUE, callback=print),
                lambda channel: channel.queue_purge(EVENTS_QUEUE),
                lambda channel: channel.queue_delete(WEBHOOKS_QUEUE),
                lambda channel: channel.queue_declare(EVENTS_QUEUE, durable=True, auto_delete=False),
                # The default exchange reaches every queue by its name, the remote control's too.
                lambda channel: channel.basic_publish(amqp.Message(b"{}"), exchange="", routing_key=EVENTS_QUEUE),
                lambda channel: channel.basic_publish(
                    amqp.Message(b'{"method": "shutdown"}', content_type="application/json"),
                    exchange="",
                    routing_key=f"{NODE}.celery.pidbox",
                ),
                lambda channel: channel.basic_publish(amqp.Message(b"{}"), exchange="celery.pidbox", routing_key=""),
            ):
                channel = connection.channel()
                # A refused publish closes the channel later: the next synchronous call sees it.
                refusal = refused(lambda a=action, c=channel: (a(c), c.basic_qos(0, 1, False)))
                assert "ACCESS_REFUSED" in refusal
        assert "ACCESS_REFUSED" in refused(lambda: shutdown_broadcast(user["url"]))
        send_with_the_python_client(key, user["url"])
        settle_at(engine, (3, 0), timeout=60)
        assert worker.poll() is None and answers_ping(broker_url)
    assert user["password"] not in log.read_text()


def test_write_on_the_default_exchange_would_let_a_producer_stop_the_worker(
    clean_database: tuple[str, Engine], tmp_path: Path
) -> None:
    """Why producers write to the queues' own exchanges: a user that may write to the default
    exchange alone (``'^$' '^amq\\.default$' '^$'``) reaches the worker's remote-control queue by
    its name, and a shutdown published there stops the worker."""
    database_url, _ = clean_database
    broker_url = rabbitmq_vhost(FAULTS_RABBITMQ_VHOST)
    name = unique_name()
    subprocess.run(["rabbitmqctl", "-q", "add_user", name, "default-exchange-only"], check=True, timeout=60)
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", FAULTS_RABBITMQ_VHOST, name, "^$", r"^amq\.default$", "^$"],
            check=True,
            timeout=60,
        )
        environment = worker_environment(database_url, broker_url)
        with running_worker(environment, tmp_path / "worker.log", f"--hostname={NODE}") as worker:
            with amqp.Connection(
                "127.0.0.1:5672", userid=name, password="default-exchange-only", virtual_host=FAULTS_RABBITMQ_VHOST
            ) as connection:
                body = json.dumps({"method": "shutdown", "arguments": {}, "destination": None}).encode()
                connection.channel().basic_publish(
                    amqp.Message(body, content_type="application/json", content_encoding="utf-8"),
                    exchange="",
                    routing_key=f"{NODE}.celery.pidbox",
                )
            wait_for(lambda: worker.poll() is not None, 30, "the worker to obey the shutdown")
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", name], capture_output=True, timeout=60, check=False)
