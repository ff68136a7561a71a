"""Durations given as text to a command's body (``--older-than 30d``): config's parser, with the
option named in the one-line error a person sees. Options parse theirs with ``cli.common.DURATION``,
which makes a bad one a usage mistake."""

from __future__ import annotations

import datetime as dt

from config.durations import parse_duration as _parse
from userpath_worker.errors import UserError

__all__ = ["parse_duration"]


def parse_duration(text: str, *, what: str) -> dt.timedelta:
    try:
        return _parse(text)
    except ValueError as error:
        raise UserError(f"{what}: {error}") from None
