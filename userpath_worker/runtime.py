"""Process-wide handles built from the settings, shared by the CLI and the worker processes."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import get_settings
from userpath_worker.db import make_engine, make_session_factory

_engines: dict[str, Engine] = {}


def engine() -> Engine:
    url = get_settings().database_url
    if url not in _engines:
        # Parameters stay out of error messages and logs: they are customers' event data.
        _engines[url] = make_engine(url, hide_parameters=True)
    return _engines[url]


def session_factory() -> sessionmaker[Session]:
    return make_session_factory(engine())


def forget_connections_after_fork() -> None:
    """A forked child must not reuse its parent's pooled connections (SQLAlchemy's rule)."""
    for inherited in _engines.values():
        inherited.dispose(close=False)
    _engines.clear()
