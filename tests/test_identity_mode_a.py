"""Incoming identity in Mode A (SPEC §5 step 2): an external issuer's JWTs verified against its JWKS,
served by a loopback issuer; discovery, lazy fetching, kid rotation and unknown-kid floods (LD-04)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, Response, g, jsonify

from flask_mcp_auth import MCPAuth
from flask_mcp_auth.identity import ExternalVerifier
from tests.support.redis_server import free_port
from tests.support.servers import ServerThread

RESOURCE = "https://api.example.com/mcp"
PRM_URL = "https://api.example.com/.well-known/oauth-protected-resource/mcp"


class Issuer:
    """A loopback OAuth issuer: discovery documents and a JWKS, with counters and failure knobs."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, Any]] = [(f"k-{secrets.token_hex(4)}", self._rsa())]
        self.extra_jwks: list[dict[str, Any]] = []
        self.jwks_calls = 0
        self.discovery_calls: list[str] = []
        self.jwks_failure: str | None = None
        self.oidc_discovery = True
        self.issuer_override: str | None = None
        self._lock = threading.Lock()
        app = Flask("issuer")
        app.add_url_rule("/.well-known/openid-configuration", "oidc", self._discovery)
        app.add_url_rule("/.well-known/oauth-authorization-server", "oauth", self._discovery)
        app.add_url_rule("/jwks", "jwks", self._jwks)
        self._server = ServerThread(app)
        self.url = self._server.url

    @staticmethod
    def _rsa() -> Any:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def __enter__(self) -> Issuer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def rotate(self, keep_old: bool = True) -> None:
        new = (f"k-{secrets.token_hex(4)}", self._rsa())
        self.keys = [new, *self.keys] if keep_old else [new]

    def token(self, *, kid: str | bool | None = True, key: Any = None, alg: str = "RS256",
              headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.url, "sub": "user-1", "aud": RESOURCE, "exp": now + 600, "iat": now,
                "scope": "tools read", "client_id": "client-a", **claims}
        body = {k: v for k, v in body.items() if v is not None}
        use_kid, use_key = self.keys[0]
        hdr: dict[str, Any] = dict(headers or {})
        if kid is True:
            hdr["kid"] = use_kid
        elif isinstance(kid, str):
            hdr["kid"] = kid
        return jwt.encode(body, key if key is not None else use_key, algorithm=alg, headers=hdr)

    def _discovery(self) -> Response:
        from flask import request

        with self._lock:
            self.discovery_calls.append(request.path)
        if request.path.endswith("openid-configuration") and not self.oidc_discovery:
            return Response("not found", status=404)
        return jsonify(issuer=self.issuer_override or self.url, jwks_uri=f"{self.url}/jwks",
                       authorization_endpoint=f"{self.url}/authorize", token_endpoint=f"{self.url}/token")

    def _jwks(self) -> Response:
        with self._lock:
            self.jwks_calls += 1
        if self.jwks_failure == "500":
            return Response("<html>down</html>", status=500, mimetype="text/html")
        if self.jwks_failure == "garbage":
            return Response("{not json", mimetype="application/json")
        keys = []
        for kid, key in self.keys:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig", alg="RS256")
            keys.append(jwk)
        return jsonify(keys=[*self.extra_jwks, *keys])


