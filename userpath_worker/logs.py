"""Logging: one JSON object per line for log collectors, readable text on a terminal.

Every line passes through the key scrubber last, so even a careless log call elsewhere cannot
write an API key.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from userpath_worker.keys import tokens

# Structured fields that our log calls pass with ``extra=``; they become JSON keys.
FIELDS = (
    "task_id",
    "task_name",
    "org_id",
    "key",
    "queue",
    "source",
    "stored",
    "duplicates",
    "dead_lettered",
    "reason",
    "retry_in",
    "messages",
    "seconds",
)


def _task_context() -> dict[str, Any]:
    from celery._state import get_current_task  # logging must not need Celery to be importable

    task = get_current_task()
    if task is None or not task.request.id:
        return {}
    return {"task_id": task.request.id, "task_name": task.name}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_task_context(),
        }
        entry.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return tokens.scrub_text(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{name}={getattr(record, name)}" for name in FIELDS if hasattr(record, name))
        line = super().format(record) + (f" [{extras}]" if extras else "")
        return tokens.scrub_text(line)


def configure(level: str, stream: Any = None) -> None:
    """Send every logger's records to ``stream`` (stderr), JSON unless it is a terminal."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if stream.isatty() else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Each message gets one line at INFO, ours ("message handled", with its counts). Celery's
    # "received" and "succeeded" lines would triple that and cost a formatting each: they show
    # at DEBUG only. Celery's warnings and errors still show.
    quiet = logging.DEBUG if logging.getLevelName(level) == logging.DEBUG else logging.WARNING
    for per_message in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(per_message).setLevel(quiet)
