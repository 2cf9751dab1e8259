"""Back-off after a transient upstream refresh failure (SPEC §4.2, §5 step 3; TESTPLAN LD-06 family).

A failing or hanging IdP costs at most one refresh call per ``(session, provider)`` per back-off
window — in one process, and across processes sharing Redis, where followers waiting on the lock reuse
the leader's verdict. A token whose whole lifetime is shorter than the 30 s skew is not refreshed on
every request. Calls are counted at the upstream; nothing here asserts on elapsed time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from flask import Flask

from flask_mcp_auth.storage import UpstreamToken
from flask_mcp_auth.testing import issue_token
from flask_mcp_auth.upstream.base import UpstreamUnavailable
from flask_mcp_auth.upstream.refresh import FAILURE_KIND, MAX_SKEW, Refresher, refresh_due, refresh_skew
from tests.support.token_endpoint import TokenEndpoint
from tests.test_http_deadline import DribbleServer
from tests.test_identity import _upstream, bearer, make_app
from tests.test_refresh import NEW, OLD, CountingClient, _vault, expired, refresh_app, run_workers, stored


@pytest.fixture()
def idp() -> Iterator[TokenEndpoint]:
    with TokenEndpoint() as endpoint:
        yield endpoint


def _sid(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["tsid"])


# --- (a) one process: a failure is reused for the window ------------------------------------------------
def test_idp_503_many_requests_make_one_refresh_call(storage_url: str, idp: TokenEndpoint) -> None:
    idp.failure = "503"
    app = refresh_app(storage_url, idp)
    token = issue_token(app, "alice", {"corp": expired(idp), "github": "gho_x"})
    client = app.test_client()
    for _ in range(5):
        other = client.get("/mcp", headers=bearer(token))  # a view that does not need corp
        assert other.status_code == 200
        assert other.get_json()["upstream"] == {"github": "gho_x"}
        assert other.get_json()["missing"] == ["corp"]
        needs = client.get("/needs-corp", headers=bearer(token))
        assert needs.status_code == 503  # still transient, not "re-authorize"
    assert idp.refresh_calls == 1
    marker = app.extensions["mcp_auth"].storage.get(FAILURE_KIND, f"{_sid(token)}:corp")
    assert marker is not None and marker["reason"] == "token_http_5xx"
    row = stored(app, token)
    assert row is not None and row.access_token == "old-at"  # the row is kept


def test_backoff_window_ends_and_success_clears_the_marker(storage_url: str, idp: TokenEndpoint) -> None:
    idp.failure = "html"
    app = refresh_app(storage_url, idp)
    runtime = app.extensions["mcp_auth"]
    token = issue_token(app, "alice", {"corp": expired(idp)})
    client = app.test_client()
    assert client.get("/needs-corp", headers=bearer(token)).status_code == 503
    assert client.get("/needs-corp", headers=bearer(token)).status_code == 503
    assert idp.refresh_calls == 1
    idp.failure = None
    refresher = runtime.parts["refresher"]
    refresher.clock = lambda: time.time() + refresher.failure_backoff + 1
    healed = client.get("/needs-corp", headers=bearer(token))
    assert healed.status_code == 200
    assert idp.refresh_calls == 2
    assert runtime.storage.get(FAILURE_KIND, f"{_sid(token)}:corp") is None


def test_backoff_path_keeps_one_storage_round_trip(storage_url: str, idp: TokenEndpoint) -> None:
    idp.failure = "503"
    app = refresh_app(storage_url, idp)
    storage = app.extensions["mcp_auth"].storage
    token = issue_token(app, "alice", {"corp": expired(idp), "github": "gho_x"})
    client = app.test_client()
    assert client.get("/mcp", headers=bearer(token)).status_code == 200  # the failing refresh
    calls: list[str] = []
    for name in ("load_session", "get", "acquire_lock", "put"):
        original = getattr(storage, name)

        def counting(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(storage, name, counting)
    for _ in range(3):
        assert client.get("/mcp", headers=bearer(token)).status_code == 200
    assert calls == ["load_session"] * 3  # the in-process marker needs no I/O
    assert idp.refresh_calls == 1


def test_hanging_idp_is_not_called_again_by_the_next_request(storage_url: str) -> None:
    with DribbleServer(interval=0.3) as hanging:  # answers the token request one byte per 0.3 s
        app = make_app(storage_url, upstreams=[_upstream("corp", hanging.url), _upstream("github")],
                       MCP_AUTH_UPSTREAM_TIMEOUT=1)
        old = UpstreamToken(provider="corp", access_token="old-at", refresh_token="rt-1",
                            expires_at=time.time() - 5, subject="up-alice")
        token = issue_token(app, "alice", {"corp": old, "github": "gho_x"})
        client = app.test_client()
        first = client.get("/mcp", headers=bearer(token))
        assert first.status_code == 200 and first.get_json()["missing"] == ["corp"]
        assert hanging.paths == ["/token"]
        second = client.get("/mcp", headers=bearer(token))
        assert second.status_code == 200 and second.get_json()["upstream"] == {"github": "gho_x"}
        assert client.get("/needs-corp", headers=bearer(token)).status_code == 503
        assert hanging.paths == ["/token"]  # not called again while the failure is fresh


# --- (b) across processes: waiters reuse the lock holder's failure ----------------------------------------
def test_waiter_reuses_a_failure_recorded_by_the_lock_holder() -> None:
    store, vault = _vault()
    vault.save("sid", OLD, 600)
    client = CountingClient(NEW)
    refresher = Refresher(store, vault, {"corp": client}, ttl=600, poll_interval=0.01)  # type: ignore[dict-item]
    owner = store.acquire_lock("refresh:sid:corp", 10)  # "another process" is refreshing …
    assert owner is not None

    def other_process() -> None:
        time.sleep(0.1)  # … and fails transiently: it leaves a marker, then releases the lock
        store.put(FAILURE_KIND, "sid:corp", {"until": time.time() + 10, "reason": "token_timeout"}, ttl=11)
        store.release_lock("refresh:sid:corp", owner)

    thread = threading.Thread(target=other_process)
    thread.start()
    with pytest.raises(UpstreamUnavailable) as info:
        refresher.refresh("sid", OLD)
    thread.join()
    assert info.value.reason == "token_timeout"
    assert client.calls == 0
    with pytest.raises(UpstreamUnavailable):  # remembered in process now
        refresher.refresh("sid", OLD)
    assert client.calls == 0


@pytest.mark.parametrize("marker", [{"until": time.time() - 1, "reason": "token_timeout"},
                                    {"until": "later", "reason": 7}])
def test_lapsed_or_malformed_marker_does_not_block_a_refresh(marker: dict[str, Any]) -> None:
    store, vault = _vault()
    vault.save("sid", OLD, 600)
    client = CountingClient(NEW)
    refresher = Refresher(store, vault, {"corp": client}, ttl=600)  # type: ignore[dict-item]
    store.put(FAILURE_KIND, "sid:corp", marker, ttl=60)
    assert refresher.refresh("sid", OLD).access_token == "new"
    assert client.calls == 1
    assert store.get(FAILURE_KIND, "sid:corp") is None  # cleared by the success


def test_marker_lasts_one_window_even_if_the_wall_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wall clock stepped backwards (NTP) must not stretch the in-process back-off beyond one window."""
    store, vault = _vault()
    vault.save("sid", OLD, 600)
    client = CountingClient(NEW)
    refresher = Refresher(store, vault, {"corp": client}, ttl=600)  # type: ignore[dict-item]
    refresher._remember(("sid", "corp"), time.time() + refresher.failure_backoff, "token_timeout")
    with pytest.raises(UpstreamUnavailable):
        refresher.refresh("sid", OLD)
    wall = time.time() - 3600.0  # the wall clock jumps an hour back …
    refresher.clock = lambda: wall
    later = time.monotonic() + refresher.failure_backoff + 1  # … while one window really passes
    monkeypatch.setattr("flask_mcp_auth.upstream.refresh.time.monotonic", lambda: later)
    assert refresher.refresh("sid", OLD).access_token == "new"
    assert client.calls == 1


