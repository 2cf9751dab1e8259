"""Helpers for the authorization-server endpoint tests: a Mode B app, PKCE pairs, code records written
straight into storage (as the chain would), and client registration through the real endpoint."""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets
import time
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from flask_mcp_auth import MCPAuth
from flask_mcp_auth.keys import generate_rsa_pem
from flask_mcp_auth.runtime import Runtime
from flask_mcp_auth.server import digest, random_token

ISSUER = "https://as.example.com"
RESOURCE = "https://as.example.com/mcp"
REDIRECT = "http://127.0.0.1:7777/callback"

UPSTREAM = {
    "name": "gh",
    "type": "oauth2",
    "authorization_endpoint": "https://idp.example.com/authorize",
    "token_endpoint": "https://idp.example.com/token",
    "client_id": "upstream-client",
    "client_secret": "upstream-secret",
}


@functools.lru_cache(maxsize=4)
def signing_pem(index: int = 0) -> str:
    """RSA keys are slow to generate: one per index per test process."""
    return generate_rsa_pem()


def make_app(storage: Any = "memory://", **config: Any) -> Flask:
    """A Mode B app with one plain OAuth2 upstream (no network at init) and a fixed signing key."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test-secret-key",
        MCP_AUTH_ISSUER=ISSUER,
        MCP_AUTH_RESOURCE=RESOURCE,
        MCP_AUTH_UPSTREAMS=[UPSTREAM],
        MCP_AUTH_SIGNING_KEYS=[signing_pem(0)],
        MCP_AUTH_STORAGE=storage,
    )
    app.config.update(config)
    MCPAuth(app)
    return app


def runtime(app: Flask) -> Runtime:
    state = app.extensions["mcp_auth"]
    assert isinstance(state, Runtime)
    return state


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


def put_code(
    app: Flask,
    *,
    client_id: str,
    challenge: str,
    redirect_uri: str = REDIRECT,
    scopes: tuple[str, ...] = ("openid", "offline_access"),
    resource: str | None = None,
    user_id: str = "user-1",
    session_id: str | None = None,
    ttl: int = 600,
    **extra: Any,
) -> tuple[str, str]:
    """Write a code record the way the chain does; return ``(code, session_id)``."""
    rt = runtime(app)
    sid = session_id or random_token(16)
    rt.storage.set_session(sid, user_id, 600, complete=True)
    code = random_token()
    record = {
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "redirect_uri_provided": True,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "scopes": list(scopes),
        "resource": resource,
        "user_id": user_id,
        "session_id": sid,
        "name": "Ada",
        "email": "ada@example.com",
        "providers": ["gh"],
        "auth_time": int(time.time()),
    }
    record.update(extra)
    rt.storage.put("code", digest(code), record, ttl)
    return code, sid


def register(client: FlaskClient, **metadata: Any) -> dict[str, Any]:
    """Register a client through ``/oauth/register``; assert 201; return the response body."""
    body = {"redirect_uris": [REDIRECT], "grant_types": ["authorization_code", "refresh_token"]}
    body.update(metadata)
    resp = client.post("/oauth/register", json=body)
    assert resp.status_code == 201, resp.get_json()
    data = resp.get_json()
    assert isinstance(data, dict)
    return data


def redeem(client: FlaskClient, code: str, verifier: str | None, client_id: str,
           redirect_uri: str = REDIRECT, **extra: str) -> Any:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_id": client_id}
    if verifier is not None:
        form["code_verifier"] = verifier
    form.update(extra)
    return client.post("/oauth/token", data=form)


def refresh(client: FlaskClient, token: str, client_id: str, **extra: str) -> Any:
    form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
    form.update(extra)
    return client.post("/oauth/token", data=form)
