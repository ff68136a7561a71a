"""The benchmark at its smoke size: it runs end to end and reports every figure (not the targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workers import REPOSITORY

pytestmark = pytest.mark.slow


def test_the_smoke_benchmark_writes_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "smoke", "--output", str(output)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "worker: envelopes of 100" in completed.stdout

    results = json.loads(output.read_text())
    assert results["copy"]["rows_per_second"] > 0
    assert results["naive"]["events_per_second"] > 0
    for scenario in ("envelopes_100", "envelopes_1", "webhooks"):
        figures = results["drain"][scenario]
        assert figures["events_per_second"] > 0 and figures["times_naive"] > 0 and figures["share_of_copy"] > 0
        assert figures["peak_rss_mib"]["main"] > 0 and len(figures["peak_rss_mib"]) == 1 + results["concurrency"]
    assert results["latency"]["p50_ms"] > 0 and results["latency"]["p99_ms"] >= results["latency"]["p50_ms"]
    assert (
        results["client_track"]["calls_per_second"] > 0
        and results["client_track"]["calls_per_second_while_sending"] > 0
    )
    assert set(results["memory_growth_mib"]) == set(results["drain"]["envelopes_100"]["peak_rss_mib"])
    assert set(results["targets"]) >= {"envelopes_100_events_per_second", "no_memory_growth"}
