"""Prometheus metrics of a worker and of the edge.

The pool children count what they handle and the main process serves the sum: Prometheus'
multi-process mode, which must be chosen before prometheus_client is first imported. Each
worker (main process and its children) shares one fresh directory of counter files.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _directory = tempfile.mkdtemp(prefix="userpath-metrics-")
    _owner = os.getpid()
    atexit.register(lambda: os.getpid() == _owner and shutil.rmtree(_directory, ignore_errors=True))

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

EVENTS_STORED = Counter("userpath_events_stored", "Events stored.", ["source"])
EVENTS_DUPLICATE = Counter("userpath_events_duplicate", "Events re-sent after they were stored: kept once.", ["source"])
DEAD_LETTERS = Counter("userpath_dead_letters", "Messages or events dead-lettered.", ["reason", "source"])
BATCH_WRITE_SECONDS = Histogram(
    "userpath_batch_write_seconds",
    "Time to authenticate, validate and write one transaction: a message, or a batch of them on Redis.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
AUTH_CACHE = Counter("userpath_auth_cache", "Key lookups by outcome.", ["result"])  # hit | miss
RETRIES = Counter("userpath_task_retries", "Messages retried after a database failure.", ["task"])
RETENTION_RUNS = Counter("userpath_retention_runs", "Retention passes run by beat.")
RETENTION_PARTITIONS_DROPPED = Counter(
    "userpath_retention_partitions_dropped", "Partitions dropped by retention.", ["table"]
)
RETENTION_EVENTS_DELETED = Counter(
    "userpath_retention_events_deleted", "Events deleted by retention (organizations with a shorter one)."
)
# The DEFAULT partitions are a safety net that must stay empty: rows there mean a partition was
# missing when they arrived (beat stopped for a week?). Alert on any value above 0.
DEFAULT_PARTITION_ROWS = Gauge(
    "userpath_default_partition_rows",
    "Rows in a table's DEFAULT partition, counted by the partition pass (should be 0).",
    ["table"],
    multiprocess_mode="mostrecent",
)

# Fairness (contract "lanes"), by organization: what the workers drained, how long messages
# waited on the broker (from the envelope's sent_at, the producer's clock), and what was taken
# from lanes an operator forced slow (USERPATH_SLOW_KEYS). The backlog per organization is read
# from the broker at scrape time (Redis: userpath_org_backlog_messages).
ORG_EVENTS_DRAINED = Counter(
    "userpath_org_events_drained",
    "Events taken off the queues and stored (or stored already), by organization.",
    ["org_id"],
)
ORG_TIME_IN_QUEUE = Histogram(
    "userpath_org_time_in_queue_seconds",
    "From a message's sent_at to its storage, by organization.",
    ["org_id"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
SLOW_LANE_MESSAGES = Counter(
    "userpath_slow_lane_messages", "Messages taken from a lane forced slow (USERPATH_SLOW_KEYS), by key.", ["key_id"]
)

# The edge's 429s, by organization (its id: organizations are few, so the labels stay few).
EDGE_RATE_LIMITED = Counter(
    "userpath_edge_rate_limited", "Requests the edge refused with 429: over the organization's rate.", ["org_id"]
)
EDGE_RATE_LIMITED_EVENTS = Counter(
    "userpath_edge_rate_limited_events", "Events in the requests the edge refused with 429.", ["org_id"]
)


def count_outcome(outcome: dict[str, Any]) -> None:
    """Count what one message came to, from the summary its task returned."""
    source = outcome.get("source", "unknown")
    EVENTS_STORED.labels(source).inc(outcome.get("stored", 0))
    EVENTS_DUPLICATE.labels(source).inc(outcome.get("duplicates", 0))
    for reason, count in outcome.get("dead_letters", {}).items():
        DEAD_LETTERS.labels(reason, source).inc(count)
    if "seconds" in outcome:
        BATCH_WRITE_SECONDS.observe(outcome["seconds"])
    for result in ("hit", "miss"):
        AUTH_CACHE.labels(result).inc(outcome.get(f"auth_{result}", 0))


class BrokerCollector(Collector):
    """Reads a gauge's values (label -> value) from the broker at scrape time."""

    def __init__(self, name: str, documentation: str, label: str, read: Callable[[], dict[Any, int]]) -> None:
        self.name, self.documentation, self.label, self.read = name, documentation, label, read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        try:
            values = self.read()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the broker is away
            values = {}
        for label, value in values.items():
            gauge.add_metric([str(label)], value)
        yield gauge


def serve(
    port: int,
    read_depths: Callable[[], dict[str, int]] | None = None,
    read_backlog: Callable[[], dict[Any, int]] | None = None,
) -> None:
    """Serve the sum of every process's metrics (and the queue depths and backlog per
    organization, if given) on ``port``."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    if read_depths is not None:
        registry.register(BrokerCollector("userpath_queue_depth", "Messages waiting in a queue.", "queue", read_depths))
    if read_backlog is not None:
        registry.register(
            BrokerCollector(
                "userpath_org_backlog_messages",
                "Messages waiting in an organization's lanes (org_id None: lanes not stored from yet).",
                "org_id",
                read_backlog,
            )
        )
    start_http_server(port, addr="0.0.0.0", registry=registry)
