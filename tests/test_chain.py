"""The multi-upstream chain end to end over real HTTP (SPEC §3.2 step 3, §3.3; TESTPLAN 1.5, ST-*).

Three loopback IdPs — two OIDC providers (different users, own keys) and a GitHub-like OAuth2 one —
and the AS on memory and on Redis storage. The browser follows every hop itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import redis as redis_lib
import requests

from flask_mcp_auth import signals
from flask_mcp_auth.server.chain import ClientRequest
from flask_mcp_auth.storage import SessionData, StorageUnavailable
from flask_mcp_auth.storage.memory import MemoryStorage
from tests.support.as_app import CLIENT_ID, ASServer, Browser, Flow, serve_as
from tests.support.idp import FakeGitHub, FakeOIDC

PROVIDERS = ["corp", "partner", "github"]


@pytest.fixture()
def idps() -> Iterator[tuple[FakeOIDC, FakeOIDC, FakeGitHub]]:
    with FakeOIDC(users=["alice"], client_id="corp-client") as corp, \
            FakeOIDC(users=["bob"], client_id="partner-client") as partner, \
            FakeGitHub(users=["octocat"]) as gh:
        yield corp, partner, gh


def _entries(idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> list[dict[str, Any]]:
    corp, partner, gh = idps
    return [corp.upstream_entry("corp", offline=True), partner.upstream_entry("partner"),
            gh.upstream_entry("github")]


@pytest.fixture()
def srv(idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub], storage_url: str) -> Iterator[ASServer]:
    with serve_as(_entries(idps), storage_url) as server:
        yield server


def _is_redis(srv: ASServer) -> bool:
    return not isinstance(srv.storage, MemoryStorage)


def _raw_redis(srv: ASServer) -> redis_lib.Redis:
    url = srv.app.config["MCP_AUTH_STORAGE"]
    return redis_lib.Redis.from_url(url)


def _upstream_rows(srv: ASServer, sid: str) -> dict[str, str]:
    return dict(srv.storage.load_session(sid).tokens)


def _pending_count(srv: ASServer) -> int:
    return srv.spy.live_pending()


def _all_upstream_keys(srv: ASServer) -> int:
    """Upstream-token rows and session metadata left by every chain the test ran."""
    return srv.spy.leftover()


def _verify_jwt(srv: ASServer, token: str) -> dict[str, Any]:
    jwks = requests.get(f"{srv.url}/.well-known/jwks.json", timeout=10).json()
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    public = jwt.PyJWK(key).key
    claims: dict[str, Any] = jwt.decode(token, public, algorithms=[header["alg"]],
                                        audience=f"{srv.url}/mcp", issuer=srv.url)
    return claims


def _login(srv: ASServer, browser: Browser | None = None, **params: str) -> Flow:
    browser = browser or Browser()
    return browser.authorize(srv, **params)


# -- the happy path ------------------------------------------------------------------------------
def test_three_leg_chain_issues_token(srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    corp, partner, gh = idps
    completed: list[dict[str, Any]] = []

    def on_done(sender: Any, **info: Any) -> None:
        completed.append(info)

    signals.chain_completed.connect(on_done)
    try:
        browser = Browser()
        flow = browser.authorize(srv, scope="openid profile email offline_access")
    finally:
        signals.chain_completed.disconnect(on_done)

    # every hop, in order: authorize → consent → approve → IdP1 → callback → IdP2 → callback → IdP3 →
    # callback → client
    path = [(h.method, urlsplit(h.url).netloc, urlsplit(h.url).path, h.status) for h in flow.hops]
    as_host = urlsplit(srv.url).netloc
    assert path == [
        ("GET", as_host, "/oauth/authorize", 302),
        ("GET", as_host, "/oauth/consent", 200),
        ("POST", as_host, "/oauth/consent", 303),
        ("GET", urlsplit(corp.url).netloc, "/authorize", 302),
        ("GET", as_host, "/oauth/callback", 302),
        ("GET", urlsplit(partner.url).netloc, "/authorize", 302),
        ("GET", as_host, "/oauth/callback", 302),
        ("GET", urlsplit(gh.url).netloc, "/login/oauth/authorize", 302),
        ("GET", as_host, "/oauth/callback", 303),
    ]
    assert flow.reached_client
    assert flow.location is not None and flow.location.startswith("http://127.0.0.1:53682/callback?")
    assert flow.params["state"] == [flow.state]
    assert flow.params["iss"] == [srv.url]
    assert len(flow.params["code"]) == 1
    assert corp.code_exchanges == partner.code_exchanges == gh.code_exchanges == 1

    resp = srv.token(flow.code, flow.verifier)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"].lower() == "bearer" and "refresh_token" in body
    claims = _verify_jwt(srv, body["access_token"])
    now = time.time()
    assert claims["iss"] == srv.url
    assert claims["aud"] == f"{srv.url}/mcp"
    assert claims["client_id"] == CLIENT_ID
    assert claims["scope"] == "openid profile email offline_access"
    assert now - 120 < claims["iat"] <= now + 5
    assert claims["exp"] == claims["iat"] + srv.runtime.settings.access_token_ttl
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    sid = claims["tsid"]
    assert claims["name"] == "Alice" and claims["email"] == "alice@example.com"

    # the internal user is the one the first leg resolved
    identity = srv.storage.get("identity", f"corp:{corp.users['alice']['sub']}")
    assert identity is not None and claims["sub"] == identity["user_id"]
    assert completed == [{"client_id": CLIENT_ID, "subject": claims["sub"], "session_id": sid,
                          "providers": tuple(PROVIDERS)}]

    # exactly three encrypted upstream-token rows under tsid, promoted to a complete session
    session = srv.storage.load_session(sid)
    assert session.complete and session.owner == claims["sub"]
    assert sorted(session.tokens) == sorted(PROVIDERS)
    tokens = srv.runtime.vault.decode_all(sid, session.tokens)  # type: ignore[union-attr]
    assert tokens["github"].access_token.startswith("gho_")
    assert tokens["github"].subject == str(gh.users["octocat"]["id"])
    assert tokens["partner"].subject == partner.users["bob"]["sub"]
    assert tokens["corp"].refresh_token  # offline_access + prompt=consent at corp
    for provider, blob in session.tokens.items():
        assert tokens[provider].access_token not in blob
    if _is_redis(srv):
        prefix = srv.runtime.settings.storage_prefix
        raw = _raw_redis(srv)
        keys = sorted(k.decode() for k in raw.keys(f"{prefix}upstream:{sid}:*"))
        assert keys == sorted(f"{prefix}upstream:{sid}:{p}" for p in PROVIDERS)
        for key in keys:
            value = raw.get(key)
            assert value is not None and value.startswith(b"v1.")
            assert b"gho_" not in value and b"access_token" not in value
            ttl = raw.ttl(key)
            # offline_access: the session lives as long as refresh tokens
            assert srv.runtime.settings.refresh_token_ttl - 60 < ttl <= srv.runtime.settings.refresh_token_ttl
    assert _pending_count(srv) == 0


def test_session_ttl_without_offline_access(srv: ASServer) -> None:
    flow = _login(srv)
    resp = srv.token(flow.code, flow.verifier)
    assert resp.status_code == 200
    assert "refresh_token" not in resp.json()
    sid = _verify_jwt(srv, resp.json()["access_token"])["tsid"]
    if _is_redis(srv):
        settings = srv.runtime.settings
        prefix = settings.storage_prefix
        ttl = _raw_redis(srv).ttl(f"{prefix}upstream:{sid}:corp")
        assert 0 < ttl <= settings.access_token_ttl + settings.code_ttl  # not the refresh lifetime
    assert srv.storage.load_session(sid).complete


def test_fresh_state_verifier_nonce_per_leg(srv: ASServer,
                                            idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    corp, partner, gh = idps
    browser = Browser()
    first = browser.authorize(srv)
    second = browser.authorize(srv)
    assert first.reached_client and second.reached_client
    sent: list[dict[str, str]] = []
    for fake in (corp, partner, gh):
        for hop in browser.upstream_hops(fake.url):
            sent.append({k: v[0] for k, v in parse_qs(urlsplit(hop.url).query).items()})
    assert len(sent) == 6
    for params in sent:
        assert params["code_challenge_method"] == "S256"
        assert params["redirect_uri"] == f"{srv.url}/oauth/callback"
    states = [p["state"] for p in sent]
    challenges = [p["code_challenge"] for p in sent]
    nonces = [p["nonce"] for p in sent if "nonce" in p]
    assert len(set(states)) == 6 and all(len(s) >= 43 for s in states)
    assert len(set(challenges)) == 6
    assert len(nonces) == 4 and len(set(nonces)) == 4  # OIDC legs only
    # our states never reach the client; the client's state never reaches an upstream
    assert first.state not in states and first.params["state"] == [first.state]
    verifiers = [r["code_verifier"] for f in (corp, partner, gh) for r in f.token_requests]
    assert len(verifiers) == 6 and len(set(verifiers)) == 6
    # the codes and sessions of two logins are distinct; the user is the same
    t1 = _verify_jwt(srv, srv.token(first.code, first.verifier).json()["access_token"])
    t2 = _verify_jwt(srv, srv.token(second.code, second.verifier).json()["access_token"])
    assert t1["tsid"] != t2["tsid"] and t1["sub"] == t2["sub"]


def test_consent_remembered_once(srv: ASServer) -> None:
    browser = Browser()
    first = browser.authorize(srv)
    assert any(urlsplit(h.url).path == "/oauth/consent" for h in first.hops)
    again = browser.authorize(srv)
    assert again.reached_client
    assert not any(urlsplit(h.url).path == "/oauth/consent" for h in again.hops)
    # another browser is asked again
    other = Browser()
    third = other.authorize(srv, consent=None)
    assert not third.reached_client and third.final is not None
    assert third.final.status_code == 200 and "Test Client" in third.final.text


def test_tsid_query_parameter_is_ignored(srv: ASServer) -> None:
    browser = Browser()
    flow = browser.authorize(srv, tsid="attacker-sid", SessionID="attacker-sid")
    assert flow.reached_client
    claims = _verify_jwt(srv, srv.token(flow.code, flow.verifier).json()["access_token"])
    assert claims["tsid"] != "attacker-sid"
    assert srv.storage.load_session("attacker-sid").tokens == {}


# -- callback validation (CB-*) ------------------------------------------------------------------
def test_cb02_unknown_state_is_error_page(srv: ASServer,
                                          idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    corp = idps[0]
    resp = requests.get(f"{srv.url}/oauth/callback", params={"state": "never-issued", "code": "x"},
                        allow_redirects=False, timeout=10)
    assert resp.status_code == 400
    assert "Location" not in resp.headers
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert corp.token_calls == 0
    assert _all_upstream_keys(srv) == 0


@pytest.mark.parametrize("params", [{}, {"state": "x"}, {"code": "y"}, {"state": "", "code": ""}])
def test_callback_missing_state_or_code(srv: ASServer, params: dict[str, str]) -> None:
    resp = requests.get(f"{srv.url}/oauth/callback", params=params, allow_redirects=False, timeout=10)
    assert resp.status_code == 400 and "Location" not in resp.headers


def test_cb05_replayed_callback_rejected(srv: ASServer,
                                         idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    corp, partner, gh = idps
    browser = Browser()
    flow = browser.authorize(srv)
    assert flow.reached_client
    exchanges = (corp.code_exchanges, partner.code_exchanges, gh.code_exchanges)
    callbacks = [h.url for h in flow.hops if urlsplit(h.url).path == "/oauth/callback"]
    assert len(callbacks) == 3
    for url in callbacks:  # reload every callback in the same browser
        resp = browser.request("GET", url)
        assert resp.status_code == 400 and "Location" not in resp.headers
    assert (corp.code_exchanges, partner.code_exchanges, gh.code_exchanges) == exchanges
    # the completed session is untouched by the replays
    token = srv.token(flow.code, flow.verifier)
    assert token.status_code == 200


def test_callback_from_another_browser_aborts_chain(srv: ASServer,
                                                    idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    corp = idps[0]
    victim = Browser()
    flow = victim.authorize(srv, until=corp.url)
    assert flow.next_url is not None
    # the IdP sends the code back — but the callback is opened by an attacker's browser
    callback_url = victim.request("GET", flow.next_url).headers["Location"]
    attacker = Browser()
    resp = attacker.request("GET", callback_url)
    assert resp.status_code == 400 and "Location" not in resp.headers
    assert corp.code_exchanges == 0
    # the state was consumed: the victim cannot continue either, and nothing is stored
    assert victim.request("GET", callback_url).status_code == 400
    assert _all_upstream_keys(srv) == 0


def test_binding_cookie_missing_at_later_leg(srv: ASServer,
                                             idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    """The browser binding is checked at every callback, not only the first."""
    corp, partner, _gh = idps
    browser = Browser()
    flow = browser.authorize(srv, until=partner.url)
    assert flow.next_url is not None and corp.code_exchanges == 1
    callback_url = browser.request("GET", flow.next_url).headers["Location"]
    browser.http.cookies.clear(domain="127.0.0.1", path="/", name="as_session")
    resp = browser.request("GET", callback_url)
    assert resp.status_code == 400
    assert partner.code_exchanges == 0
    assert _all_upstream_keys(srv) == 0  # corp's leg-1 tokens are gone too


def test_concurrent_callbacks_one_wins(srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    """The same leg state delivered 8 times at once: one exchange, one next leg, seven 400s."""
    corp, _partner, _gh = idps
    browser = Browser()
    flow = browser.authorize(srv, until=corp.url)
    assert flow.next_url is not None
    callback_url = browser.request("GET", flow.next_url).headers["Location"]
    cookies = browser.http.cookies.get_dict()
    barrier = threading.Barrier(8)

    def hit() -> int:
        barrier.wait()
        return requests.get(callback_url, cookies=cookies, allow_redirects=False,
                            timeout=15).status_code

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(hit())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [302] + [400] * 7
    assert corp.code_exchanges == 1
    assert _pending_count(srv) == 1  # the one next-leg record


def test_later_leg_without_carried_user_fails_closed(srv: ASServer,
                                                     idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = srv.storage
    real_put = store.put

    def put(kind: str, key: str, value: Any, ttl: int, *, nx: bool = False) -> None:
        if kind == "pending" and value.get("leg") == 2:
            value = {**value, "user": None}
        real_put(kind, key, value, ttl, nx=nx)

    monkeypatch.setattr(store, "put", put)
    flow = _login(srv)
    assert flow.error == "server_error" and "code" not in flow.params
    assert idps[2].code_exchanges == 1  # the leg ran; its result was not used
    assert _all_upstream_keys(srv) == 0


def test_cb10_upstream_error_on_leg2_cleans_leg1(srv: ASServer,
                                                 idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    corp, partner, gh = idps
    partner.error_on_authorize = "access_denied"
    flow = _login(srv)
    assert flow.reached_client
    assert flow.params["error"] == ["access_denied"]
    assert flow.params["state"] == [flow.state] and flow.params["iss"] == [srv.url]
    assert "code" not in flow.params
    assert corp.code_exchanges == 1 and partner.code_exchanges == 0 and gh.authorize_calls == 0
    assert _all_upstream_keys(srv) == 0
    assert _pending_count(srv) == 0


@pytest.mark.parametrize(("failure", "expected"), [
    ("http_500_html", "server_error"),  # upstream unavailable
    ("http_400_invalid_grant", "access_denied"),  # upstream refused the code (SPEC §3.3 step 5)
    ("garbage", "server_error"),
])
def test_cb12_leg2_exchange_fails(srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
                                  failure: str, expected: str) -> None:
    _corp, partner, gh = idps
    partner.token_failure = failure
    flow = _login(srv)
    assert flow.reached_client and "code" not in flow.params
    assert flow.error == expected
    assert flow.params["state"] == [flow.state] and flow.params["iss"] == [srv.url]
    assert partner.code_exchanges == 1  # one upstream call per leg, no retry
    assert gh.authorize_calls == 0
    assert _all_upstream_keys(srv) == 0


def test_cb12_storing_leg2_pending_fails(srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    corp, partner, _gh = idps
    store = srv.storage
    real_put = store.put

    def put(kind: str, key: str, value: Any, ttl: int, *, nx: bool = False) -> None:
        if kind == "pending" and value.get("leg") == 1:
            raise StorageUnavailable("injected")
        real_put(kind, key, value, ttl, nx=nx)

    monkeypatch.setattr(store, "put", put)
    flow = _login(srv)
    assert flow.reached_client and flow.error == "server_error"
    assert flow.params["state"] == [flow.state]
    assert corp.code_exchanges == 1 and partner.authorize_calls == 0
    assert _all_upstream_keys(srv) == 0


def test_cb12_next_leg_authorization_url_fails(srv: ASServer,
                                               idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    client = srv.runtime.upstreams["github"]

    def broken(**_: Any) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(client, "authorization_url", broken)
    flow = _login(srv)
    assert flow.error == "server_error" and "code" not in flow.params
    assert _all_upstream_keys(srv) == 0


def test_cb14_pending_without_chain_fails_closed(srv: ASServer,
                                                 idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A later leg's pending record lacks its chain description: fail closed, clean up."""
    _corp, partner, gh = idps
    store = srv.storage
    real_put = store.put

    def put(kind: str, key: str, value: Any, ttl: int, *, nx: bool = False) -> None:
        if kind == "pending" and value.get("leg") == 1:
            value = {k: v for k, v in value.items() if k != "chain"}
        real_put(kind, key, value, ttl, nx=nx)

    monkeypatch.setattr(store, "put", put)
    flow = _login(srv)
    # without the chain description there is no trustworthy client to redirect to
    assert not flow.reached_client and flow.final is not None
    assert flow.final.status_code == 400
    assert partner.code_exchanges == 0 and gh.authorize_calls == 0
    assert _all_upstream_keys(srv) == 0


