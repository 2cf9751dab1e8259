"""Secrets hygiene of the whole AS + RS over real HTTP (TESTPLAN SH-02, SH-03, SH-04; SPEC §7, §8;
RFC 9700 §4.2-4.3; OAuth 2.1 §3.2.4, §7.12).

* SH-03 — after a complete two-leg login (a corporate OIDC IdP with ``offline_access`` and a
  GitHub-like one) by a dynamically registered **confidential** client on Redis, one code redemption
  and one refresh, every Redis key and value is read back by type: no code, access/refresh/id token,
  client secret, PKCE verifier or upstream token/code appears, and every key has a TTL.
* SH-04 — a battery of bad requests against every AS endpoint and the RS (unknown client, bad
  redirect, bad PKCE, bad grant, bad token, JSON to ``/token``, oversized bodies, odd unicode and
  invalid UTF-8, bad Basic headers, unknown routes, bad bearers, storage down): every 4xx/5xx is free of
  stack traces, internal URLs (the fake IdPs', Redis') and upstream bodies; JSON endpoints answer JSON
  with an RFC 6749 §5.2-charset ``error_description``; no ``Set-Cookie`` (decoded too) carries a secret.
* SH-02 — every test here runs with all logging captured at DEBUG (root logger); at teardown no secret
  the test saw issued (codes, verifiers, leg states, tokens, client secrets, upstream tokens) may
  appear in any record, its exception text included.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import jwt
import pytest
import redis as redis_lib
import requests

from tests.support.as_app import CLIENT_ID, CLIENT_REDIRECT, ASServer, Browser, Hop, pkce, serve_as
from tests.support.idp import FakeGitHub, FakeOIDC, RsaKey
from tests.support.redis_server import RedisServer

#: the confidential client's redirect URI (https, not loopback; nothing listens there)
APP_REDIRECT = "https://client.example/cb"
OFFLINE = "openid profile email offline_access"
#: RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E
_DESCRIPTION_CHARS = {chr(c) for c in range(0x20, 0x7F)} - {'"', "\\"}
#: query parameters whose values are secrets (client ids and challenges are public)
_SECRET_PARAMS = ("state", "code", "nonce")


# --------------------------------------------------------------------------------------------------
# SH-02: logs captured for every test in this file


class Secrets:
    """Every secret value a test saw issued; checked against the logs at teardown."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, *values: Any) -> None:
        for value in values:
            if isinstance(value, str) and len(value) >= 8:
                self.values.add(value)

    def found_in(self, text: str) -> list[str]:
        return sorted(s for s in self.values if s in text)


def _redact(text: str, seen: Secrets) -> str:
    for secret in seen.found_in(text):
        text = text.replace(secret, "<SECRET>")
    return text


@pytest.fixture(autouse=True)
def issued(caplog: pytest.LogCaptureFixture) -> Iterator[Secrets]:
    """SH-02: all records at DEBUG; none may contain a secret the test registered."""
    caplog.set_level(logging.DEBUG)
    seen = Secrets()
    yield seen
    main = threading.get_ident()
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    # The test's own HTTP client logs its request URLs (codes in callback URLs) through urllib3 in
    # this thread; that is the test, not the AS. The AS's own urllib3 calls run on server threads.
    # caplog.records is the current phase only: take setup and call, and teardown so far.
    phases = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    records = [r for r in phases if not (r.thread == main and r.name.startswith("urllib3"))]
    assert any(r.name.startswith("flask_mcp_auth") for r in records)  # the capture works
    lines = [formatter.format(r) for r in records]
    leaks = [_redact(line, seen) for line in lines if seen.found_in(line)]
    assert not leaks, "secrets in logs:\n" + "\n".join(leaks)
    text = "\n".join(lines)
    assert "Something went wrong" not in text  # an upstream's HTML error body


# --------------------------------------------------------------------------------------------------
# fixtures and helpers


