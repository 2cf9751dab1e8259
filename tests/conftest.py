"""Shared fixtures: a real redis-server per test session (per xdist worker) or per test (``own_redis``),
the storage backends parametrised over memory and Redis, and a plain ``requests.Session``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from flask_mcp_auth.storage import Storage
from flask_mcp_auth.storage.memory import MemoryStorage
from flask_mcp_auth.storage.redis import RedisStorage
from tests.support.redis_server import RedisServer, start_redis


def _redis_process() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, no persistence, stopped by PID at the end."""
    yield from _redis_process()


@pytest.fixture()
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may stop and restart (``start_redis(port)``)."""
    yield from _redis_process()


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis, flushed before each test that uses it."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(params=["memory", "redis"])
def storage_url(request: pytest.FixtureRequest) -> str:
    """``memory://``, then the per-test flushed Redis: a test using it runs on both backends."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return "memory://"


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Storage]:
    """A fresh :class:`MemoryStorage`, then a :class:`RedisStorage` on the per-test flushed Redis."""
    if request.param == "memory":
        yield MemoryStorage()
        return
    backend = RedisStorage.from_url(str(request.getfixturevalue("redis_url")), prefix="test:{store}:")
    yield backend
    backend.close()


@pytest.fixture()
def http() -> Iterator[requests.Session]:
    """A plain session for the package's outgoing calls, closed after the test."""
    session = requests.Session()
    yield session
    session.close()
