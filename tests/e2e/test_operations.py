"""Operations: status, health, metrics and JSON logs, against real processes and servers."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from config.celery import QUEUES
from tests.common.databases import TEST_DATABASE_PREFIX, fresh_postgres_database
from tests.common.factories import envelope, new_key
from tests.common.workers import producer, rabbitmq_vhost, running_worker, wait_for, worker_environment
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK
from userpath_worker import schema
from userpath_worker.db import make_engine
from userpath_worker.keys import tokens

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/10"
USERPATH = str(Path(sys.executable).with_name("userpath"))


def userpath(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([USERPATH, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_status_and_health_on_the_embedded_default(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("USERPATH_")}
    status = userpath("status", "--json", env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    found = json.loads(status.stdout)
    assert found["queues"] == {queue: 0 for queue in QUEUES}
    assert found["workers"] is None and found["dead_letters_24h"] == {} and found["last_rotation_pass"] is None
    health = userpath("health", env=env, cwd=tmp_path)
    assert health.returncode == 1 and "no worker has run on this embedded broker" in health.stderr

    # A running worker beats in a file beside the broker's: health is then true, without a ping.
    heartbeat = tmp_path / "userpath-worker.heartbeat"
    embedded = worker_environment(
        f"sqlite:///{tmp_path / 'userpath.db'}", f"sqla+sqlite:///{tmp_path / 'userpath-broker.db'}"
    )
    with running_worker(embedded, tmp_path / "worker.log", command=[USERPATH, "worker"]):
        wait_for(heartbeat.exists, 30, "the worker's first heartbeat")
        health = userpath("health", env=embedded, cwd=tmp_path)
        assert health.returncode == 0, health.stderr
        assert health.stdout.startswith("healthy: a worker beat ")
    os.utime(heartbeat, (time.time() - 120, time.time() - 120))  # the worker stopped two minutes ago
    health = userpath("health", env=embedded)
    assert health.returncode == 1 and re.search(r"the last worker heartbeat was 12\d s ago", health.stderr)


def test_two_userpath_workers_on_one_host_and_rabbitmq_get_node_names_of_their_own(tmp_path: Path) -> None:
    # Celery's default celery@HOST on both: RabbitMQ refused the second one's control queue
    # (RESOURCE_LOCKED) and it died with a traceback. -n still names one as an operator chooses.
    broker_url = rabbitmq_vhost(f"{TEST_DATABASE_PREFIX}_node_names")
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_node_names")
    schema.upgrade(make_engine(url))
    env = worker_environment(url, broker_url)
    first, second, named = (
        running_worker(env, tmp_path / f"{name}.log", command=[USERPATH, "worker", "-c", "1", *extra])
        for name, extra in (("first", []), ("second", []), ("named", ["-n", "second@%h"]))
    )
    with first, second, named:
        status = json.loads(userpath("status", "--json", "--ping-timeout", "3", env=env).stdout)
    host = socket.gethostname()
    assert len(status["workers"]) == 3 and status["shared_node_names"] == {}, status["workers"]
    assert f"second@{host}" in status["workers"]
    assert all(
        re.fullmatch(rf"userpath-\d+@{re.escape(host)}", name) for name in status["workers"] if name != f"second@{host}"
    )


def test_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "USERPATH_BROKER_URL": "redis://127.0.0.1:9/0",
        "USERPATH_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    schema.upgrade(make_engine(env["USERPATH_DATABASE_URL"]))  # a database in use: only the broker is missing
    result = userpath("status", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "cannot reach the broker in USERPATH_BROKER_URL" in result.stderr


def test_health_status_metrics_and_json_logs_of_a_running_worker(tmp_path: Path) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_ops")
    engine = make_engine(url)
    schema.upgrade(engine)
    _, _, key = new_key(engine)
    port = free_port()
    env = worker_environment(url, REDIS_URL, USERPATH_METRICS_PORT=str(port), USERPATH_LOG_LEVEL="INFO")
    assert userpath("health", "--timeout", "1", env=env).returncode == 1  # nobody there yet

    log = tmp_path / "worker.log"
    with running_worker(env, log, "--concurrency=1"):
        app = producer(REDIS_URL)
        ok = envelope(key, 3, "ok")
        app.send_task(TRACK_TASK, args=[ok], queue=EVENTS_QUEUE)
        app.send_task(TRACK_TASK, args=[ok], queue=EVENTS_QUEUE)  # re-sent: 3 duplicates
        bad = envelope(key, 1, "bad")
        bad["batch"][0].pop("user_id")
        app.send_task(TRACK_TASK, args=[bad], queue=EVENTS_QUEUE)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return response.read().decode()

        def handled_both() -> str | None:
            text = scrape()
            return text if 'userpath_dead_letters_total{reason="invalid_event"' in text else None

        metrics = wait_for(handled_both, 30, "the metrics")
        assert 'userpath_events_stored_total{source="server"} 3.0' in metrics
        assert 'userpath_events_duplicate_total{source="server"} 3.0' in metrics
        assert 'userpath_dead_letters_total{reason="invalid_event",source="server"} 1.0' in metrics
        assert 'userpath_queue_depth{queue="userpath.events"} 0.0' in metrics
        # On Redis the messages may share a batch: one transaction to three.
        assert re.search(r"^userpath_batch_write_seconds_count [123]\.0$", metrics, re.MULTILINE)

        health = userpath("health", "--timeout", "5", env=env)
        assert health.returncode == 0 and health.stdout.startswith("healthy: celery@")
        status = json.loads(userpath("status", "--json", env=env).stdout)
        assert status["dead_letters_24h"] == {"invalid_event": 1} and len(status["workers"]) == 1
    engine.dispose()

    # At INFO, one line per batch (tasks/ingestion/job.py); each message has its own line at DEBUG.
    handled = [
        json.loads(line) for line in log.read_text().splitlines() if line.startswith("{") and "batch handled" in line
    ]
    assert sum(entry["stored"] for entry in handled) == 3 and sum(entry["dead_lettered"] for entry in handled) == 1
    assert sum(entry["duplicates"] for entry in handled) == 3 and sum(entry["messages"] for entry in handled) == 3
    # The dead letter's WARNING line, with the reason and the key's display form (never the key).
    warned = [
        json.loads(line) for line in log.read_text().splitlines() if line.startswith("{") and "dead-lettered" in line
    ]
    assert [(entry["reason"], entry["key"], entry["dead_lettered"]) for entry in warned] == [
        ("invalid_event", tokens.display_form(key), 1)
    ]


def test_a_plain_celery_worker_logs_at_info_like_userpath_worker(tmp_path: Path) -> None:
    # Celery's own default is WARNING: "ready." (INFO), which running_worker waits for, would never come.
    redis.Redis.from_url(REDIS_URL).flushdb()
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_ops")
    schema.upgrade(make_engine(url))
    log = tmp_path / "worker.log"
    with running_worker(worker_environment(url, REDIS_URL), log, "--concurrency=1", loglevel=None):
        pass
    levels = {json.loads(line)["level"] for line in log.read_text().splitlines() if line.startswith("{")}
    assert "INFO" in levels


def test_status_warns_when_two_workers_answer_as_one_node_name(tmp_path: Path) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_ops")
    schema.upgrade(make_engine(url))
    env = worker_environment(url, REDIS_URL)
    shared = ["--concurrency=1", "-n", "twin@%h"]
    with (
        running_worker(env, tmp_path / "first.log", *shared),
        running_worker(env, tmp_path / "second.log", *shared),
    ):
        node = f"twin@{socket.gethostname()}"
        found = json.loads(userpath("status", "--json", "--ping-timeout", "3", env=env).stdout)
        shown = userpath("status", "--ping-timeout", "3", env=env)
    assert found["workers"] == [node, node] and found["shared_node_names"] == {node: 2}
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.splitlines() == [
        f"Warning: 2 workers answer as {node}; start each with a node name of its own "
        "(celery -A tasks.app worker -n NAME@%h), or they cannot be told apart"
    ]
    assert shown.stdout.startswith(f"Database:             {url}\nBroker:               {REDIS_URL}\n")
