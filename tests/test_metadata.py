"""Discovery, JWKS, protected-resource metadata, CORS and the body limit (TESTPLAN 1.1, CC-06)."""

from __future__ import annotations

import io
import threading
from typing import Any

import jwt
import pytest
from flask import Flask, request

from flask_mcp_auth import MCPAuth
from flask_mcp_auth.errors import InvalidToken
from flask_mcp_auth.keys import KeySet, thumbprint
from flask_mcp_auth.tokens import TokenService
from tests.support.as_unit import (
    ISSUER,
    RESOURCE,
    make_app,
    pkce_pair,
    put_code,
    redeem,
    register,
    signing_pem,
)

AS_PATH = "/.well-known/oauth-authorization-server"
OIDC_PATH = "/.well-known/openid-configuration"


def test_md01_authorization_server_metadata() -> None:
    client = make_app().test_client()
    resp = client.get(AS_PATH)
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    doc = resp.get_json()
    # byte-identical issuer, compared on the raw body too
    assert doc["issuer"] == ISSUER
    assert f'"issuer": "{ISSUER}"'.encode() in resp.data
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["response_types_supported"] == ["code"]
    assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert "password" not in doc["grant_types_supported"]
    assert doc["token_endpoint_auth_methods_supported"] == ["none"]
    assert doc["authorization_endpoint"] == ISSUER + "/oauth/authorize"
    assert doc["token_endpoint"] == ISSUER + "/oauth/token"
    assert doc["registration_endpoint"] == ISSUER + "/oauth/register"
    assert doc["revocation_endpoint"] == ISSUER + "/oauth/revoke"
    assert doc["jwks_uri"] == ISSUER + "/.well-known/jwks.json"
    assert doc["scopes_supported"] == ["openid", "profile", "email", "offline_access"]


