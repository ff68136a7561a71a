"""Fixtures of the client's tests: the Redis database they read messages back from."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.common.brokers import CLIENT_REDIS_URL
from tests.common.databases import flushed_redis


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    yield from flushed_redis(CLIENT_REDIS_URL)


EXIT_REDIS_URL = "redis://127.0.0.1:6379/4"  # the exit tests' own database: flushed by them


@pytest.fixture
def exit_broker_url() -> Iterator[str]:
    """The URL of an empty Redis database for the exit tests, whose child processes publish there."""
    for _ in flushed_redis(EXIT_REDIS_URL):
        yield EXIT_REDIS_URL
