"""Soak: a steady offered load through a real worker for a while (120 s in CI, longer with
``--soak-seconds``), then zero loss and a memory footprint that stayed flat."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.factories import envelope, new_key
from tests.common.workers import (
    FAULTS_REDIS_URL,
    empty_queues,
    migrated_database,
    pool_children,
    producer,
    resident_kib,
    running_worker,
    settle_at,
    worker_environment,
)
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK

pytestmark = pytest.mark.slow

EVENTS_PER_SECOND = 500
EVENTS_PER_ENVELOPE = 10
TICK_SECONDS = 0.1
WARM_UP_SECONDS = 20.0
SAMPLE_EVERY_SECONDS = 5.0
# Growth allowed between the end of the warm-up and the end of the run, main process and pool
# together: allocator noise, not a leak, which at this load would grow without bound.
RSS_GROWTH_LIMIT_KIB = 30 * 1024


def test_a_steady_load_loses_nothing_and_memory_stays_flat(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    duration = float(request.config.getoption("--soak-seconds"))
    database_url, engine = migrated_database(f"{TEST_DATABASE_PREFIX}_soak")
    redis.Redis.from_url(FAULTS_REDIS_URL).flushdb()
    empty_queues(FAULTS_REDIS_URL)
    _, _, key = new_key(engine)
    app = producer(FAULTS_REDIS_URL)
    envelopes_per_tick = round(EVENTS_PER_SECOND * TICK_SECONDS / EVENTS_PER_ENVELOPE)
    samples: list[tuple[float, int]] = []  # (seconds since start, KiB)
    sent = 0

    environment = worker_environment(database_url, FAULTS_REDIS_URL)
    with (
        running_worker(environment, tmp_path / "worker.log", "--concurrency=2") as worker,
        app.producer_or_acquire() as publisher,
    ):
        start = time.monotonic()
        next_sample = start + WARM_UP_SECONDS
        for tick in range(int(duration / TICK_SECONDS)):
            for _ in range(envelopes_per_tick):
                message = envelope(key, EVENTS_PER_ENVELOPE, f"soak-{sent}")
                app.send_task(TRACK_TASK, args=[message], queue=EVENTS_QUEUE, producer=publisher)
                sent += EVENTS_PER_ENVELOPE
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - start, resident_kib([worker.pid, *pool_children(worker.pid)])))
                next_sample += SAMPLE_EVERY_SECONDS
            time.sleep(max(0.0, start + (tick + 1) * TICK_SECONDS - time.monotonic()))  # a steady rate
        settle_at(engine, (sent, 0), timeout=120)
        assert worker.poll() is None
    engine.dispose()

    figures = ", ".join(f"{at:.0f}s {kib / 1024:.1f}" for at, kib in samples)
    print(f"\nsoak: {sent} events sent and stored in {duration:.0f} s; worker RSS in MiB: {figures}")
    assert len(samples) >= 2, "the run is long enough to sample after the warm-up"
    growth = samples[-1][1] - samples[0][1]
    assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {growth / 1024:.1f} MiB: {figures}"
