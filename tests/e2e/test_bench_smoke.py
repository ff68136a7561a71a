"""The benchmark at its smoke size: it runs end to end on both brokers and reports every figure
(not the targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.common.workers import REPOSITORY

pytestmark = pytest.mark.slow

BROKERS = ("redis", "rabbitmq")
SCENARIOS = ("envelopes_100", "envelopes_1", "webhooks", "webhooks_verified")
WORKERS = ("before", "after")  # the fairness scenario's: before lanes (40f75c6) and this checkout's


def assert_fairness_figures(fairness: dict[str, Any]) -> None:
    """Every broker's figures before and after, both organizations stored exactly once (no latency
    bound: at the smoke size the backlog drains in about a second and the figures are noise)."""
    for broker in BROKERS:
        for worker in WORKERS:
            figures = fairness[broker][worker]
            assert figures["exactly_once"] is True
            assert figures["victim_events"] > 0 and figures["victim_p99_ms"] >= figures["victim_p50_ms"] > 0
            assert figures["flood_events_per_second"] > 0
        assert fairness[broker]["after"]["flood_drain_share_of_before"] > 0


def test_the_smoke_benchmark_writes_every_figure_of_both_brokers(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "smoke", "--broker", "both", "--output", str(output)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "events/s Redis" in completed.stdout and "events/s RabbitMQ" in completed.stdout

    results = json.loads(output.read_text())
    assert results["brokers"] == list(BROKERS)
    assert results["copy"]["rows_per_second"] > 0
    assert results["naive"]["events_per_second"] > 0
    for broker in BROKERS:
        for scenario in SCENARIOS:
            figures = results["drain"][broker][scenario]
            assert figures["events_per_second"] > 0 and figures["times_naive"] > 0 and figures["share_of_copy"] > 0
            assert figures["peak_rss_mib"]["main"] > 0 and len(figures["peak_rss_mib"]) == 1 + results["concurrency"]
        long_run = results["drain"][broker]["envelopes_100"]
        assert set(results["memory_growth_mib"][broker]) == set(long_run["peak_rss_mib"])
    assert all(results["drain"]["rabbitmq"][scenario]["share_of_redis"] > 0 for scenario in SCENARIOS)
    assert all(results["drain"][broker]["webhooks_verified"]["share_of_unverified"] > 0 for broker in BROKERS)
    assert results["verification"]["check_us"] > 0 and results["verification"]["verdict_us"] > 0
    assert results["latency"]["p50_ms"] > 0 and results["latency"]["p99_ms"] >= results["latency"]["p50_ms"]
    assert (
        results["client_track"]["calls_per_second"] > 0
        and results["client_track"]["calls_per_second_while_sending"] > 0
    )
    # With both brokers every target is measured, the cross-broker ones included.
    assert {"rabbitmq_envelopes_100_share_of_redis", "rabbitmq_envelopes_1_share_of_redis"} <= set(results["targets"])
    assert None not in results["targets"].values()
    assert "| RabbitMQ | after |" in completed.stdout
    assert_fairness_figures(results["fairness"])


def test_the_fairness_scenario_alone_prints_its_table_with_both_organizations_stored_once(tmp_path: Path) -> None:
    output = tmp_path / "fairness.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--scenario", "fairness", "--size", "smoke", "--broker", "both"]
        + ["--output", str(output)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for broker in ("Redis", "RabbitMQ"):
        for worker in WORKERS:
            assert f"| {broker} | {worker} |" in completed.stdout
    assert "events/s Redis" not in completed.stdout  # the other scenarios did not run

    results = json.loads(output.read_text())
    assert "drain" not in results and results["fairness"]["flood_events"] == results["parameters"]["flood_events"]
    assert_fairness_figures(results["fairness"])


def test_the_edge_benchmark_at_smoke_size_prints_its_table_with_every_answer_200(tmp_path: Path) -> None:
    output = tmp_path / "edge.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.edge", "--size", "smoke", "--broker", "both", "--output", str(output)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "| Redis | POST /v1/batch |" in completed.stdout and "| RabbitMQ | POST /v1/track |" in completed.stdout
    document = json.loads(output.read_text())
    runs = document["runs"]
    assert "the whole pipeline, /v1/batch of 100" in completed.stdout
    for broker in BROKERS:
        whole = document["pipeline"][broker]
        assert whole["edge_alone"] > 0 and whole["drain"] > 0 and whole["offers"]  # every event 200 and stored
        assert whole["rate"] == max((o["accepted"] for o in whole["offers"] if o["backlog_seconds"] <= 1), default=0)
        assert [(run["route"], run["stack"]) for run in runs[broker]] == [
            ("GET /healthz (no-op)", "uvicorn + uvloop + httptools"),
            ("POST /v1/track", "uvicorn + uvloop + httptools"),
            ("POST /v1/track, a sentAt each", "uvicorn + uvloop + httptools"),
            ("POST /v1/batch", "uvicorn + uvloop + httptools"),
            ("POST /v1/track, half its peak rate", "uvicorn + uvloop + httptools"),
            ("POST /v1/track, a sentAt each, half its peak rate", "uvicorn + uvloop + httptools"),
            ("POST /v1/batch, half its peak rate", "uvicorn + uvloop + httptools"),
            ("POST /v1/track", "Flask on waitress"),
        ]
        assert all(run["requests_per_second"] > 0 and run["not_200"] == 0 for run in runs[broker])
        assert runs[broker][3]["events_per_second"] == 100 * runs[broker][3]["requests_per_second"]
