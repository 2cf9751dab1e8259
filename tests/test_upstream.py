"""Upstream clients (flask_mcp_auth.upstream) against the rude loopback fakes over real HTTP.

Covers TESTPLAN ID-01…ID-14 (id_token verification, key rotation, JWKS cooldown), UT-02/UT-03 (refresh),
UT-05 (malformed token responses), discovery (ID-14) and the explicit ``verify=``/``timeout=`` rule.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from requests.adapters import HTTPAdapter

from flask_mcp_auth.config import Settings, parse_settings
from flask_mcp_auth.errors import ConfigError
from flask_mcp_auth.storage import UpstreamToken
from flask_mcp_auth.upstream import build_clients
from flask_mcp_auth.upstream.base import LegResult, UpstreamRejected, UpstreamUnavailable
from flask_mcp_auth.upstream.oauth2 import OAuth2Client
from flask_mcp_auth.upstream.oidc import OIDCClient
from tests.support.idp import REMOVE, FakeGitHub, FakeOIDC

AS_ISSUER = "http://127.0.0.1:5999"
CALLBACK = f"{AS_ISSUER}/oauth/callback"


class FakeClock:
    """A monotonic clock the test moves by hand (JWKS cooldown without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _settings(entries: list[dict[str, Any]], **extra: Any) -> Settings:
    config: dict[str, Any] = {
        "MCP_AUTH_ISSUER": AS_ISSUER,
        "MCP_AUTH_RESOURCE": f"{AS_ISSUER}/mcp",
        "MCP_AUTH_UPSTREAMS": entries,
        "SECRET_KEY": "test-secret-key-for-hkdf",
        "MCP_AUTH_UPSTREAM_TIMEOUT": 5,
    }
    config.update(extra)
    settings, _warnings = parse_settings(config)
    return settings


@pytest.fixture()
def idp() -> Iterator[FakeOIDC]:
    with FakeOIDC(users=["alice", "bob"]) as fake:
        yield fake


@pytest.fixture()
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub(users=["octocat"]) as fake:
        yield fake


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


def _oidc(idp: FakeOIDC, http: requests.Session, clock: FakeClock | None = None, *,
          timeout: float = 5, **entry: Any) -> OIDCClient:
    settings = _settings([idp.upstream_entry("corp", **entry)])
    return OIDCClient(settings.upstreams[0], http, verify=settings.tls_verify, timeout=timeout,
                      monotonic=clock or FakeClock())


def _oauth2(gh: FakeGitHub, http: requests.Session, *, timeout: float = 5, **entry: Any) -> OAuth2Client:
    settings = _settings([gh.upstream_entry("github", **entry)])
    return OAuth2Client(settings.upstreams[0], http, verify=settings.tls_verify, timeout=timeout)


class Leg:
    """One browser round trip: authorize at the fake, then the values the callback would see."""

    def __init__(self, client: OAuth2Client, browser: requests.Session, *, oidc: bool = True) -> None:
        self.client = client
        self.verifier = secrets.token_urlsafe(48)
        self.state = secrets.token_urlsafe(16)
        self.nonce = secrets.token_urlsafe(16) if oidc else None
        self.url = client.authorization_url(redirect_uri=CALLBACK, state=self.state, nonce=self.nonce,
                                            code_challenge=create_s256_code_challenge(self.verifier))
        resp = browser.get(self.url, allow_redirects=False, timeout=10)
        assert resp.status_code == 302, resp.status_code
        location = resp.headers["Location"]
        assert location.startswith(CALLBACK + "?")
        self.params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert self.params["state"] == self.state

    @property
    def code(self) -> str:
        return self.params["code"]

    def exchange(self, nonce: str | bool | None = True) -> LegResult:
        return self.client.exchange_code(code=self.code, redirect_uri=CALLBACK, code_verifier=self.verifier,
                                         nonce=self.nonce if nonce is True else nonce or None)


def _assert_clean(exc: Exception, *secrets_: str) -> None:
    """The exception text carries no token, code, verifier or upstream body fragment."""
    text = f"{exc} {exc!r}"
    for value in secrets_:
        assert value not in text
    for fragment in ("<", "Something went wrong", "The code passed", "at-", "gho_", "rt-", "xxxx"):
        assert fragment not in text


# -- OIDC happy paths --------------------------------------------------------------------------

def test_oidc_authorization_url_carries_pkce_nonce_state(idp: FakeOIDC, http: requests.Session) -> None:
    client = _oidc(idp, http, offline=True)
    url = client.authorization_url(redirect_uri=CALLBACK, state="st-1", code_challenge="cc-1", nonce="n-1")
    assert url.startswith(f"{idp.url}/authorize?")
    query = parse_qs(urlsplit(url).query)
    assert query == {
        "response_type": ["code"], "client_id": [idp.client_id], "redirect_uri": [CALLBACK],
        "scope": ["openid profile email offline_access"], "state": ["st-1"], "nonce": ["n-1"],
        "code_challenge": ["cc-1"], "code_challenge_method": ["S256"], "prompt": ["consent"],
    }
    with pytest.raises(ValueError):
        client.authorization_url(redirect_uri=CALLBACK, state="s", code_challenge="c", nonce=None)


def test_oidc_login_without_offline_access_has_no_refresh_token(idp: FakeOIDC, http: requests.Session) -> None:
    client = _oidc(idp, http)
    browser = requests.Session()
    idp.login(browser, "bob")
    leg = Leg(client, browser)
    assert leg.params["iss"] == idp.issuer and client.iss_parameter_supported
    before = time.time()
    result = leg.exchange()
    bob = idp.users["bob"]
    assert result.identity.subject == bob["sub"]
    assert (result.identity.name, result.identity.email) == ("Bob", "bob@example.com")
    token = result.token
    assert token.provider == "corp" and token.subject == bob["sub"]
    assert token.refresh_token is None and token.id_token
    assert token.expires_at is not None and before + 3500 < token.expires_at < before + 3700
    assert token.scope == "openid profile email"
    assert idp.code_exchanges == 1
    # client_secret_basic is the default method
    assert idp.token_requests[0]["_auth"] == "client_secret_basic"
    assert idp.token_requests[0]["code_verifier"] == leg.verifier


def test_oidc_offline_access_with_prompt_consent_gives_refresh_token(
        idp: FakeOIDC, http: requests.Session) -> None:
    result = Leg(_oidc(idp, http, offline=True), requests.Session()).exchange()
    assert result.token.refresh_token and result.token.refresh_token.startswith("rt-")


def test_oidc_offline_access_without_consent_gives_no_refresh_token(
        idp: FakeOIDC, http: requests.Session) -> None:
    client = _oidc(idp, http, scopes=["openid", "offline_access"])
    assert Leg(client, requests.Session()).exchange().token.refresh_token is None


def test_oidc_client_secret_post_and_odd_secret_with_basic(http: requests.Session) -> None:
    with FakeOIDC(client_secret="s:e/c r+t%é") as fake:
        basic = Leg(_oidc(fake, http), requests.Session()).exchange()
        post = Leg(_oidc(fake, http, token_endpoint_auth_method="client_secret_post"),
                   requests.Session()).exchange()
        assert basic.identity.subject == post.identity.subject == fake.users["alice"]["sub"]
        assert [r["_auth"] for r in fake.token_requests] == ["client_secret_basic", "client_secret_post"]


def test_oidc_wrong_client_secret_is_rejected(idp: FakeOIDC, http: requests.Session) -> None:
    leg = Leg(_oidc(idp, http, client_secret="wrong"), requests.Session())
    with pytest.raises(UpstreamRejected) as info:
        leg.exchange()
    assert info.value.reason == "invalid_client"
    _assert_clean(info.value, "wrong", leg.code, leg.verifier)


def test_oidc_userinfo_when_configured(idp: FakeOIDC, http: requests.Session) -> None:
    idp.users["alice"]["name"] = "Alice From Userinfo"
    client = _oidc(idp, http, userinfo_endpoint=f"{idp.url}/userinfo")
    result = Leg(client, requests.Session()).exchange()
    assert result.identity.name == "Alice From Userinfo" and idp.userinfo_calls == 1


def test_oidc_subject_claim_mapping(idp: FakeOIDC, http: requests.Session) -> None:
    idp.users["alice"]["oid"] = 4242
    result = Leg(_oidc(idp, http, subject_claim="oid"), requests.Session()).exchange()
    assert result.identity.subject == "4242" and result.token.subject == "4242"


# -- id_token verification (ID-*) ------------------------------------------------------------

@pytest.mark.parametrize("overrides, reason", [
    pytest.param({"iss": "https://evil.example"}, "id_token_issuer", id="ID-04-iss"),
    pytest.param({"iss": "IDP/"}, "id_token_issuer", id="ID-04-iss-trailing-slash"),
    pytest.param({"aud": "someone-else"}, "id_token_audience", id="ID-05-aud"),
    pytest.param({"aud": REMOVE}, "id_token_missing_claim", id="ID-05-aud-missing"),
    pytest.param({"aud": ["mcp-client", "other"]}, "id_token_azp", id="aud-several-no-azp"),
    pytest.param({"azp": "other"}, "id_token_azp", id="azp-other"),
    pytest.param({"sub": REMOVE}, "id_token_missing_claim", id="ID-07-sub-missing"),
    pytest.param({"iat": REMOVE}, "id_token_missing_claim", id="ID-07-iat-missing"),
    pytest.param({"exp": "PAST6"}, "id_token_expired", id="ID-07-exp-6min-past"),
    pytest.param({"iat": "FUTURE10"}, "id_token_not_yet_valid", id="ID-07-iat-10min-future"),
    pytest.param({"nonce": REMOVE}, "id_token_nonce", id="ID-08-nonce-missing"),
    pytest.param({"nonce": "other-nonce"}, "id_token_nonce", id="ID-08-nonce-wrong"),
    pytest.param({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, "id_token_at_hash", id="ID-09-at_hash"),
])
def test_id_bad_claims_rejected(idp: FakeOIDC, http: requests.Session, overrides: dict[str, Any],
                                reason: str) -> None:
    now = int(time.time())
    special = {"PAST6": now - 360, "FUTURE10": now + 600, "IDP/": idp.issuer + "/"}
    idp.id_token_overrides = {k: special.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}
    leg = Leg(_oidc(idp, http, offline=True), requests.Session())
    with pytest.raises(UpstreamRejected) as info:
        leg.exchange()
    assert info.value.reason == reason
    _assert_clean(info.value, leg.code, leg.verifier, leg.nonce or "")


@pytest.mark.parametrize("signer, reason", [
    pytest.param("foreign_same_kid", "id_token_signature", id="ID-01-bad-signature"),
    pytest.param("foreign", "id_token_unknown_key", id="ID-01-unknown-key"),
    pytest.param("none", "id_token_alg", id="ID-02-alg-none"),
    pytest.param("hs256_secret", "id_token_alg", id="ID-03-hs256-client-secret"),
    pytest.param("hs256_pubkey", "id_token_alg", id="ID-03-hs256-public-key"),
])
def test_id_bad_signatures_rejected(idp: FakeOIDC, http: requests.Session, signer: str, reason: str) -> None:
    idp.id_token_signer = signer
    with pytest.raises(UpstreamRejected) as info:
        Leg(_oidc(idp, http), requests.Session()).exchange()
    assert info.value.reason == reason


def test_id_nonce_required_even_if_caller_passes_none(idp: FakeOIDC, http: requests.Session) -> None:
    leg = Leg(_oidc(idp, http), requests.Session())
    with pytest.raises(UpstreamRejected) as info:
        leg.exchange(nonce=None)
    assert info.value.reason == "id_token_nonce"


def test_id_missing_id_token_rejected(idp: FakeOIDC, http: requests.Session) -> None:
    client = _oidc(idp, http, scopes=["profile"])  # no openid scope: the fake returns no id_token
    with pytest.raises(UpstreamRejected) as info:
        Leg(client, requests.Session()).exchange()
    assert info.value.reason == "missing_id_token"


def test_id10_no_kid_single_and_several_keys(idp: FakeOIDC, http: requests.Session, clock: FakeClock) -> None:
    client = _oidc(idp, http, clock)
    idp.id_token_signer = "no_kid"
    assert Leg(client, requests.Session()).exchange().identity.subject == idp.users["alice"]["sub"]
    idp.rotate_keys(keep_old=True)  # two keys published, the token names neither
    clock.now += 31
    assert Leg(client, requests.Session()).exchange().identity.subject == idp.users["alice"]["sub"]


def test_id11_key_rotation_refetches_once(idp: FakeOIDC, http: requests.Session, clock: FakeClock) -> None:
    client = _oidc(idp, http, clock)
    Leg(client, requests.Session()).exchange()
    assert idp.jwks_calls == 1
    Leg(client, requests.Session()).exchange()
    assert idp.jwks_calls == 1  # cached
    idp.rotate_keys()
    clock.now += 31
    result = Leg(client, requests.Session()).exchange()
    assert result.identity.subject == idp.users["alice"]["sub"]
    assert idp.jwks_calls == 2


def test_id11_rotation_within_cooldown_waits_for_it(
        idp: FakeOIDC, http: requests.Session, clock: FakeClock) -> None:
    client = _oidc(idp, http, clock)
    Leg(client, requests.Session()).exchange()
    idp.rotate_keys()
    clock.now += 5
    with pytest.raises(UpstreamRejected) as info:
        Leg(client, requests.Session()).exchange()
    assert info.value.reason == "id_token_unknown_key" and idp.jwks_calls == 1
    clock.now += 30
    Leg(client, requests.Session()).exchange()
    assert idp.jwks_calls == 2


def test_ld04_unknown_kid_flood_bounded_by_cooldown(
        idp: FakeOIDC, http: requests.Session, clock: FakeClock) -> None:
    client = _oidc(idp, http, clock)
    for _ in range(40):
        token = idp.make_id_token("alice", nonce="n", signer="random_kid")
        with pytest.raises(UpstreamRejected):
            client.verify_id_token(token, nonce="n")
    assert idp.jwks_calls == 1
    clock.now += 31
    for _ in range(40):
        with pytest.raises(UpstreamRejected):
            client.verify_id_token(idp.make_id_token("alice", nonce="n", signer="random_kid"), nonce="n")
    assert idp.jwks_calls == 2
    # a genuine token still verifies from the cache, without another fetch
    assert client.verify_id_token(idp.make_id_token("alice", nonce="n"), nonce="n")["sub"]
    assert idp.jwks_calls == 2


def test_id12_unparseable_key_ignored(idp: FakeOIDC, http: requests.Session) -> None:
    idp.jwks_extra = [{"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}, {"kty": "EC", "kid": "x"},
                      "not-a-dict"]  # type: ignore[list-item]
    assert Leg(_oidc(idp, http), requests.Session()).exchange().identity.subject


def test_jwks_outage_is_unavailable(idp: FakeOIDC, http: requests.Session, clock: FakeClock) -> None:
    client = _oidc(idp, http, clock)
    idp.jwks_failure = "500"
    with pytest.raises(UpstreamUnavailable):
        Leg(client, requests.Session()).exchange()
    with pytest.raises(UpstreamUnavailable):  # within cooldown: no new fetch, still an outage
        Leg(client, requests.Session()).exchange()
    assert idp.jwks_calls == 1
    idp.jwks_failure = None
    clock.now += 31
    assert Leg(client, requests.Session()).exchange().identity.subject


def test_two_oidc_providers_do_not_accept_each_others_tokens(http: requests.Session) -> None:
    with FakeOIDC(users=["alice"]) as one, FakeOIDC(users=["zed"], client_id="mcp-client") as two:
        clients = build_clients(_settings([one.upstream_entry("one"), two.upstream_entry("two")]), http)
        c1, c2 = clients["one"], clients["two"]
        assert isinstance(c1, OIDCClient) and isinstance(c2, OIDCClient)
        assert Leg(c1, requests.Session()).exchange().identity.subject == one.users["alice"]["sub"]
        assert Leg(c2, requests.Session()).exchange().identity.subject == two.users["zed"]["sub"]
        with pytest.raises(UpstreamRejected):
            c1.verify_id_token(two.make_id_token("zed", nonce="n"), nonce="n")


# -- discovery (ID-14) -------------------------------------------------------------------------

def test_id14_discovery_issuer_mismatch_is_config_error(idp: FakeOIDC, http: requests.Session) -> None:
    idp.issuer_override = idp.issuer + "/"
    with pytest.raises(ConfigError) as info:
        build_clients(_settings([idp.upstream_entry("corp")]), http)
    [(rule, key, message)] = info.value.problems
    assert (rule, key) == ("V-05", "MCP_AUTH_UPSTREAMS[corp]") and "issuer" in message


@pytest.mark.parametrize("failure", ["500", "html", "garbage"])
def test_discovery_failure_is_config_error(idp: FakeOIDC, http: requests.Session, failure: str) -> None:
    idp.discovery_failure = failure
    with pytest.raises(ConfigError) as info:
        build_clients(_settings([idp.upstream_entry("corp")]), http)
    assert info.value.problems[0][:2] == ("V-05", "MCP_AUTH_UPSTREAMS[corp]")
    assert "discovery" in info.value.problems[0][2]
    assert "Something went wrong" not in str(info.value)


def test_discovery_unreachable_is_config_error(http: requests.Session) -> None:
    fake = FakeOIDC()
    entry = fake.upstream_entry("corp")
    fake.stop()  # bound, never served, now closed: connection refused
    with pytest.raises(ConfigError) as info:
        build_clients(_settings([entry]), http)
    assert "reachable" in info.value.problems[0][2]


def test_check(idp: FakeOIDC, gh: FakeGitHub, http: requests.Session) -> None:
    clients = build_clients(_settings([idp.upstream_entry("corp"), gh.upstream_entry("github")]), http)
    for client in clients.values():
        client.check()
    idp.issuer_override = "https://elsewhere.example"
    with pytest.raises(UpstreamRejected):
        clients["corp"].check()
    idp.discovery_failure = "500"
    with pytest.raises(UpstreamUnavailable):
        clients["corp"].check()


def test_build_clients_in_config_order(http: requests.Session) -> None:
    with FakeOIDC(users=["a"]) as one, FakeGitHub() as gh, FakeOIDC(users=["b"]) as two:
        settings = _settings([two.upstream_entry("zeta"), gh.upstream_entry("github"),
                              one.upstream_entry("alpha")])
        clients = build_clients(settings, http)
    assert list(clients) == ["zeta", "github", "alpha"]
    assert [type(c).__name__ for c in clients.values()] == ["OIDCClient", "OAuth2Client", "OIDCClient"]


# -- GitHub-like OAuth2 -----------------------------------------------------------------------

@pytest.mark.parametrize("ignore_accept", [False, True], ids=["json", "form-encoded"])
def test_github_login(gh: FakeGitHub, http: requests.Session, ignore_accept: bool) -> None:
    gh.ignore_accept = ignore_accept
    gh.require_pkce = True
    client = _oauth2(gh, http)
    leg = Leg(client, requests.Session(), oidc=False)
    assert parse_qs(urlsplit(leg.url).query)["code_challenge_method"] == ["S256"]
    assert "nonce" not in parse_qs(urlsplit(leg.url).query)
    result = leg.exchange()
    assert result.identity.subject == "12345"
    assert (result.identity.name, result.identity.email) == ("Octocat", None)
    token = result.token
    assert token.access_token.startswith("gho_") and token.token_type == "Bearer"
    assert token.refresh_token is None and token.expires_at is None and token.subject == "12345"
    assert gh.token_requests[0]["_auth"] == "client_secret_post"
    assert gh.code_exchanges == 1 and gh.userinfo_calls == 1


def test_github_bad_code_in_200_is_rejected(gh: FakeGitHub, http: requests.Session) -> None:
    client = _oauth2(gh, http)
    leg = Leg(client, requests.Session(), oidc=False)
    leg.exchange()
    with pytest.raises(UpstreamRejected) as info:  # replay: GitHub says so with HTTP 200
        leg.exchange()
    assert info.value.reason == "bad_verification_code"
    gh.ignore_accept = True
    with pytest.raises(UpstreamRejected):
        leg.exchange()


def test_github_wrong_pkce_verifier_rejected(gh: FakeGitHub, http: requests.Session) -> None:
    leg = Leg(_oauth2(gh, http), requests.Session(), oidc=False)
    leg.verifier = secrets.token_urlsafe(48)
    with pytest.raises(UpstreamRejected):
        leg.exchange()


def test_oauth2_without_identity_source_gets_fresh_synthetic_subjects(
        gh: FakeGitHub, http: requests.Session) -> None:
    client = _oauth2(gh, http, userinfo_endpoint=None, userinfo_fields={})
    first = Leg(client, requests.Session(), oidc=False).exchange()
    second = Leg(client, requests.Session(), oidc=False).exchange()
    assert first.identity.subject.startswith("tk-") and len(first.identity.subject) == 3 + 64
    assert first.identity.subject != second.identity.subject
    assert first.token.access_token not in first.identity.subject
    assert gh.userinfo_calls == 0


def test_oauth2_userinfo_field_mapping_and_errors(gh: FakeGitHub, http: requests.Session) -> None:
    client = _oauth2(gh, http, userinfo_fields={"subject": ["node_id", "login"], "name": "login"})
    result = Leg(client, requests.Session(), oidc=False).exchange()
    assert (result.identity.subject, result.identity.name) == ("octocat", "octocat")
    broken = _oauth2(gh, http, userinfo_endpoint=f"{gh.url}/nowhere")
    with pytest.raises(UpstreamUnavailable):
        Leg(broken, requests.Session(), oidc=False).exchange()
    no_subject = _oauth2(gh, http, userinfo_fields={"subject": ["nope"]})
    with pytest.raises(UpstreamRejected) as info:
        Leg(no_subject, requests.Session(), oidc=False).exchange()
    assert info.value.reason == "userinfo_no_subject"


# -- UT-05: malformed token responses ---------------------------------------------------------

UT05 = [
    pytest.param("http_200_error", UpstreamRejected, id="200-error-json"),
    pytest.param("token_type_mac", UpstreamRejected, id="token_type-mac"),
    pytest.param("expires_in_negative", UpstreamRejected, id="expires_in-minus-5"),
    pytest.param("expires_in_string", UpstreamRejected, id="expires_in-abc"),
    pytest.param("http_200_html", UpstreamUnavailable, id="200-html"),
    pytest.param("http_500_html", UpstreamUnavailable, id="500-html"),
    pytest.param("http_503", UpstreamUnavailable, id="503"),
    pytest.param("garbage", UpstreamUnavailable, id="garbage-json"),
    pytest.param("no_access_token", UpstreamUnavailable, id="no-access-token"),
    pytest.param("huge", UpstreamUnavailable, id="5MB-body"),
]


@pytest.mark.parametrize("mode, error", UT05)
@pytest.mark.parametrize("kind", ["oidc", "github"])
def test_ut05_malformed_token_response(idp: FakeOIDC, gh: FakeGitHub, http: requests.Session,
                                       caplog: pytest.LogCaptureFixture, kind: str, mode: str,
                                       error: type[Exception]) -> None:
    caplog.set_level(logging.DEBUG)
    if kind == "oidc":
        idp.token_failure = mode
        leg = Leg(_oidc(idp, http), requests.Session())
    else:
        gh.token_failure = mode
        leg = Leg(_oauth2(gh, http), requests.Session(), oidc=False)
    with pytest.raises(error) as info:
        leg.exchange()
    _assert_clean(info.value, leg.code, leg.verifier, leg.state)
    for record in caplog.records:
        message = record.getMessage()
        assert leg.code not in message and leg.verifier not in message and "<" not in message


def test_ut05_timeout_is_unavailable(idp: FakeOIDC, http: requests.Session) -> None:
    idp.token_failure = "timeout"
    leg = Leg(_oidc(idp, http, timeout=0.3), requests.Session())
    with pytest.raises(UpstreamUnavailable) as info:
        leg.exchange()
    assert info.value.reason == "token_timeout"


def test_exchange_goes_to_own_token_endpoint_only(idp: FakeOIDC, gh: FakeGitHub, http: requests.Session) -> None:
    """Mix-up defence: a code from one provider is redeemed at that provider only."""
    clients = build_clients(_settings([idp.upstream_entry("corp"), gh.upstream_entry("github")]), http)
    leg = Leg(clients["corp"], requests.Session())
    with pytest.raises(UpstreamRejected):
        clients["github"].exchange_code(code=leg.code, redirect_uri=CALLBACK, code_verifier=leg.verifier,
                                        nonce=leg.nonce)
    assert idp.token_calls == 0 and gh.token_calls == 1


# -- refresh (UT-02, UT-03) --------------------------------------------------------------------

def _offline_login(idp: FakeOIDC, http: requests.Session) -> tuple[OIDCClient, UpstreamToken]:
    client = _oidc(idp, http, offline=True)
    return client, Leg(client, requests.Session()).exchange().token


def test_ut02_refresh_rotates_and_sends_original_scope(idp: FakeOIDC, http: requests.Session) -> None:
    client, token = _offline_login(idp, http)
    fresh = client.refresh(token)
    assert fresh.access_token != token.access_token
    assert fresh.refresh_token and fresh.refresh_token != token.refresh_token
    assert fresh.subject == token.subject and fresh.id_token and fresh.id_token != token.id_token
    assert fresh.scope == "openid profile email offline_access"
    sent = idp.token_requests[-1]
    assert sent["grant_type"] == "refresh_token" and sent["scope"] == "openid profile email offline_access"
    assert idp.refresh_calls == 1
    # the rotated-away refresh token is dead at the IdP: invalid_grant ⇒ UpstreamRejected (UT-03)
    with pytest.raises(UpstreamRejected) as info:
        client.refresh(token)
    assert info.value.reason == "invalid_grant"
    _assert_clean(info.value, token.refresh_token or "", token.access_token)
    assert client.refresh(fresh).subject == token.subject


def test_ut02_missing_refresh_token_keeps_the_old_one(idp: FakeOIDC, http: requests.Session) -> None:
    client, token = _offline_login(idp, http)
    idp.rotate_refresh = False
    idp.id_token_on_refresh = False
    fresh = client.refresh(token)
    assert fresh.refresh_token == token.refresh_token and fresh.id_token == token.id_token
    assert client.refresh(fresh).access_token != fresh.access_token


def test_refresh_subject_change_rejected(idp: FakeOIDC, http: requests.Session) -> None:
    client, token = _offline_login(idp, http)
    idp.users["alice"]["sub"] = "somebody-else"
    with pytest.raises(UpstreamRejected) as info:
        client.refresh(token)
    assert info.value.reason == "subject_changed"


def test_refresh_id_token_must_verify(idp: FakeOIDC, http: requests.Session) -> None:
    client, token = _offline_login(idp, http)
    idp.id_token_signer = "foreign_same_kid"
    with pytest.raises(UpstreamRejected) as info:
        client.refresh(token)
    assert info.value.reason == "id_token_signature"


@pytest.mark.parametrize("mode", ["http_500_html", "garbage", "timeout"])
def test_refresh_transient_failures_are_unavailable(http: requests.Session, mode: str) -> None:
    with FakeOIDC(slow_seconds=2) as fake:
        client = _oidc(fake, http, offline=True, timeout=0.3)
        token = Leg(client, requests.Session()).exchange().token
        fake.token_failure = mode
        with pytest.raises(UpstreamUnavailable) as info:
            client.refresh(token)
        _assert_clean(info.value, token.refresh_token or "", token.access_token)


def test_refresh_without_refresh_token_rejected(idp: FakeOIDC, http: requests.Session) -> None:
    client = _oidc(idp, http)
    token = Leg(client, requests.Session()).exchange().token
    with pytest.raises(UpstreamRejected) as info:
        client.refresh(token)
    assert info.value.reason == "no_refresh_token" and idp.refresh_calls == 0


# -- verify= and timeout= reach requests ------------------------------------------------------

class SpyAdapter(HTTPAdapter):
    """Records the ``verify``/``timeout`` requests really sends with (after env merging)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, Any]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.seen.append((kwargs.get("verify"), kwargs.get("timeout")))
        return super().send(request, **kwargs)


@pytest.mark.parametrize("verify", [False, "CA"], ids=["verify-false", "ca-bundle"])
def test_configured_verify_and_timeout_reach_requests(
        idp: FakeOIDC, gh: FakeGitHub, http: requests.Session, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Any, verify: Any) -> None:
    ca = tmp_path / "corp-ca.pem"
    ca.write_text("not used for http, but passed through\n")
    verify = str(ca) if verify == "CA" else verify
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "env-ca.pem"))
    spy = SpyAdapter()
    http.mount("http://", spy)
    settings = _settings([idp.upstream_entry("corp", offline=True), gh.upstream_entry("github")],
                         MCP_AUTH_TLS_VERIFY=verify, MCP_AUTH_UPSTREAM_TIMEOUT=7)
    clients = build_clients(settings, http)
    token = Leg(clients["corp"], requests.Session()).exchange().token
    clients["corp"].refresh(token)
    Leg(clients["github"], requests.Session(), oidc=False).exchange()
    clients["corp"].check()
    assert len(spy.seen) >= 7  # discovery, token, jwks, refresh, gh token, gh user, check
    assert all(seen == (verify, 7.0) for seen in spy.seen), spy.seen


def test_streamed_body_without_length_is_capped(gh: FakeGitHub, http: requests.Session) -> None:
    """A chunked userinfo body (no Content-Length) is cut off at the cap, not read to the end."""
    from flask import Flask, Response

    from tests.support.servers import serve

    api = Flask("endless-userinfo")

    @api.get("/user")
    def user() -> Response:
        def chunks() -> Iterator[bytes]:
            yield b'{"id": 1, "pad": "'
            for _ in range(64):  # 4 MiB if fully read
                yield b"x" * 65536
            yield b'"}'
        return Response(chunks(), mimetype="application/json")

    with serve(api) as srv:
        client = _oauth2(gh, http, userinfo_endpoint=f"{srv.url}/user")
        with pytest.raises(UpstreamUnavailable) as info:
            Leg(client, requests.Session(), oidc=False).exchange()
    assert info.value.reason == "userinfo_response_too_large"
