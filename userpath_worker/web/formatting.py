"""Times and reasons as the pages show them: "3 hours ago" beside the UTC time, "older than 90 days"."""

from __future__ import annotations

import datetime as dt

from userpath_worker.rotation.models import StaleReason
from userpath_worker.rotation.services import RotationPolicy

_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60))


def utc(when: dt.datetime | None) -> str:
    """``2026-01-31 14:05 UTC``. (%-formatting: four times faster than strftime, and the keys page
    formats thousands of these.)"""
    if when is None:
        return ""
    when = when.astimezone(dt.UTC)
    return "%04d-%02d-%02d %02d:%02d UTC" % (when.year, when.month, when.day, when.hour, when.minute)  # noqa: UP031


def relative(when: dt.datetime | None, now: dt.datetime) -> str:
    """``when`` from ``now``: "never", "just now", "5 minutes ago", "in 3 days"."""
    if when is None:
        return "never"
    seconds = (when - now).total_seconds()
    distance = round(abs(seconds))  # 3599.9 s is an hour
    for unit, size in _UNITS:
        if distance >= size:
            amount = round(distance / size)
            span = f"{amount} {unit}{'' if amount == 1 else 's'}"
            return f"in {span}" if seconds > 0 else f"{span} ago"
    return "just now"


def flag_reason(reason: str, expires_at: dt.datetime | None, policy: RotationPolicy, now: dt.datetime) -> str:
    """Why the rotation pass flagged a key (which expires at ``expires_at``), in words, with the
    policy's thresholds."""
    if reason == StaleReason.TOO_OLD:
        return f"older than {policy.max_age.days} days"
    if reason == StaleReason.UNUSED:
        return f"unused for {policy.unused_for.days} days"
    if reason == StaleReason.EXPIRING_SOON and expires_at is not None:
        return f"expires {relative(expires_at, now)}"
    return reason.replace("_", " ")
