"""A refreshed upstream token row never outlives its session (SPEC §7 "every record has a TTL",
§3.3.6: on completion the tokens' lifetime becomes the session's; RFC 7009 §2.1 for revocation).

A session without ``offline_access`` lives ``MCP_AUTH_ACCESS_TOKEN_TTL + MCP_AUTH_CODE_TTL``; the row
rewritten by a transparent refresh in the identity hook must expire with it, not
``MCP_AUTH_REFRESH_TOKEN_TTL`` later. Checked on memory (injected clock) and Redis (``PTTL``), through
the real hook and a loopback token endpoint; plus a session revoked during the upstream call.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import redis
from flask import Flask

from flask_mcp_auth.keys import Cipher
from flask_mcp_auth.storage import Storage, UpstreamToken
from flask_mcp_auth.storage.memory import MemoryStorage
from flask_mcp_auth.storage.vault import TokenVault
from flask_mcp_auth.testing import issue_token
from flask_mcp_auth.upstream.base import UpstreamRejected
from flask_mcp_auth.upstream.refresh import Refresher
from tests.support.token_endpoint import TokenEndpoint
from tests.test_identity import bearer
from tests.test_refresh import expired, refresh_app


@pytest.fixture()
def idp() -> Iterator[TokenEndpoint]:
    with TokenEndpoint() as endpoint:
        yield endpoint


def _short_session(app: Flask, token: str) -> tuple[str, int]:
    """Turn the session behind ``token`` into one without ``offline_access`` (as the chain does)."""
    runtime = app.extensions["mcp_auth"]
    settings = runtime.settings
    sid = str(jwt.decode(token, options={"verify_signature": False})["tsid"])
    ttl = settings.access_token_ttl + settings.code_ttl
    assert ttl < settings.refresh_token_ttl
    runtime.storage.set_session(sid, owner="alice", ttl=ttl, complete=True)
    return sid, ttl


def _refresh_through_hook(app: Flask, token: str, idp: TokenEndpoint) -> str:
    resp = app.test_client().get("/needs-corp", headers=bearer(token))
    assert resp.status_code == 200
    assert idp.refresh_calls == 1
    fresh = resp.get_json()["upstream"]["corp"]
    assert fresh.startswith("at-")
    return str(fresh)


def test_refreshed_row_expires_with_a_short_session_memory(idp: TokenEndpoint) -> None:
    now = [1000.0]
    store = MemoryStorage(clock=lambda: now[0])
    app = refresh_app(store, idp)  # type: ignore[arg-type]
    token = issue_token(app, "alice", {"corp": expired(idp)})
    sid, ttl = _short_session(app, token)
    fresh = _refresh_through_hook(app, token, idp)
    runtime = app.extensions["mcp_auth"]
    assert store.load_session(sid).ttl == pytest.approx(ttl)  # the refresh did not extend the session
    now[0] += ttl - 1
    data = store.load_session(sid)
    assert data.owner == "alice"
    assert runtime.vault.decode(sid, "corp", data.tokens["corp"]).access_token == fresh
    now[0] += 1
    data = store.load_session(sid)
    assert (data.owner, dict(data.tokens)) == (None, {})  # the row went with its session
    assert len(store) == 0  # nor is an index left behind


def test_refreshed_row_expires_with_a_short_session_redis(redis_url: str, idp: TokenEndpoint) -> None:
    app = refresh_app(redis_url, idp)
    token = issue_token(app, "alice", {"corp": expired(idp)})
    sid, ttl = _short_session(app, token)
    _refresh_through_hook(app, token, idp)
    prefix = app.extensions["mcp_auth"].settings.storage_prefix
    raw = redis.Redis.from_url(redis_url)
    try:
        # Session and index read before the row: all only shrink, so each bound holds whatever
        # milliseconds pass between the reads.
        session_left = raw.pttl(f"{prefix}session:{sid}")
        index_left = raw.pttl(f"{prefix}upstream:idx:{sid}")
        row_left = raw.pttl(f"{prefix}upstream:{sid}:corp")
        assert 0 < session_left <= ttl * 1000
        assert 0 < row_left <= session_left
        assert index_left >= row_left
    finally:
        raw.close()


# --- a session revoked while the upstream call runs ------------------------------------------------------
class RevokingClient:
    """An upstream whose refresh answers only after the session was revoked elsewhere."""

    def __init__(self, store: Storage, sid: str) -> None:
        self.store = store
        self.sid = sid
        self.calls = 0

    def refresh(self, token: UpstreamToken) -> UpstreamToken:
        self.calls += 1
        self.store.revoke_session(self.sid, ttl=600)
        return UpstreamToken(provider="corp", access_token="new", refresh_token="rt-2", subject="s")


def test_session_revoked_during_refresh_gets_no_row_back(store: Storage) -> None:
    vault = TokenVault(store, Cipher([os.urandom(32)]))
    old = UpstreamToken(provider="corp", access_token="old", refresh_token="rt-1", expires_at=1.0,
                        subject="s")
    vault.save("sid", old, 600)
    store.set_session("sid", "alice", ttl=600, complete=True)
    client = RevokingClient(store, "sid")
    upstreams: dict[str, Any] = {"corp": client}
    refresher = Refresher(store, vault, upstreams, ttl=604800)
    with pytest.raises(UpstreamRejected) as info:
        refresher.refresh("sid", old)
    assert info.value.reason == "session_revoked"
    assert client.calls == 1
    data = store.load_session("sid")
    assert data.revoked is True and dict(data.tokens) == {}
