"""Human durations such as ``90d``, ``24h``, ``15m``, ``30s`` or ``0``, as used by the CLI."""

from __future__ import annotations

import datetime as dt
import re

from userpath_worker.errors import UserError

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str, *, what: str) -> dt.timedelta:
    text = text.strip()
    if text == "0":
        return dt.timedelta(0)
    match = _DURATION.fullmatch(text)
    if not match:
        raise UserError(f"{what}: '{text}' is not a duration; write it like 30s, 15m, 24h, 90d or 2w")
    amount, unit = match.groups()
    return dt.timedelta(**{_UNITS[unit]: int(amount)})


def format_duration(value: dt.timedelta) -> str:
    seconds = int(value.total_seconds())
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"
