"""RS-13 variants: bearer strings whose JSON segments break the parser (SPEC §5, TESTPLAN RS-13).

``json.loads`` raises ``RecursionError`` on ~1000 nested arrays, so a 1.3 KB bearer used to be a 500
on every protected route. Every such token must be a plain 401 ``invalid_token``, in Mode B (our
own JWTs) and Mode A (an external issuer's), whether the nesting is in the header (parsed before
the signature check) or in a correctly signed payload.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from flask import Flask

from flask_mcp_auth.errors import InvalidToken
from flask_mcp_auth.tokens import MAX_HEADER_LENGTH, decode_jwt
from tests.test_identity import claims_for
from tests.test_identity import make_app as make_app_b
from tests.test_identity_mode_a import Issuer
from tests.test_identity_mode_a import make_app as make_app_a


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _nested(depth: int) -> bytes:
    return b"[" * depth


#: (name, header JSON bytes) — each parsed before any key lookup or signature check
HEADERS = [
    ("bare_1000", _nested(1000)),
    ("bare_5000", _nested(5000)),
    ("closed_1500", b"[" * 1500 + b"]" * 1500),
    ("inside_object", b'{"alg":"RS256","kid":"k","x":' + _nested(2000) + b"}"),
    ("huge_int", b'{"alg":"RS256","kid":' + b"9" * 5000 + b"}"),
    ("not_utf8", b"\xff\xfe{"),
]
#: (name, payload JSON bytes) — reached only with a valid signature
PAYLOADS = [
    ("bare_1000", _nested(1000)),
    ("inside_claims", b'{"sub":"alice","x":' + _nested(3000) + b"}"),
]


@pytest.fixture()
def app_b() -> Flask:
    return make_app_b()


@pytest.fixture()
def issuer() -> Iterator[Issuer]:
    with Issuer() as server:
        yield server


def _assert_401(resp: Any) -> None:
    assert resp.status_code == 401, resp.get_data(as_text=True)[:200]
    assert resp.get_json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def _get(app: Flask, token: str) -> Any:
    return app.test_client().get("/mcp", headers={"Authorization": f"Bearer {token}"})


def _sign_b(app: Flask, payload: bytes) -> str:
    key = app.extensions["mcp_auth"].keys.current
    return jwt.api_jws.encode(payload, key.private_key, algorithm="RS256",
                              headers={"kid": key.kid, "typ": "at+jwt"})


def _sign_a(issuer: Issuer, payload: bytes) -> str:
    kid, key = issuer.keys[0]
    return jwt.api_jws.encode(payload, key, algorithm="RS256", headers={"kid": kid})


@pytest.mark.parametrize(("name", "header"), HEADERS, ids=[h[0] for h in HEADERS])
def test_rs13_nested_header_mode_b(app_b: Flask, name: str, header: bytes) -> None:
    _assert_401(_get(app_b, f"{_b64(header)}.e30.c2ln"))


@pytest.mark.parametrize(("name", "payload"), PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_rs13_nested_signed_payload_mode_b(app_b: Flask, name: str, payload: bytes) -> None:
    _assert_401(_get(app_b, _sign_b(app_b, payload)))


@pytest.mark.parametrize(("name", "header"), HEADERS, ids=[h[0] for h in HEADERS])
def test_rs13_nested_header_mode_a(issuer: Issuer, name: str, header: bytes) -> None:
    app = make_app_a(issuer.url)
    _assert_401(_get(app, f"{_b64(header)}.e30.c2ln"))
    assert issuer.jwks_calls == 0  # refused before any key lookup


@pytest.mark.parametrize(("name", "payload"), PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_rs13_nested_signed_payload_mode_a(issuer: Issuer, name: str, payload: bytes) -> None:
    app = make_app_a(issuer.url)
    assert _get(app, issuer.token()).status_code == 200  # the issuer and its keys work
    _assert_401(_get(app, _sign_a(issuer, payload)))


def test_rs13_oversized_header_refused_unparsed(app_b: Flask) -> None:
    header = b'{"alg":"RS256","pad":"' + b"a" * MAX_HEADER_LENGTH + b'"}'
    assert len(_b64(header)) > MAX_HEADER_LENGTH
    _assert_401(_get(app_b, f"{_b64(header)}.e30.c2ln"))


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [b"Infinity", b"-Infinity", b"NaN", b"1e999"])
def test_non_finite_time_claims_rejected(app_b: Flask, claim: str, value: bytes) -> None:
    """Python's json accepts Infinity/NaN; an ``exp`` of Infinity must not make a token immortal."""
    claims = claims_for(app_b)
    claims.pop(claim, None)
    body = json.dumps(claims).encode()[:-1] + b', "' + claim.encode() + b'": ' + value + b"}"
    _assert_401(_get(app_b, _sign_b(app_b, body)))


@pytest.mark.parametrize(("name", "header"), HEADERS, ids=[h[0] for h in HEADERS])
def test_decode_jwt_raises_invalid_token(name: str, header: bytes) -> None:
    def resolve(_header: Any) -> Any:
        raise AssertionError("must not be reached")

    decode: Callable[..., Any] = decode_jwt
    with pytest.raises(InvalidToken, match="malformed token"):
        decode(f"{_b64(header)}.e30.c2ln", resolve, issuer="https://i", audience="a", typ=None)


def test_deeply_nested_json_from_upstreams_is_not_a_crash() -> None:
    """A configured upstream/STS answering 1 000 nested arrays is treated as an unusable body."""
    from flask_mcp_auth._http import Reply
    from flask_mcp_auth.outgoing.exchange import jwt_expiry

    nested = b"[" * 5000 + b"]" * 5000
    assert Reply(status=200, content_type="application/json", body=nested).json_object() is None
    segment = base64.urlsafe_b64encode(nested).rstrip(b"=").decode()
    assert jwt_expiry(f"e30.{segment}.sig") is None
