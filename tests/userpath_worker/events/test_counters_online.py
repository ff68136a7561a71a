"""Migration 0019 runs online (schema.ONLINE_REVISIONS): until the counters' table is there, a
worker of this release stores its batches uncounted and the pages show no figures, rather than fail."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy.orm import Session

from tests.common.factories import make_organization
from userpath_worker import schema
from userpath_worker.db import make_engine, utcnow
from userpath_worker.events import rollups


def test_a_database_before_0019_is_counted_nothing_and_read_as_empty(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'before-0019.db'}")
    with engine.connect() as connection:
        config = schema.alembic_config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, "0017")
        connection.commit()
    with Session(engine) as session, session.begin():
        org_id = make_organization(session).id
        tally = rollups.Tally()
        tally.add(org_id, 1, rollups.STORED, 3)
        rollups.add_counts(session, tally, utcnow())  # no table: nothing written, nothing raised
        assert rollups.day_counts(session, org_id, utcnow()) == {}
        assert rollups.refusals_by_key(session, org_id, utcnow()) == []
    assert schema.current_revision(engine) == "0017"
    engine.dispose()
