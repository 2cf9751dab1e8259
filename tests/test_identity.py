"""Incoming identity in Mode B (SPEC §5): validation of our JWTs (TESTPLAN 1.7, RS-01…RS-14),
``required()``, protected paths, session checks, the verified-token cache and storage faults."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, g, jsonify, request

from flask_mcp_auth import MCPAuth, current_identity, signals
from flask_mcp_auth import tokens as tokens_module
from flask_mcp_auth.keys import generate_rsa_pem
from flask_mcp_auth.storage import UpstreamToken
from flask_mcp_auth.testing import issue_token
from tests.support.redis_server import free_port, start_redis
from tests.support.servers import serve

ISSUER = "https://mcp.example.com"
RESOURCE = "https://mcp.example.com/mcp"
PRM_URL = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
PEM = generate_rsa_pem()
PROVIDERS = ("corp", "github", "docs")


def _upstream(name: str, base: str = "http://127.0.0.1:9") -> dict[str, Any]:
    return {"name": name, "type": "oauth2", "client_id": f"{name}-client", "client_secret": "x",
            "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token"}


def make_app(storage: Any = "memory://", *, upstreams: list[dict[str, Any]] | None = None,
             **config: Any) -> Flask:
    """A Mode B app with three ``oauth2`` upstreams (no network at init) and a few views."""
    app = Flask(__name__)
    app.config.update({
        "SECRET_KEY": "identity-tests",
        "MCP_AUTH_ISSUER": ISSUER,
        "MCP_AUTH_RESOURCE": RESOURCE,
        "MCP_AUTH_UPSTREAMS": upstreams if upstreams is not None else [_upstream(p) for p in PROVIDERS],
        "MCP_AUTH_SIGNING_KEYS": [PEM],
        "MCP_AUTH_STORAGE": storage,
        **config,
    })
    auth = MCPAuth(app)

    def describe() -> Any:
        ident = g.identity
        if request.method == "OPTIONS":
            return jsonify(preflight=True, identity=ident is not None)
        return jsonify(subject=ident.subject, scopes=sorted(ident.scopes), client_id=ident.client_id,
                       session_id=ident.session_id, upstream=dict(ident.upstream_tokens),
                       missing=sorted(ident.missing_providers))

    app.add_url_rule("/mcp", "mcp", auth.required()(describe), methods=["GET", "POST", "OPTIONS"])
    app.add_url_rule("/scoped", "scoped", auth.required(scopes=["tools", "admin"])(describe))
    app.add_url_rule("/needs-corp", "needs_corp", auth.required(providers=["corp"])(describe))
    app.add_url_rule("/protected/thing", "protected", describe)
    app.add_url_rule("/public", "public", lambda: jsonify(
        subject=current_identity.subject if current_identity else None))
    return app


@pytest.fixture()
def app() -> Flask:
    return make_app()


def bearer(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


def challenge(resp: Any) -> str:
    value = resp.headers.get("WWW-Authenticate", "")
    assert value.startswith("Bearer "), value
    assert f'resource_metadata="{PRM_URL}"' in value
    return str(value)


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims_for(app: Flask, **overrides: Any) -> dict[str, Any]:
    """Claims of a freshly issued (valid) token, with overrides — for hand-signed variants."""
    token = issue_token(app, "alice", {"github": "gho_x"})
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(overrides)
    return claims


def sign(claims: dict[str, Any], key: Any = None, *, alg: str = "RS256", headers: dict[str, Any] | None = None,
         app: Flask | None = None) -> str:
    if key is None:
        assert app is not None
        current = app.extensions["mcp_auth"].keys.current
        key = current.private_key
        headers = {"kid": current.kid, "typ": "at+jwt", **(headers or {})}
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def assert_invalid(resp: Any) -> None:
    assert resp.status_code == 401, resp.get_data(as_text=True)
    assert resp.get_json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in challenge(resp)


# --- RS-01 / RS-10 / RS-11 / RS-14: where the token comes from -------------------------------------------
def test_rs01_no_token_is_a_bare_challenge(app: Flask) -> None:
    resp = app.test_client().post("/mcp")
    assert resp.status_code == 401
    header = challenge(resp)
    assert "error=" not in header
    assert "error" not in resp.get_json()
    scoped = app.test_client().get("/scoped")
    assert scoped.status_code == 401
    assert 'scope="tools admin"' in challenge(scoped)
    assert "error=" not in challenge(scoped)


def test_valid_token_gives_identity_with_upstream_tokens(app: Flask) -> None:
    token = issue_token(app, "alice", {"github": "gho_x", "corp": "corp_at"}, scopes=["tools"])
    resp = app.test_client().post("/mcp", headers=bearer(token))
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["subject"] == "alice"
    assert body["client_id"] == "test-client"
    assert body["scopes"] == ["tools"]
    assert body["upstream"] == {"github": "gho_x", "corp": "corp_at"}
    assert body["missing"] == ["docs"]


def test_rs10_query_token_is_ignored_and_two_methods_are_invalid_request(app: Flask) -> None:
    token = issue_token(app, "alice")
    client = app.test_client()
    query = client.post(f"/mcp?access_token={token}")
    assert query.status_code == 401
    assert "error=" not in challenge(query)
    form_only = client.post("/mcp", data={"access_token": token})
    assert form_only.status_code == 401
    assert "error=" not in challenge(form_only)
    both = client.post("/mcp", headers=bearer(token), data={"access_token": token})
    assert both.status_code == 400
    assert both.get_json()["error"] == "invalid_request"
    assert 'error="invalid_request"' in challenge(both)
    assert token not in both.get_data(as_text=True)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_rs11_scheme_is_case_insensitive(app: Flask, scheme: str) -> None:
    token = issue_token(app, "alice")
    assert app.test_client().get("/mcp", headers=bearer(token, scheme)).status_code == 200


def test_other_schemes_are_no_token(app: Flask) -> None:
    resp = app.test_client().get("/mcp", headers={"Authorization": "Basic YTpi"})
    assert resp.status_code == 401
    assert "error=" not in challenge(resp)


def test_rs14_session_id_header_never_authenticates(app: Flask) -> None:
    alice = issue_token(app, "alice", {"github": "gho_alice"})
    bob = issue_token(app, "bob", {"github": "gho_bob"})
    alice_sid = jwt.decode(alice, options={"verify_signature": False})["tsid"]
    client = app.test_client()
    only_session = client.post("/mcp", headers={"Mcp-Session-Id": alice_sid})
    assert only_session.status_code == 401
    mixed = client.post("/mcp", headers={**bearer(bob), "Mcp-Session-Id": alice_sid})
    assert mixed.status_code == 200
    assert mixed.get_json()["subject"] == "bob"
    assert mixed.get_json()["upstream"] == {"github": "gho_bob"}


# --- RS-02 / RS-04 / RS-07 / RS-13 and friends: what the token is ------------------------------------------
def test_rs02_expiry_and_nbf_with_leeway(app: Flask) -> None:
    client = app.test_client()
    assert_invalid(client.get("/mcp", headers=bearer(issue_token(app, "alice", expires_in=-120))))
    # 30 s past exp is inside the 60 s leeway
    assert client.get("/mcp", headers=bearer(issue_token(app, "alice", expires_in=-30))).status_code == 200
    now = int(time.time())
    assert_invalid(client.get("/mcp", headers=bearer(sign(claims_for(app, nbf=now + 120), app=app))))
    assert client.get("/mcp", headers=bearer(sign(claims_for(app, nbf=now + 30), app=app))).status_code == 200
    assert_invalid(client.get("/mcp", headers=bearer(sign(claims_for(app, iat=now + 600), app=app))))


def test_rs02_tampered_payload_is_rejected(app: Flask) -> None:
    token = issue_token(app, "alice")
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    forged = f"{head}.{b64(json.dumps(claims))}.{sig}"
    assert_invalid(app.test_client().get("/mcp", headers=bearer(forged)))


def test_rs04_header_keys_are_never_used(app: Flask) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    hits: list[str] = []

    def jwks_app(environ: Any, start_response: Any) -> list[bytes]:
        hits.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"keys": [attacker_jwk]}).encode()]

    claims = claims_for(app)
    client = app.test_client()
    with serve(jwks_app) as srv:
        variants = [
            {"typ": "at+jwt", "jwk": attacker_jwk},
            {"typ": "at+jwt", "jku": f"{srv.url}/jwks"},
            {"typ": "at+jwt", "x5u": f"{srv.url}/cert"},
            {"typ": "at+jwt", "kid": "../../dev/null"},
            {"typ": "at+jwt", "kid": attacker_jwk.get("kid", "attacker"), "jku": f"{srv.url}/jwks"},
        ]
        for headers in variants:
            assert_invalid(client.get("/mcp", headers=bearer(sign(claims, attacker, headers=headers))))
    assert hits == []


def test_signed_by_another_key_is_rejected(app: Flask) -> None:
    other = serialization.load_pem_private_key(generate_rsa_pem().encode(), password=None)
    claims = claims_for(app)
    our_kid = app.extensions["mcp_auth"].keys.current.kid
    client = app.test_client()
    assert_invalid(client.get("/mcp", headers=bearer(sign(claims, other, headers={"kid": our_kid, "typ": "at+jwt"}))))
    assert_invalid(client.get("/mcp", headers=bearer(sign(claims, other, headers={"kid": "other", "typ": "at+jwt"}))))


def test_alg_none_and_hs256_with_public_key_are_rejected(app: Flask) -> None:
    claims = claims_for(app)
    key = app.extensions["mcp_auth"].keys.current
    client = app.test_client()
    for alg in ("none", "None", "NONE"):
        head = b64(json.dumps({"alg": alg, "typ": "at+jwt", "kid": key.kid}))
        body = b64(json.dumps(claims))
        assert_invalid(client.get("/mcp", headers=bearer(f"{head}.{body}.")))
        assert_invalid(client.get("/mcp", headers=bearer(f"{head}.{body}.c2ln")))
    public_pem = key.public_key.public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
        signing_input = f"{b64(json.dumps({'alg': alg, 'typ': 'at+jwt', 'kid': key.kid}))}.{b64(json.dumps(claims))}"
        mac = hmac.new(public_pem, signing_input.encode(), digest).digest()
        assert_invalid(client.get("/mcp", headers=bearer(f"{signing_input}.{b64(mac)}")))
    # RS256 key but a different RSA algorithm in the header
    assert_invalid(client.get("/mcp", headers=bearer(sign(claims, key.private_key, alg="PS256",
                                                          headers={"kid": key.kid, "typ": "at+jwt"}))))


def test_typ_and_crit_are_enforced(app: Flask) -> None:
    claims = claims_for(app)
    client = app.test_client()
    assert_invalid(client.get("/mcp", headers=bearer(sign(claims, app=app, headers={"typ": "JWT"}))))
    key = app.extensions["mcp_auth"].keys.current
    no_typ = jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})
    assert_invalid(client.get("/mcp", headers=bearer(no_typ)))
    assert_invalid(client.get("/mcp", headers=bearer(sign(claims, app=app, headers={"crit": ["exp"], "exp": 1}))))


def test_rs07_other_audience_is_rejected(app: Flask) -> None:
    client = app.test_client()
    for aud in ("https://other.example/mcp", ["https://other.example/mcp"], "https://mcp.example.com/mcp/",
                "https://mcp.example.com"):
        assert_invalid(client.get("/mcp", headers=bearer(sign(claims_for(app, aud=aud), app=app))))
    listed = sign(claims_for(app, aud=["https://other.example/mcp", RESOURCE]), app=app)
    assert client.get("/mcp", headers=bearer(listed)).status_code == 200


@pytest.mark.parametrize("iss", ["https://mcp.example.com/", "https://mcp.example.com.evil.example",
                                 "https://mcp.example.co", "HTTPS://MCP.EXAMPLE.COM", "https://mcp.example.com/x",
                                 "http://mcp.example.com", " https://mcp.example.com"])
def test_issuer_must_match_exactly(app: Flask, iss: str) -> None:
    claims = claims_for(app, iss=iss)
    assert_invalid(app.test_client().get("/mcp", headers=bearer(sign(claims, app=app))))


def test_upstream_idp_token_presented_as_bearer_is_rejected(app: Flask) -> None:
    idp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    id_token = jwt.encode({"iss": "https://login.corp.example", "sub": "alice", "aud": "corp-client",
                           "exp": now + 600, "iat": now, "nonce": "n"}, idp_key, algorithm="RS256",
                          headers={"kid": "idp-key-1"})
    assert_invalid(app.test_client().get("/mcp", headers=bearer(id_token)))
    assert_invalid(app.test_client().get("/mcp", headers=bearer("gho_16C7e42F292c6912E7710c838347Ae178B4a")))


@pytest.mark.parametrize("token", [
    "a" * 100_000,
    ".".join(["abc"] * 10_000),
    "!!!.@@@.###",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0",
    "eyJhbGci.eyJzdWIi.c2ln",  # truncated base64 JSON
    b64("[1, 2]") + "." + b64("{}") + ".c2ln",  # header not an object
    b64("{\"alg\": \"RS256\"") + "." + b64("{}") + ".c2ln",  # header not JSON
    "é" * 50,
])
def test_rs13_garbage_tokens_are_fast_401(app: Flask, token: str) -> None:
    resp = app.test_client().get("/mcp", headers=bearer(token))
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_token"
    assert token[:20] not in resp.get_data(as_text=True)


def test_missing_required_claims_are_rejected(app: Flask) -> None:
    client = app.test_client()
    for name in ("exp", "iat", "sub", "aud", "iss"):
        claims = claims_for(app)
        del claims[name]
        assert_invalid(client.get("/mcp", headers=bearer(sign(claims, app=app))))
    assert_invalid(client.get("/mcp", headers=bearer(sign(claims_for(app, exp="tomorrow"), app=app))))
    assert_invalid(client.get("/mcp", headers=bearer(sign(claims_for(app, tsid=None), app=app))))


# --- RS-12 and required() ------------------------------------------------------------------------------------
def test_rs12_insufficient_scope_names_only_missing_scopes(app: Flask) -> None:
    token = issue_token(app, "alice", scopes=["tools", "read"])
    resp = app.test_client().get("/scoped", headers=bearer(token))
    assert resp.status_code == 403
    assert resp.get_json()["error"] == "insufficient_scope"
    header = challenge(resp)
    assert 'error="insufficient_scope"' in header
    assert 'scope="admin"' in header
    full = issue_token(app, "alice", scopes=["tools", "admin"])
    assert app.test_client().get("/scoped", headers=bearer(full)).status_code == 200


def test_required_provider_absent_is_401_reauthorize(app: Flask) -> None:
    token = issue_token(app, "alice", {"github": "gho_x"})
    resp = app.test_client().get("/needs-corp", headers=bearer(token))
    assert resp.status_code == 401
    assert resp.get_json()["error"] == "invalid_token"
    assert "re-authorize" in resp.get_json()["error_description"]
    assert 'error="invalid_token"' in challenge(resp)
    with_corp = issue_token(app, "alice", {"corp": "c"})
    assert app.test_client().get("/needs-corp", headers=bearer(with_corp)).status_code == 200


def test_required_keeps_view_metadata_and_answers_options_itself() -> None:
    app = make_app()
    auth = MCPAuth.runtime(app)
    assert auth is not None
    view = app.view_functions["mcp"]
    assert view.__name__ == "describe"
    # /mcp lists OPTIONS, and its view answers OPTIONS with a body: the preflight must not reach it
    preflight = app.test_client().options("/mcp")
    assert preflight.status_code == 200
    assert preflight.get_data() == b""
    assert {"GET", "POST", "OPTIONS"} <= set(preflight.headers["Allow"].split(", "))


def test_async_view_runs_through_ensure_sync() -> None:
    import asgiref  # a test dependency (setup.cfg): a missing one must fail, not silently skip

    assert asgiref.__version__
    app = make_app()
    from flask_mcp_auth.identity import required

    @app.get("/async")
    @required()
    async def async_view() -> Any:
        return jsonify(subject=g.identity.subject)

    token = issue_token(app, "alice")
    assert app.test_client().get("/async").status_code == 401
    assert app.test_client().get("/async", headers=bearer(token)).get_json() == {"subject": "alice"}


# --- protected paths and the hook on other routes -------------------------------------------------------------
def test_protected_paths_are_enforced_by_the_hook() -> None:
    app = make_app(MCP_AUTH_PROTECTED_PATHS=["/protected"])
    client = app.test_client()
    resp = client.get("/protected/thing")
    assert resp.status_code == 401
    assert "error=" not in challenge(resp)
    assert client.get("/protected/nothing-here").status_code == 401  # before routing's 404
    assert client.options("/protected/thing").status_code == 200
    token = issue_token(app, "alice")
    assert client.get("/protected/thing", headers=bearer(token)).get_json()["subject"] == "alice"
    assert client.get("/public").status_code == 200


def test_public_view_sees_none_or_identity_and_bad_tokens_fail(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/public").get_json() == {"subject": None}
    token = issue_token(app, "alice")
    assert client.get("/public", headers=bearer(token)).get_json() == {"subject": "alice"}
    assert_invalid(client.get("/public", headers=bearer("not-a-jwt")))


def test_authentication_failed_signal_carries_reason_not_token(app: Flask) -> None:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, **info: Any) -> None:
        seen.append(info)

    token = issue_token(app, "alice", expires_in=-300)
    with signals.authentication_failed.connected_to(receiver, app):
        app.test_client().get("/mcp", headers=bearer(token))
        app.test_client().get("/mcp")
    assert [s["path"] for s in seen] == ["/mcp", "/mcp"]
    assert seen[0]["reason"] == "token_expired"
    assert seen[1]["reason"] == "no_token"
    assert token not in repr(seen)


# --- sessions (both storage backends) -------------------------------------------------------------------------
def test_revoked_session_is_refused_even_when_cached(storage_url: str) -> None:
    app = make_app(storage_url)
    token = issue_token(app, "alice", {"github": "gho_x"})
    client = app.test_client()
    assert client.get("/mcp", headers=bearer(token)).status_code == 200
    sid = jwt.decode(token, options={"verify_signature": False})["tsid"]
    app.extensions["mcp_auth"].storage.revoke_session(sid, 3600)
    assert_invalid(client.get("/mcp", headers=bearer(token)))


def test_cached_token_that_expires_is_refused(storage_url: str) -> None:
    app = make_app(storage_url)
    token = issue_token(app, "alice", expires_in=120)
    client = app.test_client()
    assert client.get("/mcp", headers=bearer(token)).status_code == 200
    service = app.extensions["mcp_auth"].tokens
    assert len(service.cache) == 1
    service.clock = lambda: time.time() + 120 + 61
    assert_invalid(client.get("/mcp", headers=bearer(token)))
    assert len(service.cache) == 0


def test_session_owner_and_completeness_are_checked(storage_url: str) -> None:
    app = make_app(storage_url)
    runtime = app.extensions["mcp_auth"]
    client = app.test_client()
    token = issue_token(app, "alice", {"github": "gho_x"})
    sid = jwt.decode(token, options={"verify_signature": False})["tsid"]
    runtime.storage.set_session(sid, owner="mallory", ttl=600, complete=True)
    assert_invalid(client.get("/mcp", headers=bearer(token)))
    runtime.storage.set_session(sid, owner="alice", ttl=600, complete=False)
    assert_invalid(client.get("/mcp", headers=bearer(token)))
    runtime.storage.set_session(sid, owner="alice", ttl=600, complete=True)
    assert client.get("/mcp", headers=bearer(token)).status_code == 200
    runtime.storage.delete_session(sid)
    assert_invalid(client.get("/mcp", headers=bearer(token)))


def test_foreign_session_id_in_a_valid_token_is_refused(storage_url: str) -> None:
    app = make_app(storage_url)
    alice = issue_token(app, "alice", {"github": "gho_alice"})
    alice_sid = jwt.decode(alice, options={"verify_signature": False})["tsid"]
    # a token for bob that (somehow) names alice's session: the session owner check refuses it
    forged = sign(claims_for(app, sub="bob", tsid=alice_sid), app=app)
    assert_invalid(app.test_client().get("/mcp", headers=bearer(forged)))


def test_one_storage_round_trip_per_request(storage_url: str) -> None:
    app = make_app(storage_url)
    runtime = app.extensions["mcp_auth"]
    token = issue_token(app, "alice", {p: f"tok-{p}" for p in PROVIDERS})
    calls: list[str] = []
    original = runtime.storage.load_session

    def counting(sid: str) -> Any:
        calls.append(sid)
        return original(sid)

    runtime.storage.load_session = counting
    client = app.test_client()
    for _ in range(3):
        resp = client.get("/mcp", headers=bearer(token))
        assert resp.get_json()["upstream"] == {p: f"tok-{p}" for p in PROVIDERS}
    assert len(calls) == 3


def test_corrupt_upstream_row_is_left_out(storage_url: str) -> None:
    app = make_app(storage_url)
    runtime = app.extensions["mcp_auth"]
    token = issue_token(app, "alice", {"github": "gho_x", "corp": "c"})
    sid = jwt.decode(token, options={"verify_signature": False})["tsid"]
    runtime.storage.put_upstream_token(sid, "corp", "v1.garbage.blob", 600)
    body = app.test_client().get("/mcp", headers=bearer(token)).get_json()
    assert body["upstream"] == {"github": "gho_x"}
    assert "corp" in body["missing"]


# --- verified-token cache ---------------------------------------------------------------------------------------
def test_verified_tokens_skip_signature_checks(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = tokens_module.decode_jwt

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokens_module, "decode_jwt", counting)
    token = issue_token(app, "alice")
    client = app.test_client()
    for _ in range(5):
        assert client.get("/mcp", headers=bearer(token)).status_code == 200
    assert len(calls) == 1
    other = issue_token(app, "bob")
    assert client.get("/mcp", headers=bearer(other)).status_code == 200
    assert len(calls) == 2


def test_cache_is_bounded_and_keyed_by_digest() -> None:
    cache = tokens_module.VerifiedTokenCache(max_entries=3)
    far = time.time() + 3600
    for n in range(5):
        cache.remember(f"token-{n}", {"exp": far, "n": n})
    assert len(cache) == 3
    assert cache.lookup("token-0") is None
    assert cache.lookup("token-4") == {"exp": far, "n": 4}
    assert all(isinstance(k, bytes) and len(k) == 32 for k in cache._data)
    cache.remember("expired", {"exp": time.time() - 1})
    assert cache.lookup("expired") is None
    returned = cache.lookup("token-4")
    assert returned is not None
    returned["n"] = 99
    assert cache.lookup("token-4") == {"exp": far, "n": 4}


# --- storage faults ----------------------------------------------------------------------------------------------
def test_storage_closed_is_503_not_anonymous(app: Flask) -> None:
    token = issue_token(app, "alice")
    app.extensions["mcp_auth"].storage.close()
    for path in ("/mcp", "/public"):
        resp = app.test_client().get(path, headers=bearer(token))
        assert resp.status_code == 503
        assert resp.get_json()["error"] == "temporarily_unavailable"
        assert int(resp.headers["Retry-After"]) > 0


def test_redis_unreachable_is_503() -> None:
    app = make_app(f"redis://127.0.0.1:{free_port()}/0")
    token = app.extensions["mcp_auth"].tokens.mint(
        subject="alice", client_id="c", audience=RESOURCE, scopes=[], session_id="sid", ttl=600)[0]
    resp = app.test_client().get("/mcp", headers=bearer(token))
    assert resp.status_code == 503
    assert resp.headers["Retry-After"]
    assert app.test_client().get("/mcp").status_code == 401  # no token: no storage needed


def test_redis_stopped_then_back(own_redis: Any) -> None:
    app = make_app(own_redis.url)
    token = issue_token(app, "alice", {"github": "gho_x"})
    client = app.test_client()
    assert client.get("/mcp", headers=bearer(token)).status_code == 200
    own_redis.stop()
    down = client.get("/mcp", headers=bearer(token))
    assert down.status_code == 503
    assert down.headers["Retry-After"]
    restarted = start_redis(own_redis.port)
    try:
        # no persistence: the session is gone, so the token is refused cleanly (never a 500)
        assert_invalid(client.get("/mcp", headers=bearer(token)))
        fresh = issue_token(app, "alice", {"github": "gho_y"})
        assert client.get("/mcp", headers=bearer(fresh)).get_json()["upstream"] == {"github": "gho_y"}
    finally:
        restarted.stop()


# --- challenge helper ----------------------------------------------------------------------------------------------
def test_challenge_response_helper(app: Flask) -> None:
    from flask_mcp_auth.errors import InvalidToken, TemporarilyUnavailable
    from flask_mcp_auth.identity import challenge_response

    runtime = app.extensions["mcp_auth"]
    with app.test_request_context("/mcp"):
        bare = challenge_response(runtime, None)
        assert bare.status_code == 401
        assert bare.headers["WWW-Authenticate"] == f'Bearer resource_metadata="{PRM_URL}"'
        err = challenge_response(runtime, InvalidToken('bad "quoted" thing'))
        assert err.status_code == 401
        assert 'error="invalid_token"' in err.headers["WWW-Authenticate"]
        assert '\\"' not in err.headers["WWW-Authenticate"]
        busy = challenge_response(runtime, TemporarilyUnavailable(retry_after=7))
        assert busy.status_code == 503
        assert busy.headers["Retry-After"] == "7"
        assert json.loads(busy.get_data())["error"] == "temporarily_unavailable"


def test_two_apps_do_not_accept_each_others_tokens() -> None:
    first = make_app()
    other_pem = generate_rsa_pem()
    second = make_app(MCP_AUTH_SIGNING_KEYS=[other_pem])
    token = issue_token(first, "alice")
    assert first.test_client().get("/mcp", headers=bearer(token)).status_code == 200
    assert_invalid(second.test_client().get("/mcp", headers=bearer(token)))


def test_previous_signing_key_still_verifies() -> None:
    old_app = make_app()
    token = issue_token(old_app, "alice")
    sid = jwt.decode(token, options={"verify_signature": False})["tsid"]
    rotated = make_app(MCP_AUTH_SIGNING_KEYS=[generate_rsa_pem(), PEM])
    runtime = rotated.extensions["mcp_auth"]
    runtime.storage.set_session(sid, owner="alice", ttl=600, complete=True)
    assert rotated.test_client().get("/mcp", headers=bearer(token)).status_code == 200
    new_token = issue_token(rotated, "alice")
    assert jwt.get_unverified_header(new_token)["kid"] != jwt.get_unverified_header(token)["kid"]


def test_upstream_token_records_are_accepted_by_issue_token(app: Flask) -> None:
    record = UpstreamToken(provider="ignored", access_token="corp-live", expires_at=time.time() + 600)
    token = issue_token(app, "alice", {"corp": record})
    assert app.test_client().get("/needs-corp", headers=bearer(token)).get_json()["upstream"] == {
        "corp": "corp-live"}


def test_request_object_untouched_for_json_posts(app: Flask) -> None:
    token = issue_token(app, "alice")

    @app.post("/echo")
    def echo() -> Any:
        return jsonify(request.get_json())

    resp = app.test_client().post("/echo", json={"jsonrpc": "2.0"}, headers=bearer(token))
    assert resp.get_json() == {"jsonrpc": "2.0"}


def test_ld04_mode_b_never_fetches_keys_remotely(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    def no_http(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the RS made an HTTP call")

    monkeypatch.setattr(requests.Session, "request", no_http)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = claims_for(app)
    client = app.test_client()
    for n in range(50):
        token = sign(claims, attacker, headers={"kid": f"random-{n}", "typ": "at+jwt"})
        assert_invalid(client.get("/mcp", headers=bearer(token)))


def test_sh02_no_token_values_in_logs(storage_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    app = make_app(storage_url)
    client = app.test_client()
    good = issue_token(app, "alice", {"github": "gho_secret_value"})
    expired = issue_token(app, "alice", expires_in=-600)
    client.get("/mcp", headers=bearer(good))
    client.get("/mcp", headers=bearer(expired))
    client.get("/mcp", headers=bearer(good + "x"))
    client.post("/mcp", headers=bearer(good), data={"access_token": good})
    sid = jwt.decode(good, options={"verify_signature": False})["tsid"]
    app.extensions["mcp_auth"].storage.put_upstream_token(sid, "corp", "v1.garbage.blob", 600)
    client.get("/mcp", headers=bearer(good))
    app.extensions["mcp_auth"].storage.revoke_session(sid, 600)
    client.get("/mcp", headers=bearer(good))
    text = caplog.text
    for secret in (good, expired, good.split(".")[2], expired.split(".")[2], "gho_secret_value", sid):
        assert secret not in text


def test_app_error_handlers_registered_first_are_kept() -> None:
    from flask_mcp_auth.errors import InvalidToken

    app = Flask(__name__)
    app.register_error_handler(InvalidToken, lambda exc: ("custom", 401))
    app.config.update(SECRET_KEY="k", MCP_AUTH_ISSUER=ISSUER, MCP_AUTH_RESOURCE=RESOURCE,
                      MCP_AUTH_UPSTREAMS=[_upstream("corp")], MCP_AUTH_SIGNING_KEYS=[PEM])
    MCPAuth(app)
    app.add_url_rule("/x", "x", lambda: "ok")
    resp = app.test_client().get("/x", headers=bearer("garbage"))
    assert resp.status_code == 401
    assert resp.get_data(as_text=True) == "custom"


# --- protected paths are prefixes that fail closed ---------------------------------------------------------------
def _paths_app(protected: list[str]) -> Flask:
    app = make_app(MCP_AUTH_PROTECTED_PATHS=protected)
    for path in ("/api", "/api/", "/api/x", "/apix", "/"):
        app.add_url_rule(path, f"open_{path}", lambda: jsonify(ran=True), methods=["GET", "POST"])
    return app


@pytest.mark.parametrize("protected", [["/api"], ["/api/"]])
def test_protected_paths_are_prefixes_and_cover_the_bare_path(protected: list[str]) -> None:
    client = _paths_app(protected).test_client()
    for path in ("/api", "/api/", "/api/x", "/api/x/y", "/api/unknown"):
        resp = client.post(path)
        assert resp.status_code == 401, path
        assert "error=" not in challenge(resp)
    for path in ("/", "/public"):
        assert client.get(path).status_code == 200, path
    # a plain prefix (SPEC §2) fails closed: "/api" also covers "/apix"; "/api/" does not
    assert client.get("/apix").status_code == (401 if protected == ["/api"] else 200)


def test_protected_root_covers_every_path_but_the_metadata() -> None:
    app = _paths_app(["/"])
    client = app.test_client()
    for path in ("/", "/api", "/apix", "/public", "/anything/else"):
        assert client.get(path).status_code == 401, path
    assert client.get("/.well-known/oauth-protected-resource/mcp").status_code == 200
    token = issue_token(app, "alice")
    assert client.post("/apix", headers=bearer(token)).get_json() == {"ran": True}