def test_three_processes_on_redis_with_a_failing_idp_make_one_call(redis_url: str, idp: TokenEndpoint) -> None:
    idp.failure = "503"
    idp.delay = 1.0  # keeps the lock held while the others arrive and wait on it
    app = refresh_app(redis_url, idp)
    token = issue_token(app, "alice", {"corp": expired(idp)})
    outputs = run_workers(redis_url, idp, token, count=3, start_in=5)  # same worker as test_refresh's
    assert [o["status"] for o in outputs] == [503, 503, 503]
    assert idp.refresh_calls == 1
    row = stored(app, token)
    assert row is not None and row.access_token == "old-at"


# --- (c) short-lived tokens --------------------------------------------------------------------------------
def test_skew_is_half_the_lifetime_when_shorter_than_a_minute() -> None:
    now = 1_000_000.0
    short = UpstreamToken(provider="p", access_token="a", issued_at=now, expires_at=now + 20)
    assert refresh_skew(short) == 10
    assert not refresh_due(short, now + 9) and refresh_due(short, now + 10)
    long = UpstreamToken(provider="p", access_token="a", issued_at=now, expires_at=now + 3600)
    assert refresh_skew(long) == MAX_SKEW
    unknown = UpstreamToken(provider="p", access_token="a", expires_at=now + 20)
    assert refresh_skew(unknown) == MAX_SKEW and refresh_due(unknown, now)
    assert UpstreamToken.from_dict(short.to_dict()) == short
    assert UpstreamToken.from_dict({"provider": "p", "access_token": "a"}).issued_at is None


def test_short_lived_token_is_not_refreshed_on_every_request(storage_url: str, idp: TokenEndpoint) -> None:
    idp.expires_in = 20
    app = refresh_app(storage_url, idp)
    token = issue_token(app, "alice", {"corp": expired(idp)})
    client = app.test_client()
    seen = {client.get("/needs-corp", headers=bearer(token)).get_json()["upstream"]["corp"] for _ in range(5)}
    assert idp.refresh_calls == 1
    assert len(seen) == 1
    row = stored(app, token)
    assert row is not None and row.issued_at is not None and row.expires_at is not None
    assert row.expires_at - row.issued_at == pytest.approx(20, abs=2)


def test_short_lived_token_with_known_lifetime_is_used_as_is(storage_url: str, idp: TokenEndpoint) -> None:
    app: Flask = refresh_app(storage_url, idp)
    now = time.time()
    fresh = UpstreamToken(provider="corp", access_token="short-at", refresh_token=idp.seed(),
                          issued_at=now, expires_at=now + 20)
    token = issue_token(app, "alice", {"corp": fresh})
    for _ in range(3):
        assert app.test_client().get("/needs-corp", headers=bearer(token)).get_json()["upstream"]["corp"] == "short-at"
    assert idp.refresh_calls == 0
