"""A Mode-B app (the embedded authorization server) over real HTTP, and a browser that walks its flows.

Build and serve the AS in front of loopback fake IdPs (``tests/support/idp.py``)::

    with FakeOIDC(users=["alice"]) as corp, FakeGitHub(users=["octocat"]) as gh, \\
            serve_as([corp.upstream_entry("corp"), gh.upstream_entry("github")], storage_url) as srv:
        browser = Browser()
        flow = browser.authorize(srv, scope="openid offline_access")   # authorize → consent → legs
        assert flow.params["state"] == [flow.state]
        tokens = srv.token(flow.code, flow.verifier).json()

``serve_as`` binds the socket first so the issuer (``http://127.0.0.1:<port>``) is known before
``MCPAuth`` is initialised; the app has one pre-registered public client (``CLIENT_ID``, loopback
redirect URI ``REDIRECT_URI``, any port). :class:`Browser` is a ``requests.Session`` that never
follows redirects by itself: every hop (method, URL, status, Location) is recorded in ``hops``, the
consent form is answered like a user would (approve/deny), and the walk stops at the client's
redirect URI (nothing listens there).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from flask import Flask

from flask_mcp_auth import MCPAuth
from flask_mcp_auth.runtime import Runtime
from flask_mcp_auth.storage import Storage
from tests.support.servers import ServerThread

__all__ = ["CLIENT_ID", "REDIRECT_URI", "ASServer", "Browser", "Flow", "Hop", "StorageSpy", "build_app",
           "pkce", "serve_as"]

CLIENT_ID = "test-client"
#: loopback: matches on any port (RFC 8252 §7.3); nothing listens there
REDIRECT_URI = "http://127.0.0.1/callback"
CLIENT_REDIRECT = "http://127.0.0.1:53682/callback"
SCOPES = ["openid", "profile", "email", "offline_access"]


class _LateApp:
    """A WSGI app whose real app is plugged in after the socket is bound (the port is the issuer)."""

    def __init__(self) -> None:
        self.app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


def _with_issuer(value: Any, issuer: str) -> Any:
    if isinstance(value, str):
        return value.replace("{issuer}", issuer)
    if isinstance(value, list):
        return [_with_issuer(v, issuer) for v in value]
    if isinstance(value, dict):
        return {k: _with_issuer(v, issuer) for k, v in value.items()}
    return value


def build_app(issuer: str, upstreams: Sequence[Mapping[str, Any]], storage: str | Storage, *,
              template_folder: str | None = None, setup: Callable[[Flask], None] | None = None,
              **config: Any) -> Flask:
    """A Flask app with ``MCPAuth`` in Mode B; ``config`` overrides any ``MCP_AUTH_*``/Flask key
    (``{issuer}`` in string values is replaced by the issuer URL)."""
    app = Flask("as-under-test", template_folder=template_folder or "templates")
    app.config.update(
        SECRET_KEY=secrets.token_urlsafe(32),
        SESSION_COOKIE_NAME="as_session",
        MCP_AUTH_ISSUER=issuer,
        MCP_AUTH_RESOURCE=f"{issuer}/mcp",
        MCP_AUTH_UPSTREAMS=[dict(u) for u in upstreams],
        MCP_AUTH_STORAGE=storage,
        MCP_AUTH_CLIENTS=[{"client_id": CLIENT_ID, "redirect_uris": [REDIRECT_URI], "scopes": SCOPES,
                           "client_name": "Test Client"}],
    )
    app.config.update({key: _with_issuer(value, issuer) for key, value in config.items()})
    if setup is not None:
        setup(app)  # e.g. Flask-Session, before the extension
    MCPAuth(app)

    @app.get("/mcp")
    def mcp() -> str:
        return "ok"

    return app


class StorageSpy:
    """Records every pending leg record the AS writes (its state and session id), through the
    storage's public ``put``, so tests can check what a chain left behind on any backend."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.states: list[str] = []
        self.sids: list[str] = []
        self.puts: list[tuple[str, str]] = []  # (kind, key) of every generic record written
        real_put = storage.put

        def put(kind: str, key: str, value: Mapping[str, Any], ttl: int, *, nx: bool = False) -> None:
            real_put(kind, key, value, ttl, nx=nx)
            self.puts.append((kind, key))
            if kind == "pending":
                self.states.append(key)
                sid = value.get("sid")
                if isinstance(sid, str) and sid not in self.sids:
                    self.sids.append(sid)

        storage.put = put  # type: ignore[method-assign]

    def live_pending(self) -> int:
        """Pending leg records still stored."""
        return sum(1 for state in self.states if self.storage.get("pending", state) is not None)

    def leftover(self) -> int:
        """Upstream-token rows plus session metadata still stored for every chain seen."""
        total = 0
        for sid in self.sids:
            data = self.storage.load_session(sid)
            total += len(data.tokens) + (data.owner is not None)
        return total


