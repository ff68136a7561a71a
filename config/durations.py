"""Human durations such as ``90d``, ``24h``, ``15m``, ``30s`` or ``0``: the CLI's options and
the beat schedule's intervals read them alike."""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"(\d+)([smhdw])")
DURATION_HINT = "write it like 30s, 15m, 24h, 90d or 2w"


def parse_duration(text: str) -> dt.timedelta:
    """Raises ValueError, saying what a duration looks like, for anything else."""
    text = text.strip()
    if text == "0":
        return dt.timedelta(0)
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"'{text}' is not a duration; {DURATION_HINT}")
    amount, unit = match.groups()
    return dt.timedelta(**{_UNITS[unit]: int(amount)})


def format_duration(value: dt.timedelta) -> str:
    seconds = int(value.total_seconds())
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"
