"""``python -m bench --size full|smoke --broker redis|rabbitmq|both --scenario all|fairness``: run
every measurement (or the fairness scenario alone), print the tables, write JSON."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from bench import fairness, harness, inserts, scenarios, segment
from bench.brokers import BROKERS, Broker


@dataclass(frozen=True)
class Size:
    copy_rows: int
    naive_events: int
    envelopes_100_events: int
    envelopes_1_events: int
    webhooks: int
    memory_checkpoint: int  # RSS is compared between this many events stored and the end
    latency_rate: int  # offered events per second
    latency_seconds: float
    client_calls: int
    verification_deliveries: int  # in-process signature checks timed
    insert_events: int  # the insert path alone, into the plain and the partitioned events
    flood_events: int  # the fairness scenario's backlog of one organization


SIZES = {
    # The naive baseline stores ~600 events/s: 3,000 is five seconds of it.
    "full": Size(
        1_000_000, 3_000, 1_000_000, 200_000, 100_000, 100_000, 2_000, 10.0, 200_000, 100_000, 200_000, 1_000_000
    ),
    "smoke": Size(20_000, 200, 5_000, 1_000, 500, 1_000, 500, 2.0, 20_000, 10_000, 5_000, 20_000),
}

# The drain scenarios, in the report's order, and their labels in the table.
SCENARIOS = {
    "envelopes_100": "envelopes of 100",
    "envelopes_1": "envelopes of 1",
    "webhooks": "webhooks",
    "webhooks_verified": "webhooks, verified",
}
BROKER_CHOICES = {"both": tuple(BROKERS), **{name: (name,) for name in BROKERS}}

TARGETS = {
    "rabbitmq_share_of_redis": 0.8,  # in envelopes of 100 and of 1
    "envelopes_100_share_of_copy": 0.5,  # on each broker
    "envelopes_1_events_per_second": 25_000,  # on each broker
    "peak_rss_mib_per_process": 200,
    "client_track_calls_per_second": 100_000,
    "client_track_times_segment": 2.0,  # while sending: ours to Redis, analytics-python's to a local HTTP server
    "verified_webhooks_share_of_unverified": 0.9,  # the drain with a Stripe secret, on each broker
    "partitioned_insert_share_of_plain": 0.95,  # the insert path alone, same run
}
# The insert path alone (bench/inserts.py): the release before partitioning against this one.
INSERT_WAYS = ("plain, jsonb (before 0012)", "partitioned, COPY (this release)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument(
        "--broker",
        choices=BROKER_CHOICES,
        default="both",
        help="the brokers the drain scenarios run on (default both); the other measurements use Redis",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="pool processes per worker (default 4, docker-compose.yml's: they wait on PostgreSQL half the time)",
    )
    parser.add_argument(
        "--scenario",
        choices=("all", "fairness"),
        default="all",
        help="every measurement (default), or only the fairness scenario on the brokers of --broker",
    )
    parser.add_argument(
        "--worker-tree",
        type=Path,
        default=harness.REPOSITORY,
        help="the checkout whose worker the drain scenarios run (default this one): a git worktree of an "
        "earlier commit compares its drains with this one's, fed the same preloaded messages",
    )
    parser.add_argument("--output", type=Path, default=harness.RESULTS / "latest.json")
    options = parser.parse_args()
    broker_names = BROKER_CHOICES[options.broker]
    if options.scenario == "fairness":
        results = run_fairness(options.size, broker_names, options.concurrency)
        print(fairness.table(results["fairness"]))
    else:
        results = run(options.size, broker_names, options.concurrency, options.worker_tree.resolve())
        print(table(results) + "\n\n" + fairness.table(results["fairness"]))
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {options.output}")


def run(
    size_name: str, broker_names: tuple[str, ...], concurrency: int, worker_tree: Path = harness.REPOSITORY
) -> dict[str, Any]:
    size = SIZES[size_name]
    results = _described(size_name, broker_names, concurrency)
    results["drain_worker"] = {"tree": str(worker_tree), "commit": _commit(worker_tree)}
    engine = harness.fresh_database()
    try:
        api_key = harness.new_key(engine)
        verified_key = harness.new_key(engine, stripe_secret=harness.STRIPE_SECRET)
        results["verification"] = scenarios.verification_cost(size.verification_deliveries)
        results["copy"] = scenarios.copy_rate(size.copy_rows)
        rates = inserts.compare(size.insert_events, 1_000, 2, list(INSERT_WAYS))
        results["inserts"] = {way: statistics.median(figures) for way, figures in rates.items()}
        results["naive"] = scenarios.naive_baseline(engine, size.naive_events, concurrency)
        results["drain"] = {
            name: drains(engine, api_key, verified_key, BROKERS[name], size, concurrency, worker_tree)
            for name in broker_names
        }
        results["latency"] = scenarios.latency(engine, api_key, size.latency_rate, size.latency_seconds, concurrency)
        results["client_track"] = scenarios.client_track(api_key, size.client_calls)
        results["segment_track"] = segment.track_rate(size.client_calls)  # None: not installed
        results["fairness"] = _fairness(engine, size, broker_names, concurrency)
    finally:
        engine.dispose()
    copy_rate, naive_rate = results["copy"]["rows_per_second"], results["naive"]["events_per_second"]
    for by_scenario in results["drain"].values():
        for figures in by_scenario.values():
            figures["times_naive"] = figures["events_per_second"] / naive_rate
            figures["share_of_copy"] = figures["events_per_second"] / copy_rate
        verified, unverified = by_scenario["webhooks_verified"], by_scenario["webhooks"]
        verified["share_of_unverified"] = verified["events_per_second"] / unverified["events_per_second"]
    if {"redis", "rabbitmq"} <= results["drain"].keys():
        redis = results["drain"]["redis"]
        for scenario, figures in results["drain"]["rabbitmq"].items():
            figures["share_of_redis"] = figures["events_per_second"] / redis[scenario]["events_per_second"]
    results["memory_growth_mib"] = {
        broker: {
            role: by_scenario["envelopes_100"]["rss_mib_at_end"].get(role, 0.0) - at_checkpoint
            for role, at_checkpoint in by_scenario["envelopes_100"]["rss_mib_at_checkpoint"].items()
        }
        for broker, by_scenario in results["drain"].items()
    }
    if results["segment_track"] is not None:
        results["client_track"]["times_segment"] = (
            results["client_track"]["calls_per_second_while_sending"]
            / results["segment_track"]["calls_per_second_while_sending"]
        )
    results["machine"]["load_average_after"] = harness.load_average()
    results["targets"] = targets(results)
    return results


def run_fairness(size_name: str, broker_names: tuple[str, ...], concurrency: int) -> dict[str, Any]:
    """The fairness scenario alone."""
    results = _described(size_name, broker_names, concurrency)
    engine = harness.fresh_database()
    try:
        results["fairness"] = _fairness(engine, SIZES[size_name], broker_names, concurrency)
    finally:
        engine.dispose()
    results["machine"]["load_average_after"] = harness.load_average()
    return results


def _described(size_name: str, broker_names: tuple[str, ...], concurrency: int) -> dict[str, Any]:
    """What a run's JSON says of itself before any figure: its size, brokers and machine."""
    return {
        "size": size_name,
        "parameters": asdict(SIZES[size_name]),
        "brokers": list(broker_names),
        "concurrency": concurrency,
        "machine": machine(broker_names),
    }


