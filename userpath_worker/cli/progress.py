"""Progress of a long command (replay, erase, purge): a bar on a terminal, plain lines otherwise.

Both go to standard error, so standard output (a result, or ``--json``) stays clean when piped.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import click


@contextlib.contextmanager
def progress(verb: str, noun: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields ``show(done)``, to be called with the running count of ``total`` after each batch.

    On a terminal it moves a bar labelled ``verb`` (click's bar prints nothing when not on one);
    elsewhere each call prints a line such as ``erased 1000 of 5000 events``.
    """
    if sys.stderr.isatty():
        with click.progressbar(length=total, label=verb.capitalize(), file=sys.stderr) as bar:
            yield lambda done: bar.update(done - bar.pos)
        return

    def line(done: int) -> None:
        click.echo(f"{verb} {done} of {total} {noun}", err=True)

    yield line
