"""``userpath edge``: the HTTP edge, Segment's Tracking API and providers' webhooks (docs/contract.md)."""

from __future__ import annotations

import click

from userpath_worker import logs
from userpath_worker.cli.common import settings
from userpath_worker.keys.services import configured_pepper


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to listen on.")
@click.option(
    "--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Server processes (one a core)."
)
def edge(host: str, port: int, workers: int) -> None:
    """Serve POST /v1/batch, /v1/track... (Segment's Tracking API) and /v1/webhooks/PROVIDER in
    front of the broker: 200 only once the broker has the events. Stateless: run several behind a
    load balancer."""
    # Only this command needs the server stack.
    from userpath_worker.edge.server import serve

    configured = settings()
    configured_pepper(configured)  # against PostgreSQL a missing pepper stops it here, with one line
    logs.configure(configured.log_level)
    click.echo(f"Serving the edge on http://{host}:{port} with {workers} process(es). Ctrl+C stops.")
    serve(host, port, workers)