def _fairness(engine: Engine, size: Size, broker_names: tuple[str, ...], concurrency: int) -> dict[str, Any]:
    brokers = [BROKERS[name] for name in broker_names]
    return fairness.compare(engine, brokers, size.flood_events, concurrency)


def drains(
    engine: Engine,
    api_key: str,
    verified_key: str,
    broker: Broker,
    size: Size,
    concurrency: int,
    worker_tree: Path = harness.REPOSITORY,
) -> dict[str, Any]:
    """The drain scenarios on ``broker``, by workers of ``worker_tree``; the long one notes memory
    at the checkpoint. The webhooks drain twice, one after the other: for an organization without
    a secret, and for one whose Stripe webhooks must verify (``verified_key``)."""

    def drain(key: str, kind: str, events: int, checkpoint: int | None = None) -> dict[str, Any]:
        return scenarios.drain(engine, key, broker, kind, events, concurrency, checkpoint, worker_tree)

    return {
        "envelopes_100": drain(api_key, "envelopes_100", size.envelopes_100_events, size.memory_checkpoint),
        "envelopes_1": drain(api_key, "envelopes_1", size.envelopes_1_events),
        "webhooks": drain(api_key, "webhooks", size.webhooks),
        "webhooks_verified": drain(verified_key, "webhooks_verified", size.webhooks),
    }


