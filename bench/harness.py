"""What every measurement needs: a fresh database and key, worker processes, /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from userpath_worker import schema
from userpath_worker.db import make_engine
from userpath_worker.keys.services import KeyIdentity, KeyService
from userpath_worker.organizations.services import create_organization
from userpath_worker.webhooks import services as webhook_secrets
from userpath_worker.webhooks.crypto import SecretBox

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
DATABASE = "userpath_bench"
DATABASE_URL = f"{POSTGRES_SERVER}/{DATABASE}"
SECRET_KEY = "bench-secret-key-of-the-webhook-signing-secrets"  # the workers' USERPATH_SECRET_KEY
KEY_PEPPER = "bench-pepper-of-the-api-key-digests"  # the workers' USERPATH_KEY_PEPPER
STRIPE_SECRET = "whsec_bench_0123456789abcdefghijklmnopqrst"


class BenchError(RuntimeError):
    """A measurement could not finish (a worker died, a deadline passed)."""


def fresh_database(name: str = DATABASE, migrate: bool = True) -> Engine:
    """Drop and re-create a bench database, at the current schema unless not ``migrate``."""
    admin = create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = make_engine(f"{POSTGRES_SERVER}/{name}")
    if migrate:
        schema.upgrade(engine)
    return engine


def new_key(engine: Engine, stripe_secret: str | None = None, organization: str | None = None) -> str:
    """A key of a new organization (named ``organization``, unique in a database); with
    ``stripe_secret``, one whose Stripe webhooks must verify."""
    with Session(engine) as session, session.begin():
        name = organization or ("Bench, verified webhooks" if stripe_secret else "Bench")
        organization = create_organization(session, name, "bench@example.com")
        _, plaintext = KeyService(session, KEY_PEPPER).create(organization, "bench", "bench@example.com")
        if stripe_secret:
            box = SecretBox(SECRET_KEY)
            webhook_secrets.add_secret(session, box, organization, "stripe", stripe_secret, "bench@example.com")
        return plaintext


def organization_of(engine: Engine, api_key: str) -> int:
    """The id of the organization ``api_key`` belongs to, as the worker finds it."""
    with Session(engine) as session:
        identity = KeyService(session, KEY_PEPPER).lookup(api_key)
        if not isinstance(identity, KeyIdentity):
            raise BenchError(f"the bench's own key is refused: {identity}")
        return identity.org_id


def checkout(commit: str) -> Path:
    """A git worktree of ``commit`` under the temporary directory, made once and reused: a worker
    of another commit runs from it (``running_worker``'s ``tree``)."""
    tree = Path(tempfile.gettempdir()) / f"userpath-bench-{commit}"
    if not (tree / "tasks").is_dir():
        # --force: a worktree whose folder was deleted with the temporary directory is still registered.
        subprocess.run(
            ["git", "worktree", "add", "--force", "--detach", str(tree), commit],
            cwd=REPOSITORY,
            capture_output=True,
            check=True,
        )
    return tree


def empty_events(engine: Engine) -> None:
    with engine.begin() as connection:
        # event_ids too: each scenario sends the same event ids, which would otherwise be duplicates.
        connection.execute(text("TRUNCATE events, event_ids, dead_letters RESTART IDENTITY"))
        connection.execute(text("CHECKPOINT"))  # each scenario starts without the last one's dirty pages


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path
    started: float  # time.time() at Popen
    ready: float = 0.0  # time.time() when it logged that it consumes

    def pids(self) -> dict[str, int]:
        """The main process and its pool children, by role."""
        children: list[int] = []
        for thread in Path(f"/proc/{self.process.pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                children += [int(child) for child in (thread / "children").read_text().split()]
        return {"main": self.process.pid} | {f"child{n}": pid for n, pid in enumerate(sorted(children), 1)}

    def memory_mib(self, field: str) -> dict[str, float]:
        """``field`` of /proc/PID/status (VmRSS now, VmHWM the peak) of each process, in MiB."""
        return {role: status_kib(pid, field) / 1024 for role, pid in self.pids().items()}

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"the worker exited:\n{self.log.read_text(errors='replace')[-2000:]}")


def status_kib(pid: int, field: str) -> int:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def running_worker(
    app: str,
    queues: Iterable[str],
    environment: dict[str, str],
    name: str,
    concurrency: int,
    tree: Path = REPOSITORY,
) -> Iterator[Worker]:
    """A real ``celery worker`` process group, ready to consume; stopped (killed if need be) on exit.

    ``tree``: the checkout whose code the worker runs (``checkout``), this one's by default.
    """
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        f"--queues={','.join(queues)}",
        f"--concurrency={concurrency}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel=INFO",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            env=without_settings()
            | environment
            # Ahead of the editable installs of this checkout: the tree's own worker and client.
            | {"PYTHONPATH": os.pathsep.join([str(tree), str(tree / "clients" / "python")])},
            cwd=tree,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(process, log, started=time.time())
    try:
        wait_until(lambda: b"ready." in log.read_bytes() or process.poll() is not None, 60, f"{name} to start", 0.01)
        worker.ready = time.time()
        worker.check_alive()
        yield worker
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


def without_settings() -> dict[str, str]:
    """This process's environment without its ``USERPATH_`` settings: a process started from it
    gets only the settings the benchmark gives it."""
    return {name: value for name, value in os.environ.items() if not name.startswith("USERPATH_")}


def product_environment(broker_url: str) -> dict[str, str]:
    return {
        "USERPATH_DATABASE_URL": DATABASE_URL,
        "USERPATH_BROKER_URL": broker_url,
        "USERPATH_METRICS_PORT": "0",
        "USERPATH_SECRET_KEY": SECRET_KEY,
        "USERPATH_KEY_PEPPER": KEY_PEPPER,
    }
