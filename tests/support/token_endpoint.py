"""A minimal loopback OAuth2 token endpoint for refresh tests (RFC 6749 §6), served over real HTTP.

It only knows the ``refresh_token`` grant: refresh tokens are seeded by the test (``seed()``), every
use rotates them (the used one dies; reusing it is ``invalid_grant``, as rotating IdPs do), and every
call is counted. Knobs: ``failure`` (``None`` | ``"invalid_grant"`` | ``"503"`` | ``"html"``), ``delay``
seconds before answering (widens race windows), ``rotate`` (``False``: no new refresh token in the
answer and the old one stays valid), ``expires_in``.

    with TokenEndpoint() as idp:
        rt = idp.seed()
        entry = idp.upstream_entry("corp")      # a ``type: oauth2`` MCP_AUTH_UPSTREAMS entry
        ...
        assert idp.refresh_calls == 1
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from typing import Any

from flask import Flask, Response, jsonify, request

from tests.support.servers import ServerThread

__all__ = ["TokenEndpoint"]


class TokenEndpoint:
    def __init__(self, *, client_id: str = "mcp-client", client_secret: str = "s3cret") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.failure: str | None = None
        self.delay = 0.0
        self.rotate = True
        self.expires_in = 3600
        self.refresh_calls = 0
        self.reused = 0
        self._lock = threading.Lock()
        self._live: dict[str, str] = {}  # refresh token -> subject
        self._counter = itertools.count(1)
        self.app = Flask("fake-token-endpoint")
        self.app.add_url_rule("/token", "token", self._token, methods=["POST"])
        self.app.add_url_rule("/authorize", "authorize", lambda: Response("unused", status=400))
        self._server = ServerThread(self.app)
        self.url = self._server.url

    def __enter__(self) -> TokenEndpoint:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def seed(self, subject: str = "up-alice") -> str:
        """A fresh valid refresh token."""
        token = f"rt-seed-{secrets.token_urlsafe(8)}"
        with self._lock:
            self._live[token] = subject
        return token

    def upstream_entry(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": "oauth2",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "token_endpoint_auth_method": "client_secret_post",
            "scopes": ["read"],
        }

    def _token(self) -> Response:
        form = request.form
        if form.get("grant_type") != "refresh_token":
            return _error("unsupported_grant_type", 400)
        with self._lock:
            self.refresh_calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.failure == "503":
            return Response("", status=503)
        if self.failure == "html":
            return Response("<html><body>Oops</body></html>", status=500, mimetype="text/html")
        presented = form.get("refresh_token", "")
        with self._lock:
            subject = self._live.get(presented)
            if subject is None or self.failure == "invalid_grant":
                if subject is None:
                    self.reused += 1
                return _error("invalid_grant", 400)
            n = next(self._counter)
            body: dict[str, Any] = {
                "access_token": f"at-{n}-{secrets.token_urlsafe(6)}",
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "scope": form.get("scope", "read"),
            }
            if self.rotate:
                del self._live[presented]
                new = f"rt-{n}-{secrets.token_urlsafe(8)}"
                self._live[new] = subject
                body["refresh_token"] = new
        resp = jsonify(body)
        resp.headers["Cache-Control"] = "no-store"
        return resp


def _error(code: str, status: int) -> Response:
    resp = jsonify({"error": code})
    resp.status_code = status
    return resp
