"""``create_app(config_overrides)``: the example MCP server, protected by ``flask_mcp_auth`` in Mode B.

The same factory serves ``python -m example_app``, the tests and gunicorn (``example_app.wsgi:app``).
Configuration comes from the environment (:mod:`example_app.settings`), then ``config_overrides``.
Only the public API of the package is used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify

from flask_mcp_auth import MCPAuth, current_identity

from . import browser_demo, settings
from .mcp_server import MCPServer
from .tools import build_tools

__all__ = ["create_app"]

logger = logging.getLogger("example_app")

INSTRUCTIONS = (
    "Demo MCP server. Tools: whoami (who you are and which providers are connected), list_repos "
    "(your repositories on the demo GitHub), search_docs (search the demo docs API)."
)


def _server_side_sessions(app: Flask) -> None:
    """With Redis storage, keep Flask's session (the AS's browser binding and consent ids) in the same
    Redis through Flask-Session, so every worker sees it (SPEC §3.4)."""
    storage = app.config.get("MCP_AUTH_STORAGE")
    if not (isinstance(storage, str) and storage.startswith(("redis://", "rediss://"))):
        return
    import redis
    from flask_session import Session

    app.config.setdefault("SESSION_TYPE", "redis")
    app.config.setdefault("SESSION_REDIS", redis.Redis.from_url(storage))
    app.config.setdefault("SESSION_KEY_PREFIX", "example-app:session:")
    app.config.setdefault("SESSION_PERMANENT", False)
    Session(app)
    interface = app.session_interface
    # Flask-Session raises straight out of the request when Redis is down (a 500 before or after the
    # extension's clean 503). Degrade instead: an unreadable session is a new empty one, and an
    # unsaved one is dropped; a chain that then lacks its browser binding fails closed with a 400.
    retrieve, upsert = interface._retrieve_session_data, interface._upsert_session  # type: ignore[attr-defined]

    def _retrieve(store_id: str) -> Any:
        try:
            return retrieve(store_id)
        except redis.RedisError:
            logger.warning("session store unavailable: treating the browser session as empty")
            return None

    def _upsert(*args: Any) -> None:
        try:
            upsert(*args)
        except redis.RedisError:
            logger.warning("session store unavailable: browser session not saved")

    interface._retrieve_session_data = _retrieve  # type: ignore[attr-defined]
    interface._upsert_session = _upsert  # type: ignore[attr-defined]


def create_app(config_overrides: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(settings.from_env(os.environ))
    app.config.update(config_overrides or {})
    if not app.config.get("MCP_AUTH_UPSTREAMS"):
        app.config["MCP_AUTH_UPSTREAMS"] = settings.upstreams(app.config)
    if not app.config.get("MCP_AUTH_BACKENDS"):
        app.config["MCP_AUTH_BACKENDS"] = settings.backends(app.config)
    if app.config.get("EXAMPLE_BROWSER_DEMO"):
        app.config["MCP_AUTH_CLIENTS"] = [*app.config.get("MCP_AUTH_CLIENTS", []),
                                          browser_demo.client_config(app.config["MCP_AUTH_ISSUER"])]
    if app.config.get("EXAMPLE_EPHEMERAL_SECRET"):
        logger.warning("SECRET_KEY is not set: using a random one for this process only; set it when "
                       "running several workers")
    _server_side_sessions(app)

    auth = MCPAuth(app)
    issuer = urlsplit(app.config["MCP_AUTH_ISSUER"])
    server = MCPServer(
        name="flask-mcp-auth-example", version="0.1.0", tools=build_tools(auth),
        secret=app.config["SECRET_KEY"], instructions=INSTRUCTIONS,
        allowed_origins=[f"{issuer.scheme}://{issuer.netloc}",
                         *app.config.get("EXAMPLE_ALLOWED_ORIGINS", [])],
        # A server on loopback is used by local tools (e.g. the MCP Inspector on localhost:6274).
        allow_loopback_origins=issuer.hostname in ("localhost", "127.0.0.1", "::1"))

    @app.post("/mcp")
    @auth.required()
    def mcp() -> Response:
        identity = current_identity
        assert identity is not None
        return server.handle(identity.subject, identity.client_id or "")

    @app.get("/")
    def index() -> Response:
        return jsonify(
            name="flask_mcp_auth example",
            mcp_endpoint=app.config["MCP_AUTH_RESOURCE"],
            providers=[u["name"] for u in app.config["MCP_AUTH_UPSTREAMS"]],
            tools=sorted(server.tools),
        )

    if app.config.get("EXAMPLE_WORKER_HEADER"):
        pid = str(os.getpid())

        @app.after_request
        def worker_header(response: Response) -> Response:
            # Debug aid for the multi-worker tests and the load benchmark: which process answered.
            response.headers["X-Example-Worker"] = pid
            return response

    if app.config.get("EXAMPLE_BROWSER_DEMO"):
        browser_demo.register(app)

    app.extensions["example_app"] = {"auth": auth, "mcp": server}
    return app
