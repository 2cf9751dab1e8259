"""TESTPLAN LD-05: a flood of dynamic client registrations (RFC 7591 §5) from one address is cut off
with 429 after the configured per-minute limit, and the client store stays bounded: every DCR client
record carries a TTL, and ``MCP_AUTH_MAX_CLIENTS`` caps the count with eviction.

In-process through the Flask test client (no sockets), on memory and on a real Redis.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask import Flask

from flask_mcp_auth.server.blueprint import client_registry
from flask_mcp_auth.server.clients import CLIENT_TTL
from flask_mcp_auth.storage.memory import MemoryStorage
from tests.support.as_unit import make_app, runtime
from tests.test_registration import stored_clients

BODY = {"redirect_uris": ["https://c.example/cb"]}


class _Clock:
    """A hand-driven monotonic clock for the memory backend, so its TTLs can be checked through the
    storage API (records vanish once the clock passes them)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _app(storage_url: str, clock: _Clock, **config: Any) -> Flask:
    if storage_url.startswith("memory"):
        return make_app(MemoryStorage(clock=clock), **config)
    return make_app(storage_url, **config)


def _register(app: Flask, addr: str) -> Any:
    return app.test_client().post("/oauth/register", json=BODY, environ_base={"REMOTE_ADDR": addr})


def _assert_every_client_expires(app: Flask, clock: _Clock, ids: list[str]) -> None:
    """Every stored client record has a finite TTL of at most CLIENT_TTL."""
    rt = runtime(app)
    store = rt.storage
    registry = client_registry(rt)
    assert all(registry.get(cid) is not None for cid in ids)
    if isinstance(store, MemoryStorage):
        clock.now += CLIENT_TTL - 60  # still inside the TTL
        assert all(store.get("client", cid) is not None for cid in ids)
        clock.now += 61  # just past it: all gone, through the storage API
        assert [cid for cid in ids if store.get("client", cid) is not None] == []
        assert stored_clients(app) == []
        return
    conn = redis.Redis.from_url(str(rt.settings.storage))
    try:
        prefix = rt.settings.storage_prefix.replace("{", "[{]")
        keys = list(conn.scan_iter(match=prefix + "*client:*"))
        assert len(keys) == len(ids)
        ttls = [conn.pttl(k) for k in keys]
    finally:
        conn.close()
    assert all(0 < t <= CLIENT_TTL * 1000 for t in ttls), ttls


def test_ld05_flood_from_one_address_is_cut_off_and_bounded(storage_url: str) -> None:
    clock = _Clock()
    app = _app(storage_url, clock)
    limit = runtime(app).settings.registration_rate_limit  # the shipped default
    assert 0 < limit < 1000
    statuses: dict[int, int] = {}
    created: list[str] = []
    for _ in range(1000):
        resp = _register(app, "198.51.100.23")
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        if resp.status_code == 201:
            created.append(resp.get_json()["client_id"])
        else:
            assert resp.status_code == 429
            assert resp.get_json()["error"] == "too_many_requests"
            assert int(resp.headers["Retry-After"]) > 0
            assert resp.headers["Cache-Control"] == "no-store"
    assert statuses == {201: limit, 429: 1000 - limit}
    assert len(set(created)) == limit
    assert sorted(stored_clients(app)) == sorted(created)
    # another address is not affected by the flood
    other = _register(app, "198.51.100.24")
    assert other.status_code == 201
    created.append(other.get_json()["client_id"])
    _assert_every_client_expires(app, clock, created)


def test_ld05_many_addresses_stay_under_the_client_cap(storage_url: str) -> None:
    clock = _Clock()
    app = _app(storage_url, clock, MCP_AUTH_REGISTRATION_RATE_LIMIT=10_000, MCP_AUTH_MAX_CLIENTS=50)
    registry = client_registry(runtime(app))
    created: list[str] = []
    for i in range(200):
        resp = _register(app, f"10.0.{i // 250}.{i % 250 + 1}")
        assert resp.status_code == 201, resp.get_json()
        created.append(resp.get_json()["client_id"])
        assert len(stored_clients(app)) <= 50
    live = stored_clients(app)
    assert len(live) == 50
    assert sorted(live) == sorted(created[-50:])  # the oldest never-used ones were evicted
    assert all(registry.get(cid) is None for cid in created[:150])
    _assert_every_client_expires(app, clock, live)


@pytest.mark.parametrize("limit", [1, 7])
def test_ld05_limit_is_read_from_settings(limit: int) -> None:
    app = make_app(MCP_AUTH_REGISTRATION_RATE_LIMIT=limit)
    codes = [_register(app, "192.0.2.1").status_code for _ in range(limit + 3)]
    assert codes == [201] * limit + [429] * 3
