"""The extension object itself: per-app state, two apps in one process, session-cookie hardening."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_mcp_auth import MCPAuth


def _mode_b_config(issuer: str) -> dict[str, object]:
    return {
        "SECRET_KEY": "test-secret-key",
        "MCP_AUTH_ISSUER": issuer,
        "MCP_AUTH_RESOURCE": f"{issuer}/mcp",
        "MCP_AUTH_UPSTREAMS": [
            {
                "name": "github",
                "type": "oauth2",
                "client_id": "gh",
                "client_secret": "gh-secret",
                "authorization_endpoint": "https://github.example/login/oauth/authorize",
                "token_endpoint": "https://github.example/login/oauth/access_token",
            }
        ],
    }


def test_two_apps_in_one_process_keep_separate_state() -> None:
    auth = MCPAuth()
    first, second = Flask("first"), Flask("second")
    first.config.update(_mode_b_config("https://one.example"))
    second.config.update(_mode_b_config("https://two.example"))
    auth.init_app(first)
    auth.init_app(second)
    one, two = MCPAuth.runtime(first), MCPAuth.runtime(second)
    assert one is not two
    assert one.settings.issuer == "https://one.example"
    assert two.settings.issuer == "https://two.example"
    assert one.storage is not two.storage
    assert not hasattr(auth, "app")
    with first.app_context():
        assert MCPAuth.runtime() is one
    with pytest.raises(RuntimeError, match="already registered"):
        auth.init_app(first)


def test_az18_session_cookie_hardened_for_https_issuer() -> None:
    app = Flask("hardened")
    app.config.update(_mode_b_config("https://mcp.example"))
    MCPAuth(app)
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_HTTPONLY"] is True
    assert app.config["SESSION_COOKIE_NAME"] == "__Host-session"

    @app.get("/set")
    def set_cookie() -> str:
        from flask import session

        session["x"] = "1"
        return "ok"

    response = app.test_client().get("/set", base_url="https://mcp.example")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-session=")
    for flag in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert flag in cookie
    assert "Domain" not in cookie


def test_session_cookie_choices_of_the_app_are_kept() -> None:
    app = Flask("custom")
    app.config.update(_mode_b_config("https://mcp.example"))
    app.config.update(SESSION_COOKIE_NAME="my-session", SESSION_COOKIE_SAMESITE="Strict")
    MCPAuth(app)
    assert app.config["SESSION_COOKIE_NAME"] == "my-session"
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Strict"


def test_mode_a_leaves_session_cookie_alone() -> None:
    app = Flask("mode-a")
    app.config.update(MCP_AUTH_ISSUER="https://idp.example", MCP_AUTH_RESOURCE="https://mcp.example/mcp")
    MCPAuth(app)
    assert app.config["SESSION_COOKIE_NAME"] == "session"
    assert app.config["SESSION_COOKIE_SAMESITE"] is None
