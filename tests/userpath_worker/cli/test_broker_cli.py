"""``userpath broker producer-user NAME`` without ``--apply``: what it prints for Redis and
RabbitMQ, and its mistakes. (With ``--apply``, against the real brokers: tests/e2e/test_producer_users.py.)"""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.common.cli import ok, run


def printed(broker_url: str, monkeypatch: pytest.MonkeyPatch, name: str = "svc-billing") -> dict:
    monkeypatch.setenv("USERPATH_BROKER_URL", broker_url)
    return json.loads(ok("broker", "producer-user", name, "--json").stdout)


def test_redis_gets_an_acl_user_that_may_only_push_onto_the_three_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    user = printed("redis://:worker-secret@redis.internal:6380/2", monkeypatch)
    password = user["password"]
    digest = hashlib.sha256(password.encode()).hexdigest()
    rules = (
        f"on #{digest} resetkeys resetchannels -@all +lpush +llen +zadd +eval +evalsha +multi +exec +ping +select "
        "%W~userpath.events %RW~userpath.events.lane.* %RW~userpath.events.lanes "
        "%W~userpath.jobs %RW~userpath.jobs.lane.* %RW~userpath.jobs.lanes "
        "%W~userpath.webhooks %RW~userpath.webhooks.lane.* %RW~userpath.webhooks.lanes"
    )
    assert user["commands"] == [f"ACL SETUSER svc-billing reset {rules}"]
    assert user["acl_file_line"] == f"user svc-billing {rules}"
    assert user["url"] == f"redis://svc-billing:{password}@redis.internal:6380/2"  # not the worker's password
    assert len(password) >= 40 and user["applied"] is False
    again = printed("redis://:worker-secret@redis.internal:6380/2", monkeypatch)
    assert again["password"] != password  # a new one each time, shown once


@pytest.mark.parametrize(
    ("broker_url", "vhost", "host"),
    [
        ("amqp://userpath:worker-secret@rabbitmq:5672//", "/", "rabbitmq:5672"),
        ("amqp://userpath:worker-secret@rabbitmq/events%20prod", "events prod", "rabbitmq"),
    ],
)
def test_rabbitmq_gets_a_user_that_may_only_write_to_the_ingestion_exchanges(
    monkeypatch: pytest.MonkeyPatch, broker_url: str, vhost: str, host: str
) -> None:
    user = printed(broker_url, monkeypatch)
    quoted = "/" if vhost == "/" else f"'{vhost}'"
    assert user["commands"] == [
        "rabbitmqctl add_user svc-billing",
        f"rabbitmqctl set_permissions -p {quoted} svc-billing '^$' "
        r"'^(userpath\.events|userpath\.jobs|userpath\.webhooks)$' '^$'",
    ]
    assert user["vhost"] == vhost and user["acl_file_line"] is None
    assert user["url"].startswith(f"amqp://svc-billing:{user['password']}@{host}/")
    assert user["password"] not in " ".join(user["commands"])


def test_the_text_output_ends_with_the_producers_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERPATH_BROKER_URL", "redis://redis:6379/0")
    lines = ok("broker", "producer-user", "svc").stdout.splitlines()
    assert lines[0] == "# Run in redis-cli, as an administrator:" and lines[1].startswith("ACL SETUSER svc reset on #")
    assert lines[-2] == "# The producer's broker URL (the password is shown once):"
    assert lines[-1].startswith("redis://svc:") and lines[-1].endswith("@redis:6379/0")


@pytest.mark.parametrize("name", ["bad name", ".dot", "x" * 65, "semi;colon", ""])
def test_a_name_that_cannot_be_a_user_is_a_usage_mistake(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("USERPATH_BROKER_URL", "redis://redis:6379/0")
    result = run("broker", "producer-user", name)
    assert result.exit_code == 2 and "cannot be a user name" in result.output


def test_the_embedded_broker_has_no_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERPATH_BROKER_URL", "sqla+sqlite:///userpath-broker.db")
    result = run("broker", "producer-user", "svc")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: producer users are for Redis and RabbitMQ; USERPATH_BROKER_URL is the embedded broker, "
        "which only processes on this machine use"
    ]


def test_apply_refuses_a_rabbitmq_elsewhere_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERPATH_BROKER_URL", "amqp://userpath:secret@rabbit.internal:5672//")
    result = run("broker", "producer-user", "svc", "--apply")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "AMQP cannot make users" in result.output and "docker compose exec rabbitmq" in result.output
