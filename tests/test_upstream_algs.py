"""Upstream id_token verification across JWS algorithms: RS256, PS256, ES256, ES384, EdDSA.

The real :class:`~flask_mcp_auth.upstream.oidc.OIDCClient` (discovery, JWKS fetch, code exchange and
refresh over loopback HTTP) against :class:`tests.support.idp.FakeOIDC` signing with each algorithm.
Covers TESTPLAN ID-01 (invalid signature, RS256 *and* ES256 and the others), ID-03 (key type ≠ alg,
HS256 keyed with the public key), ID-10 (no ``kid``) and ID-12 (unparseable JWKS members).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from flask_mcp_auth.config import Settings, parse_settings
from flask_mcp_auth.upstream import build_clients
from flask_mcp_auth.upstream.base import LegResult, UpstreamRejected
from flask_mcp_auth.upstream.oidc import OIDCClient
from tests.support.idp import FakeOIDC, JwsKey

AS_ISSUER = "http://127.0.0.1:5999"
CALLBACK = f"{AS_ISSUER}/oauth/callback"

ALGS = ("RS256", "PS256", "ES256", "ES384", "EdDSA")
NOT_RSA = ("ES256", "ES384", "EdDSA")
CURVES = {"ES256": "P-256", "ES384": "P-384", "EdDSA": "Ed25519"}
KTY = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "ES384": "EC", "EdDSA": "OKP"}


class FakeClock:
    """A monotonic clock that never moves: the JWKS cooldown stays closed unless a test says so."""

    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _settings(entry: dict[str, Any]) -> Settings:
    settings, _warnings = parse_settings({
        "MCP_AUTH_ISSUER": AS_ISSUER,
        "MCP_AUTH_RESOURCE": f"{AS_ISSUER}/mcp",
        "MCP_AUTH_UPSTREAMS": [entry],
        "SECRET_KEY": "test-secret-key-for-hkdf",
        "MCP_AUTH_UPSTREAM_TIMEOUT": 5,
    })
    return settings


@pytest.fixture(params=ALGS)
def idp(request: pytest.FixtureRequest) -> Iterator[FakeOIDC]:
    with FakeOIDC(users=["alice"], signing_alg=request.param) as fake:
        yield fake


@pytest.fixture(params=NOT_RSA)
def ec_idp(request: pytest.FixtureRequest) -> Iterator[FakeOIDC]:
    """EC and OKP providers only."""
    with FakeOIDC(users=["alice"], signing_alg=request.param) as fake:
        yield fake


def _client(idp: FakeOIDC, http: requests.Session, **entry: Any) -> OIDCClient:
    settings = _settings(idp.upstream_entry("corp", **entry))
    return OIDCClient(settings.upstreams[0], http, verify=settings.tls_verify,
                      timeout=settings.upstream_timeout, monotonic=FakeClock())


def _login(client: OIDCClient) -> LegResult:
    """One leg: the browser authorizes at the fake, the client exchanges the code (nonce, PKCE)."""
    verifier, state, nonce = (secrets.token_urlsafe(32) for _ in range(3))
    url = client.authorization_url(redirect_uri=CALLBACK, state=state, nonce=nonce,
                                   code_challenge=create_s256_code_challenge(verifier))
    with requests.Session() as browser:
        resp = browser.get(url, allow_redirects=False, timeout=10)
    assert resp.status_code == 302
    params = {k: v[0] for k, v in parse_qs(urlsplit(resp.headers["Location"]).query).items()}
    assert params["state"] == state
    return client.exchange_code(code=params["code"], redirect_uri=CALLBACK, code_verifier=verifier,
                                nonce=nonce)


def _rejected(client: OIDCClient) -> str:
    with pytest.raises(UpstreamRejected) as info:
        _login(client)
    return info.value.reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- the fake describes its key correctly ------------------------------------------------------

def test_discovery_and_jwks_describe_the_signing_key(idp: FakeOIDC, http: requests.Session) -> None:
    alg = idp.signing_alg
    meta = http.get(f"{idp.url}/.well-known/openid-configuration", timeout=5).json()
    assert meta["id_token_signing_alg_values_supported"] == [alg]
    (jwk,) = http.get(f"{idp.url}/jwks", timeout=5).json()["keys"]
    assert (jwk["kty"], jwk["alg"], jwk["kid"], jwk["use"]) == (KTY[alg], alg, idp.key.kid, "sig")
    assert jwk.get("crv") == CURVES.get(alg)
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)  # public members only
    assert _client(idp, http).algorithms == (alg,)


# -- valid tokens ------------------------------------------------------------------------------

def test_valid_id_token_accepted_at_login_and_refresh(idp: FakeOIDC, http: requests.Session) -> None:
    settings = _settings(idp.upstream_entry("corp", offline=True))
    client = build_clients(settings, http)["corp"]
    assert isinstance(client, OIDCClient)
    result = _login(client)
    assert result.identity.subject == idp.users["alice"]["sub"]
    assert result.identity.claims["at_hash"]  # checked with the alg's hash (SHA-512 for EdDSA)
    assert result.token.id_token and jwt.get_unverified_header(result.token.id_token)["alg"] == idp.signing_alg
    fresh = client.refresh(result.token)  # the refresh answer's id_token verifies too (no nonce)
    assert fresh.subject == result.token.subject and fresh.id_token != result.token.id_token


# -- ID-01: invalid signatures -----------------------------------------------------------------

@pytest.mark.parametrize("signer", ["tampered", "foreign_same_kid"])
def test_id01_invalid_signature_rejected(idp: FakeOIDC, http: requests.Session, signer: str) -> None:
    idp.id_token_signer = signer
    assert _rejected(_client(idp, http)) == "id_token_signature"


def test_id01_tampered_payload_rejected(idp: FakeOIDC, http: requests.Session) -> None:
    client = _client(idp, http)
    head, payload, sig = idp.make_id_token("alice", nonce="n").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "sub-mallory"
    forged = f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"
    with pytest.raises(UpstreamRejected) as info:
        client.verify_id_token(forged, nonce="n")
    assert info.value.reason == "id_token_signature"
    assert client.verify_id_token(f"{head}.{payload}.{sig}", nonce="n")["sub"] == idp.users["alice"]["sub"]


# -- ID-03: key type ≠ alg, HMAC with the public key -------------------------------------------

def test_id03_signature_by_another_key_type_rejected(idp: FakeOIDC, http: requests.Session) -> None:
    # header: the provider's alg and kid; signature: a fresh RSA key (EC/OKP provider) or P-256 (RSA)
    idp.id_token_signer = "wrong_key_type"
    assert _rejected(_client(idp, http)) == "id_token_signature"


@pytest.mark.parametrize("published, label", [
    ("RS256", "ES256"), ("ES256", "RS256"), ("ES256", "EdDSA"), ("EdDSA", "ES256"), ("RS256", "PS256"),
])
@pytest.mark.parametrize("advertise_both, jwk_alg", [(False, True), (True, True), (True, False)],
                         ids=["one-alg", "both-algs", "both-algs-jwk-without-alg"])
def test_id03_genuine_key_under_another_alg_rejected(
        http: requests.Session, published: str, label: str, advertise_both: bool, jwk_alg: bool) -> None:
    """The provider's own key signs, but the header names another alg: never verify across kty/alg."""
    with FakeOIDC(users=["alice"], signing_alg=published) as idp:
        if advertise_both:
            idp.advertised_algs = [published, label]
        idp.jwks_with_alg = jwk_alg
        client = _client(idp, http)
        claims = idp.id_token_claims("alice", nonce="n")
        if label == "PS256":  # same key type: a real PSS signature by the published RS256 key
            token = jwt.encode(claims, idp.key.private, algorithm="PS256", headers={"kid": idp.key.kid})
        else:  # the key's own signature, labelled with the other alg
            token = idp.key.sign(claims, header_alg=label)
        assert jwt.get_unverified_header(token) == {"alg": label, "typ": "JWT", "kid": idp.key.kid}
        if advertise_both and not jwk_alg and KTY[published] == KTY[label]:
            # a real PSS signature by the provider's RSA key, PS256 advertised, the JWK not pinned to
            # RS256: a valid token (RFC 7518 §3.5 uses the same RSA keys)
            assert client.verify_id_token(token, nonce="n")["sub"] == idp.users["alice"]["sub"]
            return
        with pytest.raises(UpstreamRejected) as info:
            client.verify_id_token(token, nonce="n")
    # unadvertised alg; else no key of that type under this kid, or the JWK is pinned to RS256
    # (RFC 7517 §4.4) and is no PS256 key
    assert info.value.reason == ("id_token_unknown_key" if advertise_both else "id_token_alg")


