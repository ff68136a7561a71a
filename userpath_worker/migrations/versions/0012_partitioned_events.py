"""Events at scale (1 of 2): the dedupe table event_ids, each organization's event retention, and on
PostgreSQL the partitioned successor of events, kept in step by a trigger until 0015 swaps it in.

Revision ID: 0012
Revises: 0010
Create Date: 2027-01-05 09:00:00.000000
"""

import datetime as dt

from alembic import op
import sqlalchemy as sa

from userpath_worker.events import partitions

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Days an organization's events are kept, when not USERPATH_EVENT_RETENTION_DAYS.
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("event_retention_days", sa.Integer(), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite keeps one events table, deduplicated by its unique (org_id, event_id)
    # Which events were stored in the last one or two weeks: a re-sent event is stored once
    # whatever partition of events its first copy is in (events.storage). Partitioned by week
    # (period, a Monday) so that its expiry is a DROP too.
    op.execute(
        "CREATE TABLE event_ids (org_id integer NOT NULL, event_id varchar(100) NOT NULL, period date NOT NULL, "
        "CONSTRAINT pk_event_ids PRIMARY KEY (org_id, event_id, period)) PARTITION BY RANGE (period)"
    )
    op.execute("CREATE TABLE event_ids_default PARTITION OF event_ids DEFAULT")
    partitions.prepare_move(op.get_bind(), dt.datetime.now(dt.UTC).date())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_copy_to_partitions ON events")
        op.execute("DROP FUNCTION IF EXISTS events_copy_to_partitions()")
        op.execute(f"DROP TABLE IF EXISTS {partitions.EVENTS_DURING_MOVE}")
        op.execute("DROP TABLE event_ids")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("event_retention_days")
