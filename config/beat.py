"""The celery beat schedule: what runs periodically, and when (UTC).

Exactly one beat process may run per deployment; it keeps its schedule state in the file
``celerybeat-schedule`` in its working directory (``userpath beat --schedule PATH`` moves it).
"""

from __future__ import annotations

from typing import Any

from config.celery import APPLY_RETENTION_TASK, FLAG_STALE_KEYS_TASK, MAINTAIN_PARTITIONS_TASK
from config.schedules import parse_schedule
from config.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        FLAG_STALE_KEYS_TASK: {
            "task": FLAG_STALE_KEYS_TASK,
            "schedule": parse_schedule(settings.rotation_schedule),
        },
        # Hourly by default: the partitions are made a week ahead, so beat may stop for days.
        MAINTAIN_PARTITIONS_TASK: {
            "task": MAINTAIN_PARTITIONS_TASK,
            "schedule": parse_schedule(settings.partitions_schedule),
        },
        APPLY_RETENTION_TASK: {
            "task": APPLY_RETENTION_TASK,
            "schedule": parse_schedule(settings.retention_schedule),
        },
    }