@pytest.mark.parametrize("signer", ["hs256_pubkey", "hs256_pubkey_raw"])
def test_id03_hs256_keyed_with_public_key_rejected(ec_idp: FakeOIDC, http: requests.Session,
                                                   signer: str) -> None:
    # even a provider that advertises HS256 and publishes the public key bytes as an oct key
    ec_idp.advertised_algs = [ec_idp.signing_alg, "HS256"]
    ec_idp.jwks_extra = [{"kty": "oct", "kid": ec_idp.key.kid, "k": _b64(ec_idp.key.public_raw)}]
    ec_idp.id_token_signer = signer
    client = _client(ec_idp, http)
    assert client.algorithms == (ec_idp.signing_alg,)
    assert _rejected(client) == "id_token_alg"


# -- ID-12: unparseable keys next to the valid EC/OKP key --------------------------------------

def _broken_keys() -> list[Any]:
    off_curve = _b64(b"\x00" * 31 + b"\x01")
    return [
        {"kty": "EC", "crv": "P-256", "x": off_curve, "y": off_curve},  # not a point on the curve
        {"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"},
        {"kty": "EC", "crv": "P-384", "x": _b64(b"\x01" * 5), "y": _b64(b"\x01" * 5)},  # short coords
        {"kty": "EC"},
        {"kty": "OKP", "crv": "Ed25519", "x": "!!not-base64!!"},
        {"kty": "OKP", "crv": "Ed25519", "x": _b64(b"\x01" * 5)},
        {"kty": "OKP", "x": _b64(b"\x01" * 32)},  # no crv
        {"kty": "OKP", "crv": "X25519", "x": _b64(b"\x09" + b"\x00" * 31)},  # an ECDH key, not a signer
        {"kty": "RSA", "n": "!!", "e": "AQAB"},
        "not-a-dict",
    ]


