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
