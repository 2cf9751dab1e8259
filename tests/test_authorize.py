"""``GET /oauth/authorize`` validation (SPEC §3.2; TESTPLAN 1.3 AZ-*, MD-06) over real HTTP.

Every rejected request must leave storage as it was and never reach an upstream. Errors without a
trustworthy redirect URI are a 400 page; the rest are 303 redirects with ``error``, ``state`` and
``iss`` each exactly once.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import jwt
import pytest
import requests

from flask_mcp_auth.server.authorize import parse_query, validate_authorize
from flask_mcp_auth.server.chain import client_redirect_url
from flask_mcp_auth.storage import StorageUnavailable
from tests.support.as_app import CLIENT_ID, ASServer, Browser, pkce, serve_as
from tests.support.idp import FakeOIDC

LOOPBACK = "http://127.0.0.1:53682/callback"
CLIENTS = [
    {"client_id": CLIENT_ID, "redirect_uris": ["http://127.0.0.1/callback"],
     "scopes": ["openid", "profile", "email", "offline_access"], "client_name": "Test Client"},
    {"client_id": "web", "redirect_uris": ["https://c.example/cb", "https://c.example/cb2?a=1"],
     "scopes": ["openid", "email"]},
    {"client_id": "single", "redirect_uris": ["https://single.example/cb"], "scopes": ["openid"]},
    {"client_id": "native", "redirect_uris": ["com.example.app:/oauth"], "scopes": ["openid"]},
]


@pytest.fixture()
def idp() -> Iterator[FakeOIDC]:
    with FakeOIDC(users=["alice"]) as fake:
        yield fake


#: storage calls that change content (``touch_client``/``expire`` only slide a TTL)
_MUTATORS = ("swap", "incr", "add_client", "set_session", "put_upstream_token", "put_refreshed_token",
             "revoke_session", "delete_session", "delete", "take")
_WRITES: dict[int, list[str]] = {}


def _record_writes(server: ASServer) -> None:
    """Record every content-changing storage call besides ``put`` (which ``server.spy`` sees)."""
    writes = _WRITES.setdefault(id(server), [])
    for name in _MUTATORS:
        real = getattr(server.storage, name)

        def wrapper(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            writes.append(_name)
            return _real(*args, **kwargs)

        setattr(server.storage, name, wrapper)


@pytest.fixture()
def srv(idp: FakeOIDC, storage_url: str) -> Iterator[ASServer]:
    with serve_as([idp.upstream_entry("corp")], storage_url, MCP_AUTH_CLIENTS=CLIENTS,
                  MCP_AUTH_ALLOWED_AUDIENCES=["{issuer}/mcp", "{issuer}/other"]) as server:
        _record_writes(server)
        try:
            yield server
        finally:
            _WRITES.pop(id(server), None)


def _params(**overrides: str | None) -> dict[str, str]:
    _verifier, challenge = pkce()
    base: dict[str, str | None] = {
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": LOOPBACK, "state": "xyz",
        "code_challenge": challenge, "code_challenge_method": "S256", "scope": "openid",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _get(srv: ASServer, query: str | dict[str, str], **headers: str) -> requests.Response:
    qs = query if isinstance(query, str) else urlencode(query)
    return requests.get(f"{srv.url}/oauth/authorize?{qs}", allow_redirects=False, timeout=10,
                        headers=headers)


def _assert_untouched(srv: ASServer, idp: FakeOIDC) -> None:
    """Nothing stored (or deleted), no upstream contacted."""
    assert srv.spy.puts == []
    assert _WRITES.get(id(srv), []) == []
    assert idp.authorize_calls == 0


def _assert_page(resp: requests.Response, status: int = 400) -> None:
    assert resp.status_code == status
    assert "Location" not in resp.headers
    assert resp.headers["Content-Type"].startswith("text/html")
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Traceback" not in resp.text


def _error_redirect(resp: requests.Response, redirect_uri: str = LOOPBACK) -> dict[str, list[str]]:
    assert resp.status_code == 303, resp.text
    location = resp.headers["Location"]
    assert location.startswith(redirect_uri)
    return parse_qs(urlsplit(location).query, keep_blank_values=True)


# -- errors shown as a page (no trustworthy redirect URI) -----------------------------------------
def test_az01_unknown_client(srv: ASServer, idp: FakeOIDC) -> None:
    resp = _get(srv, _params(client_id="nobody"))
    _assert_page(resp)
    assert LOOPBACK not in resp.text
    _assert_untouched(srv, idp)


def test_missing_client_id(srv: ASServer, idp: FakeOIDC) -> None:
    _assert_page(_get(srv, _params(client_id=None)))
    _assert_untouched(srv, idp)


@pytest.mark.parametrize("uri", [
    "https://c.example/cb/", "https://C.example/cb", "https://c.example/cb?x=1",
    "https://c.example/cb2?a=2", "https://c.example/cb2", "https://c.example/cb#frag",
    "http://c.example/cb", "https://c.example:443/cb", "https://evil.example/cb",
])
def test_az02_redirect_uri_variants(srv: ASServer, idp: FakeOIDC, uri: str) -> None:
    resp = _get(srv, _params(client_id="web", redirect_uri=uri, scope="openid"))
    _assert_page(resp)
    _assert_untouched(srv, idp)


def test_az02_registered_uris_accepted(srv: ASServer, idp: FakeOIDC) -> None:
    for uri in ("https://c.example/cb", "https://c.example/cb2?a=1"):
        resp = _get(srv, _params(client_id="web", redirect_uri=uri, scope="openid"))
        assert resp.status_code == 302 and "/oauth/consent?" in resp.headers["Location"]


def test_loopback_redirect_any_port_but_exact_otherwise(srv: ASServer, idp: FakeOIDC) -> None:
    for uri in ("http://127.0.0.1:1234/callback", "http://127.0.0.1/callback"):
        assert _get(srv, _params(redirect_uri=uri)).status_code == 302
    for uri in ("http://127.0.0.1:1234/other", "http://localhost:1234/callback",
                "https://127.0.0.1:1234/callback"):
        _assert_page(_get(srv, _params(redirect_uri=uri)))


def test_az05_two_registered_uris_and_none_given(srv: ASServer, idp: FakeOIDC) -> None:
    _assert_page(_get(srv, _params(client_id="web", redirect_uri=None)))
    _assert_untouched(srv, idp)


def test_single_registered_uri_may_be_omitted(srv: ASServer, idp: FakeOIDC) -> None:
    resp = _get(srv, _params(client_id="single", redirect_uri=None, response_type="token"))
    back = _error_redirect(resp, "https://single.example/cb")
    assert back["error"] == ["unsupported_response_type"]


def test_duplicate_client_id_or_redirect_uri_is_page(srv: ASServer, idp: FakeOIDC) -> None:
    base = urlencode(_params())
    _assert_page(_get(srv, base + "&client_id=web"))
    _assert_page(_get(srv, base + "&redirect_uri=" + quote(LOOPBACK, safe="")))
    _assert_untouched(srv, idp)


# -- errors redirected to the client ---------------------------------------------------------------
@pytest.mark.parametrize(("response_type", "error"), [
    (None, "invalid_request"),
    ("", "invalid_request"),
    ("token", "unsupported_response_type"),
    ("code id_token token", "unsupported_response_type"),
    ("code id_token", "unsupported_response_type"),
])
def test_az07_response_type(srv: ASServer, idp: FakeOIDC, response_type: str | None,
                            error: str) -> None:
    back = _error_redirect(_get(srv, _params(response_type=response_type)))
    assert back["error"] == [error]
    assert back["state"] == ["xyz"] and back["iss"] == [srv.url]
    _assert_untouched(srv, idp)


@pytest.mark.parametrize("overrides", [
    {"code_challenge": None},
    {"code_challenge": ""},
    {"code_challenge_method": None},
    {"code_challenge_method": "plain"},
    {"code_challenge_method": "s256"},
    {"code_challenge": None, "code_challenge_method": None},
])
def test_az08_missing_code_challenge(srv: ASServer, idp: FakeOIDC,
                                     overrides: dict[str, str | None]) -> None:
    back = _error_redirect(_get(srv, _params(**overrides)))
    assert back["error"] == ["invalid_request"] and back["state"] == ["xyz"]
    _assert_untouched(srv, idp)


@pytest.mark.parametrize("challenge", ["a" * 42, "a" * 129, "a" * 42 + "+", "a" * 42 + "=",
                                       "a" * 42 + "/", "a" * 20 + " " + "a" * 22, "a" * 42 + "é"])
def test_az10_malformed_code_challenge(srv: ASServer, idp: FakeOIDC, challenge: str) -> None:
    back = _error_redirect(_get(srv, _params(code_challenge=challenge)))
    assert back["error"] == ["invalid_request"]
    _assert_untouched(srv, idp)


def test_az10_challenge_lengths_accepted(srv: ASServer) -> None:
    for challenge in ("a" * 43, "A-_9" * 32):
        assert _get(srv, _params(code_challenge=challenge)).status_code == 302


def test_az11_unknown_parameter_ignored(srv: ASServer) -> None:
    flow = Browser().authorize(srv, extra="foobar", prompt="none", request_uri="x")
    assert flow.reached_client and "code" in flow.params


def test_state_required(srv: ASServer, idp: FakeOIDC) -> None:
    for state in (None, ""):
        back = _error_redirect(_get(srv, _params(state=state)))
        assert back["error"] == ["invalid_request"]
        assert "state" not in back and back["iss"] == [srv.url]
    _assert_untouched(srv, idp)


def test_duplicate_parameters_rejected(srv: ASServer, idp: FakeOIDC) -> None:
    base = urlencode(_params())
    back = _error_redirect(_get(srv, base + "&state=other"))
    assert back["error"] == ["invalid_request"] and "state" not in back
    back = _error_redirect(_get(srv, base + "&scope=email"))
    assert back["error"] == ["invalid_request"] and back["state"] == ["xyz"]
    _assert_untouched(srv, idp)


def _odd_state() -> str:
    unit = 'a"b\'c#d\r\n%0d%0a<e>&f=g;h+i é€😀\x00'
    return (unit * (4096 // len(unit) + 1))[:4096]


def test_az13_long_odd_state_echoed_byte_for_byte(srv: ASServer) -> None:
    state = _odd_state()
    flow = Browser().authorize(srv, state=state)
    assert flow.reached_client and flow.params["state"] == [state]
    assert flow.location is not None
    assert "\r" not in flow.location and "\n" not in flow.location
    # and on an error redirect
    resp = _get(srv, _params(state=state, response_type="token"))
    back = _error_redirect(resp)
    assert back["state"] == [state] and back["error"] == ["unsupported_response_type"]


def test_az13_non_utf8_state_echoed_as_bytes(srv: ASServer) -> None:
    query = urlencode(_params(response_type="token", state=None)) + "&state=%FF%FEab%00"
    resp = _get(srv, query)
    assert resp.status_code == 303
    location = resp.headers["Location"]
    assert "state=%FF%FEab%00&" in location or location.endswith("state=%FF%FEab%00")


def test_az13_oversized_state_rejected_without_echo(srv: ASServer, idp: FakeOIDC) -> None:
    back = _error_redirect(_get(srv, _params(state="s" * 9000)))
    assert back["error"] == ["invalid_request"] and "state" not in back
    _assert_untouched(srv, idp)


@pytest.mark.parametrize("resource", [
    "{issuer}/mcp#frag", "relative/path", "https://other.example/", "/mcp", "{issuer}/mcp/",
    "{issuer}/MCP",
])
def test_az14_invalid_resource(srv: ASServer, idp: FakeOIDC, resource: str) -> None:
    back = _error_redirect(_get(srv, _params(resource=resource.replace("{issuer}", srv.url))))
    assert back["error"] == ["invalid_target"] and back["state"] == ["xyz"]
    _assert_untouched(srv, idp)


def test_az14_two_resources_rejected(srv: ASServer, idp: FakeOIDC) -> None:
    query = urlencode(_params()) + "&" + urlencode([("resource", f"{srv.url}/mcp"),
                                                    ("resource", f"{srv.url}/other")])
    assert _error_redirect(_get(srv, query))["error"] == ["invalid_target"]
    _assert_untouched(srv, idp)


@pytest.mark.parametrize("resource", [None, "{issuer}/mcp", "{issuer}/other"])
def test_az14_resource_becomes_aud(srv: ASServer, resource: str | None) -> None:
    extra = {} if resource is None else {"resource": resource.replace("{issuer}", srv.url)}
    flow = Browser().authorize(srv, **extra)
    resp = srv.token(flow.code, flow.verifier, **extra)
    assert resp.status_code == 200, resp.text
    claims = jwt.decode(resp.json()["access_token"], options={"verify_signature": False})
    assert claims["aud"] == extra.get("resource", f"{srv.url}/mcp")


@pytest.mark.parametrize("scope", ["admin", "openid admin", "email"])
def test_scope_outside_client_scopes(srv: ASServer, idp: FakeOIDC, scope: str) -> None:
    back = _error_redirect(_get(srv, _params(client_id="single",
                                             redirect_uri="https://single.example/cb", scope=scope)),
                           "https://single.example/cb")
    assert back["error"] == ["invalid_scope"]
    _assert_untouched(srv, idp)


def test_no_scope_means_registered_scopes(srv: ASServer) -> None:
    flow = Browser().authorize(srv, scope="")
    claims = jwt.decode(srv.token(flow.code, flow.verifier).json()["access_token"],
                        options={"verify_signature": False})
    assert claims["scope"].split() == ["openid", "profile", "email", "offline_access"]


def test_client_nonce_reaches_id_token(srv: ASServer) -> None:
    flow = Browser().authorize(srv, nonce="client-nonce-123")
    body = srv.token(flow.code, flow.verifier).json()
    assert "id_token" in body
    claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert claims["nonce"] == "client-nonce-123"


def test_oversized_nonce_rejected(srv: ASServer, idp: FakeOIDC) -> None:
    back = _error_redirect(_get(srv, _params(nonce="n" * 513)))
    assert back["error"] == ["invalid_request"]
    _assert_untouched(srv, idp)


def test_az20_iss_and_state_exactly_once(srv: ASServer) -> None:
    flow = Browser().authorize(srv)
    assert flow.params["iss"] == [srv.url] and flow.params["state"] == [flow.state]
    assert set(flow.params) == {"code", "state", "iss"}
    back = _error_redirect(_get(srv, _params(response_type="token")))
    assert back["iss"] == [srv.url] and back["state"] == ["xyz"]
    assert set(back) == {"error", "state", "iss"}


def test_redirect_uri_query_is_kept(srv: ASServer) -> None:
    back = _error_redirect(_get(srv, _params(client_id="web", redirect_uri="https://c.example/cb2?a=1",
                                             response_type="token")), "https://c.example/cb2?a=1&")
    assert back["a"] == ["1"] and back["error"] == ["unsupported_response_type"]


def test_private_use_scheme_redirect(srv: ASServer) -> None:
    resp = _get(srv, _params(client_id="native", redirect_uri="com.example.app:/oauth",
                             response_type="token"))
    assert resp.status_code == 303
    assert resp.headers["Location"].startswith("com.example.app:/oauth?error=unsupported_response_type")


def test_md06_no_cors_on_authorize(srv: ASServer) -> None:
    origin = {"Origin": "https://evil.example"}
    pre = requests.options(f"{srv.url}/oauth/authorize", timeout=10, headers={
        **origin, "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in pre.headers
    for resp in (_get(srv, _params(), **origin), _get(srv, _params(client_id="x"), **origin)):
        assert "Access-Control-Allow-Origin" not in resp.headers


def test_valid_request_goes_to_consent_then_upstream(srv: ASServer, idp: FakeOIDC) -> None:
    browser = Browser()
    resp = browser.request("GET", srv.authorize_url(**_params()))
    assert resp.status_code == 302
    assert urlsplit(resp.headers["Location"]).path == "/oauth/consent"
    assert idp.authorize_calls == 0  # consent before any upstream
    assert [kind for kind, _ in srv.spy.puts] == ["authreq"]


def test_post_is_not_allowed(srv: ASServer) -> None:
    resp = requests.post(f"{srv.url}/oauth/authorize", data=_params(), timeout=10,
                         allow_redirects=False)
    assert resp.status_code == 405


def test_no_secret_key_is_clean_error(idp: FakeOIDC) -> None:
    with serve_as([idp.upstream_entry("corp")], "memory://", SECRET_KEY=None,
                  MCP_AUTH_ENCRYPTION_KEYS=[secrets.token_urlsafe(32)]) as srv:
        resp = _get(srv, _params())
        _assert_page(resp, 500)
        assert srv.spy.puts == []


# -- dynamically registered clients: error redirects only once this browser approved them --------
# Anyone can register a client whose redirect URI is a phishing page; until this browser approved
# the client at consent, authorize errors are a 400 page and never a redirect (RFC 9700 §4.11.2).
PHISH = "https://evil.example/phish"
_ERROR_CASES = [
    {"response_type": "token"}, {"response_type": None}, {"code_challenge": None},
    {"code_challenge_method": "plain"}, {"code_challenge": "a" * 42}, {"state": None},
    {"scope": "admin"}, {"resource": "https://other.example/"}, {"nonce": "n" * 513},
]


def _expected_error(overrides: dict[str, str | None]) -> str:
    """The one OAuth error code each of ``_ERROR_CASES`` must produce."""
    if overrides.get("response_type") == "token":
        return "unsupported_response_type"
    if "scope" in overrides:
        return "invalid_scope"
    if "resource" in overrides:
        return "invalid_target"
    return "invalid_request"


def _register(srv: ASServer, uris: list[str]) -> str:
    reg = requests.post(f"{srv.url}/oauth/register", json={"redirect_uris": uris, "client_name": "Dyn"},
                        timeout=10)
    assert reg.status_code == 201, reg.text
    _WRITES.get(id(srv), []).clear()  # registering is not what the tests check for writes
    return str(reg.json()["client_id"])


@pytest.mark.parametrize("overrides", _ERROR_CASES)
def test_unapproved_dynamic_client_error_is_page_not_redirect(srv: ASServer, idp: FakeOIDC,
                                                              overrides: dict[str, str | None]) -> None:
    cid = _register(srv, [PHISH])
    for redirect_uri in (PHISH, None):  # given, or omitted (the single registered one)
        resp = _get(srv, _params(client_id=cid, redirect_uri=redirect_uri, **overrides))
        _assert_page(resp)
        assert "evil.example/phish?" not in resp.text
    _assert_untouched(srv, idp)


def test_unapproved_dynamic_client_review_repro(srv: ASServer, idp: FakeOIDC) -> None:
    """The reviewer's exact requests: a fresh browser, no state, no PKCE."""
    cid = _register(srv, [PHISH])
    fresh = requests.Session()
    for query in (f"client_id={cid}&redirect_uri={quote(PHISH, safe='')}&response_type=token",
                  f"client_id={cid}&response_type=code"):
        resp = fresh.get(f"{srv.url}/oauth/authorize?{query}", allow_redirects=False, timeout=10)
        _assert_page(resp)
    _assert_untouched(srv, idp)


