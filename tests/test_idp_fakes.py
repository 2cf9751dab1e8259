"""The loopback fakes in tests/support/idp.py behave as documented (other tests rely on it)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from tests.support.idp import FakeGitHub, FakeOIDC

CB = "http://127.0.0.1:9/oauth/callback"


@pytest.fixture()
def idp() -> Iterator[FakeOIDC]:
    with FakeOIDC(users=["alice", "bob"]) as fake:
        yield fake


@pytest.fixture()
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub(users=["octocat"]) as fake:
        yield fake


def _authorize(browser: requests.Session, url: str, **params: str) -> dict[str, str]:
    resp = browser.get(url, params=params, allow_redirects=False, timeout=10)
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert location.startswith(CB)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _oidc_code(idp: FakeOIDC, browser: requests.Session, verifier: str, **extra: str) -> dict[str, str]:
    params = dict(response_type="code", client_id=idp.client_id, redirect_uri=CB, state="st", nonce="nn",
                  code_challenge=create_s256_code_challenge(verifier), code_challenge_method="S256",
                  scope="openid email")
    params.update(extra)
    return _authorize(browser, f"{idp.url}/authorize", **params)


def _oidc_token(idp: FakeOIDC, **data: str) -> requests.Response:
    return requests.post(f"{idp.url}/token", data=data, auth=(idp.client_id, idp.client_secret or ""),
                         timeout=10)


def test_oidc_per_browser_login_nonce_state_iss(idp: FakeOIDC) -> None:
    alice, bob = requests.Session(), requests.Session()
    idp.login(bob, "bob")
    verifier = secrets.token_urlsafe(40)
    back = _oidc_code(idp, bob, verifier)
    assert back["state"] == "st" and back["iss"] == idp.issuer
    body = _oidc_token(idp, grant_type="authorization_code", code=back["code"], redirect_uri=CB,
                       code_verifier=verifier).json()
    claims = jwt.decode(body["id_token"], idp.key.public_pem, algorithms=["RS256"], audience=idp.client_id)
    assert claims["sub"] == idp.users["bob"]["sub"] and claims["nonce"] == "nn"
    assert "refresh_token" not in body
    back = _oidc_code(idp, alice, verifier)
    body = _oidc_token(idp, grant_type="authorization_code", code=back["code"], redirect_uri=CB,
                       code_verifier=verifier).json()
    assert jwt.decode(body["id_token"], options={"verify_signature": False})["sub"] == \
        idp.users["alice"]["sub"]
    assert idp.code_exchanges == 2


def test_oidc_code_single_use_and_pkce_checked(idp: FakeOIDC) -> None:
    browser = requests.Session()
    verifier = secrets.token_urlsafe(40)
    back = _oidc_code(idp, browser, verifier)
    bad = _oidc_token(idp, grant_type="authorization_code", code=back["code"], redirect_uri=CB,
                      code_verifier="x" * 43)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    # the code was consumed by the failed attempt
    again = _oidc_token(idp, grant_type="authorization_code", code=back["code"], redirect_uri=CB,
                        code_verifier=verifier)
    assert again.json()["error"] == "invalid_grant"
    resp = browser.get(f"{idp.url}/authorize", allow_redirects=False, timeout=10,
                       params=dict(response_type="code", client_id=idp.client_id, redirect_uri=CB,
                                   state="st"))
    assert parse_qs(urlsplit(resp.headers["Location"]).query)["error"] == ["invalid_request"]


def test_oidc_refresh_only_with_offline_and_consent_and_rotation(idp: FakeOIDC) -> None:
    browser = requests.Session()
    verifier = secrets.token_urlsafe(40)
    only_offline = _oidc_code(idp, browser, verifier, scope="openid offline_access")
    body = _oidc_token(idp, grant_type="authorization_code", code=only_offline["code"], redirect_uri=CB,
                       code_verifier=verifier).json()
    assert "refresh_token" not in body
    both = _oidc_code(idp, browser, verifier, scope="openid offline_access", prompt="consent")
    body = _oidc_token(idp, grant_type="authorization_code", code=both["code"], redirect_uri=CB,
                       code_verifier=verifier).json()
    first = body["refresh_token"]
    rotated = _oidc_token(idp, grant_type="refresh_token", refresh_token=first).json()
    assert rotated["refresh_token"] != first and "id_token" in rotated
    reuse = _oidc_token(idp, grant_type="refresh_token", refresh_token=first)
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert idp.refresh_calls == 2


def test_oidc_key_rotation_changes_jwks(idp: FakeOIDC) -> None:
    old = idp.key.kid
    new = idp.rotate_keys()
    kids = [k["kid"] for k in requests.get(f"{idp.url}/jwks", timeout=10).json()["keys"]]
    assert kids == [new.kid] and old != new.kid
    assert jwt.get_unverified_header(idp.make_id_token("alice"))["kid"] == new.kid


@pytest.mark.parametrize("mode, check", [
    ("http_500_html", lambda r: r.status_code == 500 and "html" in r.headers["Content-Type"]),
    ("http_200_error", lambda r: r.status_code == 200 and r.json()["error"] == "bad_verification_code"),
    ("token_type_mac", lambda r: r.json()["token_type"] == "mac"),
    ("expires_in_string", lambda r: r.json()["expires_in"] == "abc"),
    ("huge", lambda r: len(r.content) > 5_000_000),
])
def test_oidc_token_failure_modes(idp: FakeOIDC, mode: str, check: Any) -> None:
    idp.token_failure, idp.token_failure_times = mode, 1
    browser = requests.Session()
    verifier = secrets.token_urlsafe(40)
    back = _oidc_code(idp, browser, verifier)
    resp = _oidc_token(idp, grant_type="authorization_code", code=back["code"], redirect_uri=CB,
                       code_verifier=verifier)
    assert check(resp)
    back = _oidc_code(idp, browser, verifier)
    ok = _oidc_token(idp, grant_type="authorization_code", code=back["code"], redirect_uri=CB,
                     code_verifier=verifier)
    assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer"


def test_github_form_encoded_unless_json_and_errors_in_200(gh: FakeGitHub) -> None:
    browser = requests.Session()
    verifier = secrets.token_urlsafe(40)
    params = dict(client_id=gh.client_id, redirect_uri=CB, state="s",
                  code_challenge=create_s256_code_challenge(verifier), code_challenge_method="S256")
    back = _authorize(browser, f"{gh.url}/login/oauth/authorize", **params)
    form = dict(client_id=gh.client_id, client_secret=gh.client_secret or "", code=back["code"],
                code_verifier=verifier)
    resp = requests.post(f"{gh.url}/login/oauth/access_token", data=form, timeout=10)
    assert resp.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    token = parse_qs(resp.text)
    assert token["token_type"] == ["bearer"] and "refresh_token" not in token and "expires_in" not in token
    replay = requests.post(f"{gh.url}/login/oauth/access_token", data=form, timeout=10,
                           headers={"Accept": "application/json"})
    assert replay.status_code == 200 and replay.json()["error"] == "bad_verification_code"
    user = requests.get(f"{gh.url}/user", timeout=10,
                        headers={"Authorization": f"token {token['access_token'][0]}"}).json()
    assert user["id"] == 12345 and user["email"] is None
    assert requests.get(f"{gh.url}/user", headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
