"""The edge's decisions against a migrated SQLite file of the test's own."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from userpath_worker import schema
from userpath_worker.db import make_engine


@pytest.fixture
def migrated(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'edge.db'}")
    schema.upgrade(engine)
    yield engine
    engine.dispose()
