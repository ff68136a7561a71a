"""Schedule expressions for celery beat, checked when the settings are read."""

from __future__ import annotations

import datetime as dt

from celery.schedules import crontab

from config.durations import parse_duration


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
        interval = parse_duration(text)
    except ValueError:
        interval = dt.timedelta(0)
    if interval <= dt.timedelta(0):
        raise ValueError(
            "must be a crontab expression with 5 fields (minute hour day month weekday), "
            "such as '0 3 * * *', or an interval such as 30s"
        )
    return interval
