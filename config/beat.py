"""The celery beat schedule: what runs periodically, and when (UTC).

Exactly one beat process may run per deployment; it keeps its schedule state in the file
``celerybeat-schedule`` in its working directory (``userpath beat --schedule PATH`` moves it).
"""

from __future__ import annotations

from typing import Any

from config.celery import FLAG_STALE_KEYS_TASK
from config.schedules import parse_schedule
from config.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        FLAG_STALE_KEYS_TASK: {
            "task": FLAG_STALE_KEYS_TASK,
            "schedule": parse_schedule(settings.rotation_schedule),
        },
    }
