"""``python -m bench.edge [--size full|smoke] [--broker redis|rabbitmq|both] [--output FILE]``: the
HTTP edge under ``wrk``, publishing to Redis and to RabbitMQ with no worker draining them.

For each broker, ``userpath edge --workers 2`` (one process a core of the 2-core reference machine)
is driven by ``wrk`` (Debian's package: ``apt-get install wrk``) on keep-alive connections:
``POST /v1/track`` (one event; all with one ``sentAt``, so calls that arrive together travel as one
envelope, and again each with a ``sentAt`` of its own, as Segment's libraries send single calls,
from 16 keys in turn), ``POST /v1/batch`` (100 events), each POST route again at half the rate it
just reached (wrk keeps a schedule: ``paced_script``), and beside them, in the same run,
the same server stack answering ``GET /healthz`` (no decision, no broker: the stack's ceiling) and
Flask on waitress (16 threads, 2 processes would need a balancer: 1 process) making the same
decisions for ``/v1/track``, the baseline the stack was chosen against. Printed: requests and events
a second, p50 and p99 latency, and how many answers were not 200 (any is a failure).

The database is a SQLite file in a temporary folder: the key is looked up once, then cached.

Then the whole pipeline, on each broker, with PostgreSQL (the database ``userpath_bench``): the
edge fills the broker with ``/v1/batch`` calls and no worker (as above); a worker
(``--concurrency 4``, as docker-compose runs it) drains that preloaded queue alone, from ready to
its last stored event; then, that worker still running, ``wrk`` offers the edge shares of that
drain's rate (``OFFERED_SHARES``, highest first) until the worker keeps up: edge, worker and
PostgreSQL on the same cores, the last event stored within ``KEPT_UP_SECONDS`` of the load's end
(a backlog that grows is not a rate the pipeline sustains). The pipeline's rate is what the edge
accepted at that offer, set against the drain. Every event answered 200 must be stored.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from bench.brokers import BROKERS
from bench.harness import (
    KEY_PEPPER,
    REPOSITORY,
    BenchError,
    Worker,
    empty_events,
    fresh_database,
    load_average,
    new_key,
    product_environment,
    running_worker,
    stop,
    wait_until,
    without_settings,
)
from bench.scenarios import count_rows
from config.celery import QUEUES
from userpath_client.contract import INGESTION_QUEUES
from userpath_worker import schema
from userpath_worker.db import make_engine
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events.models import Event

SIZES = {"full": {"seconds": 10, "connections": 64}, "smoke": {"seconds": 2, "connections": 8}}
WORKER_CONCURRENCY = 4  # docker-compose.yml's, and python -m bench's default
# The drain is over once no event was stored for this long after the last one the edge accepted.
SETTLED_SECONDS = 3.0
# Offered to the edge while the worker stores, as shares of the worker's drain alone, until one
# is kept up with: its last event stored at most KEPT_UP_SECONDS after the load stopped.
OFFERED_SHARES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
KEPT_UP_SECONDS = 1.0
PIPELINE_TARGET = 0.7  # issue 21: the whole pipeline at 70% of the worker's drain of a preloaded queue
EDGE_PROCESSES = 2
BATCH_EVENTS = 100
# Keys the calls with a sentAt each come from in turn: a message a call, and a lane holds
# MAX_LANE_MESSAGES (20,000); sixteen hold a run of 10 seconds at 32,000 calls a second.
DISTINCT_KEYS = 16
HALF_PEAK = "half its peak rate"
WRK_THREADS = 2
USERPATH = str(Path(sys.executable).with_name("userpath"))
_LATENCY = re.compile(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Run:
    route: str
    stack: str
    requests_per_second: float
    events_per_second: float
    p50_ms: float
    p99_ms: float
    not_200: int
    requests: int  # answered in the run, all statuses


@dataclass(frozen=True)
class Offer:
    """One rate offered to the edge while the worker stores."""

    offered: float  # events a second wrk was paced to
    accepted: float  # answered 200 a second
    backlog_seconds: float  # from the load's end to the last event stored

    @property
    def kept_up(self) -> bool:
        return self.backlog_seconds <= KEPT_UP_SECONDS


@dataclass(frozen=True)
class Pipeline:
    """Events a second through edge, broker, worker and PostgreSQL, against the worker alone."""

    edge_alone: float  # accepted by the edge with no worker (it fills the queue the drain takes)
    drain: float  # stored by the worker draining that queue alone
    offers: tuple[Offer, ...]  # the rates tried, highest first, down to the first kept up

    @property
    def rate(self) -> float:
        """The highest rate the pipeline kept up with (0 when it kept up with none tried)."""
        return max((offer.accepted for offer in self.offers if offer.kept_up), default=0.0)

    @property
    def share_of_drain(self) -> float:
        return self.rate / self.drain


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--broker", choices=["redis", "rabbitmq", "both"], default="both")
    parser.add_argument("--output", type=Path, help="Also write the figures as JSON here.")
    parser.add_argument(
        "--rate-limited",
        action="store_true",
        help="Every request through the organization's token bucket (a limit it never reaches): the limiter's cost.",
    )
    parser.add_argument("--serve-flask", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the baseline's process
    arguments = parser.parse_args()
    if arguments.serve_flask:
        serve_flask(arguments.serve_flask)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian's package), then run again")
    size = SIZES[arguments.size]
    brokers = list(BROKERS) if arguments.broker == "both" else [arguments.broker]
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as folder:
        database_url = f"sqlite:///{folder}/edge.db"
        engine = make_engine(database_url)
        schema.upgrade(engine)
        keys = [new_key(engine, organization=f"Bench {number}") for number in range(DISTINCT_KEYS)]
        engine.dispose()
        results = {
            name: measure(name, database_url, keys, Path(folder), arguments.rate_limited, **size) for name in brokers
        }
        pipelines = {name: pipeline(name, Path(folder), **size) for name in brokers}
    print_table(results)
    print_pipelines(pipelines)
    if arguments.output:
        machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average": load_average()}
        runs = {broker: [asdict(run) for run in broker_runs] for broker, broker_runs in results.items()}
        whole = {
            broker: asdict(figures) | {"rate": figures.rate, "share_of_drain": figures.share_of_drain}
            for broker, figures in pipelines.items()
        }
        document = {"machine": machine, "size": arguments.size, "runs": runs, "pipeline": whole}
        arguments.output.write_text(json.dumps(document, indent=2))


def measure(
    broker_name: str,
    database_url: str,
    keys: list[str],
    folder: Path,
    rate_limited: bool,
    seconds: int,
    connections: int,
) -> list[Run]:
    broker = BROKERS[broker_name]
    environment = {
        **without_settings(),
        "USERPATH_DATABASE_URL": database_url,
        "USERPATH_BROKER_URL": broker.url,
        "USERPATH_KEY_PEPPER": KEY_PEPPER,  # the key was made with it (harness.new_key)
        "USERPATH_LOG_LEVEL": "WARNING",  # no access log line a request
        # No rate limit by default (the bench is one organization far over any); --rate-limited: a
        # bucket it never empties, so each request pays the limiter (Redis' Lua script) and nothing more.
        "USERPATH_EDGE_EVENTS_PER_SECOND": "10000000" if rate_limited else "0",
        "USERPATH_EDGE_BURST": "100000000",
        "USERPATH_EDGE_METRICS_PORT": "0",
    }
    authorization = basic(keys[0])
    track = script(folder / "track.lua", "POST", track_body(), [authorization])
    batch = script(
        folder / "batch.lua", "POST", {"batch": [track_call(n) for n in range(BATCH_EVENTS)]}, [authorization]
    )
    health = script(folder / "health.lua", "GET", None, [authorization])
    # As Segment's libraries send single calls: each with a sentAt of its own, so none travel
    # together; from several keys, so that no lane reaches its bound of messages (no worker drains them).
    distinct = script(
        folder / "distinct.lua", "POST", track_body(), [basic(key) for key in keys], distinct_sent_at=True
    )
    runs = []
    fresh_queues(broker_name)
    port = free_port()
    edge = [USERPATH, "edge", "--port", str(port), "--workers", str(EDGE_PROCESSES)]
    stack = "uvicorn + uvloop + httptools"
    with serving(edge, port, environment, folder / f"edge-{broker_name}.log"):
        routes = (
            ("GET /healthz (no-op)", "/healthz", health, 0),
            ("POST /v1/track", "/v1/track", track, 1),
            ("POST /v1/track, a sentAt each", "/v1/track", distinct, 1),
            ("POST /v1/batch", "/v1/batch", batch, BATCH_EVENTS),
        )
        for route, path, lua, events in routes:
            url = f"http://127.0.0.1:{port}{path}"
            runs.append(wrk(route, stack, url, lua, events, seconds, connections))
            fresh_queues(broker_name)  # no worker drains them: keep the broker's memory flat
        for route, path, lua, events in routes[1:]:  # the latency at half the rate just measured
            peak = next(run for run in runs if run.route == route)
            paced = paced_script(lua, peak.requests_per_second / 2)
            url = f"http://127.0.0.1:{port}{path}"
            runs.append(wrk(f"{route}, {HALF_PEAK}", stack, url, paced, events, seconds, connections))
            fresh_queues(broker_name)
    port = free_port()
    flask = [sys.executable, "-m", "bench.edge", "--serve-flask", str(port)]
    with serving(flask, port, environment, folder / f"flask-{broker_name}.log"):
        url = f"http://127.0.0.1:{port}/v1/track"
        runs.append(wrk("POST /v1/track", "Flask on waitress", url, track, 1, seconds, connections))
    fresh_queues(broker_name)
    return runs


def pipeline(broker_name: str, folder: Path, seconds: int, connections: int) -> Pipeline:
    """The edge alone fills the broker, the worker alone drains it, then the edge is offered
    shares of that drain, highest first, until the worker keeps up (the module's docstring)."""
    broker = BROKERS[broker_name]
    engine = fresh_database()
    key = new_key(engine)
    worker_environment = product_environment(broker.url)
    environment = {
        **without_settings(),
        **worker_environment,
        "USERPATH_LOG_LEVEL": "WARNING",  # no access log line a request (the worker logs at INFO: "ready.")
        "USERPATH_EDGE_EVENTS_PER_SECOND": "0",
        "USERPATH_EDGE_METRICS_PORT": "0",
    }
    batch = script(
        folder / "pipeline.lua", "POST", {"batch": [track_call(n) for n in range(BATCH_EVENTS)]}, [basic(key)]
    )
    fresh_queues(broker_name)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/batch"
    edge = [USERPATH, "edge", "--port", str(port), "--workers", str(EDGE_PROCESSES)]
    offers: list[Offer] = []
    with serving(edge, port, environment, folder / f"pipeline-edge-{broker_name}.log"):
        alone = wrk("POST /v1/batch", "edge alone", url, batch, BATCH_EVENTS, seconds, connections)
        name = f"edge-pipeline.{broker_name}"
        with running_worker("tasks.app", QUEUES, worker_environment, name, WORKER_CONCURRENCY) as worker:
            stored, last_stored = _settled(engine, worker, alone)
            drain = stored / (last_stored - worker.ready)
            for share in OFFERED_SHARES:
                empty_events(engine)
                paced = paced_script(batch, share * drain / BATCH_EVENTS)
                run = wrk("POST /v1/batch", "with the worker", url, paced, BATCH_EVENTS, seconds, connections)
                load_ended = time.time()
                _, last_stored = _settled(engine, worker, run)
                offers.append(Offer(share * drain, run.events_per_second, max(0.0, last_stored - load_ended)))
                if offers[-1].kept_up:
                    break
    if count_rows(engine, DeadLetter):
        raise BenchError(f"{broker.label}: the pipeline dead-lettered {count_rows(engine, DeadLetter)} messages")
    engine.dispose()
    fresh_queues(broker_name)
    return Pipeline(alone.events_per_second, drain, tuple(offers))


def _settled(engine: Engine, worker: Worker, run: Run) -> tuple[int, float]:
    """Once every event of ``run`` (every answer 200, or ``BenchError``) is stored and no more
    arrive (wrk may have dropped answers in flight at its end): the events stored and when the
    last one was (time.time(), as ``worker.ready``)."""
    if run.not_200:
        raise BenchError(f"{run.route} ({run.stack}): {run.not_200} answers were not 200")
    answered = run.requests * BATCH_EVENTS
    stored, last_stored = 0, time.time()
    deadline = time.monotonic() + 60 + answered / 5_000
    while True:
        worker.check_alive()
        now = count_rows(engine, Event)
        if now != stored:
            stored, last_stored = now, time.time()
        elif stored >= answered and time.time() - last_stored > SETTLED_SECONDS:
            return stored, last_stored
        if time.monotonic() > deadline:
            raise BenchError(f"{stored} of the {answered} events answered 200 stored before the deadline")
        time.sleep(0.05)


def fresh_queues(broker_name: str) -> None:
    """Empty, with the ingestion queues made as the worker makes them (the edge declares nothing)."""
    broker = BROKERS[broker_name]
    broker.empty()
    for queue in INGESTION_QUEUES:
        broker.preload(queue, [])


def track_call(number: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": f"user-{number}",
        "timestamp": "2026-12-05T07:00:00.000Z",
        "properties": {"order_id": f"o-{number}", "revenue": 42.5, "currency": "EUR", "items": 3},
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}, "ip": "203.0.113.9"},
    }


