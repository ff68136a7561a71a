"""Fixtures for the services that commit batch by batch (replay, erasure)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from tests.common.databases import savepoints
from userpath_worker.db import Transaction


@pytest.fixture
def transaction(session: Session) -> Transaction:
    """Each of the service's transactions is a savepoint inside the test's rolled-back one."""
    return savepoints(session)
