"""``MCP_AUTH_UPSTREAM_TIMEOUT`` is a total limit on each protocol call, not a per-read one.

A raw-socket loopback server answers the headers and then one body byte every 0.3 s (or dribbles the
headers themselves): requests' per-read timeout never fires, so without ``_http.fetch`` every call
below would run for the whole dribble. Each test checks the error type its caller promises and that
the call came back while the server still had bytes left to send (the server's own count, not a
wall-clock measurement).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from flask_mcp_auth import MCPAuth
from flask_mcp_auth._http import HTTPFailure, fetch
from flask_mcp_auth.config import UpstreamConfig, parse_settings
from flask_mcp_auth.errors import TemporarilyUnavailable, TokenExchangeError
from flask_mcp_auth.identity import ExternalVerifier
from flask_mcp_auth.keys import Cipher
from flask_mcp_auth.outgoing.exchange import ExchangeRequest, TokenExchangeClient
from flask_mcp_auth.storage import UpstreamToken
from flask_mcp_auth.storage.memory import MemoryStorage
from flask_mcp_auth.storage.vault import TokenVault
from flask_mcp_auth.upstream.base import UpstreamUnavailable
from flask_mcp_auth.upstream.oauth2 import OAuth2Client
from flask_mcp_auth.upstream.oidc import OIDCClient
from flask_mcp_auth.upstream.refresh import Refresher
from tests.test_identity import make_app as make_mode_b_app

TIMEOUT = 1.0
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
RESOURCE = "https://api.example.com/mcp"


class DribbleServer:
    """HTTP/1.1 on a raw loopback socket. Paths in ``fast`` are answered at once; any other path gets
    its headers at once and then ``body`` one byte per ``interval`` (with ``slow_headers`` the headers
    are dribbled too). ``sent``/``total`` count the dribbled bytes of the last slow answer."""

    def __init__(self, *, body: bytes = b" " * 40, interval: float = 0.3, slow_headers: bool = False) -> None:
        self.body = body
        self.interval = interval
        self.slow_headers = slow_headers
        self.fast: dict[str, bytes] = {}
        self.paths: list[str] = []
        self.sent = 0
        self.total = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> DribbleServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                path = self._read_request(conn)
            except OSError:
                return
            with self._lock:
                self.paths.append(path)
            if path in self.fast:
                body = self.fast[path]
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (len(body), body))
                return
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                    b"Connection: close\r\n\r\n" % len(self.body))
            payload = head + self.body if self.slow_headers else self.body
            with self._lock:
                self.sent, self.total = 0, len(payload)
            try:
                if not self.slow_headers:
                    conn.sendall(head)
                for byte in payload:
                    if self._stop.wait(self.interval):
                        return
                    conn.sendall(bytes([byte]))
                    with self._lock:
                        self.sent += 1
            except OSError:
                return  # the client hung up

    @staticmethod
    def _read_request(conn: socket.socket) -> str:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise OSError("closed")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            rest += chunk
        return lines[0].split(" ")[1]

    def sent_now(self) -> tuple[int, int]:
        with self._lock:
            return self.sent, self.total


@pytest.fixture()
def dribble() -> Iterator[DribbleServer]:
    with DribbleServer() as server:
        yield server


def _assert_cut_short(server: DribbleServer, path: str) -> None:
    sent, total = server.sent_now()
    assert path in server.paths  # the slow answer was really being served …
    assert total > 0 and sent < total  # … and the client gave up with bytes still to come


def _oauth2(url: str, http: requests.Session) -> OAuth2Client:
    config = UpstreamConfig(name="slow", type="oauth2", client_id="c", token_endpoint_auth_method="none",
                            authorization_endpoint=f"{url}/authorize", token_endpoint=f"{url}/token")
    return OAuth2Client(config, http, verify=True, timeout=TIMEOUT)


def _rsa_token(kid: str, **claims: Any) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


# --- the helper itself ---------------------------------------------------------------------------
def test_fetch_reads_a_dribbled_body_that_ends_within_the_deadline(http: requests.Session) -> None:
    with DribbleServer(body=b'{"a": 1}', interval=0.05) as server:
        reply = fetch(http, "GET", f"{server.url}/doc", verify=True, timeout=10, max_body=1024)
    assert reply.status == 200 and reply.json_object() == {"a": 1}
    assert server.sent_now() == (8, 8)


def test_fetch_deadline_covers_the_headers_too(http: requests.Session) -> None:
    with DribbleServer(slow_headers=True) as server:
        with pytest.raises(HTTPFailure) as info:
            fetch(http, "GET", f"{server.url}/doc", verify=True, timeout=TIMEOUT, max_body=1024)
        assert info.value.reason == "timeout"
        _assert_cut_short(server, "/doc")


def test_fetch_with_a_spent_shared_deadline_makes_no_call(dribble: DribbleServer,
                                                          http: requests.Session) -> None:
    import time

    with pytest.raises(HTTPFailure) as info:
        fetch(http, "GET", f"{dribble.url}/doc", verify=True, timeout=TIMEOUT, max_body=1024,
              deadline=time.monotonic() - 1)
    assert info.value.reason == "timeout"
    assert dribble.paths == []


# --- every protocol caller -----------------------------------------------------------------------
def test_oauth2_token_exchange_times_out_in_total(dribble: DribbleServer, http: requests.Session) -> None:
    client = _oauth2(dribble.url, http)
    with pytest.raises(UpstreamUnavailable) as info:
        client.exchange_code(code="x", redirect_uri="http://127.0.0.1/cb", code_verifier="v" * 43, nonce=None)
    assert info.value.reason == "token_timeout"
    _assert_cut_short(dribble, "/token")


def test_oauth2_token_exchange_with_dribbled_headers_times_out(http: requests.Session) -> None:
    with DribbleServer(slow_headers=True) as server:
        with pytest.raises(UpstreamUnavailable) as info:
            _oauth2(server.url, http).exchange_code(code="x", redirect_uri="http://127.0.0.1/cb",
                                                    code_verifier="v" * 43, nonce=None)
        assert info.value.reason == "token_timeout"
        _assert_cut_short(server, "/token")


def test_oidc_jwks_fetch_times_out_and_frees_the_cache_lock(dribble: DribbleServer,
                                                            http: requests.Session) -> None:
    url = dribble.url
    dribble.fast["/.well-known/openid-configuration"] = (
        b'{"issuer": "%s", "authorization_endpoint": "%s/authorize", "token_endpoint": "%s/token", '
        b'"jwks_uri": "%s/jwks"}' % ((url.encode(),) * 4)
    )
    client = OIDCClient(UpstreamConfig(name="corp", type="oidc", client_id="c", issuer=url), http,
                        timeout=TIMEOUT)
    token = _rsa_token("k1", iss=url, aud="c", sub="u", nonce="n")
    with pytest.raises(UpstreamUnavailable) as info:
        client.verify_id_token(token, nonce="n")
    assert info.value.reason == "jwks_timeout"
    _assert_cut_short(dribble, "/jwks")
    assert client.jwks._lock.acquire(blocking=False)  # not held past the call
    client.jwks._lock.release()


def test_mode_a_jwks_fetch_times_out_and_frees_the_lock(dribble: DribbleServer,
                                                        http: requests.Session) -> None:
    settings, _ = parse_settings({"MCP_AUTH_ISSUER": dribble.url, "MCP_AUTH_RESOURCE": RESOURCE,
                                  "MCP_AUTH_JWKS_URI": f"{dribble.url}/jwks",
                                  "MCP_AUTH_UPSTREAM_TIMEOUT": TIMEOUT})
    verifier = ExternalVerifier(settings, http)
    token = _rsa_token("k1", iss=dribble.url, aud=RESOURCE, sub="u", exp=2**31)
    with pytest.raises(TemporarilyUnavailable):
        verifier.verify(token)
    _assert_cut_short(dribble, "/jwks")
    assert verifier.fetches == 1
    assert verifier._lock.acquire(blocking=False)
    verifier._lock.release()


def test_sts_exchange_times_out_in_total(dribble: DribbleServer, http: requests.Session) -> None:
    client = TokenExchangeClient(http, verify=True, timeout=TIMEOUT)
    with pytest.raises(TokenExchangeError) as info:
        client.exchange(ExchangeRequest(backend="docs", token_url=f"{dribble.url}/sts", subject_token="s",
                                        subject_token_type=ACCESS))
    assert info.value.error == "temporarily_unavailable"
    _assert_cut_short(dribble, "/sts")


def test_refresh_against_a_dribbling_upstream_keeps_the_row_and_frees_the_lock(
        dribble: DribbleServer, http: requests.Session) -> None:
    store = MemoryStorage()
    vault = TokenVault(store, Cipher([os.urandom(32)]))
    old = UpstreamToken(provider="slow", access_token="old", refresh_token="rt-1", expires_at=1.0, subject="s")
    vault.save("sid", old, 600)
    refresher = Refresher(store, vault, {"slow": _oauth2(dribble.url, http)}, ttl=600, lock_ttl=30)
    with pytest.raises(UpstreamUnavailable) as info:
        refresher.refresh("sid", old)
    assert info.value.reason == "token_timeout"
    _assert_cut_short(dribble, "/token")
    assert "slow" in store.load_session("sid").tokens  # transient: the row is kept
    assert store.acquire_lock("refresh:sid:slow", 1) is not None  # released, not left to expire


def test_refresh_lock_outlives_one_bounded_refresh() -> None:
    app = make_mode_b_app(MCP_AUTH_UPSTREAM_TIMEOUT=3)
    refresher = app.extensions["mcp_auth"].parts["refresher"]
    # one refresh = the token call + at most one JWKS fetch for its id_token, each ≤ the timeout
    assert refresher.lock_ttl > 2 * 3


def test_cli_check_reports_a_dribbling_issuer_jwks_as_failed(dribble: DribbleServer) -> None:
    app = Flask(__name__)
    app.config.update({"MCP_AUTH_ISSUER": dribble.url, "MCP_AUTH_RESOURCE": RESOURCE,
                       "MCP_AUTH_JWKS_URI": f"{dribble.url}/jwks", "MCP_AUTH_UPSTREAM_TIMEOUT": TIMEOUT})
    MCPAuth(app)
    result = app.test_cli_runner().invoke(args=["mcp-auth", "check"])
    assert result.exit_code != 0
    row = next(line for line in result.output.splitlines() if line.startswith("issuer jwks"))
    assert "FAIL" in row and "timeout" in row
    _assert_cut_short(dribble, "/jwks")


def test_fetch_caps_worker_threads_left_by_dribbling_upstreams(monkeypatch: pytest.MonkeyPatch,
                                                               http: requests.Session) -> None:
    """Workers abandoned on a header-dribbling upstream hold a slot until they really end; past the cap,
    new calls fail with ``timeout`` within their own deadline instead of starting more threads."""
    import flask_mcp_auth._http as http_module

    monkeypatch.setattr(http_module, "_in_flight", threading.BoundedSemaphore(2))
    earlier = {t for t in threading.enumerate() if t.name == "flask_mcp_auth-http"}  # other tests' stragglers

    def ours() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "flask_mcp_auth-http" and t not in earlier]

    with DribbleServer(slow_headers=True, interval=0.2) as server:
        for _ in range(2):  # two callers give up; their workers are still reading headers
            with pytest.raises(HTTPFailure):
                fetch(http, "GET", f"{server.url}/doc", verify=True, timeout=0.3, max_body=1024)
        assert len(ours()) == 2
        paths_before = len(server.paths)
        for _ in range(3):
            with pytest.raises(HTTPFailure) as info:
                fetch(http, "GET", f"{server.url}/doc", verify=True, timeout=0.2, max_body=1024)
            assert info.value.reason == "timeout"
        assert len(server.paths) == paths_before  # no request was even sent: no slot, no thread
        assert len(ours()) <= 2
