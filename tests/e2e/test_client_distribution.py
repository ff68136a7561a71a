"""The producer client installs alone (issue 12): ``pip install ./clients/python`` into an empty
virtual environment brings kombu, redis, pydantic and orjson and nothing of the worker, and an
event sent from there with ``userpath_client.UserPath`` is stored by a real worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, select

from tests.common.databases import TEST_DATABASE_PREFIX, flushed_redis
from tests.common.factories import new_key
from tests.common.workers import counts, database_fixtures, running_worker, wait_for, worker_environment
from userpath_worker.events.models import Event, Source

pytestmark = pytest.mark.slow

CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "clients" / "python"
REDIS_URL = "redis://127.0.0.1:6379/8"  # this module's own
WORKER_ONLY = ("celery", "sqlalchemy", "alembic", "psycopg")  # psycopg also matches psycopg-binary

database, clean_database = database_fixtures(f"{TEST_DATABASE_PREFIX}_client_dist")


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    yield from flushed_redis(REDIS_URL)


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a new, empty virtual environment into which only ``clients/python`` is installed.

    pip builds a local directory in place, so it builds a copy: the shared work tree gets no
    build/ of this test's.
    """
    where = tmp_path_factory.mktemp("client_dist")
    source = where / "source"
    shutil.copytree(CLIENT_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv.create(where / "venv", with_pip=True, system_site_packages=False, clear=True)
    python = where / "venv" / "bin" / "python"
    installing = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        env=_without_our_paths(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installing.returncode == 0, installing.stdout[-3000:] + installing.stderr[-3000:]
    return python


def _without_our_paths() -> dict[str, str]:
    """This environment, minus what would put the work tree or this venv on the new one's path."""
    return {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run_in_client_venv(python: Path, script: str, cwd: Path, **environment: str) -> str:
    completed = subprocess.run(
        [str(python), "-c", textwrap.dedent(script)],
        cwd=cwd,  # not the work tree, whose packages would be importable from the current directory
        env=_without_our_paths() | environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


def test_the_client_installs_alone_and_its_events_are_stored(
    client_python: Path,
    clean_database: tuple[str, Engine],
    redis_db: redis.Redis,
    tmp_path: Path,
) -> None:
    installed = json.loads(
        run_in_client_venv(
            client_python,
            """
            import importlib.metadata, json
            print(json.dumps(sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions())))
            """,
            tmp_path,
        )
    )
    assert {"userpath-client", "kombu", "redis", "pydantic", "orjson"} <= set(installed)
    assert [name for name in installed if name.startswith(WORKER_ONLY) or name.startswith("userpath-worker")] == []

    database_url, engine = clean_database
    _, _, key = new_key(engine)
    with running_worker(worker_environment(database_url, REDIS_URL), tmp_path / "worker.log"):
        run_in_client_venv(
            client_python,
            """
            import os, sys
            import userpath_client
            from userpath_client import UserPath

            assert os.environ["VENV_PREFIX"] in userpath_client.__file__, userpath_client.__file__  # not the work tree
            with UserPath(os.environ["USERPATH_API_KEY"], os.environ["USERPATH_BROKER_URL"]) as userpath:
                userpath.track("Installed Alone", user_id="user-1", properties={"plan": "pro"}, event_id="dist-1")
                userpath.flush(timeout=30)
            imported = {name.partition(".")[0] for name in sys.modules}
            assert not imported & {"celery", "sqlalchemy", "alembic", "psycopg", "userpath_worker", "tasks", "config"}
            """,
            tmp_path,
            USERPATH_API_KEY=key,
            USERPATH_BROKER_URL=REDIS_URL,
            VENV_PREFIX=str(client_python.parent.parent),
        )
        wait_for(lambda: counts(engine) == (1, 0), 60, f"the event stored (events, dead letters: {counts(engine)})")

    with engine.connect() as connection:
        stored = connection.execute(select(Event.name, Event.user_id, Event.properties, Event.source)).one()
    assert tuple(stored) == ("Installed Alone", "user-1", {"plan": "pro"}, Source.SERVER)