def machine(broker_names: tuple[str, ...]) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "postgresql": _server_version(),
        # Redis carries the naive baseline, the latency run and the client's figures whatever --broker says.
        **{name: BROKERS[name].version() for name in dict.fromkeys(("redis", *broker_names))},
        "commit": _commit(harness.REPOSITORY),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_before": harness.load_average(),
    }


def _commit(tree: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=tree
    ).stdout.strip()


def _server_version() -> str:
    engine = create_engine(f"{harness.POSTGRES_SERVER}/postgres")
    with engine.connect() as connection:
        version = connection.scalar(text("SHOW server_version"))
    engine.dispose()
    return str(version)


def targets(results: dict[str, Any]) -> dict[str, bool | None]:
    """Which targets this run met; None for one it did not measure (meaningful at the full size only)."""
    drain = results["drain"]

    def figure(broker: str, scenario: str, name: str) -> float | None:
        return drain.get(broker, {}).get(scenario, {}).get(name)

    def at_least(value: float | None, target: float) -> bool | None:
        return None if value is None else value >= target

    met = {
        f"rabbitmq_{scenario}_share_of_redis": at_least(
            figure("rabbitmq", scenario, "share_of_redis"), TARGETS["rabbitmq_share_of_redis"]
        )
        for scenario in ("envelopes_100", "envelopes_1")
    }
    met |= {
        f"{broker}_envelopes_100_share_of_copy": at_least(
            figure(broker, "envelopes_100", "share_of_copy"), TARGETS["envelopes_100_share_of_copy"]
        )
        for broker in BROKERS
    }
    met |= {
        f"{broker}_envelopes_1_events_per_second": at_least(
            figure(broker, "envelopes_1", "events_per_second"), TARGETS["envelopes_1_events_per_second"]
        )
        for broker in BROKERS
    }
    met |= {
        f"{broker}_verified_webhooks_share_of_unverified": at_least(
            figure(broker, "webhooks_verified", "share_of_unverified"),
            TARGETS["verified_webhooks_share_of_unverified"],
        )
        for broker in BROKERS
    }
    peak = max(
        rss
        for by_scenario in drain.values()
        for figures in by_scenario.values()
        for rss in figures["peak_rss_mib"].values()
    )
    plain, partitioned = (results["inserts"][way] for way in INSERT_WAYS)
    met["partitioned_insert_share_of_plain"] = partitioned / plain >= TARGETS["partitioned_insert_share_of_plain"]
    met["peak_rss_mib_per_process"] = peak < TARGETS["peak_rss_mib_per_process"]
    met["client_track_calls_per_second"] = at_least(
        results["client_track"]["calls_per_second"], TARGETS["client_track_calls_per_second"]
    )
    if "times_segment" in results["client_track"]:  # left out, not None, without analytics-python
        met["client_track_times_segment"] = at_least(
            results["client_track"]["times_segment"], TARGETS["client_track_times_segment"]
        )
    return met