@dataclass
class IdPs:
    corp: FakeOIDC
    github: FakeGitHub
    id_tokens: list[str] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [self.corp.url, self.github.url]

    def upstream_secrets(self) -> list[str]:
        """Every token the fakes issued (access, refresh, id) and every code/verifier sent to them."""
        found = list(self.corp._access) + list(self.corp._refresh) + list(self.github._access)
        found += self.id_tokens
        for fake in (self.corp, self.github):
            for req in fake.token_requests:
                found += [v for k, v in req.items() if k in ("code", "code_verifier", "refresh_token")]
        return found


@pytest.fixture()
def idps() -> Iterator[IdPs]:
    with FakeOIDC(users=["alice"], client_id="corp-client", client_secret="corp-Secret-0x5117") as corp, \
            FakeGitHub(users=["octocat"], client_secret="gh-Secret-0x4242") as gh:
        found = IdPs(corp, gh)
        real = corp.make_id_token

        def recording(*args: Any, **kwargs: Any) -> str:
            token = str(real(*args, **kwargs))
            found.id_tokens.append(token)
            return token

        corp.make_id_token = recording  # type: ignore[method-assign,unused-ignore]
        yield found


def _serve(idps: IdPs, storage: str) -> Any:
    return serve_as([idps.corp.upstream_entry("corp", offline=True), idps.github.upstream_entry("github")],
                    storage, MCP_AUTH_CONFIDENTIAL_REGISTRATION=True, MCP_AUTH_PROTECTED_PATHS=["/mcp"])


@pytest.fixture()
def srv(idps: IdPs, storage_url: str) -> Iterator[ASServer]:
    with _serve(idps, storage_url) as server:
        yield server


def _http() -> requests.Session:
    http = requests.Session()
    http.trust_env = False
    return http


def _hop_secrets(hops: list[Hop]) -> list[str]:
    """States, codes and nonces in every hop's URL and redirect (ours and the upstreams')."""
    found: list[str] = []
    for hop in hops:
        for url in (hop.url, hop.location or ""):
            for name, values in parse_qs(urlsplit(url).query).items():
                if name in _SECRET_PARAMS:
                    found += [v for v in values if len(v) >= 16]
    return found


@dataclass
class Login:
    client_id: str
    client_secret: str | None
    code: str
    verifier: str
    first: dict[str, Any]
    refreshed: dict[str, Any]
    hops: list[Hop]

    @property
    def ours(self) -> list[str]:
        """Every secret our AS issued or received in this login."""
        values = [self.code, self.verifier, self.client_secret]
        for body in (self.first, self.refreshed):
            values += [body.get("access_token"), body.get("refresh_token"), body.get("id_token")]
        return [v for v in values if v]


