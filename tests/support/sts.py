"""A loopback RFC 8693 security token service for outgoing-auth tests and the benchmark.

It checks what a real STS checks (RFC 8693 §2.1: form-encoded POST, the token-exchange grant type,
``subject_token`` + ``subject_token_type``; RFC 6749 §2.3.1 HTTP Basic client auth with form-urlencoded
id/secret), records every call, and answers with a fresh access token per call. ``sts.mode`` makes it
misbehave in the ways tests need (and ``sts.set_cookie`` makes it set a cookie on every successful
answer; each call records the ``Cookie`` header it came with): an OAuth error body, a 200 without ``issued_token_type``,
``token_type: N_A``, an HTML error page, garbage, or a reply slower than the client's timeout.

>>> with running_sts() as sts:
...     sts.token_url, sts.call_count
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from flask import Flask, Response, jsonify, request

from tests.support.servers import ServerThread

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"


@dataclass
class Call:
    form: dict[str, str]
    client_id: str | None
    content_type: str
    cookie: str | None = None


@dataclass
class FakeSTS:
    client_id: str = "mcp"
    client_secret: str = "s3cr:t &+="  # characters that RFC 6749 §2.3.1 form-encoding must escape
    expires_in: Any = 300
    #: "ok", "error:<code>", "no_issued_type", "n_a", "html", "garbage", "slow", "no_expires"
    mode: str = "ok"
    delay: float = 0.0  # seconds to sleep before answering (to overlap concurrent callers)
    slow_seconds: float = 3.0
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _seq: Any = field(default_factory=lambda: itertools.count(1))
    server: ServerThread | None = None
    #: ``"name=value"``: sent as ``Set-Cookie`` on every successful answer
    set_cookie: str | None = None

    @property
    def call_count(self) -> int:
        with self._lock:
            return len(self.calls)

    @property
    def token_url(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/token"

    @staticmethod
    def token_for(subject_token: str, seq: int, audience: str = "") -> str:
        """Issued tokens name the subject they came from (by hash) so tests can tell users apart."""
        digest = hashlib.sha256(subject_token.encode()).hexdigest()[:12]
        return f"xchg.{audience or '-'}.{digest}.{seq}"

    def app(self) -> Flask:
        app = Flask("fake_sts")

        @app.post("/token")
        def token() -> Any:
            if self.delay:
                time.sleep(self.delay)
            client = self._client()
            with self._lock:
                self.calls.append(Call(dict(request.form), client, request.content_type or "",
                                       request.headers.get("Cookie")))
                seq = next(self._seq)
            if client is None:
                return _error("invalid_client", 401)
            if not (request.content_type or "").startswith("application/x-www-form-urlencoded"):
                return _error("invalid_request")
            form = request.form
            if form.get("grant_type") != GRANT:
                return _error("unsupported_grant_type")
            if not form.get("subject_token") or not form.get("subject_token_type"):
                return _error("invalid_request")
            mode = self.mode
            if mode.startswith("error:"):
                return jsonify(error=mode.split(":", 1)[1],
                               error_description="STS-SECRET-DETAIL must not be echoed"), 400
            if mode == "html":
                return Response("<html><body>502 Bad Gateway STS-SECRET-DETAIL</body></html>", 502,
                                mimetype="text/html")
            if mode == "garbage":
                return Response("\x00not json{", 200, mimetype="application/json")
            if mode == "slow":
                time.sleep(self.slow_seconds)
            issued = form.get("requested_token_type") or ACCESS
            body: dict[str, Any] = {
                "access_token": self.token_for(form["subject_token"], seq, form.get("audience", "")),
                "issued_token_type": issued,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
            }
            if mode == "no_issued_type":
                del body["issued_token_type"]
            if mode == "n_a":
                body["token_type"] = "N_A"
            if mode == "no_expires":
                del body["expires_in"]
            resp = jsonify(body)
            if self.set_cookie:
                resp.headers["Set-Cookie"] = f"{self.set_cookie}; Path=/"
            return resp

        return app

    def _client(self) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            raw = base64.b64decode(header[6:]).decode()
        except ValueError:
            return None
        cid, _, secret = raw.partition(":")
        if unquote_plus(cid) == self.client_id and unquote_plus(secret) == self.client_secret:
            return unquote_plus(cid)
        return None


def _error(code: str, status: int = 400) -> tuple[Response, int]:
    return jsonify(error=code), status


@contextmanager
def running_sts(**kwargs: Any) -> Iterator[FakeSTS]:
    sts = FakeSTS(**kwargs)
    sts.server = ServerThread(sts.app()).start()
    try:
        yield sts
    finally:
        sts.server.stop()