def table(results: dict[str, Any]) -> str:
    copy_rate = results["copy"]["rows_per_second"]
    naive_rate = results["naive"]["events_per_second"]
    once = [
        ("measured once per run", "per second", "of COPY"),
        ("PostgreSQL COPY, events' shape", f"{copy_rate:,.0f}", "100%"),
        ("naive: one task + commit per event (Redis)", f"{naive_rate:,.0f}", f"{naive_rate / copy_rate:.1%}"),
        *insert_rows(results["inserts"], copy_rate),
        *client_rows(results),
    ]

    drain = results["drain"]
    labels = [BROKERS[name].label for name in drain]
    both = {"redis", "rabbitmq"} <= drain.keys()
    header = ["worker drain (events)", *(f"events/s {label}" for label in labels)]
    header += ["RabbitMQ / Redis"] if both else []
    header += [f"of COPY {label}" for label in labels]
    header += [f"peak RSS MiB {label} (main / children)" for label in labels]
    drains = [tuple(header)]
    for scenario, label in SCENARIOS.items():
        by_broker = [by_scenario[scenario] for by_scenario in drain.values()]
        row = [f"{label} ({by_broker[0]['events']:,})", *(f"{f['events_per_second']:,.0f}" for f in by_broker)]
        row += [f"{drain['rabbitmq'][scenario]['share_of_redis']:.0%}"] if both else []
        row += [f"{f['share_of_copy']:.1%}" for f in by_broker]
        row += [_peak_rss(f["peak_rss_mib"]) for f in by_broker]
        drains.append(tuple(row))

    latency = results["latency"]
    verification = results["verification"]
    shares = ", ".join(
        f"{BROKERS[name].label} {by_scenario['webhooks_verified']['share_of_unverified']:.0%}"
        for name, by_scenario in drain.items()
    )
    lines = [
        *_aligned(once),
        client_comparison(results),
        "",
        *_aligned(drains),
        *_drain_worker(results["drain_worker"]),
        "",
        f"latency (Redis), enqueue to stored, at {latency['offered_events_per_second']:,.0f} events/s in envelopes "
        f"of {latency['events_per_envelope']}: p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms",
        f"webhook verification (Stripe, in-process, {verification['deliveries']:,} deliveries): the check "
        f"{verification['check_us']:.1f} µs; a webhook's verdict {verification['verdict_us']:.1f} µs verified, "
        f"{verification['verdict_us_unverified']:.1f} µs without a secret; verified drain / unverified: {shares} "
        f"(target {TARGETS['verified_webhooks_share_of_unverified']:.0%})",
    ]
    for name, growth in results["memory_growth_mib"].items():
        long_run = drain[name]["envelopes_100"]
        by_role = ", ".join(f"{role} {value:+.1f}" for role, value in growth.items())
        lines.append(
            f"RSS growth on {BROKERS[name].label} from {long_run['checkpoint_events']:,} to "
            f"{long_run['events']:,} events (MiB): {by_role}"
        )
    lines += [
        f"machine: {results['machine']['cores']} cores, {results['machine']['cpu']}; load average before "
        f"{results['machine']['load_average_before']}, after {results['machine']['load_average_after']}",
        f"targets met ({results['size']} size; meaningful at the full size only):",
        *(f"  {name}: {_verdict(met)}" for name, met in results["targets"].items()),
    ]
    return "\n".join(lines)


def insert_rows(rates: dict[str, float], copy_rate: float) -> list[tuple[str, str, str]]:
    """The insert path alone, batches of 1,000 in one process: the plain table, then the partitioned."""
    plain, partitioned = (rates[way] for way in INSERT_WAYS)
    return [
        ("insert path, plain events (before 0012)", f"{plain:,.0f}", f"{plain / copy_rate:.1%}"),
        (
            f"insert path, partitioned events ({partitioned / plain:.0%} of plain)",
            f"{partitioned:,.0f}",
            f"{partitioned / copy_rate:.1%}",
        ),
    ]


def client_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The track() rows of the report's first table: ours, and analytics-python's if measured."""
    client, theirs = results["client_track"], results["segment_track"]
    rows = [
        ("client track() into its buffer (calls)", f"{client['calls_per_second']:,.0f}", ""),
        ("client track() while sending to Redis (calls)", f"{client['calls_per_second_while_sending']:,.0f}", ""),
    ]
    if theirs is not None:
        rate = theirs["calls_per_second_while_sending"]
        rows.append(
            (
                f"Segment analytics-python {theirs['version']} track() while sending to local HTTP (calls)",
                f"{rate:,.0f}",
                "",
            )
        )
    return rows


def client_comparison(results: dict[str, Any]) -> str:
    """One line: how many times analytics-python's track() rate ours is, or why it was not measured."""
    if results["segment_track"] is None:
        return "Segment's analytics-python is not installed (pip install '.[bench]'): its track() comparison skipped"
    ratio = results["client_track"]["times_segment"]
    target = TARGETS["client_track_times_segment"]
    return f"client track() while sending, ours / Segment analytics-python's: {ratio:.1f}x (target {target:.0f}x)"


def _drain_worker(worker: dict[str, str]) -> list[str]:
    """A line under the drains when their workers ran from another checkout (--worker-tree)."""
    if worker["tree"] == str(harness.REPOSITORY):
        return []
    return [f"(the drains' workers ran from {worker['tree']}, commit {worker['commit']})"]


def _peak_rss(peak: dict[str, float]) -> str:
    children = " ".join(f"{value:.0f}" for role, value in sorted(peak.items()) if role != "main")
    return f"{peak['main']:.0f} / {children}"


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else "yes" if met else "NO"


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """``rows`` in left-aligned columns, the first one a header underlined with dashes."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


if __name__ == "__main__":
    main()
