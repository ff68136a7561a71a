"""``userpath web``: the pages where owners sign in and manage their keys, served by waitress."""

from __future__ import annotations

import click

from userpath_worker import logs, runtime, schema
from userpath_worker.cli.common import settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True, help="Requests served at once.")
def web(host: str, port: int, threads: int) -> None:
    """Serve Settings → API Keys and the sign-in pages (production server: waitress)."""
    import waitress  # only this command needs the web stack

    from userpath_worker.web.app import create_app

    configured = settings()
    logs.configure(configured.log_level)
    app = create_app(configured, runtime.engine())  # a missing USERPATH_WEB_SECRET stops it here
    schema.prepare(runtime.engine())  # once, at start: migrates the embedded SQLite file
    try:
        server = waitress.create_server(app, host=host, port=port, threads=threads, ident="userpath")
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    click.echo(
        f"Serving the web pages on http://{host}:{port}; open {configured.web_base_url} (USERPATH_WEB_BASE_URL: "
        "forms sent from any other address are refused). Ctrl+C stops."
    )
    server.run()
