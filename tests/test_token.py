"""The token endpoint (TESTPLAN 1.4 TK-03…TK-16, code replay, refresh rotation, SH-05, SH-06)."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_mcp_auth import signals
from flask_mcp_auth.server import clients as clients_module
from flask_mcp_auth.server import digest, random_token
from flask_mcp_auth.server.token import REFRESH_GRACE, TokenEndpoint
from flask_mcp_auth.storage import UpstreamToken
from flask_mcp_auth.storage.memory import MemoryStorage
from tests.support.as_unit import (
    ISSUER,
    REDIRECT,
    RESOURCE,
    make_app,
    pkce_pair,
    put_code,
    redeem,
    refresh,
    register,
    runtime,
)

SECRET = "s3cret-of-the-confidential-client-0123456789"
CONFIDENTIAL = {"client_id": "svc", "client_secret": SECRET, "redirect_uris": ["https://svc.example/cb"]}


@pytest.fixture()
def store_url(storage_url: str) -> str:
    return storage_url


@pytest.fixture()
def app(store_url: str) -> Flask:
    return make_app(store_url, MCP_AUTH_CLIENTS=[CONFIDENTIAL])


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def public_id(client: FlaskClient) -> str:
    return str(register(client)["client_id"])


def error_of(resp: Any) -> str:
    """The OAuth error code; the status must be the one RFC 6749 §5.2 fixes for it (401 only for
    ``invalid_client``, 400 for everything else)."""
    assert resp.headers["Cache-Control"] == "no-store"
    error = str(resp.get_json()["error"])
    assert resp.status_code == (401 if error == "invalid_client" else 400), (resp.status_code, error)
    return error


def login(app: Flask, client: FlaskClient, client_id: str,
          scopes: tuple[str, ...] = ("openid", "offline_access")) -> tuple[dict[str, Any], str]:
    verifier, challenge = pkce_pair()
    code, sid = put_code(app, client_id=client_id, challenge=challenge, scopes=scopes)
    resp = redeem(client, code, verifier, client_id)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json(), sid


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


# --- authorization_code -----------------------------------------------------------------------------
def test_tk13_successful_exchange(app: Flask, client: FlaskClient, public_id: str) -> None:
    verifier, challenge = pkce_pair()
    code, sid = put_code(app, client_id=public_id, challenge=challenge,
                         scopes=("openid", "profile", "offline_access"))
    resp = redeem(client, code, verifier, public_id)
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Pragma"] == "no-cache"
    body = resp.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "openid profile offline_access"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", body["refresh_token"])
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt"
    claims = runtime(app).tokens.verify(body["access_token"])
    assert claims["iss"] == ISSUER and claims["aud"] == RESOURCE and claims["sub"] == "user-1"
    assert claims["client_id"] == public_id and claims["tsid"] == sid
    assert claims["scope"] == "openid profile offline_access"
    assert claims["name"] == "Ada" and claims["email"] == "ada@example.com"
    id_claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert id_claims["aud"] == public_id and id_claims["iss"] == ISSUER and id_claims["sub"] == "user-1"
    assert id_claims["name"] == "Ada" and "email" not in id_claims
    session = runtime(app).storage.load_session(sid)
    assert session.owner == "user-1" and session.complete and not session.revoked


def test_no_refresh_token_without_offline_access(app: Flask, client: FlaskClient, public_id: str) -> None:
    body, _ = login(app, client, public_id, scopes=("profile",))
    assert "refresh_token" not in body and "id_token" not in body
    assert body["scope"] == "profile"


def test_no_refresh_token_when_client_lacks_refresh_grant(app: Flask, client: FlaskClient) -> None:
    cid = register(client, grant_types=["authorization_code"])["client_id"]
    body, _ = login(app, client, cid)
    assert "refresh_token" not in body


def test_resource_becomes_audience(app: Flask, client: FlaskClient, public_id: str) -> None:
    verifier, challenge = pkce_pair()
    code, _ = put_code(app, client_id=public_id, challenge=challenge, resource=RESOURCE)
    resp = redeem(client, code, verifier, public_id, resource="https://other.example/mcp")
    assert error_of(resp) == "invalid_target"
    verifier, challenge = pkce_pair()
    code, _ = put_code(app, client_id=public_id, challenge=challenge, resource=RESOURCE)
    body = redeem(client, code, verifier, public_id, resource=RESOURCE).get_json()
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["aud"] == RESOURCE


def test_tk03_missing_verifier(app: Flask, client: FlaskClient, public_id: str) -> None:
    verifier, challenge = pkce_pair()
    code, _ = put_code(app, client_id=public_id, challenge=challenge)
    assert error_of(redeem(client, code, None, public_id)) == "invalid_grant"
    assert error_of(redeem(client, code, verifier, public_id)) == "invalid_grant"  # code consumed


def test_tk04_wrong_verifier(app: Flask, client: FlaskClient, public_id: str) -> None:
    _, challenge = pkce_pair()
    code, _ = put_code(app, client_id=public_id, challenge=challenge)
    assert error_of(redeem(client, code, "a" * 43, public_id)) == "invalid_grant"


@pytest.mark.parametrize("bad", ["a" * 42, "a" * 129, "a" * 40 + "+/=", "a" * 40 + " bc", "a" * 42 + "\x00", ""])
def test_tk05_verifier_abnf(app: Flask, client: FlaskClient, public_id: str, bad: str) -> None:
    # the challenge matches the bad verifier, so only the ABNF check can refuse it
    challenge = base64.urlsafe_b64encode(hashlib.sha256(bad.encode()).digest()).rstrip(b"=")
    code, _ = put_code(app, client_id=public_id, challenge=challenge.decode())
    assert error_of(redeem(client, code, bad, public_id)) == "invalid_grant"


def test_tk07_code_bound_to_client(app: Flask, client: FlaskClient, public_id: str) -> None:
    other = register(client)["client_id"]
    verifier, challenge = pkce_pair()
    code, _sid = put_code(app, client_id=public_id, challenge=challenge)
    assert error_of(redeem(client, code, verifier, other)) == "invalid_grant"
    # with another client's valid credentials too
    verifier, challenge = pkce_pair()
    code, _ = put_code(app, client_id=public_id, challenge=challenge)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    assert error_of(client.post("/oauth/token", data=form, headers=basic("svc", SECRET))) == "invalid_grant"
    # and the other way round: the confidential client's code needs its secret
    verifier, challenge = pkce_pair()
    code, _ = put_code(app, client_id="svc", challenge=challenge, redirect_uri="https://svc.example/cb")
    assert error_of(redeem(client, code, verifier, "svc", redirect_uri="https://svc.example/cb")) == "invalid_client"


def test_tk08_redirect_uri_must_match(app: Flask, client: FlaskClient, public_id: str) -> None:
    for variant in ("http://127.0.0.1:7778/callback", "http://127.0.0.1:7777/callback/", "https://c.example/cb"):
        verifier, challenge = pkce_pair()
        code, _ = put_code(app, client_id=public_id, challenge=challenge)
        assert error_of(redeem(client, code, verifier, public_id, redirect_uri=variant)) == "invalid_grant"
    verifier, challenge = pkce_pair()
    code, _ = put_code(app, client_id=public_id, challenge=challenge)
    form = {"grant_type": "authorization_code", "code": code, "client_id": public_id, "code_verifier": verifier}
    assert error_of(client.post("/oauth/token", data=form)) == "invalid_grant"  # omitted although sent
    verifier, challenge = pkce_pair()
    code, _ = put_code(app, client_id=public_id, challenge=challenge, redirect_uri_provided=False)
    form = {"grant_type": "authorization_code", "code": code, "client_id": public_id, "code_verifier": verifier}
    assert client.post("/oauth/token", data=form).status_code == 200  # never sent: may be omitted


def test_tk09_expired_code_memory() -> None:
    now = [1000.0]
    app = make_app(MemoryStorage(clock=lambda: now[0]), MCP_AUTH_CODE_TTL=60)
    client = app.test_client()
    cid = register(client)["client_id"]
    verifier, challenge = pkce_pair()
    code, _ = put_code(app, client_id=cid, challenge=challenge, ttl=60)
    now[0] += 61
    assert error_of(redeem(client, code, verifier, cid)) == "invalid_grant"


def test_tk09_expired_code_redis(redis_url: str) -> None:
    app = make_app(redis_url, MCP_AUTH_CODE_TTL=60)
    client = app.test_client()
    cid = register(client)["client_id"]
    verifier, challenge = pkce_pair()
    code, _ = put_code(app, client_id=cid, challenge=challenge, ttl=1)
    time.sleep(1.2)  # let Redis expire the record (not a timing assertion)
    assert error_of(redeem(client, code, verifier, cid)) == "invalid_grant"


def test_tk10_grant_type(client: FlaskClient, public_id: str) -> None:
    assert error_of(client.post("/oauth/token", data={"client_id": public_id})) == "invalid_request"
    for grant in ("password", "urn:ietf:params:oauth:grant-type:device_code", "client_credentials", "implicit"):
        resp = client.post("/oauth/token", data={"grant_type": grant, "client_id": public_id})
        assert error_of(resp) == "unsupported_grant_type", grant


def test_tk11_confidential_client_authentication(app: Flask, client: FlaskClient) -> None:
    def attempt(headers: dict[str, str] | None = None, **extra: str) -> Any:
        verifier, challenge = pkce_pair()
        code, _ = put_code(app, client_id="svc", challenge=challenge, redirect_uri="https://svc.example/cb")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": "https://svc.example/cb",
                "code_verifier": verifier, **extra}
        return client.post("/oauth/token", data=form, headers=headers or {})

    resp = attempt(basic("svc", "wrong"))
    assert resp.status_code == 401 and error_of(resp) == "invalid_client"
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert error_of(attempt(basic("svc", SECRET), client_secret=SECRET)) == "invalid_request"
    assert error_of(attempt(client_id="svc", client_secret="wrong")) == "invalid_client"
    assert error_of(attempt(client_id="svc")) == "invalid_client"  # secret required
    assert error_of(attempt(basic("nobody", SECRET))) == "invalid_client"
    assert error_of(attempt({"Authorization": "Basic !!!"})) == "invalid_client"
    assert error_of(attempt({"Authorization": "Bearer abc"})) == "invalid_client"
    assert attempt(basic("svc", SECRET)).status_code == 200
    assert attempt(client_id="svc", client_secret=SECRET).status_code == 200
    # RFC 6749 §2.3.1: Basic credentials are form-urlencoded first
    encoded = {"Authorization": "Basic " + base64.b64encode(b"svc:" + SECRET.replace("-", "%2D").encode()).decode()}
    assert attempt(encoded).status_code == 200


def test_public_client_may_not_send_a_secret(client: FlaskClient, app: Flask, public_id: str) -> None:
    verifier, challenge = pkce_pair()
    code, _ = put_code(app, client_id=public_id, challenge=challenge)
    assert error_of(redeem(client, code, verifier, public_id, client_secret="guess")) == "invalid_client"


def test_tk12_malformed_requests(app: Flask, client: FlaskClient, public_id: str) -> None:
    verifier, challenge = pkce_pair()
    code, _ = put_code(app, client_id=public_id, challenge=challenge)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "client_id": public_id, "code_verifier": verifier}
    assert error_of(client.post("/oauth/token", json=form)) == "invalid_request"
    assert client.get("/oauth/token").status_code == 405
    assert client.get("/oauth/token?" + "&".join(f"{k}={v}" for k, v in form.items())).status_code == 405
    dup = client.post("/oauth/token", data=f"grant_type=authorization_code&code={code}&code=x&client_id={public_id}",
                      content_type="application/x-www-form-urlencoded")
    assert error_of(dup) == "invalid_request"
    big = {**form, "code": "c" * (64 * 1024)}
    assert client.post("/oauth/token", data=big).status_code == 413
    long_code = {**form, "code": "c" * 60_000}
    assert error_of(client.post("/oauth/token", data=long_code)) == "invalid_grant"
    nul = {**form, "code": "abc\x00def"}
    assert error_of(client.post("/oauth/token", data=nul)) == "invalid_grant"
    # none of that consumed the real code
    assert client.post("/oauth/token", data=form).status_code == 200


def test_unknown_code_is_invalid_grant(client: FlaskClient, public_id: str) -> None:
    resp = redeem(client, random_token(), "a" * 43, public_id)
    assert error_of(resp) == "invalid_grant"
    assert "traceback" not in resp.get_data(as_text=True).lower()


def test_code_replay_revokes_the_grant(app: Flask, client: FlaskClient, public_id: str) -> None:
    rt = runtime(app)
    verifier, challenge = pkce_pair()
    code, sid = put_code(app, client_id=public_id, challenge=challenge)
    rt.vault.save(sid, UpstreamToken(provider="gh", access_token="gho_x"), ttl=600)  # type: ignore[union-attr]
    first = redeem(client, code, verifier, public_id).get_json()
    revoked: list[dict[str, Any]] = []

    def on_revoked(sender: Any, **info: Any) -> None:
        revoked.append(info)

    with signals.token_revoked.connected_to(on_revoked, app):
        assert error_of(redeem(client, code, verifier, public_id)) == "invalid_grant"
    session = rt.storage.load_session(sid)
    assert session.revoked and session.tokens == {}
    assert revoked == [{"client_id": public_id, "session_id": sid, "token_type_hint": None, "reason": "code_replay"}]
    assert error_of(refresh(client, first["refresh_token"], public_id)) == "invalid_grant"


def test_concurrent_redemptions_issue_at_most_once(app: Flask, public_id: str) -> None:
    """8 simultaneous redemptions: the code is taken once; the other 7 are replays, which revoke the
    grant, so whatever the one winner got is refused from then on."""
    verifier, challenge = pkce_pair()
    code, sid = put_code(app, client_id=public_id, challenge=challenge)
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        c = app.test_client()
        barrier.wait(10)
        resp = redeem(c, code, verifier, public_id)
        results.append((resp.status_code, resp.get_json()))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8  # every thread got an answer (none died before appending)
    winners = [body for status, body in results if status == 200]
    assert len(winners) <= 1
    assert all(body["error"] == "invalid_grant" for status, body in results if status != 200)
    assert runtime(app).storage.load_session(sid).revoked
    for body in winners:
        assert refresh(app.test_client(), body["refresh_token"], public_id).status_code == 400


def test_token_issued_signal_carries_ids_only(app: Flask, client: FlaskClient, public_id: str) -> None:
    seen: list[dict[str, Any]] = []

    def on_issued(sender: Any, **info: Any) -> None:
        seen.append(info)

    with signals.token_issued.connected_to(on_issued, app):
        body, sid = login(app, client, public_id)
    assert len(seen) == 1
    info = seen[0]
    assert info["client_id"] == public_id and info["session_id"] == sid and info["subject"] == "user-1"
    assert info["grant_type"] == "authorization_code" and info["scopes"] == ("openid", "offline_access")
    text = repr(info)
    assert body["access_token"] not in text and body["refresh_token"] not in text


# --- refresh_token ------------------------------------------------------------------------------------
def test_refresh_rotates_and_keeps_sub_and_tsid(app: Flask, client: FlaskClient, public_id: str) -> None:
    first, sid = login(app, client, public_id)
    resp = refresh(client, first["refresh_token"], public_id)
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    second = resp.get_json()
    assert second["refresh_token"] != first["refresh_token"]
    claims = runtime(app).tokens.verify(second["access_token"])
    assert claims["sub"] == "user-1" and claims["tsid"] == sid and claims["client_id"] == public_id
    assert second["scope"] == "openid offline_access" and second["token_type"] == "Bearer"
    third = refresh(client, second["refresh_token"], public_id).get_json()
    assert runtime(app).tokens.verify(third["access_token"])["tsid"] == sid


def test_refresh_grace_then_reuse_revokes_family(app: Flask, client: FlaskClient, public_id: str) -> None:
    endpoint = runtime(app).parts["token_endpoint"]
    assert isinstance(endpoint, TokenEndpoint)
    now = [time.time()]
    endpoint.clock = lambda: now[0]
    first, sid = login(app, client, public_id)
    second = refresh(client, first["refresh_token"], public_id).get_json()
    # a retry with the rotated-out token inside the grace gets a fresh pair
    now[0] += REFRESH_GRACE - 1
    retry = refresh(client, first["refresh_token"], public_id)
    assert retry.status_code == 200
    third = retry.get_json()
    assert third["refresh_token"] not in (first["refresh_token"], second["refresh_token"])
    assert refresh(client, second["refresh_token"], public_id).status_code == 200  # also within grace
    # after the grace: reuse is theft; the family and the session die
    now[0] += 2
    assert error_of(refresh(client, first["refresh_token"], public_id)) == "invalid_grant"
    assert runtime(app).storage.load_session(sid).revoked
    assert error_of(refresh(client, third["refresh_token"], public_id)) == "invalid_grant"


def test_tk16_refresh_scope_cannot_widen(app: Flask, client: FlaskClient, public_id: str) -> None:
    first, _ = login(app, client, public_id)
    resp = refresh(client, first["refresh_token"], public_id, scope="openid offline_access profile")
    assert error_of(resp) == "invalid_scope"
    narrowed = refresh(client, first["refresh_token"], public_id, scope="openid")  # still current: no rotation
    assert narrowed.status_code == 200
    body = narrowed.get_json()
    assert body["scope"] == "openid"
    assert runtime(app).tokens.verify(body["access_token"])["scope"] == "openid"
    # the refresh token keeps the original grant
    again = refresh(client, body["refresh_token"], public_id).get_json()
    assert again["scope"] == "openid offline_access"


def test_tk16_refresh_token_bound_to_client(app: Flask, client: FlaskClient, public_id: str) -> None:
    first, sid = login(app, client, public_id)
    other = register(client)["client_id"]
    assert error_of(refresh(client, first["refresh_token"], other)) == "invalid_grant"
    assert not runtime(app).storage.load_session(sid).revoked
    # not rotated: the owner's token is still current, and usable long after any grace
    endpoint = runtime(app).parts["token_endpoint"]
    endpoint.clock = lambda: time.time() + 10 * REFRESH_GRACE
    assert refresh(client, first["refresh_token"], public_id).status_code == 200


def test_refresh_needs_refresh_grant_and_token(app: Flask, client: FlaskClient, public_id: str) -> None:
    assert error_of(refresh(client, "", public_id)) == "invalid_request"
    assert error_of(refresh(client, random_token(), public_id)) == "invalid_grant"
    assert error_of(refresh(client, "r" * 10_000, public_id)) == "invalid_grant"
    first, _ = login(app, client, public_id)
    assert error_of(refresh(client, first["refresh_token"], public_id, resource="https://x.example/")) == "invalid_target"
    code_only = register(client, grant_types=["authorization_code"])["client_id"]
    resp = refresh(client, first["refresh_token"], code_only)
    assert resp.status_code == 400 and resp.get_json()["error"] == "unauthorized_client"


def test_refresh_extends_session() -> None:
    now = [1000.0]
    store = MemoryStorage(clock=lambda: now[0])
    app = make_app(store)
    client = app.test_client()
    cid = register(client)["client_id"]
    first, sid = login(app, client, cid)  # put_code wrote the session with a 600 s TTL
    now[0] += 3 * 86400
    assert store.load_session(sid).owner == "user-1"  # promoted to the refresh-token lifetime
    second = refresh(client, first["refresh_token"], cid).get_json()
    now[0] += 6 * 86400  # 9 days after login, 6 after the refresh (refresh TTL is 7 days)
    assert store.load_session(sid).owner == "user-1"
    assert refresh(client, second["refresh_token"], cid).status_code == 200


def test_concurrent_refresh_with_one_token(app: Flask, public_id: str) -> None:
    first, sid = login(app, app.test_client(), public_id)
    results: list[int] = []
    barrier = threading.Barrier(6)

    def one() -> None:
        c = app.test_client()
        barrier.wait(10)
        results.append(refresh(c, first["refresh_token"], public_id).status_code)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6  # one rotation, the rest inside the grace
    assert not runtime(app).storage.load_session(sid).revoked


# --- secrets hygiene ------------------------------------------------------------------------------------
def test_sh05_codes_refresh_tokens_unique(app: Flask) -> None:
    codes = {random_token() for _ in range(10_000)}
    assert len(codes) == 10_000 and all(len(c) >= 43 for c in codes)
    endpoint = runtime(app).parts["token_endpoint"]
    from flask_mcp_auth.server.token import _Grant

    grant = _Grant(client_id="c", user_id="u", session_id="s", family_id="f", scopes=("openid",),
                   resource=RESOURCE, name=None, email=None, providers=(), auth_time=None)
    count = 10_000 if isinstance(runtime(app).storage, MemoryStorage) else 2_000  # Redis: round trips
    tokens = {endpoint._new_refresh_token(grant) for _ in range(count)}
    assert len(tokens) == count
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", t) for t in tokens)  # 256 bits
    assert not codes & tokens


def test_sh06_secret_compared_as_digests(app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    real = clients_module.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(clients_module.hmac, "compare_digest", spy)
    registry = runtime(app).parts["clients"]
    assert registry.authenticate("svc", SECRET).client_id == "svc"
    with pytest.raises(Exception, match="invalid_client"):
        registry.authenticate("svc", "S" + SECRET[1:])
    assert len(calls) == 2
    stored = digest(SECRET).encode()
    for given, expected in calls:
        assert expected == stored
        assert len(given) == len(expected)  # fixed-length digests, whatever the secret's length
        assert SECRET.encode() not in (given, expected)
    assert calls[0][0] == stored and calls[1][0] == digest("S" + SECRET[1:]).encode()


def test_storage_outage_is_503() -> None:
    store = MemoryStorage()
    app = make_app(store)
    client = app.test_client()
    cid = register(client)["client_id"]
    store.close()
    for resp in (redeem(client, random_token(), "a" * 43, cid),
                 client.post("/oauth/register", json={"redirect_uris": ["https://c.example/cb"]})):
        assert resp.status_code == 503
        assert resp.get_json()["error"] == "temporarily_unavailable"
        assert resp.headers["Retry-After"] == "5"
