"""A demo security token service: OAuth 2.0 Token Exchange (RFC 8693 §2).

``POST /token`` with ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``. The client
authenticates with HTTP Basic; the ``subject_token`` must be an access token of a trusted issuer (the
demo corp IdP); the ``audience`` must be a known API. The issued token is a JWT for that audience with
the user as ``sub`` and the calling client in ``act`` (RFC 8693 §4.1, delegation).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt
from flask import Flask, Response, jsonify, request

from ._common import Counter, DemoKey, client_credentials, secret_matches

__all__ = ["SecurityTokenService"]

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"


class SecurityTokenService:
    """The demo STS at ``base_url``; ``.app`` is its Flask app.

    ``trust`` verifies a subject token and returns its claims (raising ``jwt.InvalidTokenError``).
    """

    def __init__(self, base_url: str, *, trust: Callable[[str], dict[str, Any]],
                 audiences: tuple[str, ...] = ("docs-api",), ttl: int = 600) -> None:
        self.base_url = base_url.rstrip("/")
        self.trust = trust
        self.audiences = audiences
        self.ttl = ttl
        self.key = DemoKey()
        self.clients: dict[str, str] = {}
        self.counters = Counter()
        self.app = self._build_app()

    @property
    def token_endpoint(self) -> str:
        return f"{self.base_url}/token"

    def register_client(self, client_id: str, client_secret: str) -> None:
        self.clients[client_id] = client_secret

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """Claims of a token this STS issued for ``audience`` (``jwt.InvalidTokenError`` otherwise)."""
        return self.key.verify(token, issuer=self.base_url, audience=audience)

    @staticmethod
    def _error(code: str, status: int = 400) -> Response:
        response = jsonify(error=code)
        response.status_code = status
        response.headers["Cache-Control"] = "no-store"
        return response

    def _build_app(self) -> Flask:
        app = Flask("demo-sts")

        @app.post("/token")
        def token() -> Response:
            client_id, secret = client_credentials(request)
            expected = self.clients.get(client_id or "")
            if expected is None or not secret_matches(secret, expected):
                response = self._error("invalid_client", 401)
                response.headers["WWW-Authenticate"] = 'Basic realm="demo-sts"'
                return response
            form = request.form
            if form.get("grant_type") != GRANT_TOKEN_EXCHANGE:
                return self._error("unsupported_grant_type")
            if form.get("subject_token_type") not in (TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT):
                return self._error("invalid_request")
            audience = form.get("audience")
            if audience not in self.audiences:
                return self._error("invalid_target")
            try:
                subject = self.trust(form.get("subject_token", ""))
            except jwt.InvalidTokenError:
                return self._error("invalid_request")  # RFC 8693 §2.2.2: invalid subject_token
            self.counters.incr("exchanges")
            now = int(time.time())
            issued = self.key.sign({"iss": self.base_url, "sub": subject["sub"], "aud": audience,
                                    "iat": now, "exp": now + self.ttl, "jti": secrets.token_urlsafe(12),
                                    "act": {"sub": client_id}, "scope": form.get("scope", "docs:read")},
                                   typ="at+jwt")
            response = jsonify(access_token=issued, issued_token_type=TOKEN_TYPE_ACCESS,
                               token_type="Bearer", expires_in=self.ttl)
            response.headers["Cache-Control"] = "no-store"
            return response

        return app
