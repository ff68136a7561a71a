"""The celery beat schedule: what runs periodically, and when (UTC).

Exactly one beat process may run per deployment; it keeps its schedule state in the file
``celerybeat-schedule`` in its working directory (``userpath beat --schedule PATH`` moves it).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from celery.schedules import crontab

from config.settings import Settings
from userpath_worker.durations import parse_duration
from userpath_worker.errors import UserError

ROTATION_ENTRY = "userpath.flag_stale_keys"


def parse_schedule(text: str) -> crontab | dt.timedelta:
    """A five-field crontab expression, or a plain interval such as ``30s`` (for tests and demos).

    Raises ValueError with a message that does not repeat the value.
    """
    fields = text.split()
    if len(fields) == 5:
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        try:
            return crontab(minute, hour, day_of_week, day_of_month, month_of_year)
        except ValueError:
            raise ValueError("is not a valid crontab expression (minute hour day month weekday)") from None
    try:
        interval = parse_duration(text, what="schedule")
    except UserError:
        interval = dt.timedelta(0)
    if interval <= dt.timedelta(0):
        raise ValueError(
            "must be a crontab expression with 5 fields (minute hour day month weekday), "
            "such as '0 3 * * *', or an interval such as 30s"
        )
    return interval


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        ROTATION_ENTRY: {
            "task": "userpath.flag_stale_keys",
            "schedule": parse_schedule(settings.rotation_schedule),
        },
    }