def test_cb14_pending_with_altered_provider_list_fails_closed(
        srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _corp, partner, _gh = idps
    store = srv.storage
    real_put = store.put

    def put(kind: str, key: str, value: Any, ttl: int, *, nx: bool = False) -> None:
        if kind == "pending" and value.get("leg") == 1:
            value = dict(value)
            value["chain"] = {**value["chain"], "providers": ["corp", "partner"]}  # stale format
        real_put(kind, key, value, ttl, nx=nx)

    monkeypatch.setattr(store, "put", put)
    flow = _login(srv)
    assert flow.reached_client and flow.error == "server_error"
    assert partner.code_exchanges == 0
    assert _all_upstream_keys(srv) == 0


def test_cb07_wrong_iss_rejected(srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    corp, partner, _gh = idps
    # partner answers its authorization responses with corp's issuer (mix-up attempt)
    original = partner._redirect_back

    def wrong_iss(redirect_uri: str, params: Any) -> Any:
        params = dict(params)
        params["iss"] = corp.issuer
        return original(redirect_uri, params)

    partner._redirect_back = wrong_iss  # type: ignore[method-assign]
    flow = _login(srv)
    assert flow.error == "access_denied" and "code" not in flow.params
    assert partner.code_exchanges == 0  # rejected before any token call
    assert _all_upstream_keys(srv) == 0


def test_cb08_missing_iss_rejected_when_advertised(srv: ASServer,
                                                   idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    corp = idps[0]
    original = corp._redirect_back

    def no_iss(redirect_uri: str, params: Any) -> Any:
        return original(redirect_uri, {k: v for k, v in params.items() if k != "iss"})

    corp._redirect_back = no_iss  # type: ignore[method-assign]
    flow = _login(srv)
    assert flow.error == "access_denied"
    assert corp.code_exchanges == 0
    assert _all_upstream_keys(srv) == 0


def test_mixup_state_of_leg1_delivered_as_leg2(srv: ASServer,
                                               idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    """Provider B's code arrives with provider A's state: the code is redeemed only at A (the provider
    the pending record names), which refuses it — B's token endpoint is never called with it."""
    corp, partner, _gh = idps
    browser = Browser()
    flow = browser.authorize(srv, until=corp.url)
    assert flow.next_url is not None
    corp_back = browser.request("GET", flow.next_url).headers["Location"]
    corp_state = parse_qs(urlsplit(corp_back).query)["state"][0]
    # a genuine partner code for our callback URL, obtained outside any chain
    partner_back = browser.request("GET", partner.url + "/authorize?" + urlencode({
        "response_type": "code", "client_id": partner.client_id,
        "redirect_uri": f"{srv.url}/oauth/callback", "state": "zzz", "code_challenge": "C" * 43,
        "code_challenge_method": "S256"})).headers["Location"]
    partner_code = parse_qs(urlsplit(partner_back).query)["code"][0]
    # deliver partner's code with corp's state (and corp's iss)
    resp = browser.request("GET", f"{srv.url}/oauth/callback?" + urlencode(
        {"state": corp_state, "code": partner_code, "iss": corp.issuer}))
    assert resp.status_code == 303
    back = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert back["error"] == ["access_denied"] and "code" not in back
    assert back["state"] == [flow.state]
    assert corp.code_exchanges == 1 and partner.code_exchanges == 0
    assert [r["code"] for r in corp.token_requests] == [partner_code]
    assert _all_upstream_keys(srv) == 0


def test_mixup_later_leg_state_with_other_providers_iss(
        srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    """Leg 2 (partner) callback carrying corp's ``iss``: rejected before any token call."""
    corp, partner, _gh = idps
    browser = Browser()
    flow = browser.authorize(srv, until=partner.url)
    assert flow.next_url is not None
    back = browser.request("GET", flow.next_url).headers["Location"]
    params = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    params["iss"] = corp.issuer
    resp = browser.request("GET", f"{srv.url}/oauth/callback?{urlencode(params)}")
    assert resp.status_code == 303
    assert parse_qs(urlsplit(resp.headers["Location"]).query)["error"] == ["access_denied"]
    assert partner.code_exchanges == 0
    assert _all_upstream_keys(srv) == 0


def _github_sends_iss(gh: FakeGitHub, iss: str) -> None:
    """Make the plain OAuth2 fake put ``iss`` in its authorization responses."""
    original = gh._redirect_back

    def with_iss(redirect_uri: str, params: Any) -> Any:
        return original(redirect_uri, {**params, "iss": iss})

    gh._redirect_back = with_iss  # type: ignore[method-assign]


@pytest.mark.parametrize("foreign", ["corp", "partner", "self"])
def test_mixup_oauth2_leg_with_another_upstreams_iss(
        srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub], foreign: str) -> None:
    """GitHub (plain OAuth2, issuer unknown) answering with the ``iss`` of another configured
    upstream, or of this AS: a mix-up — rejected before any token call, leg-1/2 tokens cleaned up."""
    corp, partner, gh = idps
    _github_sends_iss(gh, {"corp": corp.issuer, "partner": partner.issuer, "self": srv.url}[foreign])
    flow = _login(srv)
    assert flow.reached_client and flow.error == "access_denied" and "code" not in flow.params
    assert flow.params["state"] == [flow.state] and flow.params["iss"] == [srv.url]
    assert corp.code_exchanges == 1 and partner.code_exchanges == 1 and gh.code_exchanges == 0
    assert _all_upstream_keys(srv) == 0


def test_oauth2_leg_with_unrelated_iss_still_accepted(
        srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    """Without a configured issuer an ``iss`` that names no known server cannot be judged: the
    leg proceeds (RFC 9207 §2.4 compares only against a known issuer)."""
    _github_sends_iss(idps[2], "https://unrelated.example")
    flow = _login(srv)
    assert flow.reached_client and "code" in flow.params


@pytest.mark.parametrize(("sent", "ok"), [("configured", True), (None, True),
                                          ("configured/", False), ("other", False)])
def test_oauth2_configured_issuer_compared_exactly(
        idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub], sent: str | None, ok: bool) -> None:
    corp, _partner, gh = idps
    configured = gh.url + "/login/oauth"
    entries = [corp.upstream_entry("corp"), gh.upstream_entry("github", issuer=configured)]
    if sent is not None:
        _github_sends_iss(gh, {"configured": configured, "configured/": configured + "/",
                               "other": "https://unrelated.example"}[sent])
    with serve_as(entries, "memory://") as server:
        flow = _login(server)
        assert flow.reached_client
        if ok:
            assert "code" in flow.params and gh.code_exchanges == 1
        else:
            assert flow.error == "access_denied" and gh.code_exchanges == 0
            assert _all_upstream_keys(server) == 0


def test_identity_mismatch_at_last_leg_fails(srv: ASServer,
                                             idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The first-leg identity record no longer maps to the carried user: no code, tokens cleaned."""
    corp = idps[0]
    client = srv.runtime.upstreams["github"]
    real_exchange = client.exchange_code

    def exchange(**kwargs: Any) -> Any:
        result = real_exchange(**kwargs)
        # someone re-linked corp's subject to another user while the chain ran
        srv.storage.put("identity", f"corp:{corp.users['alice']['sub']}", {"user_id": "other"},
                        ttl=3600)
        return result

    monkeypatch.setattr(client, "exchange_code", exchange)
    flow = _login(srv)
    assert flow.error == "server_error" and "code" not in flow.params
    assert _all_upstream_keys(srv) == 0


def test_same_upstream_subject_maps_to_same_user_across_browsers(
        srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    corp = idps[0]
    corp.users["zed"] = {**corp.users["alice"], "sub": "sub-zed", "name": "Zed", "email": "z@x"}
    a = _login(srv)
    b_browser = Browser()
    corp.login(b_browser.http, "zed")
    b = _login(srv, b_browser)
    c = _login(srv)
    subs = [_verify_jwt(srv, srv.token(f.code, f.verifier).json()["access_token"])["sub"]
            for f in (a, b, c)]
    assert subs[0] == subs[2] != subs[1]


# -- abandoned chains and storage faults ------------------------------------------------------------
def test_abandoned_chain_leaves_nothing_after_pending_ttl(
        idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub]) -> None:
    now = [1000.0]
    store = MemoryStorage(clock=lambda: now[0], sweep_interval=1.0)
    with serve_as(_entries(idps), store, MCP_AUTH_PENDING_TTL=60) as srv:
        before = len(store)
        flow = Browser().authorize(srv, until=idps[2].url)  # two legs done, github never answers
        assert flow.next_url is not None
        assert len(srv.spy.sids) == 1
        sid = srv.spy.sids[0]
        data = store.load_session(sid)
        assert sorted(data.tokens) == ["corp", "partner"] and not data.complete
        assert _pending_count(srv) == 1
        now[0] += 59
        assert sorted(store.load_session(sid).tokens) == ["corp", "partner"]
        now[0] += 2
        assert store.load_session(sid) == SessionData(owner=None, complete=False, revoked=False,
                                                      tokens={})
        assert _pending_count(srv) == 0
        # only long-lived records remain: the consent approval and the user's identity
        assert len(store) == before + 2
        assert store.get("identity", f"corp:{idps[0].users['alice']['sub']}") is not None


def test_abandoned_chain_redis_ttls(idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub], redis_url: str) -> None:
    with serve_as(_entries(idps), redis_url, MCP_AUTH_PENDING_TTL=60) as srv:
        flow = Browser().authorize(srv, until=idps[2].url)
        assert flow.next_url is not None
        raw = _raw_redis(srv)
        prefix = srv.runtime.settings.storage_prefix
        keys = [k.decode() for k in raw.keys(f"{prefix}*")]
        chain_keys = [k for k in keys if k.startswith((f"{prefix}upstream", f"{prefix}session",
                                                        f"{prefix}pending"))]
        rows = [k for k in chain_keys if k.startswith(f"{prefix}upstream:") and ":idx:" not in k]
        assert len(rows) == 2
        assert len([k for k in chain_keys if k.startswith(f"{prefix}pending:")]) == 1
        for key in chain_keys:
            assert 0 < raw.ttl(key) <= 60, key
        for key in keys:  # every key carries a TTL
            assert raw.ttl(key) > 0, key


def test_st01_storage_down_at_authorize(srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    corp = idps[0]
    browser = Browser()
    first = browser.authorize(srv)  # remember consent
    assert first.reached_client
    corp.reset_counters()

    def down(*_: Any, **__: Any) -> Any:
        raise StorageUnavailable("injected")

    monkeypatch.setattr(srv.storage, "put", down)
    flow = browser.authorize(srv)
    assert flow.reached_client and flow.error == "temporarily_unavailable"
    assert flow.params["state"] == [flow.state]
    assert corp.authorize_calls == 0  # never sent upstream with unsaved state


def test_st01_storage_down_before_client_known(srv: ASServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    registry = srv.runtime.parts["clients"]

    def down(client_id: str) -> Any:
        raise StorageUnavailable("injected")

    monkeypatch.setattr(registry, "get", down)
    resp = Browser().request("GET", srv.authorize_url(
        response_type="code", client_id="dyn", state="s", code_challenge="A" * 43,
        code_challenge_method="S256"))
    assert resp.status_code == 503 and "Location" not in resp.headers


def test_st02_storage_down_at_callback(srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _corp, _partner, gh = idps
    store = srv.storage
    real_save = store.put_upstream_token
    calls = {"n": 0}

    def save(sid: str, provider: str, blob: str, ttl: int) -> None:
        calls["n"] += 1
        if provider == "partner":
            raise StorageUnavailable("injected")
        real_save(sid, provider, blob, ttl)

    monkeypatch.setattr(store, "put_upstream_token", save)
    flow = _login(srv)
    assert flow.error == "server_error" and "code" not in flow.params
    assert gh.authorize_calls == 0
    assert _all_upstream_keys(srv) == 0


def test_st02_storage_down_taking_pending(srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    corp = idps[0]

    def down(*_: Any, **__: Any) -> Any:
        raise StorageUnavailable("injected")

    monkeypatch.setattr(srv.storage, "take", down)
    flow = _login(srv)
    assert not flow.reached_client and flow.final is not None
    assert flow.final.status_code == 503
    assert corp.code_exchanges == 0


def test_st05_redis_restart_between_legs(idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
                                         redis_server: Any, redis_url: str) -> None:
    from tests.support.redis_server import start_redis

    with serve_as(_entries(idps), redis_url) as srv:
        browser = Browser()
        to_partner = browser.authorize(srv, until=idps[1].url).next_url
        assert to_partner is not None
        redis_server.stop()
        restarted = start_redis(redis_server.port)
        redis_server.pid = restarted.pid
        back = browser.request("GET", to_partner).headers["Location"]
        resp = browser.request("GET", back)
        assert resp.status_code == 400  # clean "expired/unknown login" page
        assert "Traceback" not in resp.text
        # a fresh login works immediately
        flow = browser.authorize(srv)
        assert flow.reached_client and "code" in flow.params


# -- secrets hygiene ------------------------------------------------------------------------------
def test_sh07_callback_headers(srv: ASServer) -> None:
    """Every response of authorize, consent and callback: no caching, no Referer leak."""
    flow = Browser().authorize(srv)
    ours = [h for h in flow.hops if urlsplit(h.url).netloc == urlsplit(srv.url).netloc]
    assert [urlsplit(h.url).path for h in ours].count("/oauth/callback") == 3
    for hop in ours:
        assert hop.headers["Referrer-Policy"] == "no-referrer", hop.url
        assert hop.headers["Cache-Control"] == "no-store", hop.url
        assert "Access-Control-Allow-Origin" not in hop.headers
    # error pages too
    resp = requests.get(f"{srv.url}/oauth/callback", params={"state": "x", "code": "y"}, timeout=10)
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"


def test_sh02_no_secrets_in_logs(srv: ASServer, idps: tuple[FakeOIDC, FakeOIDC, FakeGitHub],
                                 caplog: pytest.LogCaptureFixture) -> None:
    corp, partner, gh = idps
    caplog.set_level(logging.DEBUG)
    browser = Browser()
    flow = browser.authorize(srv, scope="openid offline_access")
    token = srv.token(flow.code, flow.verifier).json()
    # a failing chain too
    partner.token_failure = "http_500_html"
    failed = browser.authorize(srv)
    assert failed.error == "server_error"
    secrets_seen: set[str] = {flow.code, flow.verifier, flow.state, token["access_token"],
                              token["refresh_token"], failed.state}
    for hop in browser.hops:
        for values in parse_qs(urlsplit(hop.url).query).values():
            secrets_seen.update(v for v in values if len(v) >= 16)
        if hop.location:
            for values in parse_qs(urlsplit(hop.location).query).values():
                secrets_seen.update(v for v in values if len(v) >= 16)
    for fake in (corp, partner, gh):
        for req in fake.token_requests:
            secrets_seen.update(v for k, v in req.items() if k in ("code", "code_verifier",
                                                                   "client_secret"))
        secrets_seen.update(s for s in (fake.client_secret,) if s)
    sid = _verify_jwt(srv, token["access_token"])["tsid"]
    tokens = srv.runtime.vault.decode_all(sid, srv.storage.load_session(sid).tokens)  # type: ignore[union-attr]
    assert len(tokens) == 3  # corp, partner and GitHub tokens are all among the needles
    for t in tokens.values():
        secrets_seen.update(s for s in (t.access_token, t.refresh_token, t.id_token) if s)
    secrets_seen.add(sid)
    secrets_seen.discard(srv.url)
    secrets_seen = {s for s in secrets_seen if s and not s.startswith("http")}
    # The test's own browser logs its URLs through urllib3 in this thread; that is not the AS.
    main = threading.get_ident()
    records = [r for r in caplog.records if not (r.thread == main and r.name.startswith("urllib3"))]
    assert any(r.name.startswith("flask_mcp_auth") for r in records)
    assert any(r.name.startswith("urllib3") for r in records)  # the AS's own upstream calls
    # Formatter.format adds the exception and stack text of each record, not only its message
    formatter = logging.Formatter("%(name)s %(message)s")
    text = "\n".join(formatter.format(r) for r in records)
    assert caplog.records, "expected some log records"
    assert {flow.code, flow.verifier, token["refresh_token"]} <= secrets_seen
    for secret in secrets_seen:
        assert secret not in text
    assert "Something went wrong" not in text  # the upstream's HTML body


def test_client_request_round_trip_and_malformed() -> None:
    req = ClientRequest(client_id="c", redirect_uri="http://127.0.0.1/cb", state="s%20t",
                        scopes=("openid",), resource="https://r", code_challenge="a" * 43,
                        redirect_uri_provided=False, nonce="n")
    assert ClientRequest.from_dict(req.to_dict()) == req
    for broken in ({**req.to_dict(), "scopes": "openid"}, {**req.to_dict(), "state": ""},
                   {**req.to_dict(), "code_challenge_method": "plain"},
                   {k: v for k, v in req.to_dict().items() if k != "client_id"}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            ClientRequest.from_dict(broken)