@pytest.mark.parametrize("signer", ["current", "no_kid"])
def test_id12_unparseable_keys_ignored_next_to_ec_key(ec_idp: FakeOIDC, http: requests.Session,
                                                      signer: str) -> None:
    # the broken members come first, each with a kid of its own and again without one
    broken = _broken_keys()
    with_kids = [{**k, "kid": f"bad-{i}"} for i, k in enumerate(broken) if isinstance(k, dict)]
    ec_idp.published = []
    ec_idp.jwks_extra = [*broken, *with_kids, ec_idp.key.jwk(with_alg=False)]
    ec_idp.id_token_signer = signer
    assert _login(_client(ec_idp, http)).identity.subject == ec_idp.users["alice"]["sub"]


# -- ID-10: no kid -----------------------------------------------------------------------------

def test_id10_no_kid_single_key(idp: FakeOIDC, http: requests.Session) -> None:
    idp.id_token_signer = "no_kid"
    assert _login(_client(idp, http)).identity.subject == idp.users["alice"]["sub"]


@pytest.mark.parametrize("jwk_alg", [True, False], ids=["jwk-alg", "jwk-without-alg"])
def test_id10_no_kid_several_key_types_found_by_verifying(idp: FakeOIDC, http: requests.Session,
                                                          jwk_alg: bool) -> None:
    alg = idp.signing_alg
    # a decoy of the same alg listed first, then one key of every other type, then the real key
    others = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}
    others.pop(KTY[alg])
    idp.published = [JwsKey(alg), *(JwsKey(a) for a in others.values()), idp.key]
    idp.advertised_algs = [alg]
    idp.jwks_with_alg = jwk_alg
    idp.id_token_signer = "no_kid"
    client = _client(idp, http)
    assert _login(client).identity.subject == idp.users["alice"]["sub"]
    # an unpublished key of the same alg, no kid: no published key verifies it, none is picked anyway
    stray = JwsKey(alg).sign(idp.id_token_claims("alice", nonce="n"), kid=False)
    with pytest.raises(UpstreamRejected) as info:
        client.verify_id_token(stray, nonce="n")
    assert info.value.reason == "id_token_signature"
    assert idp.jwks_calls == 1  # the refetch for the kid-less miss waits for the cooldown


def test_id10_no_kid_ec_keys_of_other_curves_listed_first(http: requests.Session) -> None:
    with FakeOIDC(users=["alice"], signing_alg="ES256") as idp:
        idp.published = [JwsKey("ES384"), JwsKey("ES512"), idp.key]
        idp.jwks_with_alg = False  # "alg" is optional in a JWK (RFC 7517 §4.4)
        idp.id_token_signer = "no_kid"
        assert _login(_client(idp, http)).identity.subject == idp.users["alice"]["sub"]
