"""Serving the edge: uvicorn with uvloop and httptools, chosen by measurement (README, "The HTTP edge")."""

from __future__ import annotations

import uvicorn

from config.settings import get_settings
from userpath_worker import logs, metrics, runtime, schema
from userpath_worker.edge.app import EdgeApp, build


def application() -> EdgeApp:
    """uvicorn's factory: each server process builds its own (its engine, its broker connections)."""
    logs.configure(get_settings().log_level)
    return build()


def serve(host: str, port: int, workers: int) -> None:
    schema.prepare(runtime.engine())  # once, at start: migrates the embedded SQLite file
    metrics_port = get_settings().edge_metrics_port
    if metrics_port:  # the sum of every server process's counters (they share metrics' directory)
        metrics.serve(metrics_port)
    uvicorn.run(
        "userpath_worker.edge.server:application",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,  # the application logs each request, with a webhook URL's key in display form
        log_config=None,  # our logging (logs.configure), not uvicorn's
        server_header=False,
        timeout_keep_alive=30,  # Segment's libraries keep their connection between batches
        timeout_graceful_shutdown=10,
    )
