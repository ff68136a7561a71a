"""The textbook design the issue measures against: one task per event, one ORM insert and
commit each. Its own app, queue and table, so it shares no code path with the product.

Run by the benchmark as ``celery -A bench.naive worker`` with BENCH_NAIVE_DATABASE_URL and
BENCH_NAIVE_BROKER_URL set.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from typing import Any

from celery import Celery, signals
from sqlalchemy import JSON, DateTime, String, create_engine
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

QUEUE = "bench.naive"
TASK = "bench.naive_track"


class _Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON().with_variant(JSONB(), "postgresql")}


class NaiveEvent(_Base):
    __tablename__ = "naive_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[str] = mapped_column(String(200))
    properties: Mapped[dict[str, Any]]
    timestamp: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


app = Celery("naive", broker=os.environ.get("BENCH_NAIVE_BROKER_URL"), set_as_current=False)
app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue=QUEUE, task_ignore_result=True)


@functools.cache
def _sessions() -> sessionmaker[Session]:
    return sessionmaker(create_engine(os.environ["BENCH_NAIVE_DATABASE_URL"]))


@signals.worker_process_init.connect
def _fresh_engine(**_: Any) -> None:
    _sessions.cache_clear()


@app.task(name=TASK)
def naive_track(event: dict[str, Any]) -> None:
    with _sessions()() as session:
        session.add(
            NaiveEvent(
                event_id=event["event_id"],
                name=event["event"],
                user_id=event["user_id"],
                properties=event["properties"],
                timestamp=dt.datetime.fromisoformat(event["timestamp"]),
                received_at=dt.datetime.now(dt.UTC),
            )
        )
        session.commit()
