"""``flask_mcp_auth.testing.issue_token`` (SPEC §1): tokens for an app's own tests."""

from __future__ import annotations

import time

import jwt
import pytest
from flask import Flask

from flask_mcp_auth import MCPAuth
from flask_mcp_auth.storage import UpstreamToken
from flask_mcp_auth.testing import issue_token
from tests.test_identity import RESOURCE, bearer, make_app


def test_issue_token_stores_upstream_tokens_under_a_fresh_session(storage_url: str) -> None:
    app = make_app(storage_url)
    runtime = app.extensions["mcp_auth"]
    record = UpstreamToken(provider="corp", access_token="corp-at", refresh_token="corp-rt",
                           expires_at=time.time() + 600, subject="up-1")
    token = issue_token(app, "alice", {"github": "gho_x", "corp": record}, scopes=["tools", "read"],
                        expires_in=900, client_id="my-client")
    claims = runtime.tokens.verify(token)
    assert claims["sub"] == "alice"
    assert claims["client_id"] == "my-client"
    assert claims["scope"] == "tools read"
    assert claims["aud"] == RESOURCE
    assert abs(claims["exp"] - (time.time() + 900)) < 5
    session = runtime.storage.load_session(claims["tsid"])
    assert session.owner == "alice" and session.complete and not session.revoked
    decoded = runtime.vault.decode_all(claims["tsid"], session.tokens)
    assert decoded["github"].access_token == "gho_x"
    assert decoded["corp"] == record
    other = issue_token(app, "alice")
    assert jwt.decode(other, options={"verify_signature": False})["tsid"] != claims["tsid"]


def test_issued_token_works_against_a_protected_view(storage_url: str) -> None:
    app = make_app(storage_url)
    token = issue_token(app, "bob", {"github": "gho_bob"}, scopes=["tools", "admin"])
    resp = app.test_client().get("/scoped", headers=bearer(token))
    assert resp.status_code == 200
    assert resp.get_json()["upstream"] == {"github": "gho_bob"}


def test_issue_token_uses_the_configured_audience() -> None:
    app = make_app(MCP_AUTH_AUDIENCE="https://mcp.example.com/other",
                   MCP_AUTH_ALLOWED_AUDIENCES=[RESOURCE, "https://mcp.example.com/other"])
    token = issue_token(app, "alice")
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "https://mcp.example.com/other"
    assert app.test_client().get("/mcp", headers=bearer(token)).status_code == 200


def test_issue_token_refuses_unknown_providers() -> None:
    app = make_app()
    with pytest.raises(ValueError, match="slack"):
        issue_token(app, "alice", {"slack": "x"})


def test_issue_token_in_mode_a_is_a_clear_error() -> None:
    app = Flask(__name__)
    app.config.update(MCP_AUTH_ISSUER="https://login.example.com", MCP_AUTH_RESOURCE=RESOURCE)
    MCPAuth(app)
    with pytest.raises(RuntimeError, match="Mode B"):
        issue_token(app, "alice")


def test_issue_token_without_extension_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="MCPAuth"):
        issue_token(Flask(__name__), "alice")
