"""Logging: one JSON object per line for log collectors, readable text on a terminal.

Every line passes through the key scrubber last, so even a careless log call elsewhere (ours,
Celery's or kombu's) cannot write an API key: a key in plain text is shown in its display form,
and a line that holds one base64- or percent-encoded, which no rewrite can be trusted to catch
everywhere, is withheld whole.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any
from urllib.parse import unquote

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


MAX_MESSAGE_CHARS = 16 * 1024  # of one log message: a longer one is cut, so a line's scan is bounded
WITHHELD = "a log line was withheld: it held an API key in an encoded form"


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + " [cut]"


def _last_line(line: str) -> str | None:
    """``line`` with its plain keys in their display form, or None when it hides one encoded."""
    line = tokens.scrub_text(line)
    if tokens.hides_key(line) or ("%" in line and tokens.KEY_PATTERN.search(unquote(line))):
        return None
    return line


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
            "message": _bounded(record.getMessage()),
            **_task_context(),
        }
        entry.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            entry["exception"] = _bounded(self.formatException(record.exc_info))
        line = _last_line(json.dumps(entry, default=str, ensure_ascii=False))
        if line is None:
            withheld = {name: entry[name] for name in ("time", "level", "logger")} | {"message": WITHHELD}
            return json.dumps(withheld)
        return line


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{name}={getattr(record, name)}" for name in FIELDS if hasattr(record, name))
        line = _last_line(_bounded(super().format(record)) + (f" [{extras}]" if extras else ""))
        return f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {WITHHELD}" if line is None else line


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
