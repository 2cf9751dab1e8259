"""``flask_mcp_auth.testing.MockIdP`` (SPEC §1): the mock upstream IdP for apps' own tests.

The main test runs a Mode B app over real HTTP in front of two mocks (OIDC and GitHub-like OAuth2) and
walks register → authorize → consent → both legs → token with a ``requests`` browser; the others talk
to one mock directly (PKCE, refresh, discovery/JWKS, the GitHub-isms, lifecycle).
"""

from __future__ import annotations

import logging
import re
import socket
import textwrap
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from flask import Flask, g, jsonify
from flask.typing import ResponseReturnValue

import flask_mcp_auth.testing
from flask_mcp_auth import MCPAuth
from flask_mcp_auth.keys import thumbprint
from flask_mcp_auth.testing import IssuedToken, MockIdP
from tests.support.as_app import CLIENT_REDIRECT, Browser, pkce, serve_as

CALLBACK = "http://127.0.0.1:9/cb"  # nothing listens: the mock only redirects the browser there


@pytest.fixture
def oidc() -> Iterator[MockIdP]:
    with MockIdP("oidc", users=["alice", "bob"]) as idp:
        yield idp


@pytest.fixture
def github() -> Iterator[MockIdP]:
    with MockIdP("oauth2", users=["octocat", "hubot"]) as idp:
        yield idp


def _http() -> requests.Session:
    http = requests.Session()
    http.trust_env = False  # loopback: no proxies, no CA bundle from the environment
    return http


def _authorize(http: requests.Session, idp: MockIdP, *, verifier: str | None = None,
               **params: str) -> requests.Response:
    """GET the mock's authorize endpoint (not following the redirect)."""
    path = "/authorize" if idp.kind == "oidc" else "/login/oauth/authorize"
    challenge = pkce()[1] if verifier is None else str(create_s256_code_challenge(verifier))
    query = {"response_type": "code", "client_id": idp.client_id, "redirect_uri": CALLBACK,
             "state": "st-1", "code_challenge": challenge, "code_challenge_method": "S256",
             "scope": "openid profile email" if idp.kind == "oidc" else "read:user", **params}
    return http.get(f"{idp.url}{path}?{urlencode(query)}", allow_redirects=False, timeout=10)