@pytest.mark.parametrize("overrides", _ERROR_CASES)
def test_approved_dynamic_client_gets_error_redirect(srv: ASServer, idp: FakeOIDC,
                                                     overrides: dict[str, str | None]) -> None:
    cid = _register(srv, [LOOPBACK])
    browser = Browser()
    flow = browser.authorize(srv, client_id=cid, redirect_uri=LOOPBACK, scope="openid")
    assert flow.reached_client and "code" in flow.params
    resp = browser.request("GET", f"{srv.url}/oauth/authorize?{urlencode(_params(client_id=cid, **overrides))}")
    back = _error_redirect(resp)
    assert back["error"] == [_expected_error(overrides)]
    assert back["iss"] == [srv.url] and set(back) <= {"error", "state", "iss"}
    assert back.get("state", ["xyz"]) == ["xyz"]
    # the approval belongs to that browser and that client only
    _assert_page(Browser().request("GET", resp.request.url or ""))
    other = _register(srv, [LOOPBACK])
    _assert_page(browser.request("GET", srv.authorize_url(**_params(client_id=other, **overrides))))


def test_denied_dynamic_client_still_gets_page(srv: ASServer, idp: FakeOIDC) -> None:
    cid = _register(srv, [LOOPBACK])
    browser = Browser()
    denied = browser.authorize(srv, client_id=cid, redirect_uri=LOOPBACK, scope="openid",
                               consent="deny")
    assert denied.reached_client and denied.error == "access_denied"  # after the user's own choice
    _assert_page(browser.request("GET", srv.authorize_url(**_params(client_id=cid,
                                                                     response_type="token"))))