@dataclass
class ASServer:
    """A running AS: ``url`` is its issuer; ``spy`` sees every chain's pending records."""

    app: Flask
    server: ServerThread
    url: str
    spy: StorageSpy

    @property
    def runtime(self) -> Runtime:
        return MCPAuth.runtime(self.app)

    @property
    def storage(self) -> Storage:
        return self.runtime.storage

    def authorize_url(self, **params: str) -> str:
        return f"{self.url}/oauth/authorize?{urlencode(params)}"

    def token(self, code: str, verifier: str, *, client_id: str = CLIENT_ID,
              redirect_uri: str = CLIENT_REDIRECT, **extra: str) -> requests.Response:
        data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                "client_id": client_id, "redirect_uri": redirect_uri, **extra}
        return requests.post(f"{self.url}/oauth/token", data=data, timeout=10)


@contextmanager
def serve_as(upstreams: Sequence[Mapping[str, Any]], storage: str | Storage, *,
             template_folder: str | None = None, setup: Callable[[Flask], None] | None = None,
             **config: Any) -> Iterator[ASServer]:
    """Serve :func:`build_app` on a loopback port; stop the server and close the storage after."""
    late = _LateApp()
    server = ServerThread(late)
    try:
        app = build_app(server.url, upstreams, storage, template_folder=template_folder, setup=setup,
                        **config)
    except BaseException:
        server.server.server_close()
        raise
    late.app = app
    server.start()
    try:
        yield ASServer(app, server, server.url, StorageSpy(MCPAuth.runtime(app).storage))
    finally:
        server.stop()
        MCPAuth.runtime(app).storage.close()


def pkce() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, create_s256_code_challenge(verifier)


@dataclass(frozen=True)
class Hop:
    method: str
    url: str
    status: int
    location: str | None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass
class Flow:
    """The end of a walk: the last response, and (when the client was reached) its redirect."""

    hops: list[Hop]
    final: requests.Response | None  # the response that was not followed (None: reached the client)
    location: str | None  # the client redirect URL when reached
    verifier: str = ""
    state: str = ""
    params: dict[str, list[str]] = field(default_factory=dict)
    next_url: str | None = None  # with ``until``: the redirect target that was not followed

    @property
    def code(self) -> str:
        return self.params["code"][0]

    @property
    def error(self) -> str | None:
        return self.params.get("error", [None])[0]

    @property
    def reached_client(self) -> bool:
        return self.location is not None


_HIDDEN_RE = re.compile(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">')


class Browser:
    """A browser that follows every redirect itself and records each hop."""

    def __init__(self, stop_at: str = "http://127.0.0.1:53682/") -> None:
        self.http = requests.Session()
        self.http.trust_env = False  # no proxies for loopback
        self.hops: list[Hop] = []
        self.stop_at = stop_at

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        resp = self.http.request(method, url, allow_redirects=False, timeout=15, **kwargs)
        self.hops.append(Hop(method, url, resp.status_code, resp.headers.get("Location"),
                             resp.headers))
        return resp

    def walk(self, url: str, *, method: str = "GET", data: Mapping[str, str] | None = None,
             consent: str | None = "approve", until: str | None = None, max_hops: int = 25) -> Flow:
        """Follow redirects from ``url`` until the client's redirect URI, a non-redirect response,
        (with ``consent`` ``None``) the consent page, or a redirect to a URL starting with ``until``
        (not followed; in ``next_url``). ``consent`` answers the page: approve/deny."""
        start = len(self.hops)
        for _ in range(max_hops):
            resp = self.request(method, url, data=data)
            if resp.status_code in (301, 302, 303, 307, 308):
                target = urljoin(url, resp.headers["Location"])
                if target.startswith(self.stop_at):
                    return Flow(self.hops[start:], None, target,
                                params=parse_qs(urlsplit(target).query, keep_blank_values=True))
                if until is not None and target.startswith(until):
                    return Flow(self.hops[start:], resp, None, next_url=target)
                if resp.status_code in (302, 303) or (resp.status_code == 301 and method == "POST"):
                    method, data = "GET", None  # what browsers do
                url = target
                continue
            if consent and resp.status_code == 200 and "/oauth/consent" in url and method == "GET":
                fields = dict(_HIDDEN_RE.findall(resp.text))
                fields["action"] = consent
                method, data = "POST", fields
                url = urljoin(url, urlsplit(url).path)
                continue
            return Flow(self.hops[start:], resp, None)
        raise AssertionError("too many redirects")

    def authorize(self, srv: ASServer, *, consent: str | None = "approve", state: str | None = None,
                  until: str | None = None, **params: str) -> Flow:
        """Start an authorization for the test client with fresh PKCE and walk it to the end."""
        verifier, challenge = pkce()
        state = state if state is not None else secrets.token_urlsafe(16)
        query = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": CLIENT_REDIRECT,
                 "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
                 "scope": "openid profile email", **params}
        flow = self.walk(srv.authorize_url(**query), consent=consent, until=until)
        flow.verifier = verifier
        flow.state = state
        return flow

    def upstream_hops(self, host_url: str) -> list[Hop]:
        """Hops that went to one upstream (its authorize requests, in order)."""
        return [h for h in self.hops if h.url.startswith(host_url)]
