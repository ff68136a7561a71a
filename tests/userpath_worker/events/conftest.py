"""Fixtures for the services that commit batch by batch (replay, erasure)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from userpath_worker.db import Transaction


@pytest.fixture
def transaction(session: Session) -> Transaction:
    """Each of the service's transactions is a savepoint inside the test's rolled-back one."""

    @contextlib.contextmanager
    def savepoint() -> Iterator[Session]:
        with session.begin_nested():
            yield session

    return savepoint
