"""Real worker processes for end-to-end tests, and bounded waiting for their results."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import Engine, func, select

from config.celery import QUEUES
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events.models import Event

REPOSITORY = Path(__file__).resolve().parent.parent


def worker_environment(database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("USERPATH_")}
    environment.update(USERPATH_DATABASE_URL=database_url, USERPATH_BROKER_URL=broker_url, **extra)
    return environment


@contextlib.contextmanager
def running_worker(
    environment: dict[str, str], log_path: Path, *arguments: str, ready_within: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery -A tasks.app worker`` process, stopped (and killed if need be) on exit."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.app",
        "worker",
        f"--queues={','.join(QUEUES)}",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
        *arguments,
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, env=environment, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for(
            lambda: "ready." in log_path.read_text(errors="replace") or process.poll() is not None,
            ready_within,
            "the worker to start",
        )
        if process.poll() is not None:
            raise AssertionError(f"the worker exited at start:\n{log_path.read_text(errors='replace')[-3000:]}")
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def counts(engine: Engine) -> tuple[int, int]:
    """(stored events, dead letters)."""
    with engine.connect() as connection:
        return (
            connection.scalar(select(func.count()).select_from(Event)) or 0,
            connection.scalar(select(func.count()).select_from(DeadLetter)) or 0,
        )


def producer(broker_url: str) -> Celery:
    """A bare Celery producer that knows only task names, as any other producer would."""
    app = Celery("producer", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    return app
