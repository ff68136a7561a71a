"""``python -m bench --size full|smoke``: run every measurement, print a table, write JSON."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import harness, scenarios


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


SIZES = {
    # The naive baseline stores ~600 events/s: 3,000 is five seconds of it.
    "full": Size(1_000_000, 3_000, 1_000_000, 200_000, 100_000, 100_000, 2_000, 10.0, 200_000),
    "smoke": Size(20_000, 200, 5_000, 1_000, 500, 1_000, 500, 2.0, 20_000),
}

TARGETS = {
    "envelopes_100_events_per_second": 50_000,
    "envelopes_100_share_of_copy": 0.35,
    "envelopes_1_events_per_second": 5_000,
    "envelopes_1_times_naive": 8,
    "client_track_calls_per_second": 100_000,
    "peak_rss_mib_per_process": 200,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="pool processes per worker (default 4, docker-compose.yml's: they wait on PostgreSQL half the time)",
    )
    parser.add_argument("--output", type=Path, default=harness.RESULTS / "latest.json")
    options = parser.parse_args()
    results = run(options.size, options.concurrency)
    print(table(results))
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {options.output}")


def run(size_name: str, concurrency: int) -> dict[str, Any]:
    size = SIZES[size_name]
    results: dict[str, Any] = {"size": size_name, "parameters": asdict(size), "concurrency": concurrency}
    results["machine"] = machine()
    engine = harness.fresh_database()
    try:
        api_key = harness.new_key(engine)
        results["copy"] = scenarios.copy_rate(size.copy_rows)
        results["naive"] = scenarios.naive_baseline(engine, size.naive_events, concurrency)
        results["drain"] = {
            "envelopes_100": scenarios.drain(
                engine, api_key, "envelopes_100", size.envelopes_100_events, concurrency, size.memory_checkpoint
            ),
            "envelopes_1": scenarios.drain(engine, api_key, "envelopes_1", size.envelopes_1_events, concurrency),
            "webhooks": scenarios.drain(engine, api_key, "webhooks", size.webhooks, concurrency),
        }
        results["latency"] = scenarios.latency(engine, api_key, size.latency_rate, size.latency_seconds, concurrency)
        results["client_track"] = scenarios.client_track(api_key, size.client_calls)
    finally:
        engine.dispose()
    copy_rate, naive_rate = results["copy"]["rows_per_second"], results["naive"]["events_per_second"]
    for figures in results["drain"].values():
        figures["times_naive"] = figures["events_per_second"] / naive_rate
        figures["share_of_copy"] = figures["events_per_second"] / copy_rate
    long_run = results["drain"]["envelopes_100"]
    results["memory_growth_mib"] = {
        role: long_run["rss_mib_at_end"].get(role, 0.0) - at_checkpoint
        for role, at_checkpoint in long_run["rss_mib_at_checkpoint"].items()
    }
    results["machine"]["load_average_after"] = harness.load_average()
    results["targets"] = targets(results)
    return results


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=harness.REPOSITORY
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "postgresql": _server_version(),
        "redis": harness.broker().info("server")["redis_version"],
        "commit": commit.stdout.strip(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_before": harness.load_average(),
    }


def _server_version() -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"{harness.POSTGRES_SERVER}/postgres")
    with engine.connect() as connection:
        version = connection.scalar(text("SHOW server_version"))
    engine.dispose()
    return str(version)


def targets(results: dict[str, Any]) -> dict[str, bool]:
    """Which of issue 5's targets this run met (meaningful at the full size only)."""
    drain = results["drain"]
    peak = max(rss for figures in drain.values() for rss in figures["peak_rss_mib"].values())
    return {
        "envelopes_100_events_per_second": drain["envelopes_100"]["events_per_second"]
        >= TARGETS["envelopes_100_events_per_second"],
        "envelopes_100_share_of_copy": drain["envelopes_100"]["share_of_copy"]
        >= TARGETS["envelopes_100_share_of_copy"],
        "envelopes_1_events_per_second": drain["envelopes_1"]["events_per_second"]
        >= TARGETS["envelopes_1_events_per_second"],
        "envelopes_1_times_naive": drain["envelopes_1"]["times_naive"] >= TARGETS["envelopes_1_times_naive"],
        "client_track_calls_per_second": results["client_track"]["calls_per_second"]
        >= TARGETS["client_track_calls_per_second"],
        "peak_rss_mib_per_process": peak < TARGETS["peak_rss_mib_per_process"],
        # "No growth": within 10 MiB per process (allocator noise) between the checkpoint and the end.
        "no_memory_growth": all(growth < 10 for growth in results["memory_growth_mib"].values()),
    }


def table(results: dict[str, Any]) -> str:
    copy_rate = results["copy"]["rows_per_second"]
    naive_rate = results["naive"]["events_per_second"]
    rows = [("measure", "events/s", "x naive", "of COPY", "peak RSS MiB (main / children)")]
    rows.append(("PostgreSQL COPY, events' shape", f"{copy_rate:,.0f}", f"{copy_rate / naive_rate:.1f}", "100%", ""))
    rows.append(
        ("naive: one task + commit per event", f"{naive_rate:,.0f}", "1.0", f"{naive_rate / copy_rate:.1%}", "")
    )
    for name, label in (
        ("envelopes_100", "worker: envelopes of 100"),
        ("envelopes_1", "worker: envelopes of 1"),
        ("webhooks", "worker: webhooks"),
    ):
        figures = results["drain"][name]
        peak = figures["peak_rss_mib"]
        children = " ".join(f"{value:.0f}" for role, value in sorted(peak.items()) if role != "main")
        rows.append(
            (
                f"{label} ({figures['events']:,})",
                f"{figures['events_per_second']:,.0f}",
                f"{figures['times_naive']:.1f}",
                f"{figures['share_of_copy']:.1%}",
                f"{peak['main']:.0f} / {children}",
            )
        )
    track = results["client_track"]["calls_per_second"]
    sending = results["client_track"]["calls_per_second_while_sending"]
    rows.append(("client track() into its buffer (calls/s)", f"{track:,.0f}", "", "", ""))
    rows.append(("client track() while sending to Redis", f"{sending:,.0f}", "", "", ""))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    latency = results["latency"]
    growth = ", ".join(f"{role} {value:+.1f}" for role, value in results["memory_growth_mib"].items())
    checkpoint = results["drain"]["envelopes_100"]["checkpoint_events"]
    lines += [
        "",
        f"latency, enqueue to stored, at {latency['offered_events_per_second']:,.0f} events/s in envelopes of "
        f"{latency['events_per_envelope']}: p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms",
        f"RSS growth from {checkpoint:,} to {results['drain']['envelopes_100']['events']:,} events (MiB): {growth}",
        f"machine: {results['machine']['cores']} cores, {results['machine']['cpu']}; load average before "
        f"{results['machine']['load_average_before']}, after {results['machine']['load_average_after']}",
        "targets met: " + ", ".join(f"{name} {'yes' if met else 'NO'}" for name, met in results["targets"].items()),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
