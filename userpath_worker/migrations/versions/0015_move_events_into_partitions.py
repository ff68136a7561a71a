"""Events at scale (2 of 2), PostgreSQL: copy the rows of events into its partitioned successor in
batches, each its own transaction, while workers go on ingesting (0012's trigger copies what they
write), then swap the tables in one short transaction and drop the old one.

Online: this release's workers run against a database at 0012 (``schema.ONLINE_REVISIONS``).

Revision ID: 0015
Revises: 0012
Create Date: 2027-01-05 09:30:00.000000
"""

import sys
import time

from alembic import op

from userpath_worker.events import partitions

revision = "0015"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name != "postgresql":
        return
    shown = [0.0]

    def progress(copied: int, total: int) -> None:
        if time.monotonic() - shown[0] >= 5:
            shown[0] = time.monotonic()
            print(f"events: copied {copied} rows into partitions (ids span {total})", file=sys.stderr)

    # Its own connections: each batch commits, and this migration's transaction holds no lock on events.
    moved = partitions.move_into_partitions(connection.engine, progress=progress)
    print(
        f"events: {moved.copied} rows copied into partitions; the swap held events for {moved.swap_seconds:.3f} s",
        file=sys.stderr,
    )


def downgrade() -> None:
    raise NotImplementedError("events stay partitioned: restore a backup taken before the upgrade to go back")
