"""Alembic environment: runs the migrations against the connection or URL it is handed."""

from alembic import context
from sqlalchemy import Connection

from userpath_worker.db import make_engine
from userpath_worker.models import metadata

config = context.config


def run(connection: Connection) -> None:
    # Batch mode rebuilds tables where SQLite cannot ALTER them, so one migration serves both.
    # One transaction per migration: an online migration (schema.ONLINE_REVISIONS) works in
    # transactions of its own, which must see the migrations before it committed.
    context.configure(
        connection=connection, target_metadata=metadata, render_as_batch=True, transaction_per_migration=True
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        run(connection)
    engine.dispose()
