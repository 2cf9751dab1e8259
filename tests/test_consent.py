"""Consent (SPEC §3.4; TESTPLAN AZ-17, AZ-18, AZ-19, RG-06) over real HTTP, memory and Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from flask_mcp_auth.storage import Storage
from flask_mcp_auth.storage.memory import MemoryStorage
from tests.support.as_app import CLIENT_ID, ASServer, Browser, pkce, serve_as
from tests.support.idp import FakeGitHub, FakeOIDC

CLIENT_REDIRECT = "http://127.0.0.1:53682/callback"
CLIENTS = [
    {"client_id": CLIENT_ID, "redirect_uris": ["http://127.0.0.1/callback"],
     "scopes": ["openid", "profile", "email", "offline_access"], "client_name": "Test Client"},
    {"client_id": "first", "redirect_uris": ["http://127.0.0.1/callback"], "scopes": ["openid"],
     "first_party": True, "client_name": "Our Own App"},
]
_HIDDEN = re.compile(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">')


@pytest.fixture()
def idps() -> Iterator[tuple[FakeOIDC, FakeGitHub]]:
    with FakeOIDC(users=["alice"]) as corp, FakeGitHub(users=["octocat"]) as gh:
        yield corp, gh


def _serve(idps: tuple[FakeOIDC, FakeGitHub], storage: str | Storage,
           **config: Any) -> AbstractContextManager[ASServer]:
    corp, gh = idps
    return serve_as([corp.upstream_entry("corp"), gh.upstream_entry("github")], storage,
                    MCP_AUTH_CLIENTS=CLIENTS, **config)


@pytest.fixture()
def srv(idps: tuple[FakeOIDC, FakeGitHub], storage_url: str) -> Iterator[ASServer]:
    with _serve(idps, storage_url) as server:
        yield server


def _open_consent(srv: ASServer, browser: Browser, client_id: str = CLIENT_ID,
                  **params: str) -> tuple[requests.Response, dict[str, str]]:
    """authorize → the consent page (GET); returns the page and its form fields."""
    _verifier, challenge = pkce()
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": CLIENT_REDIRECT,
             "state": "client-state", "code_challenge": challenge, "code_challenge_method": "S256",
             "scope": "openid", **params}
    resp = browser.request("GET", srv.authorize_url(**query))
    assert resp.status_code == 302
    assert urlsplit(resp.headers["Location"]).path == "/oauth/consent"
    page = browser.request("GET", srv.url + resp.headers["Location"])
    return page, dict(_HIDDEN.findall(page.text))


def _post(srv: ASServer, browser: Browser, fields: dict[str, str]) -> requests.Response:
    return browser.request("POST", f"{srv.url}/oauth/consent", data=fields)


def test_consent_page_content_and_headers(srv: ASServer, idps: tuple[FakeOIDC, FakeGitHub]) -> None:
    page, fields = _open_consent(srv, Browser())
    assert page.status_code == 200
    assert "Test Client" in page.text and "127.0.0.1:53682" in page.text
    assert page.text.index("corp") < page.text.index("github")  # upstreams, in order
    assert set(fields) == {"request", "csrf"} and len(fields["csrf"]) >= 43
    # AZ-18 / SH-07
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    assert idps[0].authorize_calls == 0


def test_browser_state_cookie_is_httponly_random_ids(srv: ASServer) -> None:
    browser = Browser()
    _open_consent(srv, browser)
    first = browser.hops[0]
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith("as_session=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # the session holds random ids only — nothing of the request (state, challenge) is in it
    value = browser.http.cookies["as_session"]
    data = srv.app.session_interface.get_signing_serializer(srv.app).loads(value)  # type: ignore[attr-defined]
    assert set(data) == {"mcp_auth_browser"}
    assert len(data["mcp_auth_browser"]) >= 43


def test_az19_approve_is_303_to_upstream(srv: ASServer, idps: tuple[FakeOIDC, FakeGitHub]) -> None:
    browser = Browser()
    _page, fields = _open_consent(srv, browser)
    resp = _post(srv, browser, {**fields, "action": "approve"})
    assert resp.status_code == 303
    assert resp.headers["Location"].startswith(idps[0].url + "/authorize?")
    assert "as_session" in resp.headers.get("Set-Cookie", "")  # the chain binding is set now
    assert resp.headers["Cache-Control"] == "no-store"


def test_deny_redirects_access_denied(srv: ASServer, idps: tuple[FakeOIDC, FakeGitHub]) -> None:
    browser = Browser()
    _page, fields = _open_consent(srv, browser)
    resp = _post(srv, browser, {**fields, "action": "deny"})
    assert resp.status_code == 303
    back = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert resp.headers["Location"].startswith(CLIENT_REDIRECT)
    assert back == {"error": ["access_denied"], "state": ["client-state"], "iss": [srv.url]}
    assert idps[0].authorize_calls == 0
    assert not any(kind == "pending" for kind, _ in srv.spy.puts)
    # deny is not remembered: the next authorization asks again
    page, _fields = _open_consent(srv, browser)
    assert page.status_code == 200


@pytest.mark.parametrize("tamper", ["missing", "wrong", "empty"])
def test_az17_csrf_token_required(srv: ASServer, idps: tuple[FakeOIDC, FakeGitHub], tamper: str) -> None:
    browser = Browser()
    _page, fields = _open_consent(srv, browser)
    bad = dict(fields, action="approve")
    if tamper == "missing":
        del bad["csrf"]
    else:
        bad["csrf"] = "" if tamper == "empty" else "x" * 43
    resp = _post(srv, browser, bad)
    assert resp.status_code == 403 and "Location" not in resp.headers
    assert "Set-Cookie" not in resp.headers  # no chain-binding cookie
    assert idps[0].authorize_calls == 0
    assert not any(kind == "pending" for kind, _ in srv.spy.puts)
    # the genuine form still works afterwards
    ok = _post(srv, browser, {**fields, "action": "approve"})
    assert ok.status_code == 303


def test_az17_form_from_another_browser(srv: ASServer, idps: tuple[FakeOIDC, FakeGitHub]) -> None:
    attacker, victim = Browser(), Browser()
    _page, attacker_fields = _open_consent(srv, attacker)
    _page, victim_fields = _open_consent(srv, victim)
    # the attacker's complete form posted from the victim's browser (login CSRF)
    resp = _post(srv, victim, {**attacker_fields, "action": "approve"})
    assert resp.status_code == 403 and "Set-Cookie" not in resp.headers
    # the victim's request with the attacker's token
    resp = _post(srv, victim, {**victim_fields, "csrf": attacker_fields["csrf"], "action": "approve"})
    assert resp.status_code == 403 and "Set-Cookie" not in resp.headers and "Location" not in resp.headers
    # a browser without any session
    resp = requests.post(f"{srv.url}/oauth/consent", data={**victim_fields, "action": "approve"},
                         allow_redirects=False, timeout=10)
    assert resp.status_code == 403 and "Set-Cookie" not in resp.headers and "Location" not in resp.headers
    assert idps[0].authorize_calls == 0
    assert not any(kind == "pending" for kind, _ in srv.spy.puts)  # no chain was started
    # opening someone else's consent page is refused too
    assert victim.request("GET", f"{srv.url}/oauth/consent?request={attacker_fields['request']}"
                          ).status_code == 403


def test_consent_single_use(srv: ASServer) -> None:
    browser = Browser()
    _page, fields = _open_consent(srv, browser)
    assert _post(srv, browser, {**fields, "action": "approve"}).status_code == 303
    pending = [key for kind, key in srv.spy.puts if kind == "pending"]
    assert len(pending) == 1
    again = _post(srv, browser, {**fields, "action": "approve"})
    assert again.status_code == 400 and "Location" not in again.headers
    assert [key for kind, key in srv.spy.puts if kind == "pending"] == pending  # no second chain
    assert browser.request("GET", f"{srv.url}/oauth/consent?request={fields['request']}"
                           ).status_code == 400


def test_bad_action_and_unknown_request(srv: ASServer) -> None:
    browser = Browser()
    _page, fields = _open_consent(srv, browser)
    assert _post(srv, browser, {**fields, "action": "maybe"}).status_code == 400
    assert _post(srv, browser, {**fields, "request": "nope", "action": "approve"}).status_code == 400
    assert browser.request("GET", f"{srv.url}/oauth/consent").status_code == 400
    assert not any(kind == "pending" for kind, _ in srv.spy.puts)  # none of those started a chain
    assert _post(srv, browser, {**fields, "action": "approve"}).status_code == 303  # still usable


def test_once_remembers_per_browser_and_client_and_scope(srv: ASServer,
                                                         idps: tuple[FakeOIDC, FakeGitHub]) -> None:
    browser = Browser()
    assert browser.authorize(srv, scope="openid").reached_client
    # same client, same or narrower scope: no page
    again = browser.authorize(srv, scope="openid")
    assert again.reached_client and not any("/oauth/consent" in h.url for h in again.hops)
    # wider scope: asked again
    wider = browser.authorize(srv, consent=None, scope="openid email")
    assert wider.final is not None and wider.final.status_code == 200
    assert "/oauth/consent" in wider.hops[-1].url


def test_always_asks_every_time(idps: tuple[FakeOIDC, FakeGitHub], storage_url: str) -> None:
    with _serve(idps, storage_url, MCP_AUTH_CONSENT="always") as srv:
        browser = Browser()
        assert browser.authorize(srv).reached_client
        second = browser.authorize(srv, consent=None)
        assert second.final is not None and second.final.status_code == 200


def test_never_only_for_first_party(idps: tuple[FakeOIDC, FakeGitHub], storage_url: str) -> None:
    with _serve(idps, storage_url, MCP_AUTH_CONSENT="never") as srv:
        _verifier, challenge = pkce()
        browser = Browser()
        resp = browser.request("GET", srv.authorize_url(
            response_type="code", client_id="first", redirect_uri=CLIENT_REDIRECT, state="s",
            code_challenge=challenge, code_challenge_method="S256"))
        assert resp.status_code == 302 and resp.headers["Location"].startswith(idps[0].url)
        # a non-first-party client still sees the page (and its approval is then remembered)
        flow = browser.authorize(srv, consent=None)
        assert flow.final is not None and flow.final.status_code == 200
        # a dynamically registered client can never skip consent
        reg = requests.post(f"{srv.url}/oauth/register", json={
            "redirect_uris": ["http://127.0.0.1/callback"], "client_name": "Dyn"}, timeout=10)
        assert reg.status_code == 201, reg.text
        page, _fields = _open_consent(srv, Browser(), client_id=reg.json()["client_id"])
        assert page.status_code == 200


def test_rg06_client_name_is_escaped(srv: ASServer) -> None:
    reg = requests.post(f"{srv.url}/oauth/register", json={
        "redirect_uris": ["http://127.0.0.1/callback"],
        "client_name": '<script>alert(1)</script>"><img src=x onerror=alert(2)>'}, timeout=10)
    assert reg.status_code == 201, reg.text
    page, _fields = _open_consent(srv, Browser(), client_id=reg.json()["client_id"])
    assert "<script>alert(1)" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_expired_consent_request(idps: tuple[FakeOIDC, FakeGitHub]) -> None:
    now = [500.0]
    store = MemoryStorage(clock=lambda: now[0])
    with _serve(idps, store, MCP_AUTH_PENDING_TTL=60) as srv:
        browser = Browser()
        _page, fields = _open_consent(srv, browser)
        now[0] += 61
        resp = _post(srv, browser, {**fields, "action": "approve"})
        assert resp.status_code == 400 and "Location" not in resp.headers
        assert idps[0].authorize_calls == 0


def test_template_override(idps: tuple[FakeOIDC, FakeGitHub], tmp_path: Path) -> None:
    folder = tmp_path / "templates" / "flask_mcp_auth"
    folder.mkdir(parents=True)
    (folder / "consent.html").write_text(
        "<p>CUSTOM CONSENT for {{ client_name }}</p>"
        '<form method="post" action="{{ url_for(\'mcp_auth.consent\') }}">'
        '<input type="hidden" name="request" value="{{ request_id }}">'
        '<input type="hidden" name="csrf" value="{{ csrf_token }}">'
        '<button name="action" value="approve">OK</button></form>'
    )
    corp, gh = idps
    with serve_as([corp.upstream_entry("corp"), gh.upstream_entry("github")], "memory://",
                  template_folder=str(tmp_path / "templates"), MCP_AUTH_CLIENTS=CLIENTS) as srv:
        browser = Browser()
        page, _fields = _open_consent(srv, browser)
        assert "CUSTOM CONSENT for Test Client" in page.text
        assert page.headers["X-Frame-Options"] == "DENY"
        flow = browser.authorize(srv)
        assert flow.reached_client and "code" in flow.params


def test_flask_session_server_side(idps: tuple[FakeOIDC, FakeGitHub], redis_url: str) -> None:
    """Browser state works with Flask-Session's server-side sessions on the storage's Redis."""
    import redis
    from flask import Flask
    from flask_session import Session

    client = redis.Redis.from_url(redis_url)

    def setup(app: Flask) -> None:
        app.config.update(SESSION_TYPE="redis", SESSION_REDIS=client, SESSION_KEY_PREFIX="sess:")
        Session(app)

    corp, gh = idps
    try:
        with serve_as([corp.upstream_entry("corp"), gh.upstream_entry("github")], redis_url,
                      setup=setup, MCP_AUTH_CLIENTS=CLIENTS) as srv:
            browser = Browser()
            flow = browser.authorize(srv)
            assert flow.reached_client and "code" in flow.params
            assert srv.token(flow.code, flow.verifier).status_code == 200
            assert client.keys("sess:*")  # the ids live server-side
            # another browser cannot continue this browser's chain
            again = browser.authorize(srv, until=corp.url)
            assert again.next_url is not None
            callback = browser.request("GET", again.next_url).headers["Location"]
            assert Browser().request("GET", callback).status_code == 400
    finally:
        client.close()


def test_lone_surrogate_name_cannot_reach_the_consent_page(srv: ASServer) -> None:
    """Reviewer's repro: a client name with a lone surrogate used to be stored and then made the
    consent page a 500 (it cannot be encoded as UTF-8). It is refused at registration; a valid
    non-ASCII name renders."""
    bad = requests.post(f"{srv.url}/oauth/register", timeout=10,
                        data='{"redirect_uris":["http://127.0.0.1/callback"],"client_name":"\\udcff"}',
                        headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_client_metadata"
    good = requests.post(f"{srv.url}/oauth/register", timeout=10, json={
        "redirect_uris": ["http://127.0.0.1/callback"], "client_name": "Zoë app 😀 日本"})
    assert good.status_code == 201, good.text
    page, _fields = _open_consent(srv, Browser(), client_id=good.json()["client_id"])
    assert page.status_code == 200 and "Zoë app 😀 日本" in page.text