def _confidential_login(srv: ASServer, idps: IdPs, issued: Secrets) -> Login:
    """Register a confidential client, walk the two-leg chain with offline_access, redeem, refresh once."""
    http = _http()
    reg = http.post(f"{srv.url}/oauth/register", timeout=10, json={
        "redirect_uris": [APP_REDIRECT], "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["authorization_code", "refresh_token"], "scope": OFFLINE, "client_name": "Hygiene"})
    assert reg.status_code == 201, reg.text
    client_id, client_secret = reg.json()["client_id"], reg.json()["client_secret"]
    issued.add(client_secret)
    verifier, challenge = pkce()
    browser = Browser(stop_at=APP_REDIRECT)
    flow = browser.walk(srv.authorize_url(response_type="code", client_id=client_id, redirect_uri=APP_REDIRECT,
                                          state=secrets.token_urlsafe(16), code_challenge=challenge,
                                          code_challenge_method="S256", scope=OFFLINE))
    assert flow.reached_client, flow.final.text if flow.final is not None else flow
    issued.add(flow.code, verifier, *_hop_secrets(browser.hops))
    token_url = f"{srv.url}/oauth/token"
    first = http.post(token_url, auth=(client_id, client_secret), timeout=10, data={
        "grant_type": "authorization_code", "code": flow.code, "code_verifier": verifier,
        "redirect_uri": APP_REDIRECT})
    assert first.status_code == 200, first.text
    assert first.headers["Cache-Control"] == "no-store"
    body = first.json()
    assert {"access_token", "refresh_token"} <= set(body)
    refreshed = http.post(token_url, auth=(client_id, client_secret), timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    login = Login(client_id, client_secret, flow.code, verifier, body, refreshed.json(), browser.hops)
    assert login.refreshed["refresh_token"] != body["refresh_token"]  # rotated
    # the RS accepts it (loads the session's upstream tokens from storage)
    assert http.get(f"{srv.url}/mcp", headers={"Authorization": f"Bearer {login.refreshed['access_token']}"},
                    timeout=10).status_code == 200
    issued.add(*login.ours, *idps.upstream_secrets())
    # the browser's cookies (Set-Cookie of every hop, and the decoded session) carry no secret
    jar = browser.http.cookies.get(srv.app.config["SESSION_COOKIE_NAME"])
    assert jar, "the AS keeps its browser binding in Flask's session"
    decoded = json.dumps(_session_serializer(srv).loads(jar))
    set_cookies = "\n".join(h.headers.get("Set-Cookie", "") for h in browser.hops)
    assert not issued.found_in(decoded + set_cookies)
    return login


def _public_code(srv: ASServer, issued: Secrets) -> tuple[str, str]:
    """A fresh, unredeemed code of the pre-registered public client, with its verifier."""
    browser = Browser()
    flow = browser.authorize(srv, scope="openid")
    assert flow.reached_client
    issued.add(flow.code, flow.verifier, *_hop_secrets(browser.hops))
    return flow.code, flow.verifier


# --------------------------------------------------------------------------------------------------
# SH-03


def _redis_dump(url: str) -> tuple[list[tuple[bytes, bytes]], dict[bytes, int]]:
    """Every key with all its content read back by type, and every key's PTTL."""
    raw = redis_lib.Redis.from_url(url)
    try:
        rows: list[tuple[bytes, bytes]] = []
        ttls: dict[bytes, int] = {}
        for key in raw.scan_iter(count=500):
            kind = raw.type(key)
            parts: list[Any]
            if kind == b"string":
                parts = [raw.get(key) or b""]
            elif kind == b"hash":
                parts = [b for pair in raw.hgetall(key).items() for b in pair]
            elif kind == b"set":
                parts = list(raw.smembers(key))
            elif kind == b"zset":
                parts = [entry[0] for entry in raw.zrange(key, 0, -1, withscores=True)]
            elif kind == b"list":
                parts = list(raw.lrange(key, 0, -1))
            else:
                parts = [raw.dump(key) or b""]
            parts = [part if isinstance(part, bytes) else str(part).encode() for part in parts]
            rows.append((key, b"\x00".join(parts)))
            ttls[key] = int(raw.pttl(key))
        return rows, ttls
    finally:
        raw.close()


def test_sh03_redis_holds_no_secret_after_full_confidential_chain(idps: IdPs, redis_url: str,
                                                                    issued: Secrets) -> None:
    with _serve(idps, redis_url) as srv:
        login = _confidential_login(srv, idps, issued)
        rows, ttls = _redis_dump(redis_url)
    upstream = idps.upstream_secrets()
    # what we look for was really issued: corp's access, refresh and id token, GitHub's access token,
    # and both upstream codes with their verifiers
    assert len(idps.corp._access) == len(idps.corp._refresh) == len(idps.id_tokens) == 1
    assert len(idps.github._access) == 1 and len(upstream) == 8
    assert len(rows) > 5
    needles = [*login.ours, *upstream, idps.corp.client_secret, idps.github.client_secret]
    for needle in needles:
        assert needle
        forms = {needle, quote(needle, safe=""), needle[-20:]}
        for key, value in rows:
            for form in forms:
                assert form.encode() not in key, (form, key)
                assert form.encode() not in value, (form, key)
    unbounded = sorted(key.decode() for key, ttl in ttls.items() if ttl <= 0)
    assert not unbounded, f"keys without a TTL: {unbounded}"


# --------------------------------------------------------------------------------------------------
# SH-04


@dataclass
class Case:
    label: str
    resp: requests.Response
    json_endpoint: bool
    status: int | tuple[int, ...] | None = None  # expected, when the spec fixes it
    error: str | None = None  # expected OAuth error code (JSON) when fixed
    error_code_required: bool = True  # RFC 6750 §3.1: no error code when no credentials were sent


class Battery:
    """Sends bad requests and checks every answer for SH-04."""

    def __init__(self, srv: ASServer, idps: IdPs, issued: Secrets, internal: list[str]) -> None:
        self.srv, self.idps, self.issued = srv, idps, issued
        self.internal = [u for u in internal if u]
        self.http = _http()
        self.cases: list[Case] = []

    def send(self, label: str, method: str, path: str, *, json_endpoint: bool,
             status: int | tuple[int, ...] | None = None, error: str | None = None,
             error_code_required: bool = True, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else f"{self.srv.url}{path}"
        resp = self.http.request(method, url, allow_redirects=False, timeout=15, **kwargs)
        self.cases.append(Case(label, resp, json_endpoint, status, error, error_code_required))
        return resp

    def check(self) -> None:
        assert self.cases
        problems: list[str] = []
        for case in self.cases:
            problems += [f"{case.label}: {p}" for p in _problems(case, self.internal, self.srv, self.issued)]
        assert not problems, "\n".join(problems)


def _session_serializer(srv: ASServer) -> Any:
    serializer = srv.app.session_interface.get_signing_serializer(srv.app)  # type: ignore[attr-defined]
    assert serializer is not None
    return serializer


def _session_cookie_text(srv: ASServer, resp: requests.Response) -> str:
    """Every Set-Cookie header of ``resp``, plus the decoded content of Flask's session cookie."""
    headers = resp.raw.headers.getlist("Set-Cookie") if resp.raw is not None else []
    text = "\n".join(headers)
    name = srv.app.config["SESSION_COOKIE_NAME"]
    serializer = _session_serializer(srv)
    for header in headers:
        cookie_name, _, rest = header.partition("=")
        if cookie_name.strip() == name:
            value = rest.split(";", 1)[0]
            if value:
                text += "\n" + json.dumps(serializer.loads(value))
    return text


def _problems(case: Case, internal: list[str], srv: ASServer, issued: Secrets) -> list[str]:
    resp = case.resp
    out: list[str] = []
    if case.status is not None:
        expected = case.status if isinstance(case.status, tuple) else (case.status,)
        if resp.status_code not in expected:
            out.append(f"status {resp.status_code}, expected {expected}")
    cookies = _session_cookie_text(srv, resp)
    if issued.found_in(cookies):
        out.append("a secret in Set-Cookie")
    if resp.status_code in (302, 303):  # an error sent back to the client: its query is the body
        params = parse_qs(urlsplit(resp.headers.get("Location", "")).query)
        description = params.get("error_description", [""])[0]
        if set(description) - _DESCRIPTION_CHARS:
            out.append(f"error_description not ASCII-safe: {description!r}")
        if case.error is not None and params.get("error") != [case.error]:
            out.append(f"error {params.get('error')}, expected {case.error}")
        return out
    if resp.status_code < 400:
        out.append(f"not an error: {resp.status_code}")
        return out
    body = resp.text
    for marker in ("Traceback", 'File "', "Something went wrong", "redis://"):
        if marker in body:
            out.append(f"body contains {marker!r}")
    for url in internal:
        netloc = urlsplit(url).netloc or url  # "host:port" entries have no scheme
        if url in body or netloc in body:
            out.append(f"body names internal {url}")
    if issued.found_in(body):
        out.append("a secret in the body")
    ctype = resp.headers.get("Content-Type", "")
    if case.json_endpoint and not ctype.startswith("application/json"):
        out.append(f"content type {ctype!r} on a JSON endpoint")
        return out
    if ctype.startswith("application/json"):
        try:
            data = resp.json()
        except ValueError:
            return [*out, "invalid JSON"]
        if not isinstance(data, dict) or (case.error_code_required and not isinstance(data.get("error"), str)):
            out.append(f"no error code in {data!r}")
        else:
            description = data.get("error_description", "")
            if not isinstance(description, str) or set(description) - _DESCRIPTION_CHARS:
                out.append(f"error_description not ASCII-safe: {description!r}")
            if case.error is not None and data["error"] != case.error:
                out.append(f"error {data['error']!r}, expected {case.error!r}")
    return out


def _internal(idps: IdPs, storage: str) -> list[str]:
    return [*idps.urls, storage if storage.startswith("redis") else ""]


def _basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def test_sh04_authorize_consent_callback_errors_are_clean(srv: ASServer, idps: IdPs, storage_url: str,
                                                           issued: Secrets) -> None:
    _confidential_login(srv, idps, issued)  # real secrets exist (logs, cookies are checked for them)
    bat = Battery(srv, idps, issued, _internal(idps, storage_url))
    _verifier, challenge = pkce()
    good = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": CLIENT_REDIRECT,
            "state": "s-123", "code_challenge": challenge, "code_challenge_method": "S256", "scope": "openid"}

    def authorize(label: str, status: int | tuple[int, ...], error: str | None = None, *,
                  query: str | None = None, **params: str) -> None:
        qs = query if query is not None else urlencode({**good, **params})
        bat.send(label, "GET", f"/oauth/authorize?{qs}", json_endpoint=False, status=status, error=error)

    authorize("unknown client", 400, client_id="no-such-client")
    authorize("unregistered redirect", 400, redirect_uri="https://evil.example/cb")
    authorize("redirect with fragment", 400, redirect_uri=CLIENT_REDIRECT + "#x")
    authorize("missing code_challenge", 303, "invalid_request", code_challenge="")
    authorize("plain PKCE", 303, "invalid_request", code_challenge_method="plain")
    authorize("malformed challenge", 303, "invalid_request", code_challenge="short")
    authorize("implicit", 303, "unsupported_response_type", response_type="token")
    authorize("unknown scope", 303, "invalid_scope", scope="openid admin")
    authorize("bad resource", 303, "invalid_target", resource="https://elsewhere.example/api")
    authorize("odd unicode", (303, 400), state="\u202e\U0001f4a5\u0000\ufeff", scope="openid \u00e9\u0301")
    authorize("invalid utf-8 client_id", 400, query=urlencode(good).replace(f"client_id={CLIENT_ID}",
                                                                             "client_id=%FF%FE%00"))
    authorize("repeated client_id", 400, query=urlencode(good) + f"&client_id={CLIENT_ID}")
    authorize("huge state", (303, 400), state="s" * 20000)
    bat.send("consent without request", "GET", "/oauth/consent", json_endpoint=False, status=400)
    bat.send("consent forged", "POST", "/oauth/consent", json_endpoint=False, status=400,
             data={"request": "nope", "csrf": "nope", "action": "approve"})
    bat.send("callback empty", "GET", "/oauth/callback", json_endpoint=False, status=400)
    bat.send("callback unknown state", "GET", "/oauth/callback?state=unknown&code=abc", json_endpoint=False,
             status=400)
    bat.send("callback upstream error, unknown state", "GET",
             "/oauth/callback?error=access_denied&error_description=%3Cscript%3E&state=zzz",
             json_endpoint=False, status=400)
    bat.send("callback unicode", "GET", "/oauth/callback?state=%E2%80%AE%F0%9F%92%A5&code=%FF%00",
             json_endpoint=False, status=400)
    bat.send("unknown route under /oauth/", "GET", "/oauth/nope", json_endpoint=False, status=404)
    bat.send("unknown route with traversal", "GET", "/oauth/../oauth/%2e%2e/admin", json_endpoint=False,
             status=404)
    bat.send("callback POST", "POST", "/oauth/callback", json_endpoint=False, status=405)

    # A chain whose upstream fails with an HTML 500: the client gets server_error, nothing of the body.
    idps.github.token_failure = "http_500_html"
    browser = Browser()
    flow = browser.authorize(srv)
    issued.add(*_hop_secrets(browser.hops), flow.verifier)
    assert flow.reached_client and flow.error == "server_error"
    assert flow.location is not None and "Something went wrong" not in flow.location
    for hop in browser.hops:
        if urlsplit(hop.url).netloc == urlsplit(srv.url).netloc and hop.status >= 400:
            raise AssertionError(f"unexpected error page at {hop.url}")
    bat.check()


def test_sh04_token_revoke_register_errors_are_clean(srv: ASServer, idps: IdPs, storage_url: str,
                                                      issued: Secrets) -> None:
    login = _confidential_login(srv, idps, issued)
    code, verifier = _public_code(srv, issued)
    bat = Battery(srv, idps, issued, _internal(idps, storage_url))
    conf = (login.client_id.encode(), (login.client_secret or "").encode())

    def token(label: str, status: int | tuple[int, ...], error: str | None, **kwargs: Any) -> None:
        bat.send(label, "POST", "/oauth/token", json_endpoint=True, status=status, error=error, **kwargs)

    token("empty body", 400, "invalid_request")
    token("JSON body", 400, "invalid_request",
          json={"grant_type": "authorization_code", "code": code, "client_id": CLIENT_ID})
    token("unsupported grant", 400, "unsupported_grant_type",
          data={"grant_type": "password", "client_id": CLIENT_ID, "username": "a", "password": "b"})
    token("unknown client", 401, "invalid_client",
          data={"grant_type": "authorization_code", "code": "x", "client_id": "nobody"})
    token("bad code", 400, "invalid_grant", data={"grant_type": "authorization_code", "code": "not-a-code",
                                                  "code_verifier": verifier, "client_id": CLIENT_ID,
                                                  "redirect_uri": CLIENT_REDIRECT})
    token("bad PKCE", 400, "invalid_grant", data={"grant_type": "authorization_code", "code": code,
                                                  "code_verifier": "w" * 64, "client_id": CLIENT_ID,
                                                  "redirect_uri": CLIENT_REDIRECT})
    token("bad redirect_uri", 400, "invalid_grant",
          data={"grant_type": "authorization_code", "code": _public_code(srv, issued)[0], "code_verifier": verifier,
                "client_id": CLIENT_ID, "redirect_uri": "https://evil.example/cb"})
    token("missing verifier", 400, "invalid_grant",
          data={"grant_type": "authorization_code", "code": _public_code(srv, issued)[0], "client_id": CLIENT_ID,
                "redirect_uri": CLIENT_REDIRECT})
    token("bad refresh token", 400, "invalid_grant",
          data={"grant_type": "refresh_token", "refresh_token": "rt-nope"}, auth=(login.client_id,
                                                                                  login.client_secret))
    token("refresh of another client", 400, "invalid_grant",  # TK-16
          data={"grant_type": "refresh_token", "refresh_token": login.refreshed["refresh_token"],
                "client_id": CLIENT_ID})
    token("wrong client secret", 401, "invalid_client",
          data={"grant_type": "refresh_token", "refresh_token": login.refreshed["refresh_token"]},
          auth=(login.client_id, "wrong-" + (login.client_secret or "")[:4]))
    token("confidential client without secret", 401, "invalid_client",
          data={"grant_type": "refresh_token", "refresh_token": login.refreshed["refresh_token"],
                "client_id": login.client_id})
    bad_basic = {"not base64": {"Authorization": "Basic !!!not-base64!!!"},
                 "no colon": _basic(b"no-colon-here"),
                 "invalid utf-8": _basic(b"\xff\xfe:\xc3\x28"),
                 "empty": {"Authorization": "Basic "},
                 "bearer scheme": {"Authorization": "Bearer abc.def.ghi"},
                 "control chars": _basic(conf[0] + b"\x00\x1b[31m:" + conf[1])}
    for label, headers in bad_basic.items():
        token(f"bad Basic: {label}", 401, "invalid_client", headers=headers,
              data={"grant_type": "refresh_token", "refresh_token": login.refreshed["refresh_token"]})
    token("Basic plus client_secret", 400, "invalid_request", auth=(login.client_id, login.client_secret),
          data={"grant_type": "refresh_token", "refresh_token": login.refreshed["refresh_token"],
                "client_secret": login.client_secret})
    token("repeated parameter", 400, "invalid_request",
          data=[("grant_type", "authorization_code"), ("grant_type", "refresh_token"), ("client_id", CLIENT_ID)])
    token("oversized body", 413, "invalid_request",
          data={"grant_type": "authorization_code", "client_id": CLIENT_ID, "code": "c" * (70 * 1024)})
    token("odd unicode", (400, 401), None,
          data={"grant_type": "authorization_code", "client_id": CLIENT_ID, "redirect_uri": CLIENT_REDIRECT,
                "code": "\u202e\U0001f4a5\u0000", "code_verifier": "\ufeff" * 50})
    token("invalid utf-8 form", (400, 401), None, headers={"Content-Type": "application/x-www-form-urlencoded"},
          data=b"grant_type=authorization_code&client_id=%FF%FE&code=%C3%28&redirect_uri=%00")
    token("bad scope on refresh", 400, "invalid_scope", auth=(login.client_id, login.client_secret),
          data={"grant_type": "refresh_token", "refresh_token": login.refreshed["refresh_token"],
                "scope": "openid admin"})
    bat.send("GET on token", "GET", "/oauth/token", json_endpoint=False, status=405)
    bat.send("unknown route below token", "POST", "/oauth/token/extra", json_endpoint=False, status=404)

    def revoke(label: str, status: int | tuple[int, ...], error: str | None, **kwargs: Any) -> None:
        bat.send(label, "POST", "/oauth/revoke", json_endpoint=True, status=status, error=error, **kwargs)

    revoke("revoke without client", 401, "invalid_client", data={"token": "abc"})
    revoke("revoke wrong secret", 401, "invalid_client", data={"token": "abc"},
           auth=(login.client_id, "nope"))
    revoke("revoke JSON", 400, "invalid_request", json={"token": "abc", "client_id": CLIENT_ID})
    revoke("revoke bad Basic", 401, "invalid_client", headers={"Authorization": "Basic %%%"}, data={"token": "a"})
    revoke("revoke oversized", 413, "invalid_request", data={"token": "t" * (70 * 1024), "client_id": CLIENT_ID})

    def register(label: str, status: int | tuple[int, ...], error: str | None, **kwargs: Any) -> None:
        bat.send(label, "POST", "/oauth/register", json_endpoint=True, status=status, error=error, **kwargs)

    register("register form body", 400, "invalid_client_metadata", data={"redirect_uris": APP_REDIRECT})
    register("register broken JSON", 400, "invalid_client_metadata", data=b"{\"redirect_uris\": [",
             headers={"Content-Type": "application/json"})
    register("register deep nesting", 400, "invalid_client_metadata", data=b"[" * 30000 + b"]" * 30000,
             headers={"Content-Type": "application/json"})
    register("register http redirect", 400, "invalid_redirect_uri",
             json={"redirect_uris": ["http://client.example/cb"]})
    register("register confidential loopback", 400, "invalid_redirect_uri",
             json={"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "client_secret_post"})
    register("register implicit", 400, "invalid_client_metadata",
             json={"redirect_uris": [APP_REDIRECT], "response_types": ["token"]})
    register("register odd unicode types", 400, None,
             json={"redirect_uris": ["https://\u202e\U0001f4a5.example/\u0000"], "client_name": 7})
    register("register oversized", 413, "invalid_request", json={"redirect_uris": [APP_REDIRECT],
                                                                   "client_name": "n" * (70 * 1024)})
    bat.check()


def test_sh04_resource_server_errors_are_clean(srv: ASServer, idps: IdPs, storage_url: str,
                                               issued: Secrets) -> None:
    login = _confidential_login(srv, idps, issued)
    bat = Battery(srv, idps, issued, _internal(idps, storage_url))
    claims = jwt.decode(login.first["access_token"], options={"verify_signature": False})
    header = jwt.get_unverified_header(login.first["access_token"])
    foreign = RsaKey(kid=header.get("kid")).sign(claims)  # right kid, wrong key
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    expired = RsaKey().sign({**claims, "exp": 1})

    def rs(label: str, headers: Mapping[str, str], path: str = "/mcp", *, sent: bool = True) -> None:
        # RFC 6750 §3.1: a request without credentials gets a challenge without an error code
        bat.send(label, "GET", path, json_endpoint=True, status=401, error="invalid_token" if sent else None,
                 error_code_required=sent, headers=dict(headers))

    rs("no token", {}, sent=False)
    rs("token in query", {}, path=f"/mcp?access_token={login.first['access_token']}", sent=False)
    rs("Basic on RS", {"Authorization": "Basic " + base64.b64encode(b"a:b").decode()}, sent=False)
    rs("garbage bearer", {"Authorization": "Bearer garbage"})
    rs("empty bearer", {"Authorization": "Bearer "}, sent=False)
    rs("foreign key", {"Authorization": f"Bearer {foreign}"})
    rs("alg none", {"Authorization": f"Bearer {unsigned}"})
    rs("expired, foreign", {"Authorization": f"Bearer {expired}"})
    rs("latin-1 junk", {"Authorization": "Bearer \u00e9\u00ff\u00a0x"})
    rs("truncated token", {"Authorization": f"Bearer {login.first['access_token'][:-10]}"})
    for case in bat.cases:
        challenge = case.resp.headers.get("WWW-Authenticate", "")
        assert challenge.startswith("Bearer") and "resource_metadata=" in challenge, case.label
        assert set(challenge) <= {chr(c) for c in range(0x20, 0x7F)}, case.label
    bat.check()


def test_sh04_storage_down_is_a_clean_503(idps: IdPs, own_redis: RedisServer, issued: Secrets) -> None:
    with _serve(idps, own_redis.url) as srv:
        login = _confidential_login(srv, idps, issued)
        # a browser with a live chain-binding cookie, stopped halfway through the chain
        browser = Browser()
        half = browser.authorize(srv, until=idps.github.url)
        assert half.next_url is not None
        issued.add(*_hop_secrets(browser.hops))
        own_redis.stop()

        bat = Battery(srv, idps, issued, [*idps.urls, own_redis.url, f"127.0.0.1:{own_redis.port}"])
        bearer = {"Authorization": f"Bearer {login.refreshed['access_token']}"}
        bat.send("RS with a valid token", "GET", "/mcp", json_endpoint=True, status=503,
                 error=None, headers=bearer)
        bat.send("refresh", "POST", "/oauth/token", json_endpoint=True, status=503,
                 error="temporarily_unavailable", auth=(login.client_id, login.client_secret),
                 data={"grant_type": "refresh_token", "refresh_token": login.refreshed["refresh_token"]})
        bat.send("register", "POST", "/oauth/register", json_endpoint=True, status=503,
                 error="temporarily_unavailable", json={"redirect_uris": ["http://127.0.0.1/cb"]})
        bat.send("revoke", "POST", "/oauth/revoke", json_endpoint=True, status=503,
                 error="temporarily_unavailable", auth=(login.client_id, login.client_secret),
                 data={"token": login.refreshed["refresh_token"]})
        _verifier, challenge = pkce()
        bat.send("authorize", "GET", srv.authorize_url(
            response_type="code", client_id=CLIENT_ID, redirect_uri=CLIENT_REDIRECT, state="s-down",
            code_challenge=challenge, code_challenge_method="S256", scope="openid"),
            json_endpoint=False, status=(503, 303))
        back = browser.request("GET", half.next_url).headers["Location"]  # GitHub answers; our callback fails
        issued.add(*_hop_secrets(browser.hops))
        resp = browser.http.get(back, allow_redirects=False, timeout=15)
        bat.cases.append(Case("callback", resp, False, 503))
        bat.check()
        for case in bat.cases:
            if case.resp.status_code == 503:
                assert case.resp.headers.get("Retry-After"), case.label
            else:  # authorize may send temporarily_unavailable back to the client instead
                location = case.resp.headers["Location"]
                assert location.startswith(CLIENT_REDIRECT), case.label
                assert parse_qs(urlsplit(location).query)["error"] == ["temporarily_unavailable"]

