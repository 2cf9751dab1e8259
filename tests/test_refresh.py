"""Upstream token refresh in the identity hook (SPEC §4.2, §5 step 3; TESTPLAN UT-02, UT-03, LD-06):
transparent refresh, invalid_grant, transient failures, and exactly one upstream call under
concurrency — 10 threads in one process, and 2 processes sharing Redis."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from flask import Flask

from flask_mcp_auth import signals
from flask_mcp_auth.keys import Cipher
from flask_mcp_auth.storage import UpstreamToken
from flask_mcp_auth.storage.memory import MemoryStorage
from flask_mcp_auth.storage.vault import TokenVault
from flask_mcp_auth.testing import issue_token
from flask_mcp_auth.upstream.base import UpstreamRejected, UpstreamUnavailable
from flask_mcp_auth.upstream.refresh import Refresher
from tests.support.token_endpoint import TokenEndpoint
from tests.test_identity import PEM, _upstream, bearer, make_app

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def idp() -> Iterator[TokenEndpoint]:
    with TokenEndpoint() as endpoint:
        yield endpoint


def refresh_app(storage: str, idp: TokenEndpoint, **config: Any) -> Flask:
    return make_app(storage, upstreams=[idp.upstream_entry("corp"), _upstream("github")], **config)


def expired(idp: TokenEndpoint, **fields: Any) -> UpstreamToken:
    return UpstreamToken(provider="corp", access_token="old-at", refresh_token=idp.seed(),
                         expires_at=time.time() - 5, scope="read", subject="up-alice", **fields)


def stored(app: Flask, token: str, provider: str = "corp") -> UpstreamToken | None:
    runtime = app.extensions["mcp_auth"]
    sid = jwt.decode(token, options={"verify_signature": False})["tsid"]
    blob = runtime.storage.load_session(sid).tokens.get(provider)
    return None if blob is None else runtime.vault.decode(sid, provider, blob)


def test_ut02_expired_token_is_refreshed_transparently(storage_url: str, idp: TokenEndpoint) -> None:
    app = refresh_app(storage_url, idp)
    old = expired(idp)
    token = issue_token(app, "alice", {"corp": old, "github": "gho_x"})
    events: list[dict[str, Any]] = []

    def receiver(sender: Any, **info: Any) -> None:
        events.append(info)

    with signals.upstream_token_refreshed.connected_to(receiver, app):
        first = app.test_client().get("/needs-corp", headers=bearer(token))
        second = app.test_client().get("/needs-corp", headers=bearer(token))
    assert first.status_code == 200
    fresh = first.get_json()["upstream"]["corp"]
    assert fresh.startswith("at-")
    assert second.get_json()["upstream"]["corp"] == fresh
    assert idp.refresh_calls == 1
    row = stored(app, token)
    assert row is not None
    assert row.access_token == fresh
    assert row.refresh_token not in (None, old.refresh_token)  # rotated and stored
    assert row.subject == "up-alice"
    assert row.expires_at is not None and row.expires_at > time.time() + 3000
    sid = jwt.decode(token, options={"verify_signature": False})["tsid"]
    assert events == [{"subject": "alice", "session_id": sid, "provider": "corp"}]


def test_ut02_missing_new_refresh_token_keeps_the_old_one(storage_url: str, idp: TokenEndpoint) -> None:
    idp.rotate = False
    app = refresh_app(storage_url, idp)
    old = expired(idp)
    token = issue_token(app, "alice", {"corp": old})
    assert app.test_client().get("/needs-corp", headers=bearer(token)).status_code == 200
    row = stored(app, token)
    assert row is not None
    assert row.refresh_token == old.refresh_token
    assert row.access_token != "old-at"


def test_ut03_invalid_grant_deletes_the_row_and_asks_to_reauthorize(storage_url: str, idp: TokenEndpoint) -> None:
    idp.failure = "invalid_grant"
    app = refresh_app(storage_url, idp)
    token = issue_token(app, "alice", {"corp": expired(idp), "github": "gho_x"})
    client = app.test_client()
    resp = client.get("/needs-corp", headers=bearer(token))
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert "resource_metadata=" in resp.headers["WWW-Authenticate"]
    assert stored(app, token) is None
    assert stored(app, token, "github") is not None
    body = client.get("/mcp", headers=bearer(token)).get_json()
    assert body["upstream"] == {"github": "gho_x"}
    assert body["missing"] == ["corp"]
    assert idp.refresh_calls == 1  # the row is gone: no retry storm


def test_expired_without_refresh_token_is_dropped(storage_url: str, idp: TokenEndpoint) -> None:
    app = refresh_app(storage_url, idp)
    token = issue_token(app, "alice", {"corp": dataclasses.replace(expired(idp), refresh_token=None)})
    assert app.test_client().get("/needs-corp", headers=bearer(token)).status_code == 401
    assert stored(app, token) is None
    assert idp.refresh_calls == 0


@pytest.mark.parametrize("failure", ["503", "html"])
def test_transient_refresh_failure_keeps_row_and_is_503(storage_url: str, idp: TokenEndpoint,
                                                        failure: str) -> None:
    idp.failure = failure
    app = refresh_app(storage_url, idp)
    old = expired(idp)
    token = issue_token(app, "alice", {"corp": old, "github": "gho_x"})
    client = app.test_client()
    resp = client.get("/needs-corp", headers=bearer(token))
    assert resp.status_code == 503
    assert resp.get_json()["error"] == "temporarily_unavailable"
    assert int(resp.headers["Retry-After"]) > 0
    assert "<html>" not in resp.get_data(as_text=True)
    row = stored(app, token)
    assert row is not None and row.refresh_token == old.refresh_token
    other = client.get("/mcp", headers=bearer(token))  # a view not needing corp still works
    assert other.status_code == 200
    assert other.get_json()["upstream"] == {"github": "gho_x"}
    assert idp.refresh_calls == 1  # within the back-off window: the failure is reused, not retried
    idp.failure = None
    refresher = app.extensions["mcp_auth"].parts["refresher"]
    refresher.clock = lambda: time.time() + refresher.failure_backoff + 1  # the window has passed
    healed = client.get("/needs-corp", headers=bearer(token))
    assert healed.status_code == 200
    assert healed.get_json()["upstream"]["corp"].startswith("at-")
    assert idp.refresh_calls == 2


def test_ld06_ten_concurrent_requests_make_one_refresh_call(storage_url: str, idp: TokenEndpoint) -> None:
    idp.delay = 0.3
    app = refresh_app(storage_url, idp)
    token = issue_token(app, "alice", {"corp": expired(idp)})
    barrier = threading.Barrier(10)
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def worker() -> None:
        client = app.test_client()
        barrier.wait()
        resp = client.get("/needs-corp", headers=bearer(token))
        body = resp.get_json()
        with lock:
            results.append((resp.status_code, body.get("upstream", {}).get("corp")))

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 10
    assert {status for status, _ in results} == {200}
    assert len({tok for _, tok in results}) == 1
    assert idp.refresh_calls == 1
    assert idp.reused == 0


# --- two processes on Redis ---------------------------------------------------------------------------
def _child() -> None:
    """Run in a subprocess: build the same app on the shared Redis and make one request at START_AT."""
    app = make_app(os.environ["H3_REDIS"], upstreams=[json.loads(os.environ["H3_UPSTREAM"]), _upstream("github")],
                   MCP_AUTH_SIGNING_KEYS=[os.environ["H3_PEM"]])
    client = app.test_client()
    delay = float(os.environ["H3_START_AT"]) - time.time()
    if delay > 0:
        time.sleep(delay)
    resp = client.get("/needs-corp", headers=bearer(os.environ["H3_TOKEN"]))
    body = resp.get_json(silent=True) or {}
    print(json.dumps({"status": resp.status_code, "corp": body.get("upstream", {}).get("corp")}))


def run_workers(redis_url: str, idp: TokenEndpoint, token: str, count: int, start_in: float) -> list[dict[str, Any]]:
    """Start ``count`` processes running :func:`_child` against the shared Redis, all making their request
    ``start_in`` seconds from now; return each one's ``{"status", "corp"}``."""
    env = {**os.environ, "H3_REDIS": redis_url, "H3_UPSTREAM": json.dumps(idp.upstream_entry("corp")),
           "H3_PEM": PEM, "H3_TOKEN": token, "H3_START_AT": str(time.time() + start_in)}
    procs = [subprocess.Popen([sys.executable, "-c", "from tests.test_refresh import _child; _child()"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(count)]
    outputs: list[dict[str, Any]] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-2000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return outputs


def test_two_processes_on_redis_make_one_refresh_call(redis_url: str, idp: TokenEndpoint) -> None:
    idp.delay = 0.5
    app = refresh_app(redis_url, idp)
    token = issue_token(app, "alice", {"corp": expired(idp)})
    outputs = run_workers(redis_url, idp, token, count=2, start_in=4)
    assert [o["status"] for o in outputs] == [200, 200]
    assert outputs[0]["corp"] == outputs[1]["corp"]
    assert outputs[0]["corp"].startswith("at-")
    assert idp.refresh_calls == 1
    assert idp.reused == 0
    row = stored(app, token)
    assert row is not None and row.access_token == outputs[0]["corp"]


# --- the Refresher alone -----------------------------------------------------------------------------------
class CountingClient:
    def __init__(self, result: UpstreamToken | Exception, delay: float = 0.0) -> None:
        self.result = result
        self.delay = delay
        self.calls = 0

    def refresh(self, token: UpstreamToken) -> UpstreamToken:
        self.calls += 1
        time.sleep(self.delay)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def _vault(*, live: bool = True) -> tuple[MemoryStorage, TokenVault]:
    """A store with session ``sid`` completed (``live``): a refreshed row is written only for a
    session that has metadata."""
    store = MemoryStorage()
    if live:
        store.set_session("sid", owner="u", ttl=600, complete=True)
    return store, TokenVault(store, Cipher([os.urandom(32)]))


OLD = UpstreamToken(provider="corp", access_token="old", refresh_token="rt-1", expires_at=1.0, subject="s")
NEW = UpstreamToken(provider="corp", access_token="new", refresh_token=None, expires_at=time.time() + 3600,
                    subject="s")


def test_stale_copy_does_not_refresh_again() -> None:
    store, vault = _vault()
    vault.save("sid", OLD, 600)
    client = CountingClient(NEW)
    refresher = Refresher(store, vault, {"corp": client}, ttl=600)  # type: ignore[dict-item]
    first = refresher.refresh("sid", OLD)
    assert first.access_token == "new" and first.refresh_token == "rt-1"
    again = refresher.refresh("sid", OLD)  # a request that read the row before the refresh
    assert again.access_token == "new"
    assert client.calls == 1


def test_waiter_returns_row_refreshed_by_another_process() -> None:
    store, vault = _vault()
    vault.save("sid", OLD, 600)
    client = CountingClient(NEW)
    refresher = Refresher(store, vault, {"corp": client}, ttl=600, poll_interval=0.01)  # type: ignore[dict-item]
    owner = store.acquire_lock("refresh:sid:corp", 10)  # "another process" is refreshing
    assert owner is not None

    def other_process() -> None:
        time.sleep(0.1)
        vault.save("sid", dataclasses.replace(NEW, access_token="from-elsewhere"), 600)
        store.release_lock("refresh:sid:corp", owner)

    thread = threading.Thread(target=other_process)
    thread.start()
    result = refresher.refresh("sid", OLD)
    thread.join()
    assert result.access_token == "from-elsewhere"
    assert client.calls == 0


def test_waiting_for_a_stuck_lock_is_bounded() -> None:
    store, vault = _vault()
    vault.save("sid", OLD, 600)
    client = CountingClient(NEW)
    refresher = Refresher(store, vault, {"corp": client}, ttl=600, lock_ttl=10,  # type: ignore[dict-item]
                          wait_timeout=0.2, poll_interval=0.02)
    assert store.acquire_lock("refresh:sid:corp", 10) is not None
    with pytest.raises(UpstreamUnavailable):
        refresher.refresh("sid", OLD)
    assert client.calls == 0
    assert store.load_session("sid").tokens  # row kept


def test_subject_change_on_refresh_is_rejected() -> None:
    store, vault = _vault()
    vault.save("sid", OLD, 600)
    client = CountingClient(dataclasses.replace(NEW, subject="someone-else"))
    refresher = Refresher(store, vault, {"corp": client}, ttl=600)  # type: ignore[dict-item]
    with pytest.raises(UpstreamRejected):
        refresher.refresh("sid", OLD)
    assert "corp" not in store.load_session("sid").tokens


def test_followers_get_their_own_errors() -> None:
    store, vault = _vault()
    vault.save("sid", OLD, 600)
    client = CountingClient(UpstreamRejected("corp", "invalid_grant"), delay=0.2)
    refresher = Refresher(store, vault, {"corp": client}, ttl=600)  # type: ignore[dict-item]
    errors: list[BaseException] = []
    barrier = threading.Barrier(5)

    def worker() -> None:
        barrier.wait()
        try:
            refresher.refresh("sid", OLD)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 5
    # followers share the leader's verdict; a latecomer finds the row already deleted
    assert all(isinstance(e, UpstreamRejected) and e.reason in ("invalid_grant", "token_removed")
               for e in errors)
    assert len({id(e) for e in errors}) == 5
    assert client.calls == 1


def test_refresh_for_a_session_without_metadata_is_discarded() -> None:
    """A session whose metadata is gone (ended or expired) is not live: the refreshed token is not
    written back (no row resurrected with a fresh TTL), and the caller gets a refusal."""
    store, vault = _vault(live=False)
    vault.save("sid", OLD, 600)
    client = CountingClient(NEW)
    refresher = Refresher(store, vault, {"corp": client}, ttl=600)  # type: ignore[dict-item]
    with pytest.raises(UpstreamRejected):
        refresher.refresh("sid", OLD)
    assert client.calls == 1
    assert vault.decode_all("sid", store.load_session("sid").tokens) == {"corp": OLD}  # untouched