def test_approval_under_consent_always_allows_error_redirect(idp: FakeOIDC) -> None:
    with serve_as([idp.upstream_entry("corp")], "memory://", MCP_AUTH_CONSENT="always") as srv:
        cid = _register(srv, [LOOPBACK])
        browser = Browser()
        query = urlencode(_params(client_id=cid, response_type="token"))
        _assert_page(browser.request("GET", f"{srv.url}/oauth/authorize?{query}"))
        assert browser.authorize(srv, client_id=cid, redirect_uri=LOOPBACK, scope="openid").reached_client
        again = browser.authorize(srv, client_id=cid, redirect_uri=LOOPBACK, scope="openid",
                                  consent=None)
        assert again.final is not None and again.final.status_code == 200  # still asked every time
        back = _error_redirect(browser.request("GET", f"{srv.url}/oauth/authorize?{query}"))
        assert back["error"] == ["unsupported_response_type"]


def test_storage_down_at_consent_check(srv: ASServer, idp: FakeOIDC,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Storage failing after the client is known: pre-registered ⇒ 303 temporarily_unavailable;
    an unapproved dynamic client ⇒ 503 page (the approval cannot be checked: no redirect)."""
    cid = _register(srv, [LOOPBACK])
    real_get = srv.storage.get

    def get(kind: str, key: str) -> Any:
        if kind == "consent":
            raise StorageUnavailable("down")
        return real_get(kind, key)

    monkeypatch.setattr(srv.storage, "get", get)
    back = _error_redirect(_get(srv, _params()))
    assert back["error"] == ["temporarily_unavailable"] and back["state"] == ["xyz"]
    _assert_page(_get(srv, _params(client_id=cid)), 503)
    _assert_page(_get(srv, _params(client_id=cid, response_type="token")))


# -- unit level -----------------------------------------------------------------------------------
def test_parse_query_keeps_raw_bytes() -> None:
    parsed = parse_query(b"state=%FF+a%2Bb&x=1&x=2&&empty=&flag")
    assert parsed == {"state": [b"\xff a+b"], "x": [b"1", b"2"], "empty": [b""], "flag": [b""]}


def test_client_redirect_url_appends_once() -> None:
    assert client_redirect_url("https://c/cb", [("code", "a b")], "s%20t", "https://i") == \
        "https://c/cb?code=a%20b&state=s%20t&iss=https%3A%2F%2Fi"
    assert client_redirect_url("https://c/cb?x=1", [("error", "e")], None, "https://i") == \
        "https://c/cb?x=1&error=e&iss=https%3A%2F%2Fi"
    assert client_redirect_url("https://c/cb?", [("error", "e")], None, "i").startswith(
        "https://c/cb?error=e")


def test_validate_authorize_without_http(srv: ASServer) -> None:
    registry: Any = srv.runtime.parts["clients"]
    query = urlencode(_params(scope="openid openid email")).encode()
    client, req = validate_authorize(parse_query(query), registry, srv.runtime.settings)
    assert client.client_id == CLIENT_ID
    assert req.scopes == ("openid", "email") and req.state == "xyz"
    assert req.resource == srv.runtime.settings.audience and req.redirect_uri == LOOPBACK