@pytest.fixture()
def issuer() -> Iterator[Issuer]:
    with Issuer() as server:
        yield server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_app(issuer_url: str, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update({"MCP_AUTH_ISSUER": issuer_url, "MCP_AUTH_RESOURCE": RESOURCE,
                       "MCP_AUTH_UPSTREAM_TIMEOUT": 2, **config})
    auth = MCPAuth(app)

    @app.route("/mcp", methods=["GET", "POST"])
    @auth.required()
    def mcp() -> Any:
        ident = g.identity
        return jsonify(subject=ident.subject, scopes=sorted(ident.scopes), client_id=ident.client_id,
                       upstream=dict(ident.upstream_tokens), session=ident.session_id)

    @app.get("/needs-github")
    @auth.required(providers=["github"])
    def needs_github() -> Any:
        return "unreachable"

    return app


def verifier(app: Flask) -> ExternalVerifier:
    v = app.extensions["mcp_auth"].tokens
    assert isinstance(v, ExternalVerifier)
    return v


def get(app: Flask, token: str, path: str = "/mcp") -> Any:
    return app.test_client().get(path, headers={"Authorization": f"Bearer {token}"})


def assert_invalid(resp: Any) -> None:
    assert resp.status_code == 401, resp.get_data(as_text=True)
    assert resp.get_json()["error"] == "invalid_token"
    header = resp.headers["WWW-Authenticate"]
    assert f'resource_metadata="{PRM_URL}"' in header
    assert 'error="invalid_token"' in header


def test_valid_token_via_discovery_fetched_lazily(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    assert issuer.jwks_calls == 0 and issuer.discovery_calls == []  # nothing fetched at init
    resp = get(app, issuer.token())
    assert resp.status_code == 200
    assert resp.get_json() == {"subject": "user-1", "scopes": ["read", "tools"], "client_id": "client-a",
                               "upstream": {}, "session": None}
    assert issuer.discovery_calls == ["/.well-known/openid-configuration"]
    for _ in range(3):
        assert get(app, issuer.token(sub="user-2")).status_code == 200
    assert issuer.jwks_calls == 1


def test_configured_jwks_uri_skips_discovery(issuer: Issuer) -> None:
    app = make_app(issuer.url, MCP_AUTH_JWKS_URI=f"{issuer.url}/jwks")
    assert get(app, issuer.token()).status_code == 200
    assert issuer.discovery_calls == []
    assert issuer.jwks_calls == 1


def test_falls_back_to_oauth_authorization_server_metadata(issuer: Issuer) -> None:
    issuer.oidc_discovery = False
    app = make_app(issuer.url)
    assert get(app, issuer.token()).status_code == 200
    assert issuer.discovery_calls == ["/.well-known/openid-configuration",
                                      "/.well-known/oauth-authorization-server"]


def test_discovery_issuer_mismatch_is_not_trusted(issuer: Issuer) -> None:
    issuer.issuer_override = "https://evil.example"
    app = make_app(issuer.url)
    resp = get(app, issuer.token())
    assert resp.status_code == 503
    assert resp.headers["Retry-After"]
    assert issuer.jwks_calls == 0


def test_app_starts_while_issuer_is_down() -> None:
    app = make_app(f"http://127.0.0.1:{free_port()}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "x"}, key, algorithm="RS256", headers={"kid": "k"})
    resp = get(app, token)
    assert resp.status_code == 503
    assert resp.get_json()["error"] == "temporarily_unavailable"
    assert app.test_client().get("/mcp").status_code == 401


def test_id11_kid_rotation_triggers_one_refetch_after_cooldown(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    clock = FakeClock()
    verifier(app).clock = clock
    assert get(app, issuer.token()).status_code == 200
    assert issuer.jwks_calls == 1
    issuer.rotate()
    clock.now += 31  # past the 30 s cooldown since the first fetch
    for _ in range(5):
        assert get(app, issuer.token()).status_code == 200
    assert issuer.jwks_calls == 2


def test_ld04_unknown_kid_flood_is_bounded_by_cooldown(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    clock = FakeClock()
    v = verifier(app)
    v.clock = clock
    assert get(app, issuer.token()).status_code == 200
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for _ in range(100):
        assert_invalid(get(app, issuer.token(kid=secrets.token_hex(8), key=attacker)))
    assert issuer.jwks_calls == 1  # all inside the cooldown after the first fetch
    clock.now += 31
    for _ in range(100):
        assert_invalid(get(app, issuer.token(kid=secrets.token_hex(8), key=attacker)))
    assert issuer.jwks_calls == 2
    assert v.fetches == 2
    assert get(app, issuer.token()).status_code == 200


def test_concurrent_unknown_kids_fetch_once(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    results: list[int] = []
    tokens = [issuer.token(kid=secrets.token_hex(8)) for _ in range(20)]

    def worker(token: str) -> None:
        results.append(get(app, token).status_code)

    threads = [threading.Thread(target=worker, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [401] * 20
    assert issuer.jwks_calls == 1


def test_stale_keys_keep_working_while_jwks_is_down(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    clock = FakeClock()
    verifier(app).clock = clock
    assert get(app, issuer.token()).status_code == 200
    issuer.jwks_failure = "500"
    clock.now += 31
    assert_invalid(get(app, issuer.token(kid="unknown-kid")))  # refetch failed: still unknown
    assert issuer.jwks_calls == 2
    assert get(app, issuer.token(sub="still-works")).status_code == 200


def test_garbage_jwks_then_recovery(issuer: Issuer) -> None:
    issuer.jwks_failure = "garbage"
    app = make_app(issuer.url)
    clock = FakeClock()
    verifier(app).clock = clock
    assert get(app, issuer.token()).status_code == 503
    assert get(app, issuer.token()).status_code == 503
    assert issuer.jwks_calls == 1  # failure backoff: no hammering
    issuer.jwks_failure = None
    clock.now += 6
    assert get(app, issuer.token()).status_code == 200
    assert issuer.jwks_calls == 2


def test_id12_unparseable_and_unusable_jwks_entries_are_skipped(issuer: Issuer) -> None:
    issuer.extra_jwks = [
        {"kty": "RSA", "kid": "broken", "n": "!!!", "e": "AQAB"},
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        "not-a-dict",
    ]
    app = make_app(issuer.url)
    assert get(app, issuer.token()).status_code == 200
    assert_invalid(get(app, issuer.token(kid="hmac")))


def test_id10_kid_absent_single_key_accepted_several_refused(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    assert get(app, issuer.token(kid=None)).status_code == 200
    issuer.rotate()
    other = make_app(issuer.url)
    assert_invalid(get(other, issuer.token(kid=None)))


def test_forged_tokens_are_rejected(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    kid, key = issuer.keys[0]
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_invalid(get(app, issuer.token(key=other)))  # right kid, wrong key
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = jwt.decode(issuer.token(), options={"verify_signature": False})
    signing_input = b64(json.dumps({"alg": "HS256", "kid": kid}).encode()) + "." + b64(json.dumps(claims).encode())
    forged = signing_input + "." + b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    assert_invalid(get(app, forged))
    none = b64(json.dumps({"alg": "none", "kid": kid}).encode()) + "." + b64(json.dumps(claims).encode()) + "."
    assert_invalid(get(app, none))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    assert_invalid(get(app, issuer.token(key=ec_key, alg="ES256")))
    assert_invalid(get(app, issuer.token(headers={"jku": f"{issuer.url}/jwks", "crit": ["jku"]})))


@pytest.mark.parametrize("claims", [
    {"aud": "https://other.example/mcp"},
    {"iss": "PLACEHOLDER/"},
    {"iss": "PLACEHOLDER.evil.example"},
    {"iss": "https://login.example"},
    {"exp": int(time.time()) - 3600},
    {"nbf": int(time.time()) + 3600},
    {"sub": None},
    {"exp": None},
])
def test_claims_are_checked(issuer: Issuer, claims: dict[str, Any]) -> None:
    app = make_app(issuer.url)
    fixed = {k: (v.replace("PLACEHOLDER", issuer.url) if isinstance(v, str) else v) for k, v in claims.items()}
    assert_invalid(get(app, issuer.token(**fixed)))


def test_typ_values(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    assert get(app, issuer.token(headers={"typ": "JWT"})).status_code == 200
    assert get(app, issuer.token(headers={"typ": "at+jwt"})).status_code == 200
    assert_invalid(get(app, issuer.token(headers={"typ": "dpop+jwt"})))


def test_audience_list_and_scp_claim(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    token = issuer.token(aud=["https://other.example", RESOURCE], scope=None, scp=["a", "b"])
    body = get(app, token).get_json()
    assert body["scopes"] == ["a", "b"]


def test_providers_are_never_available_in_mode_a(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    resp = get(app, issuer.token(), "/needs-github")
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_token"


def test_cached_external_token_expiry_is_rechecked(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    token = issuer.token(exp=int(time.time()) + 100)
    assert get(app, token).status_code == 200
    v = verifier(app)
    v.wall_clock = lambda: time.time() + 100 + 61
    assert_invalid(get(app, token))
    assert issuer.jwks_calls == 1


def test_no_as_routes_in_mode_a(issuer: Issuer) -> None:
    app = make_app(issuer.url)
    rules = {r.rule for r in app.url_map.iter_rules()}
    assert not any(r.startswith("/oauth/") for r in rules)
