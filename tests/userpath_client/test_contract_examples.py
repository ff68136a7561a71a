"""The examples of docs/contract.md, taken literally: pushed raw onto the real Redis (and published
to the real RabbitMQ) as a non-Python producer would, then decoded by kombu and run by Celery."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.worker.request import Request
from kombu import Connection, Producer, Queue
from kombu.message import Message

from tests.common.brokers import CLIENT_REDIS_URL as REDIS_URL
from tests.common.brokers import RABBITMQ_URL, read_messages
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK
from userpath_client.schemas import EnvelopeIn, EventIn, WebhookIn
from userpath_worker.events import normalizers
from userpath_worker.keys import tokens

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract.md"
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```json\n(.*?)\n```", re.DOTALL)


@pytest.fixture(scope="module")
def examples() -> dict[str, str]:
    """Each fenced JSON block of the contract marked ``<!-- example: name -->``, as written."""
    return dict(EXAMPLE.findall(CONTRACT.read_text()))


def run_as_celery_would(message: Message) -> list[Any]:
    """The positional arguments Celery's worker would call ``userpath.track`` with."""
    app = Celery(set_as_current=False)
    app.conf.task_ignore_result = True
    calls: list[Any] = []

    @app.task(name=TRACK_TASK, shared=False)  # this app only: each call gets its own list
    def track(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs))

    Request(message, app=app).execute()
    ((args, kwargs),) = calls
    assert kwargs == {}
    return list(args)


def assert_is_the_example_envelope(message: Message, examples: dict[str, str]) -> None:
    assert message.headers["task"] == TRACK_TASK
    assert message.content_type == "application/json"
    body = json.loads(examples["body"])
    assert message.decode() == body
    (envelope,) = run_as_celery_would(message)
    assert envelope == body[0][0]
    assert EnvelopeIn.model_validate(envelope).sent_at is not None
    assert EventIn.model_validate(envelope["batch"][0]).event == "Signed Up"


def test_the_example_key_is_well_formed_and_only_in_bodies(examples: dict[str, str]) -> None:
    key = json.loads(examples["body"])[0][0]["api_key"]
    assert isinstance(tokens.parse(key), tokens.ParsedKey)
    for name in ("redis-message", "amqp-properties"):
        document = json.loads(examples[name])
        assert key not in json.dumps(document["headers"])
        assert tokens.display_form(key) in document["headers"]["argsrepr"]


def test_the_redis_example_is_the_body_example_with_the_amqp_headers(examples: dict[str, str]) -> None:
    redis_message = json.loads(examples["redis-message"])
    assert base64.b64decode(redis_message["body"]) == examples["body"].encode()
    amqp = json.loads(examples["amqp-properties"])
    assert redis_message["headers"] == amqp["headers"]
    assert redis_message["properties"]["delivery_info"] == {"exchange": "", "routing_key": EVENTS_QUEUE}
    assert redis_message["headers"]["id"] == redis_message["headers"]["root_id"] == amqp["correlation_id"]


@pytest.mark.usefixtures("redis_db")
def test_the_redis_example_pushed_raw_is_a_celery_task_message(examples: dict[str, str]) -> None:
    with redis.Redis.from_url(REDIS_URL) as client:
        client.lpush(EVENTS_QUEUE, examples["redis-message"])
    (message,) = read_messages(REDIS_URL, EVENTS_QUEUE, 1)
    assert_is_the_example_envelope(message, examples)


def test_the_amqp_example_published_raw_is_a_celery_task_message(examples: dict[str, str]) -> None:
    properties = json.loads(examples["amqp-properties"])
    with Connection(RABBITMQ_URL) as connection:
        channel = connection.channel()
        Queue(EVENTS_QUEUE)(channel).declare()
        channel.queue_purge(EVENTS_QUEUE)
        Producer(channel).publish(
            examples["body"].encode(),  # bytes with a content type: published as is, not re-encoded
            exchange="",
            routing_key=EVENTS_QUEUE,
            **properties,
        )
    try:
        (message,) = read_messages(RABBITMQ_URL, EVENTS_QUEUE, 1)
        assert_is_the_example_envelope(message, examples)
    finally:
        with Connection(RABBITMQ_URL) as connection:
            connection.channel().queue_purge(EVENTS_QUEUE)


def test_the_webhook_example_is_valid_and_named_as_the_contract_says(examples: dict[str, str]) -> None:
    webhook = WebhookIn.model_validate_json(examples["webhook-argument"])
    normalized = normalizers.normalize(webhook.provider, webhook.headers, json.loads(webhook.body))
    assert f"{webhook.provider}.{normalized.type}" == "stripe.invoice.paid"
    assert normalized.user_id == "cus_Q1w2e3"