def _redirect_params(resp: requests.Response) -> dict[str, str]:
    assert resp.status_code == 302, resp.text
    location = resp.headers["Location"]
    assert location.startswith(CALLBACK + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _token(http: requests.Session, idp: MockIdP, data: dict[str, str], *, basic: bool = False,
           json_accept: bool = True) -> requests.Response:
    path = "/token" if idp.kind == "oidc" else "/login/oauth/access_token"
    auth: tuple[str, str] | None = None
    body = dict(data)
    if basic:
        auth = (idp.client_id, str(idp.client_secret))
    else:
        body.update(client_id=idp.client_id, client_secret=str(idp.client_secret))
    headers = {"Accept": "application/json"} if json_accept else {}
    return http.post(f"{idp.url}{path}", data=body, auth=auth, headers=headers, timeout=10)


def _code_for(http: requests.Session, idp: MockIdP, verifier: str, **params: str) -> str:
    return _redirect_params(_authorize(http, idp, verifier=verifier, **params))["code"]


# --- the full chain through an app ----------------------------------------------------------------
def _add_whoami(app: Flask) -> None:
    """A protected view reporting what the hook put into ``current_identity``."""

    @app.get("/whoami")
    @MCPAuth().required(providers=["corp", "github"])
    def whoami() -> ResponseReturnValue:
        identity = g.identity
        return jsonify(tokens=dict(identity.upstream_tokens), id_tokens=dict(identity.upstream_id_tokens))


def test_full_chain_through_two_mock_idps(storage_url: str, oidc: MockIdP, github: MockIdP) -> None:
    oidc.login_as("bob")
    github.login_as("hubot")
    upstreams = [oidc.upstream_entry("corp"), github.upstream_entry("github")]
    with serve_as(upstreams, storage_url, setup=_add_whoami) as srv:
        http = _http()
        reg = http.post(f"{srv.url}/oauth/register", timeout=10, json={
            "redirect_uris": [CLIENT_REDIRECT], "client_name": "Mock test",
            "grant_types": ["authorization_code", "refresh_token"]})
        assert reg.status_code == 201, reg.text
        client_id = reg.json()["client_id"]

        browser = Browser()
        verifier, challenge = pkce()
        flow = browser.walk(srv.authorize_url(
            response_type="code", client_id=client_id, redirect_uri=CLIENT_REDIRECT, state="client-st",
            code_challenge=challenge, code_challenge_method="S256", scope="openid profile email"))
        assert flow.reached_client, flow.final and flow.final.text
        assert flow.params["state"] == ["client-st"]
        legs = [h.url for h in flow.hops if h.url.startswith((oidc.url, github.url))]
        assert [u.startswith(oidc.url) for u in legs] == [True, False]  # corp, then github

        resp = srv.token(flow.code, verifier, client_id=client_id)
        assert resp.status_code == 200, resp.text
        access_token = resp.json()["access_token"]

        corp_issued, gh_issued = oidc.issued_tokens, github.issued_tokens
        assert [(t.user, t.grant_type) for t in corp_issued] == [("bob", "authorization_code")]
        assert [(t.user, t.grant_type) for t in gh_issued] == [("hubot", "authorization_code")]
        seen = http.get(f"{srv.url}/whoami", headers={"Authorization": f"Bearer {access_token}"},
                        timeout=10)
        assert seen.status_code == 200, seen.text
        assert seen.json()["tokens"] == {"corp": corp_issued[0].access_token,
                                         "github": gh_issued[0].access_token}
        assert seen.json()["id_tokens"]["corp"] == corp_issued[0].id_token


def test_module_docstring_example_runs() -> None:
    """The usage example in ``flask_mcp_auth.testing``'s docstring is true: run it as written."""
    doc = flask_mcp_auth.testing.__doc__ or ""
    start = doc.index("over real HTTP)::\n") + len("over real HTTP)::\n")
    block = re.match(r"(?:\n|    .*\n)+", doc[start:] + "\n")
    assert block is not None
    code = textwrap.dedent(block.group(0))
    assert "MockIdP(" in code and "assert seen ==" in code
    exec(compile(code, "flask_mcp_auth.testing docstring", "exec"), {"__name__": "doc_example"})


# --- the mock on its own ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["oidc", "oauth2"])
def test_wrong_pkce_verifier_is_refused(kind: str) -> None:
    with MockIdP(kind, users=["alice"]) as idp:  # type: ignore[arg-type]
        http = _http()
        verifier = "a" * 50
        code = _code_for(http, idp, verifier)
        bad = _token(http, idp, {"grant_type": "authorization_code", "code": code,
                                 "redirect_uri": CALLBACK, "code_verifier": "b" * 50})
        assert bad.status_code == 400
        assert bad.json() == {"error": "invalid_grant"}
        # the code was used up by the failed attempt, as RFC 6749 §4.1.2 wants
        again = _token(http, idp, {"grant_type": "authorization_code", "code": code,
                                   "redirect_uri": CALLBACK, "code_verifier": verifier})
        assert again.json() == {"error": "invalid_grant"}
        missing = _token(http, idp, {"grant_type": "authorization_code", "redirect_uri": CALLBACK,
                                     "code": _code_for(http, idp, verifier)})
        assert missing.json() == {"error": "invalid_grant"}
        assert idp.issued_tokens == []


def test_refresh_grant_at_oidc_mock(oidc: MockIdP) -> None:
    http = _http()
    verifier = "r" * 60
    code = _code_for(http, oidc, verifier, nonce="n-1")
    first = _token(http, oidc, {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
                                "code_verifier": verifier}, basic=True)
    assert first.status_code == 200, first.text
    assert first.headers["Cache-Control"] == "no-store"
    old_rt = first.json()["refresh_token"]

    second = _token(http, oidc, {"grant_type": "refresh_token", "refresh_token": old_rt})
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["access_token"] != first.json()["access_token"]
    assert body["refresh_token"] != old_rt  # rotated
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    key = jwt.PyJWKClient(f"{oidc.url}/jwks").get_signing_key_from_jwt(body["id_token"])
    claims = jwt.decode(body["id_token"], key.key, algorithms=["RS256"], audience=oidc.client_id,
                        issuer=oidc.issuer)
    assert claims["sub"] == "alice-sub" and "nonce" not in claims
    assert [t.grant_type for t in oidc.issued_tokens] == ["authorization_code", "refresh_token"]
    assert oidc.issued_tokens[-1] == IssuedToken(
        user="alice", access_token=body["access_token"], grant_type="refresh_token",
        scope="openid profile email", refresh_token=body["refresh_token"], id_token=body["id_token"],
        expires_at=oidc.issued_tokens[-1].expires_at)

    reused = _token(http, oidc, {"grant_type": "refresh_token", "refresh_token": old_rt})
    assert reused.status_code == 400 and reused.json() == {"error": "invalid_grant"}
    info = http.get(f"{oidc.url}/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"},
                    timeout=10)
    assert info.json()["email"] == "alice@example.com"


def test_no_refresh_tokens_when_disabled() -> None:
    with MockIdP("oidc", issue_refresh_tokens=False, access_token_ttl=60) as idp:
        http = _http()
        code = _code_for(http, idp, "x" * 43)
        body = _token(http, idp, {"grant_type": "authorization_code", "code": code,
                                  "redirect_uri": CALLBACK, "code_verifier": "x" * 43}).json()
        assert "refresh_token" not in body and body["expires_in"] == 60
        assert idp.issued_tokens[0].refresh_token is None


