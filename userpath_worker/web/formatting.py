"""Times and reasons as the pages show them: "3 hours ago" beside the UTC time, "older than 90 days"."""

from __future__ import annotations

import datetime as dt

from userpath_worker.keys.models import ApiKey
from userpath_worker.rotation.models import StaleReason
from userpath_worker.rotation.services import RotationPolicy

_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60))


def utc(when: dt.datetime | None) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if when else ""


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


def flag_reason(reason: str, key: ApiKey, policy: RotationPolicy, now: dt.datetime) -> str:
    """Why the rotation pass flagged ``key``, in words, with the policy's thresholds."""
    if reason == StaleReason.TOO_OLD:
        return f"older than {policy.max_age.days} days"
    if reason == StaleReason.UNUSED:
        return f"unused for {policy.unused_for.days} days"
    if reason == StaleReason.EXPIRING_SOON and key.expires_at is not None:
        return f"expires {relative(key.expires_at, now)}"
    return reason.replace("_", " ")