def track_body() -> dict[str, Any]:
    return {**track_call(0), "sentAt": "2026-12-05T07:00:01.000Z"}


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def script(
    path: Path, method: str, body: dict[str, Any] | None, authorizations: list[str], distinct_sent_at: bool = False
) -> Path:
    lines = [f'wrk.method = "{method}"', f'wrk.headers["Authorization"] = "{authorizations[0]}"']
    if body is not None:
        lines += ['wrk.headers["Content-Type"] = "application/json"', f"wrk.body = [[{json.dumps(body)}]]"]
    if distinct_sent_at:
        # wrk.body with its sentAt's microseconds counted up, request by request, each request
        # from the next key in turn.
        template = (
            json.dumps({**body, "sentAt": "SENT_AT"}).replace("%", "%%").replace("SENT_AT", "2026-12-05T07:00:01.%06dZ")
        )
        keys = ", ".join(f'"{authorization}"' for authorization in authorizations)
        lines += [
            "local sent = 0",
            f"local authorizations = {{{keys}}}",
            "request = function()",
            "  sent = sent + 1",
            "  wrk.headers['Authorization'] = authorizations[sent % #authorizations + 1]",
            f"  return wrk.format(nil, nil, nil, string.format([[{template}]], sent % 1000000))",
            "end",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def paced_script(lua: Path, rate: float) -> Path:
    """``lua`` offering ``rate`` requests a second (wrk has no rate of its own; wrk2 is not in
    Debian): each of wrk's two threads sends on a schedule of ``2 / rate`` seconds a request, a
    request going out on the next free slot of its thread's schedule (wrk's ``delay`` before each
    request; LuaJIT's ffi gives the clock), so answers that take longer do not lower the rate as
    long as a connection is free. The figure printed is the rate that arrived."""
    paced = lua.with_name(f"{lua.stem}-paced.lua")
    lines = [
        lua.read_text(),
        'local ffi = require("ffi")',
        "ffi.cdef[[ typedef struct { long sec; long nsec; } timespec_t; int clock_gettime(int, timespec_t *); ]]",
        'local clock = ffi.new("timespec_t")',
        "local function now_ms()",
        "  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC",
        "  return tonumber(clock.sec) * 1000 + tonumber(clock.nsec) / 1000000",
        "end",
        f"local gap = {1000 * WRK_THREADS / rate:.6f}  -- ms between this thread's requests",
        "local slot = nil",
        "delay = function()",
        "  local now = now_ms()",
        "  slot = math.max((slot or now) + gap, now)",
        "  return math.floor(slot - now + 0.5)",
        "end",
    ]
    paced.write_text("\n".join(lines) + "\n")
    return paced


def wrk(route: str, stack: str, url: str, lua: Path, events: int, seconds: int, connections: int) -> Run:
    completed = subprocess.run(
        ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if completed.returncode != 0:
        raise BenchError(f"wrk failed on {url}: {completed.stderr.strip()}")
    output = completed.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    latency = {percent: float(value) * _UNIT_MS[unit] for percent, value, unit in _LATENCY.findall(output)}
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:.*", output)
    not_200 = int(failed.group(1)) if failed else 0
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    if errors:
        print(f"  {route} ({stack}): {errors.group(0).strip()}", file=sys.stderr)
    return Run(route, stack, rate, rate * events, latency["50"], latency["99"], not_200, requests)


def print_table(results: dict[str, list[Run]]) -> None:
    print(f"\nuserpath edge under wrk ({os.cpu_count()} CPUs, load {load_average()}), no worker draining\n")
    print("| broker | route | server stack | requests/s | events/s | p50 ms | p99 ms | not 200 |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for broker, runs in results.items():
        for run in runs:
            print(
                f"| {BROKERS[broker].label} | {run.route} | {run.stack} | {run.requests_per_second:,.0f} | "
                f"{run.events_per_second:,.0f} | {run.p50_ms:.2f} | {run.p99_ms:.2f} | {run.not_200} |"
            )


def print_pipelines(pipelines: dict[str, Pipeline]) -> None:
    print(
        f"\nthe whole pipeline, /v1/batch of {BATCH_EVENTS} (edge --workers {EDGE_PROCESSES}, worker --concurrency "
        f"{WORKER_CONCURRENCY}, PostgreSQL; events a second; kept up: the last event stored within "
        f"{KEPT_UP_SECONDS:.0f} s of the load's end)\n"
    )
    print("| broker | edge alone | drain alone | offered: accepted, backlog after | pipeline | pipeline / drain |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for broker, figures in pipelines.items():
        met = "met" if figures.share_of_drain >= PIPELINE_TARGET else "missed"
        offers = "; ".join(
            f"{offer.offered:,.0f}: {offer.accepted:,.0f}, {offer.backlog_seconds:.1f} s" for offer in figures.offers
        )
        print(
            f"| {BROKERS[broker].label} | {figures.edge_alone:,.0f} | {figures.drain:,.0f} | {offers} "
            f"| {figures.rate:,.0f} | {figures.share_of_drain:.0%} ({met}: {PIPELINE_TARGET:.0%}) |"
        )


@contextlib.contextmanager
def serving(command: list[str], port: int, environment: dict[str, str], log_path: Path) -> Iterator[None]:
    """A server process on ``port``, once it accepts connections; stopped on exit."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, env=environment, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(lambda: _accepting(port) or process.poll() is not None, 60, f"port {port} to listen")
        if process.poll() is not None:
            raise BenchError(f"{' '.join(command)} exited: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)  # every process of the server up, not only the first
        yield
    finally:
        stop(process)


def _accepting(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_flask(port: int) -> None:
    """The baseline: Flask on waitress, making the edge's own decisions for /v1/track."""
    from flask import Flask, Response, request
    from waitress import serve

    from userpath_worker.edge.app import build
    from userpath_worker.edge.http import credentials

    edge = build().edge
    app = Flask("bench-edge-baseline")

    @app.post("/v1/track")
    def track() -> Response:
        answer = edge.track(credentials(request.headers.get("Authorization")), request.get_json(), "track")
        return Response(answer.body, answer.status, content_type="application/json")

    serve(app, host="127.0.0.1", port=port, threads=16, _quiet=True)


if __name__ == "__main__":
    main()