def test_md01_metadata_ignores_host_header() -> None:
    client = make_app().test_client()
    doc = client.get(AS_PATH, headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"}).get_json()
    assert doc["issuer"] == ISSUER
    assert all("evil" not in str(v) for v in doc.values())


def test_md01_openid_configuration() -> None:
    client = make_app().test_client()
    doc = client.get(OIDC_PATH).get_json()
    assert doc["issuer"] == ISSUER
    assert doc["subject_types_supported"] == ["public"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["response_types_supported"] == ["code"]


def test_md01_path_inserted_metadata_for_issuer_with_path() -> None:
    issuer = "https://as.example.com/tenant1"
    app = make_app(MCP_AUTH_ISSUER=issuer)
    client = app.test_client()
    for path in (AS_PATH + "/tenant1", OIDC_PATH + "/tenant1", "/tenant1" + OIDC_PATH, AS_PATH, OIDC_PATH):
        resp = client.get(path)
        assert resp.status_code == 200, path
        doc = resp.get_json()
        assert doc["issuer"] == issuer
        assert doc["token_endpoint"] == issuer + "/oauth/token"
    assert client.get(AS_PATH + "/other").status_code == 404


def test_md01_secret_methods_only_with_confidential_clients() -> None:
    app = make_app(MCP_AUTH_CLIENTS=[{"client_id": "svc", "client_secret": "s3cret-value",
                                      "redirect_uris": ["https://svc.example/cb"]}])
    doc = app.test_client().get(AS_PATH).get_json()
    assert doc["token_endpoint_auth_methods_supported"] == ["none", "client_secret_basic", "client_secret_post"]
    doc = make_app(MCP_AUTH_CONFIDENTIAL_REGISTRATION=True).test_client().get(AS_PATH).get_json()
    assert "client_secret_basic" in doc["token_endpoint_auth_methods_supported"]


def test_registration_disabled_removes_endpoint() -> None:
    client = make_app(MCP_AUTH_DYNAMIC_REGISTRATION=False).test_client()
    assert "registration_endpoint" not in client.get(AS_PATH).get_json()
    assert client.post("/oauth/register", json={"redirect_uris": ["http://127.0.0.1/cb"]}).status_code == 404


def test_jwks_publishes_public_keys_with_thumbprint_kid() -> None:
    client = make_app().test_client()
    resp = client.get("/.well-known/jwks.json")
    assert resp.status_code == 200
    keys = resp.get_json()["keys"]
    assert len(keys) == 1
    key = keys[0]
    assert key["kid"] == thumbprint(key)
    assert key["alg"] == "RS256"
    assert key["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)


def test_md03_protected_resource_metadata() -> None:
    client = make_app().test_client()
    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        doc = resp.get_json()
        assert doc["resource"] == RESOURCE
        assert doc["authorization_servers"] == [ISSUER]
        assert doc["bearer_methods_supported"] == ["header"]
        assert "offline_access" not in doc["scopes_supported"]
        assert "openid" in doc["scopes_supported"]


def test_md03_mode_a_adds_only_protected_resource_metadata() -> None:
    app = Flask(__name__)
    app.config.update(MCP_AUTH_ISSUER="https://login.example.org", MCP_AUTH_RESOURCE="https://api.example.com/mcp",
                      MCP_AUTH_JWKS_URI="https://login.example.org/jwks")

    @app.get("/.well-known/security.txt")
    def security() -> str:
        return "Contact: mailto:sec@example.com"

    MCPAuth(app)
    client = app.test_client()
    doc = client.get("/.well-known/oauth-protected-resource/mcp").get_json()
    assert doc["resource"] == "https://api.example.com/mcp"
    assert doc["authorization_servers"] == ["https://login.example.org"]
    assert client.get("/.well-known/oauth-protected-resource").status_code == 200
    for path in (AS_PATH, OIDC_PATH, "/.well-known/jwks.json"):
        assert client.get(path).status_code == 404
    assert client.post("/oauth/token", data={"grant_type": "x"}).status_code == 404
    assert client.post("/oauth/register", json={}).status_code == 404
    assert client.get("/.well-known/security.txt").status_code == 200
    rules = {r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith("mcp_auth.")}
    assert rules == {"/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"}


def test_md05_key_rotation_keeps_old_tokens_valid() -> None:
    """Rotate by configuring [new, old]: the old key's JWTs still verify; new JWTs use the new kid."""
    old_app = make_app()
    client = old_app.test_client()
    reg = register(client, scope="openid")
    verifier, challenge = pkce_pair()
    code, _ = put_code(old_app, client_id=reg["client_id"], challenge=challenge, scopes=("openid",))
    old_token = redeem(client, code, verifier, reg["client_id"]).get_json()["access_token"]
    old_kid = KeySet.from_pems([signing_pem(0)]).current.kid

    rotated = make_app(MCP_AUTH_SIGNING_KEYS=[signing_pem(1), signing_pem(0)])
    rotated_client = rotated.test_client()
    kids = [k["kid"] for k in rotated_client.get("/.well-known/jwks.json").get_json()["keys"]]
    new_kid = KeySet.from_pems([signing_pem(1)]).current.kid
    assert kids == [new_kid, old_kid]
    svc = rotated.extensions["mcp_auth"].tokens
    assert svc.verify(old_token)["aud"] == RESOURCE

    reg2 = register(rotated_client, scope="openid")
    verifier, challenge = pkce_pair()
    code, _ = put_code(rotated, client_id=reg2["client_id"], challenge=challenge, scopes=("openid",))
    body = redeem(rotated_client, code, verifier, reg2["client_id"]).get_json()
    assert jwt.get_unverified_header(body["access_token"])["kid"] == new_kid
    assert jwt.get_unverified_header(body["id_token"])["kid"] == new_kid
    assert svc.verify(body["access_token"])["sub"] == "user-1"


def test_cc06_rotation_while_validating() -> None:
    """Validators switch from the old key set to the rotated one mid-stream: no false rejections."""
    old_keys = KeySet.from_pems([signing_pem(0)])
    rotated_keys = KeySet.from_pems([signing_pem(1), signing_pem(0)])
    old_svc = TokenService(old_keys, issuer=ISSUER, audience=RESOURCE)
    new_svc = TokenService(rotated_keys, issuer=ISSUER, audience=RESOURCE)
    tokens = [old_svc.mint(subject=f"u{i}", client_id="c", audience=RESOURCE, scopes=["openid"],
                           session_id=f"s{i}", ttl=600)[0] for i in range(50)]
    current: dict[str, TokenService] = {"svc": old_svc}
    failures: list[str] = []
    verified = [0]
    lock = threading.Lock()
    rotated = threading.Event()

    def validate(worker: int) -> None:
        for round_ in range(40):
            if worker == 0 and round_ == 10:
                current["svc"] = new_svc  # the rotation
                rotated.set()
            for token in tokens[worker::4]:
                try:
                    current["svc"].verify(token)
                except InvalidToken as exc:
                    failures.append(str(exc))
                with lock:
                    verified[0] += 1

    def mint_new() -> None:
        rotated.wait(10)
        for i in range(20):
            tokens.append(new_svc.mint(subject=f"n{i}", client_id="c", audience=RESOURCE, scopes=[],
                                       session_id="sn", ttl=600)[0])

    threads = [threading.Thread(target=validate, args=(w,)) for w in range(4)]
    threads.append(threading.Thread(target=mint_new))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert verified[0] >= 4 * 40 * 12
    assert all(new_svc.verify(t) for t in tokens)
    with pytest.raises(InvalidToken):  # and the old set does not know the new key
        old_svc.verify(tokens[-1])


CORS_ROUTES = [
    ("GET", AS_PATH), ("GET", OIDC_PATH), ("GET", "/.well-known/jwks.json"),
    ("GET", "/.well-known/oauth-protected-resource/mcp"),
    ("POST", "/oauth/token"), ("POST", "/oauth/register"), ("POST", "/oauth/revoke"),
]


@pytest.mark.parametrize(("method", "path"), CORS_ROUTES)
def test_cors_preflight_on_metadata_and_endpoints(method: str, path: str) -> None:
    client = make_app().test_client()
    resp = client.options(path, headers={"Origin": "https://app.example", "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": "authorization, content-type"})
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert method in resp.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]


def test_cors_on_actual_responses_including_errors() -> None:
    client = make_app().test_client()
    origin = {"Origin": "https://app.example"}
    assert client.get(AS_PATH, headers=origin).headers["Access-Control-Allow-Origin"] == "*"
    resp = client.post("/oauth/token", data={"grant_type": "password"}, headers=origin)
    assert resp.status_code == 400
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


def test_md06_no_cors_on_authorize() -> None:
    client = make_app().test_client()
    resp = client.options("/oauth/authorize", headers={"Origin": "https://evil.example",
                                                       "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = client.get("/oauth/authorize?client_id=x", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_body_over_64k_is_413_without_touching_host_routes() -> None:
    app = make_app()
    seen: dict[str, Any] = {}

    @app.post("/upload")
    def upload() -> str:
        seen["size"] = len(request.get_data())
        return "ok"

    client = app.test_client()
    big = "x" * (70 * 1024)
    for path in ("/oauth/token", "/oauth/revoke"):
        resp = client.post(path, data={"grant_type": "authorization_code", "code": big})
        assert resp.status_code == 413, path
        assert resp.get_json()["error"] == "invalid_request"
    resp = client.post("/oauth/register", data=big, content_type="application/json")
    assert resp.status_code == 413
    assert client.post("/upload", data=big * 2).status_code == 200
    assert seen["size"] == 2 * len(big)


def test_body_limit_applies_to_chunked_bodies() -> None:
    """No Content-Length (chunked, as a server with wsgi.input_terminated passes it): still cut off."""
    client = make_app().test_client()
    big = b"grant_type=authorization_code&code=" + b"x" * (70 * 1024)
    resp = client.post("/oauth/token", input_stream=io.BytesIO(big),
                       content_type="application/x-www-form-urlencoded",
                       headers={"Transfer-Encoding": "chunked"},
                       environ_overrides={"wsgi.input_terminated": True})
    assert resp.status_code == 413
