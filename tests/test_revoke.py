"""Token revocation (RFC 7009; SPEC §3.1: revoking a refresh token deletes the session's upstream tokens)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_mcp_auth import signals
from flask_mcp_auth.keys import KeySet
from flask_mcp_auth.storage import UpstreamToken
from flask_mcp_auth.tokens import TokenService
from tests.support.as_unit import (
    ISSUER,
    RESOURCE,
    make_app,
    pkce_pair,
    put_code,
    redeem,
    refresh,
    register,
    runtime,
    signing_pem,
)

SECRET = "another-confidential-secret-0123456789abcdef"


@pytest.fixture()
def store_url(storage_url: str) -> str:
    return storage_url


@pytest.fixture()
def app(store_url: str) -> Flask:
    return make_app(store_url, MCP_AUTH_CLIENTS=[
        {"client_id": "svc", "client_secret": SECRET, "redirect_uris": ["https://svc.example/cb"]}])


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def grant(app: Flask, client: FlaskClient, client_id: str) -> tuple[dict[str, Any], str]:
    """Tokens for a fresh session that also holds an upstream token."""
    verifier, challenge = pkce_pair()
    code, sid = put_code(app, client_id=client_id, challenge=challenge)
    runtime(app).vault.save(sid, UpstreamToken(provider="gh", access_token="gho_secret"), ttl=600)  # type: ignore[union-attr]
    resp = redeem(client, code, verifier, client_id)
    assert resp.status_code == 200
    return resp.get_json(), sid


def revoke(client: FlaskClient, token: str, client_id: str, **extra: str) -> Any:
    return client.post("/oauth/revoke", data={"token": token, "client_id": client_id, **extra})


def test_revoke_refresh_token_ends_grant_and_upstream_tokens(app: Flask, client: FlaskClient) -> None:
    cid = register(client)["client_id"]
    tokens, sid = grant(app, client, cid)
    store = runtime(app).storage
    assert store.load_session(sid).tokens.keys() == {"gh"}
    seen: list[dict[str, Any]] = []

    def on_revoked(sender: Any, **info: Any) -> None:
        seen.append(info)

    with signals.token_revoked.connected_to(on_revoked, app):
        resp = revoke(client, tokens["refresh_token"], cid, token_type_hint="refresh_token")
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    session = store.load_session(sid)
    assert session.revoked and session.tokens == {}
    assert seen == [{"client_id": cid, "session_id": sid, "token_type_hint": "refresh_token", "reason": "revoked"}]
    assert tokens["refresh_token"] not in repr(seen)
    assert refresh(client, tokens["refresh_token"], cid).get_json()["error"] == "invalid_grant"


def test_revoke_access_token_revokes_its_session(app: Flask, client: FlaskClient) -> None:
    cid = register(client)["client_id"]
    tokens, sid = grant(app, client, cid)
    other, other_sid = grant(app, client, cid)
    # the hint is only an ordering hint: a wrong one still finds the token
    assert revoke(client, tokens["access_token"], cid, token_type_hint="refresh_token").status_code == 200
    store = runtime(app).storage
    assert store.load_session(sid).revoked
    assert not store.load_session(other_sid).revoked  # only that grant
    assert refresh(client, tokens["refresh_token"], cid).status_code == 400
    assert refresh(client, other["refresh_token"], cid).status_code == 200


def test_unknown_or_foreign_tokens_answer_200(app: Flask, client: FlaskClient) -> None:
    cid = register(client)["client_id"]
    stranger_keys = KeySet.from_pems([signing_pem(2)])
    forged, _ = TokenService(stranger_keys, issuer=ISSUER, audience=RESOURCE).mint(
        subject="u", client_id=cid, audience=RESOURCE, scopes=[], session_id="victim", ttl=600)
    expired, _ = runtime(app).tokens.mint(subject="u", client_id=cid, audience=RESOURCE, scopes=[],
                                          session_id="old-session", ttl=-3600)
    for token in ("unknown", "a.b.c", forged, expired, "x" * 20_000):
        resp = revoke(client, token, cid)
        assert resp.status_code == 200
    store = runtime(app).storage
    assert not store.load_session("victim").revoked and not store.load_session("old-session").revoked


def test_revoke_errors(app: Flask, client: FlaskClient) -> None:
    cid = register(client)["client_id"]
    tokens, sid = grant(app, client, cid)
    resp = client.post("/oauth/revoke", data={"client_id": cid})
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_request"
    resp = client.post("/oauth/revoke", json={"token": tokens["refresh_token"], "client_id": cid})
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_request"
    resp = client.post("/oauth/revoke", data={"token": tokens["refresh_token"]})
    assert resp.status_code == 401 and resp.get_json()["error"] == "invalid_client"
    # a token issued to another client is refused, and nothing is revoked
    other = register(client)["client_id"]
    resp = revoke(client, tokens["refresh_token"], other)
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_grant"
    resp = revoke(client, tokens["access_token"], other)
    assert resp.status_code == 400
    assert not runtime(app).storage.load_session(sid).revoked
    assert client.get("/oauth/revoke").status_code == 405


def test_confidential_client_revocation(app: Flask, client: FlaskClient) -> None:
    verifier, challenge = pkce_pair()
    code, sid = put_code(app, client_id="svc", challenge=challenge, redirect_uri="https://svc.example/cb")
    auth = {"Authorization": "Basic " + base64.b64encode(f"svc:{SECRET}".encode()).decode()}
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": "https://svc.example/cb",
            "code_verifier": verifier}
    tokens = client.post("/oauth/token", data=form, headers=auth).get_json()
    bad = {"Authorization": "Basic " + base64.b64encode(b"svc:nope").decode()}
    resp = client.post("/oauth/revoke", data={"token": tokens["refresh_token"]}, headers=bad)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")
    assert not runtime(app).storage.load_session(sid).revoked
    assert client.post("/oauth/revoke", data={"token": tokens["refresh_token"]}, headers=auth).status_code == 200
    assert runtime(app).storage.load_session(sid).revoked
