"""A demo docs API that accepts only tokens the demo STS issued for audience ``docs-api``.

``GET /search?q=…`` answers the caller (the token's ``sub`` and ``act``) and matching documents.
"""

from __future__ import annotations

import jwt
from flask import Flask, Response, jsonify, request

from ._common import Counter
from .sts import SecurityTokenService

__all__ = ["DocsAPI"]

_DOCS = (
    ("Getting started with MCP", "/docs/mcp-getting-started"),
    ("OAuth 2.1 for MCP servers", "/docs/oauth"),
    ("Token exchange (RFC 8693) explained", "/docs/token-exchange"),
    ("Running behind gunicorn", "/docs/gunicorn"),
    ("Rotating signing keys", "/docs/key-rotation"),
)


class DocsAPI:
    """The demo docs API at ``base_url``; ``.app`` is its Flask app."""

    audience = "docs-api"

    def __init__(self, base_url: str, *, sts: SecurityTokenService) -> None:
        self.base_url = base_url.rstrip("/")
        self.sts = sts
        self.counters = Counter()
        self.app = self._build_app()

    def _build_app(self) -> Flask:
        app = Flask("demo-docs-api")

        @app.get("/search")
        def search() -> Response:
            self.counters.incr("api_calls")
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            try:
                if scheme.lower() != "bearer":
                    raise jwt.InvalidTokenError("no bearer token")
                claims = self.sts.verify(token, self.audience)
            except jwt.InvalidTokenError:
                response = jsonify(error="invalid_token")
                response.status_code = 401
                response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
                return response
            query = request.args.get("q", "").strip().lower()
            words = query.split()
            results = [{"title": title, "url": f"{self.base_url}{path}"} for title, path in _DOCS
                       if not words or any(w in title.lower() for w in words)]
            return jsonify(caller=claims["sub"], on_behalf_of=claims.get("act", {}).get("sub"),
                           query=query, results=results)

        return app
