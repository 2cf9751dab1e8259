"""The default in-memory storage behind two "workers" (TESTPLAN ST-10; SPEC §7, toolhive
docs/redis-storage.md: in-memory state cannot scale horizontally).

Two app instances in this process stand in for two gunicorn workers: both use ``memory://`` storage
(each its own), the same ``SECRET_KEY`` and the same signing key, and sit behind a tiny loopback
reverse proxy that sends each request to the next backend in turn (no sticky sessions) and rewrites
nothing — the issuer is the proxy's URL. A chain started on worker 1 whose upstream callback lands on
worker 2 must end in a clean 400 "unknown or expired sign-in" page, and each instance must warn at
startup that memory storage is single-process.
"""

from __future__ import annotations

import http.client
import itertools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from flask import Flask

from flask_mcp_auth.keys import generate_rsa_pem
from tests.support.as_app import CLIENT_ID, REDIRECT_URI, SCOPES, Browser, build_app, pkce
from tests.support.idp import FakeOIDC
from tests.support.servers import ServerThread

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "content-length"}
_MEMORY_WARNING = "MCP_AUTH_STORAGE is memory://"


class _LateApp:
    """WSGI app plugged in after the proxy's socket is bound (its URL is the issuer)."""

    def __init__(self) -> None:
        self.app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@dataclass
class RoundRobinProxy:
    """Forwards each request to the next backend in turn, byte for byte (Host included).

    Hand-written on ``http.client`` because a test proxy must not follow redirects, merge
    ``Set-Cookie`` headers or touch the body; ``routed`` records (path, backend index) per request.
    ``pin`` sends everything to one backend (the sticky control case)."""

    backends: list[int]
    pin: int | None = None
    routed: list[tuple[str, int]] = field(default_factory=list)
    _turn: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
        if environ.get("QUERY_STRING") and "?" not in path:
            path = f"{path}?{environ['QUERY_STRING']}"
        with self._lock:
            index = self.pin if self.pin is not None else next(self._turn) % len(self.backends)
            self.routed.append((urlsplit(path).path, index))
        headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items()
                   if key.startswith("HTTP_") and key[5:].lower().replace("_", "-") not in _HOP_BY_HOP}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else None
        conn = http.client.HTTPConnection("127.0.0.1", self.backends[index], timeout=15)
        try:
            conn.request(environ["REQUEST_METHOD"], path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            start_response(f"{resp.status} {resp.reason}", out)
            return [data]
        finally:
            conn.close()


@dataclass
class Workers:
    url: str
    proxy: RoundRobinProxy
    apps: list[Flask]
    startup_logs: list[list[logging.LogRecord]]


@pytest.fixture()
def corp() -> Iterator[FakeOIDC]:
    with FakeOIDC(users=["alice"]) as idp:
        yield idp


@pytest.fixture()
def workers(corp: FakeOIDC, caplog: pytest.LogCaptureFixture) -> Iterator[Workers]:
    late = _LateApp()
    front = ServerThread(late)
    secret_key, pem = "shared-secret-" + "k" * 32, generate_rsa_pem()
    # A first-party client with consent "never": authorize redirects straight to the upstream, so
    # the very next request through the proxy is the upstream callback.
    client = {"client_id": CLIENT_ID, "redirect_uris": [REDIRECT_URI], "scopes": SCOPES,
              "client_name": "Test Client", "first_party": True}
    apps: list[Flask] = []
    logs: list[list[logging.LogRecord]] = []
    servers: list[ServerThread] = []
    try:
        for _ in range(2):
            caplog.clear()
            with caplog.at_level(logging.DEBUG):
                app = build_app(front.url, [corp.upstream_entry("corp")], "memory://",
                                SECRET_KEY=secret_key, MCP_AUTH_SIGNING_KEYS=[pem],
                                MCP_AUTH_CONSENT="never", MCP_AUTH_CLIENTS=[client])
            logs.append(list(caplog.records))
            apps.append(app)
            servers.append(ServerThread(app).start())
        proxy = RoundRobinProxy([s.port for s in servers])
        late.app = proxy
        front.start()
        yield Workers(front.url, proxy, apps, logs)
    finally:
        if late.app is not None:
            front.stop()
        else:
            front.server.server_close()
        for server in servers:
            server.stop()


def _authorize_url(issuer: str, verifier_challenge: str) -> str:
    return f"{issuer}/oauth/authorize?" + urlencode({
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": "http://127.0.0.1:53682/callback",
        "state": "client-state-1", "code_challenge": verifier_challenge, "code_challenge_method": "S256",
        "scope": "openid profile"})


def test_st10_startup_warns_memory_storage_is_single_process(workers: Workers) -> None:
    for records in workers.startup_logs:
        warnings = [r for r in records if r.levelno == logging.WARNING and r.name.startswith("flask_mcp_auth")
                    and _MEMORY_WARNING in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in records]
        assert "redis://" in warnings[0].getMessage()  # it names the fix


def test_st10_callback_on_the_other_worker_is_a_clean_400(workers: Workers, corp: FakeOIDC,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    # Control: pinned to one worker, the same setup completes the chain.
    workers.proxy.pin = 0
    _verifier, challenge = pkce()
    sticky = Browser().walk(_authorize_url(workers.url, challenge))
    assert sticky.reached_client and "code" in sticky.params

    # Round robin: authorize on worker 1, the upstream callback on worker 2.
    workers.proxy.pin = None
    workers.proxy.routed.clear()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="flask_mcp_auth")
    _verifier, challenge = pkce()
    browser = Browser()
    flow = browser.walk(_authorize_url(workers.url, challenge))
    assert workers.proxy.routed == [("/oauth/authorize", 0), ("/oauth/callback", 1)]
    assert corp.authorize_calls == 2  # the chain really reached the upstream and came back
    assert not flow.reached_client and flow.final is not None
    page = flow.final
    assert page.status_code == 400
    assert page.headers["Content-Type"].startswith("text/html")
    assert "invalid_request" in page.text
    assert "Traceback" not in page.text and 'File "' not in page.text
    assert corp.url not in page.text
    # worker 2 knew nothing of the leg state (not "another browser": the shared SECRET_KEY reads the cookie)
    reasons = [r.getMessage() for r in caplog.records if r.name.startswith("flask_mcp_auth")]
    assert "callback: unknown, expired or already used state" in reasons, reasons
    assert not any("another browser" in m for m in reasons)
    assert corp.code_exchanges == 1  # only the sticky chain's code was redeemed; worker 2 redeemed nothing