def test_oidc_discovery_jwks_and_authorize(oidc: MockIdP) -> None:
    http = _http()
    doc = http.get(f"{oidc.url}/.well-known/openid-configuration", timeout=10).json()
    assert doc["issuer"] == oidc.issuer == oidc.url
    assert doc["code_challenge_methods_supported"] == ["S256"]
    (jwk,) = http.get(doc["jwks_uri"], timeout=10).json()["keys"]
    assert jwk["kid"] == thumbprint(jwk) and jwk["alg"] == "RS256" and "d" not in jwk

    oidc.login_as("bob")
    verifier = "o" * 43
    params = _redirect_params(_authorize(http, oidc, verifier=verifier, nonce="nonce-9", state="s-9"))
    assert params["state"] == "s-9" and params["iss"] == oidc.issuer
    body = _token(http, oidc, {"grant_type": "authorization_code", "code": params["code"],
                               "redirect_uri": CALLBACK, "code_verifier": verifier}).json()
    header = jwt.get_unverified_header(body["id_token"])
    assert header["kid"] == jwk["kid"]
    claims = jwt.decode(body["id_token"], jwt.PyJWK(jwk).key, algorithms=["RS256"],
                        audience=oidc.client_id, issuer=oidc.issuer)
    assert claims["nonce"] == "nonce-9" and claims["sub"] == "bob-sub"
    assert claims["email"] == "bob@example.com" and "at_hash" in claims


@pytest.mark.parametrize(("change", "error"), [
    ({"state": ""}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": ""}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
])
def test_authorize_refuses_incomplete_requests(oidc: MockIdP, change: dict[str, str], error: str) -> None:
    resp = _authorize(_http(), oidc, **change)
    assert _redirect_params(resp)["error"] == error


def test_authorize_never_redirects_to_untrusted_targets(oidc: MockIdP) -> None:
    http = _http()
    assert _authorize(http, oidc, client_id="someone-else").status_code == 400
    for uri in ("/relative", "javascript:alert(1)", "https://c.example/cb#frag"):
        resp = _authorize(http, oidc, redirect_uri=uri)
        assert resp.status_code == 400 and "Location" not in resp.headers


def test_token_endpoint_checks_client_and_redirect_uri(oidc: MockIdP) -> None:
    http = _http()
    verifier = "c" * 43
    data = {"grant_type": "authorization_code", "code": _code_for(http, oidc, verifier),
            "redirect_uri": CALLBACK, "code_verifier": verifier}
    wrong = http.post(f"{oidc.url}/token", data=data, auth=(oidc.client_id, "nope"), timeout=10)
    assert wrong.status_code == 401 and wrong.json() == {"error": "invalid_client"}
    data["code"] = _code_for(http, oidc, verifier)
    moved = _token(http, oidc, {**data, "redirect_uri": "http://127.0.0.1:9/other"})
    assert moved.json() == {"error": "invalid_grant"}
    assert _token(http, oidc, {**data, "grant_type": "password"}).json() == {"error": "unsupported_grant_type"}


def test_oauth2_mode_is_github_like(github: MockIdP) -> None:
    http = _http()
    verifier = "g" * 43
    code = _code_for(http, github, verifier)
    resp = _token(http, github, {"code": code, "redirect_uri": CALLBACK, "code_verifier": verifier},
                  json_accept=False)  # GitHub's default grant, and a form-encoded answer
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    form = {k: v[0] for k, v in parse_qs(resp.text).items()}
    assert form["access_token"].startswith("gho_") and form["token_type"] == "Bearer"

    user = http.get(f"{github.url}/user", headers={"Authorization": f"token {form['access_token']}"},
                    timeout=10).json()
    assert user == {"id": 1001, "login": "octocat", "name": "Octocat", "email": "octocat@example.com"}
    assert isinstance(user["id"], int)
    assert http.get(f"{github.url}/user", headers={"Authorization": "Bearer gho_unknown"},
                    timeout=10).status_code == 401

    entry = github.upstream_entry("gh", scopes=["repo"])
    assert entry["token_endpoint"] == f"{github.url}/login/oauth/access_token"
    assert entry["userinfo_fields"]["subject"] == ["id"] and entry["scopes"] == ["repo"]
    assert github.issued_tokens[0].access_token == form["access_token"]


def test_users_with_claims_and_login_as() -> None:
    with MockIdP("oidc", users={"carol": {"sub": "c-1", "groups": ["admins"]}}) as idp:
        assert idp.users["carol"]["sub"] == "c-1" and idp.users["carol"]["email"] == "carol@example.com"
        with pytest.raises(KeyError):
            idp.login_as("mallory")
    with pytest.raises(ValueError, match="kind"):
        MockIdP("saml")  # type: ignore[arg-type]


def test_lifecycle_and_quiet_server(caplog: pytest.LogCaptureFixture) -> None:
    idp = MockIdP("oidc")
    with pytest.raises(RuntimeError, match="not running"):
        _ = idp.url
    idp.start()
    port = int(urlsplit(idp.url).port or 0)
    try:
        with caplog.at_level(logging.DEBUG, logger="werkzeug"):
            assert "code" in _redirect_params(_authorize(_http(), idp))
        assert [r for r in caplog.records if r.name.startswith("werkzeug")] == []  # no access log
    finally:
        idp.stop()
    idp.stop()  # idempotent
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
