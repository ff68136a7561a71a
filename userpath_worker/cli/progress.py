"""Progress of a long command (replay, erase, purge): a bar on a terminal, plain lines otherwise.

Both go to standard error, so standard output (a result, or ``--json``) stays clean when piped.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from time import monotonic

import click

from userpath_worker.cli.common import counted

LINE_INTERVAL = 1.0  # seconds between plain progress lines


@contextlib.contextmanager
def progress(verb: str, noun: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields ``show(done)``, to be called with the running count of ``total`` after each batch.

    On a terminal it moves a bar labelled ``verb`` (click's bar prints nothing when not on one);
    elsewhere it prints lines such as ``erased 1000 of 5000 events`` (``noun`` is singular: the
    line says ``1 of 1 event``), the last count always.
    """
    if sys.stderr.isatty():
        with click.progressbar(length=total, label=verb.capitalize(), file=sys.stderr) as bar:
            yield lambda done: bar.update(done - bar.pos)
        return
    lines = _Lines(verb, noun, total)
    yield lines.show
    lines.echo()  # the last count, when it was not the total or came too soon after a line


class _Lines:
    """Progress as plain lines: at most one a second (a log needs no line a batch), the total at once."""

    def __init__(self, verb: str, noun: str, total: int) -> None:
        self.verb, self.noun, self.total = verb, noun, total
        self.latest: int | None = None
        self.shown: int | None = None
        self.shown_at = -LINE_INTERVAL

    def show(self, done: int) -> None:
        self.latest = done
        if done == self.total or monotonic() - self.shown_at >= LINE_INTERVAL:
            self.echo()

    def echo(self) -> None:
        if self.latest != self.shown:
            click.echo(f"{self.verb} {self.latest} of {counted(self.total, self.noun)}", err=True)
            self.shown, self.shown_at = self.latest, monotonic()
