"""Fixtures of the web pages' tests: the app on a committed database, and browsers.

Each test commits (the pages open their own sessions, as in production), so the tables are emptied
after each one instead of rolled back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import Engine, text

from tests.common.databases import truncate_all
from tests.common.smtp import SmtpServer
from tests.common.web import Browser, People, web_settings
from userpath_worker.models import metadata
from userpath_worker.web.app import create_app


@pytest.fixture
def web_engine(engine: Engine) -> Iterator[Engine]:
    """The test database, emptied after the test."""
    yield engine
    if engine.dialect.name == "postgresql":
        truncate_all(engine)
    else:
        with engine.begin() as connection:
            for table in reversed(metadata.sorted_tables):
                connection.execute(text(f'DELETE FROM "{table.name}"'))


@pytest.fixture
def app(web_engine: Engine) -> Flask:
    return create_app(web_settings(web_engine), web_engine)


@pytest.fixture
def browser(app: Flask) -> Browser:
    return Browser(app.test_client())


@pytest.fixture
def other_browser(app: Flask) -> Browser:
    """A second browser, with cookies of its own."""
    return Browser(app.test_client())


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    yield server
    server.close()


@pytest.fixture
def people(web_engine: Engine) -> People:
    return People(web_engine)
