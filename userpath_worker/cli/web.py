"""``userpath web``: the pages where owners sign in and manage their keys, served by waitress."""

from __future__ import annotations

import gc

import click

from userpath_worker import logs, runtime, schema
from userpath_worker.cli.common import settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True, help="Requests served at once.")
@click.option(
    "--trusted-proxy",
    metavar="ADDRESS",
    help="The address of the TLS proxy in front, whose X-Forwarded-For gives the client's address "
    "(sign-in throttling counts per client address); '*' trusts any. Unset: none.",
)
def web(host: str, port: int, threads: int, trusted_proxy: str | None) -> None:
    """Serve Settings → API Keys and the sign-in pages (production server: waitress, with limits on
    connections, request time and size; run it behind a buffering proxy, docs/operations.md)."""
    # Only this command needs the web stack.
    from userpath_worker.web.app import create_app
    from userpath_worker.web.server import make_server

    configured = settings()
    base_url_set = "web_base_url" in configured.model_fields_set
    if not base_url_set:
        # Unset, the address people open is the one served here: the Origin check and the links
        # the pages print follow --host and --port.
        configured = configured.model_copy(update={"web_base_url": served_url(host, port)})
    logs.configure(configured.log_level)
    app = create_app(configured, runtime.engine())  # a missing USERPATH_WEB_SECRET stops it here
    schema.prepare(runtime.engine())  # once, at start: migrates the embedded SQLite file
    proxy = {}
    if trusted_proxy:
        # waitress then takes the client's address (and scheme) from the proxy's headers, and drops
        # those headers from anyone else.
        proxy = {
            "trusted_proxy": trusted_proxy,
            "trusted_proxy_count": 1,
            "trusted_proxy_headers": "x-forwarded-for x-forwarded-proto",
            "clear_untrusted_proxy_headers": True,
        }
    try:
        server = make_server(app, host, port, threads, **proxy)
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    about_base_url = (
        "USERPATH_WEB_BASE_URL: forms sent from any other address are refused"
        if base_url_set
        else "forms sent from any other address are refused; set USERPATH_WEB_BASE_URL to it for the links "
        "other commands print"
    )
    click.echo(
        f"Serving the web pages on http://{host}:{port}; open {configured.web_base_url} ({about_base_url}). "
        "Ctrl+C stops."
    )
    # Everything loaded so far lives as long as the process: keep it out of the garbage collector's
    # full collections, which would otherwise walk it on every request that allocates much (the
    # keys page of a large organization), tripling that request's time now and then.
    gc.collect()
    gc.freeze()
    server.run()


def served_url(host: str, port: int) -> str:
    """The address of this server for a browser on this machine (a wildcard address is opened as
    the loopback)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
