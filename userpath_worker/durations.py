"""Durations given on the command line (``--grace 24h``): config's parser, with the option named
in the one-line error a person sees."""

from __future__ import annotations

import datetime as dt

from config.durations import format_duration
from config.durations import parse_duration as _parse
from userpath_worker.errors import UserError

__all__ = ["format_duration", "parse_duration"]


def parse_duration(text: str, *, what: str) -> dt.timedelta:
    try:
        return _parse(text)
    except ValueError as error:
        raise UserError(f"{what}: {error}") from None
