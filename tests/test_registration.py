"""Dynamic client registration (RFC 7591, SPEC §3.5; TESTPLAN 1.2, CC-05, SH-05) and ClientRegistry."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest
import requests
import responses
from flask import Flask

from flask_mcp_auth.config import parse_settings
from flask_mcp_auth.server import digest
from flask_mcp_auth.server.blueprint import client_registry
from flask_mcp_auth.server.clients import CLIENT_TTL, Client, ClientRegistry
from flask_mcp_auth.storage.memory import MemoryStorage
from tests.support.as_unit import ISSUER, RESOURCE, UPSTREAM, make_app, pkce_pair, put_code, redeem, runtime
from tests.support.servers import serve


@pytest.fixture()
def store_url(storage_url: str) -> str:
    return storage_url


def stored_clients(app: Flask) -> list[str]:
    """Ids of every client record in the app's storage (memory or Redis)."""
    rt = runtime(app)
    store = rt.storage
    if isinstance(store, MemoryStorage):
        return [key for kind, key in list(store._data) if kind == "client" and store.get("client", key)]
    import redis

    client = redis.Redis.from_url(str(rt.settings.storage))
    prefix = rt.settings.storage_prefix + "client:"
    try:
        return [k.decode()[len(prefix):] for k in client.scan_iter(match=prefix.replace("{", "[{]") + "*")]
    finally:
        client.close()


def post(app: Flask, body: Any, **kw: Any) -> Any:
    return app.test_client().post("/oauth/register", json=body, **kw)


def test_register_public_client(store_url: str) -> None:
    app = make_app(store_url)
    resp = post(app, {"redirect_uris": ["http://127.0.0.1:5000/cb"], "client_name": "Claude",
                      "grant_types": ["authorization_code", "refresh_token"], "scope": "openid offline_access"})
    assert resp.status_code == 201
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_json()
    assert body["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in body
    assert body["redirect_uris"] == ["http://127.0.0.1:5000/cb"]
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert body["response_types"] == ["code"]
    assert body["scope"] == "openid offline_access"
    assert isinstance(body["client_id_issued_at"], int)
    client = client_registry(runtime(app)).get(body["client_id"])
    assert client is not None
    assert client.is_public and client.dynamic and not client.first_party
    assert client.scopes == ("openid", "offline_access")
    assert client.client_name == "Claude"
    assert stored_clients(app) == [body["client_id"]]


def test_register_defaults(store_url: str) -> None:
    app = make_app(store_url)
    body = post(app, {"redirect_uris": ["https://c.example/cb"]}).get_json()
    assert body["grant_types"] == ["authorization_code"]
    assert body["scope"] == "openid profile email offline_access"
    assert body["token_endpoint_auth_method"] == "none"


def assert_rejected(app: Flask, body: Any, error: str, **kw: Any) -> None:
    resp = post(app, body, **kw) if "data" not in kw else app.test_client().post("/oauth/register", **kw)
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["error"] == error
    assert resp.headers["Cache-Control"] == "no-store"
    assert stored_clients(app) == []


def test_rg01_fragment_rejected(store_url: str) -> None:
    app = make_app(store_url)
    assert_rejected(app, {"redirect_uris": ["https://c.example/cb#frag"]}, "invalid_redirect_uri")
    assert_rejected(app, {"redirect_uris": ["https://c.example/cb#"]}, "invalid_redirect_uri")


@pytest.mark.parametrize("uri", [
    "javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,<script>alert(1)</script>",
    "file:///etc/passwd", "vbscript:msgbox(1)", "about:blank", "/relative/cb", "cb", "",
    "https:///nohost", "https://user:pw@c.example/cb", "https://c.example/c b", "com.example.app",
])
def test_rg02_dangerous_schemes_rejected(uri: str) -> None:
    assert_rejected(make_app(), {"redirect_uris": [uri]}, "invalid_redirect_uri")


def test_rg03_cleartext_only_on_loopback(store_url: str) -> None:
    app = make_app(store_url)
    for uri in ("http://c.example/cb", "http://localhost.evil.example/cb", "http://127.0.0.1.nip.io/cb",
                "http://10.0.0.1/cb"):
        assert_rejected(app, {"redirect_uris": [uri]}, "invalid_redirect_uri")
    # one bad URI among good ones still rejects the whole registration
    assert_rejected(app, {"redirect_uris": ["https://c.example/cb", "http://c.example/cb"]},
                    "invalid_redirect_uri")
    for uri in ("http://127.0.0.1/cb", "http://[::1]/cb", "http://localhost:8080/cb",
                "com.example.app:/oauth2redirect", "https://c.example/cb?a=1"):
        assert post(app, {"redirect_uris": [uri]}).status_code == 201, uri


def test_rg04_missing_redirect_uris_and_forbidden_grants(store_url: str) -> None:
    app = make_app(store_url)
    for body in ({}, {"redirect_uris": []}, {"redirect_uris": "https://c.example/cb"},
                 {"redirect_uris": [1]}, {"redirect_uris": [f"https://c.example/{i}" for i in range(11)]}):
        assert_rejected(app, body, "invalid_redirect_uri")
    ok = {"redirect_uris": ["https://c.example/cb"]}
    for extra in ({"response_types": ["token"]}, {"response_types": ["code", "token"]},
                  {"grant_types": ["password"]}, {"grant_types": ["implicit"]},
                  {"grant_types": ["client_credentials"]}, {"grant_types": ["refresh_token"]},
                  {"token_endpoint_auth_method": "private_key_jwt"},
                  {"token_endpoint_auth_method": "client_secret_jwt"},
                  {"scope": "openid admin"}, {"scope": ["openid"]},
                  {"logo_uri": "http://169.254.169.254/logo"}, {"client_name": 5},
                  {"contacts": "a@b.c"}):
        assert_rejected(app, {**ok, **extra}, "invalid_client_metadata")


def test_rg05_client_chosen_identifiers_ignored(store_url: str) -> None:
    app = make_app(store_url)
    body = post(app, {"redirect_uris": ["https://c.example/cb"], "client_id": "admin",
                      "client_secret": "mine", "client_id_issued_at": 1, "sub": "root",
                      "registration_access_token": "x"}).get_json()
    assert body["client_id"] != "admin"
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", body["client_id"])  # 192 random bits
    assert body["client_id_issued_at"] > 1
    assert "client_secret" not in body and "sub" not in body and "registration_access_token" not in body
    assert client_registry(runtime(app)).get("admin") is None
    # the client-chosen secret was not kept either: the client is public, no secret hash stored
    record = runtime(app).storage.get("client", body["client_id"])
    assert record is not None and "mine" not in json.dumps(record) and not record.get("secret_hash")
    client = client_registry(runtime(app)).get(body["client_id"])
    assert client is not None and client.is_public


def test_rg05_confidential_registration(store_url: str) -> None:
    off = make_app(store_url)
    assert_rejected(off, {"redirect_uris": ["https://c.example/cb"],
                          "token_endpoint_auth_method": "client_secret_basic"}, "invalid_client_metadata")
    app = make_app(store_url, MCP_AUTH_CONFIDENTIAL_REGISTRATION=True, MCP_AUTH_STORAGE_PREFIX="other:")
    for uri in ("http://127.0.0.1/cb", "https://127.0.0.1/cb", "https://localhost/cb", "com.example.app:/cb"):
        assert_rejected(app, {"redirect_uris": [uri], "token_endpoint_auth_method": "client_secret_post"},
                        "invalid_redirect_uri")
    body = post(app, {"redirect_uris": ["https://c.example/cb"],
                      "token_endpoint_auth_method": "client_secret_basic"}).get_json()
    secret = body["client_secret"]
    assert len(secret) >= 43 and body["client_secret_expires_at"] == 0
    record = runtime(app).storage.get("client", body["client_id"])
    assert record is not None
    assert secret not in json.dumps(record)  # stored hashed only
    assert record["secret_hash"] == digest(secret)
    registry = client_registry(runtime(app))
    client = registry.get(body["client_id"])
    assert client is not None and not client.is_public
    assert registry.authenticate(body["client_id"], secret) == client


def test_rg06_uris_stored_never_fetched(store_url: str) -> None:
    app = make_app(store_url)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        body = post(app, {"redirect_uris": ["https://c.example/cb"],
                          "client_name": "<script>alert(1)</script>",
                          "logo_uri": "https://169.254.169.254/latest/meta-data/",
                          "client_uri": "https://169.254.169.254/", "tos_uri": "https://c.example/tos",
                          "jwks_uri": "https://169.254.169.254/jwks"}).get_json()
        assert len(mock.calls) == 0
    assert body["client_name"] == "<script>alert(1)</script>"  # escaped where rendered, not mangled here
    assert body["logo_uri"] == "https://169.254.169.254/latest/meta-data/"


def test_rg07_oversized_and_malformed_bodies(store_url: str) -> None:
    app = make_app(store_url)
    client = app.test_client()
    huge = json.dumps({"redirect_uris": ["https://c.example/cb"], "client_name": "x" * 1_000_000})
    assert client.post("/oauth/register", data=huge, content_type="application/json").status_code == 413
    many = json.dumps({"redirect_uris": [f"http://127.0.0.1/{i}" for i in range(10_000)]})
    assert client.post("/oauth/register", data=many, content_type="application/json").status_code == 413
    assert_rejected(app, None, "invalid_client_metadata", data="redirect_uris=https://c.example/cb",
                    content_type="application/x-www-form-urlencoded")
    assert_rejected(app, None, "invalid_client_metadata", data="{not json", content_type="application/json")
    assert_rejected(app, None, "invalid_client_metadata", data="[1, 2]", content_type="application/json")
    assert_rejected(app, None, "invalid_client_metadata", data="[" * 30000 + "]" * 30000,
                    content_type="application/json")
    assert_rejected(app, None, "invalid_client_metadata", data=b"\xff\xfe", content_type="application/json")
    assert stored_clients(app) == []


def test_rg08_private_or_symmetric_jwks_rejected(store_url: str) -> None:
    app = make_app(store_url)
    base = {"redirect_uris": ["https://c.example/cb"]}
    public = {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
              "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
    for bad in ({**public, "d": "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"},
                {"kty": "RSA", "n": "abc", "e": "AQAB", "p": "x", "q": "y"},
                {"kty": "oct", "k": "c2VjcmV0"}):
        assert_rejected(app, {**base, "jwks": {"keys": [bad]}}, "invalid_client_metadata")
    assert_rejected(app, {**base, "jwks": [public]}, "invalid_client_metadata")
    assert_rejected(app, {**base, "jwks": {"keys": [public]}, "jwks_uri": "https://c.example/j"},
                    "invalid_client_metadata")
    assert post(app, {**base, "jwks": {"keys": [public]}}).status_code == 201


def test_registration_rate_limit_per_address(store_url: str) -> None:
    app = make_app(store_url, MCP_AUTH_REGISTRATION_RATE_LIMIT=3)
    body = {"redirect_uris": ["https://c.example/cb"]}
    one = {"REMOTE_ADDR": "203.0.113.7"}
    for _ in range(3):
        assert post(app, body, environ_base=one).status_code == 201
    resp = post(app, body, environ_base=one)
    assert resp.status_code == 429
    assert resp.get_json()["error"] == "too_many_requests"
    assert resp.headers["Retry-After"] == "60"
    assert len(stored_clients(app)) == 3
    assert post(app, body, environ_base={"REMOTE_ADDR": "203.0.113.8"}).status_code == 201


def test_cap_evicts_oldest_never_used(store_url: str) -> None:
    app = make_app(store_url, MCP_AUTH_MAX_CLIENTS=3)
    registry = client_registry(runtime(app))
    ids = [post(app, {"redirect_uris": ["https://c.example/cb"]}).get_json()["client_id"] for _ in range(3)]
    first = registry.get(ids[0])
    assert first is not None
    registry.touch(first)  # used: no longer evictable
    newest = post(app, {"redirect_uris": ["https://c.example/cb"]}).get_json()["client_id"]
    assert registry.get(ids[0]) is not None
    assert registry.get(ids[1]) is None  # the oldest never-used one went
    assert registry.get(ids[2]) is not None and registry.get(newest) is not None
    assert sorted(stored_clients(app)) == sorted([ids[0], ids[2], newest])


def test_unused_registrations_expire_sliding() -> None:
    now = [1000.0]
    store = MemoryStorage(clock=lambda: now[0])
    app = make_app(store)
    registry = client_registry(runtime(app))
    used = post(app, {"redirect_uris": ["https://c.example/cb"]}).get_json()["client_id"]
    idle = post(app, {"redirect_uris": ["https://c.example/cb"]}).get_json()["client_id"]
    now[0] += 20 * 86400
    client = registry.get(used)
    assert client is not None
    registry.touch(client)
    now[0] += 20 * 86400  # day 40: the idle one expired at day 30; the used one slid to day 50
    assert registry.get(idle) is None
    assert registry.get(used) is not None
    now[0] += 11 * 86400
    assert registry.get(used) is None


def test_client_record_ttl_on_redis(redis_url: str) -> None:
    import redis

    app = make_app(redis_url)
    cid = post(app, {"redirect_uris": ["https://c.example/cb"]}).get_json()["client_id"]
    conn = redis.Redis.from_url(redis_url)
    try:
        ttl = conn.ttl(runtime(app).settings.storage_prefix + "client:" + cid)
    finally:
        conn.close()
    assert CLIENT_TTL - 60 < ttl <= CLIENT_TTL


def test_cc05_concurrent_registrations_over_http(store_url: str) -> None:
    app = make_app(store_url, MCP_AUTH_REGISTRATION_RATE_LIMIT=1000)
    results: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def one(i: int, base: str) -> None:
        start.wait(10)
        try:
            resp = requests.post(base + "/oauth/register", timeout=30,
                                 json={"redirect_uris": [f"http://127.0.0.1/{i}"], "client_name": f"c{i}"})
            with lock:
                (results if resp.status_code == 201 else errors).append(
                    resp.json()["client_id"] if resp.status_code == 201 else str(resp.status_code))
        except requests.RequestException as exc:
            with lock:
                errors.append(type(exc).__name__)

    with serve(app) as srv:
        threads = [threading.Thread(target=one, args=(i, srv.url)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(set(results)) == 50
    registry = client_registry(runtime(app))
    names = set()
    for cid in results:
        client = registry.get(cid)
        assert client is not None
        names.add((client.client_name, client.redirect_uris))
    assert names == {(f"c{i}", (f"http://127.0.0.1/{i}",)) for i in range(50)}  # no overwrite
    assert len(stored_clients(app)) == 50


def test_sh05_client_ids_unique_and_long() -> None:
    settings, _ = parse_settings({"MCP_AUTH_ISSUER": ISSUER, "MCP_AUTH_RESOURCE": RESOURCE,
                                  "MCP_AUTH_UPSTREAMS": [UPSTREAM], "SECRET_KEY": "k",
                                  "MCP_AUTH_REGISTRATION_RATE_LIMIT": 100_000, "MCP_AUTH_MAX_CLIENTS": 20000})
    registry = ClientRegistry(MemoryStorage(), settings)
    ids = [registry.register({"redirect_uris": ["https://c.example/cb"]}, "a")[0].client_id
           for _ in range(10_000)]
    assert len(set(ids)) == 10_000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", i) for i in ids)  # 32 base64url chars = 192 bits


# --- registry and redirect matching (unit) ----------------------------------------------------------
def _settings(**config: Any) -> Any:
    base = {"MCP_AUTH_ISSUER": ISSUER, "MCP_AUTH_RESOURCE": RESOURCE, "MCP_AUTH_UPSTREAMS": [UPSTREAM],
            "SECRET_KEY": "k"}
    base.update(config)
    return parse_settings(base)[0]


def test_preregistered_clients_come_first() -> None:
    store = MemoryStorage()
    store.put("client", "svc", {"client_id": "svc", "redirect_uris": ["https://evil.example/cb"]}, 60)
    registry = ClientRegistry(store, _settings(MCP_AUTH_CLIENTS=[
        {"client_id": "svc", "redirect_uris": ["https://svc.example/cb"], "first_party": True,
         "client_secret": "a-long-secret"}]))
    client = registry.get("svc")
    assert client is not None
    assert client.redirect_uris == ("https://svc.example/cb",)
    assert client.first_party and not client.is_public and not client.dynamic
    assert client.scopes == ("openid", "profile", "email", "offline_access")
    assert "a-long-secret" not in repr(client)
    assert registry.get("") is None and registry.get("x" * 500) is None and registry.get("nope") is None


def test_match_redirect_uri_exact_and_loopback_ports() -> None:
    client = Client(client_id="c", scopes=(), redirect_uris=(
        "https://c.example/cb", "https://c.example/q?a=1", "http://127.0.0.1/cb", "http://[::1]:1234/cb",
        "http://localhost/cb?x=1"))
    assert client.match_redirect_uri("https://c.example/cb")
    for variant in ("https://c.example/cb/", "https://C.example/cb", "https://c.example/cb?x=1",
                    "https://c.example/q?a=2", "https://c.example:443/cb", "http://c.example/cb",
                    "https://c.example/cb#f"):
        assert not client.match_redirect_uri(variant), variant
    for loop in ("http://127.0.0.1:53682/cb", "http://127.0.0.1/cb", "http://[::1]/cb", "http://[::1]:9/cb",
                 "http://localhost:8080/cb?x=1"):
        assert client.match_redirect_uri(loop), loop
    for bad in ("http://127.0.0.1:5/cb/", "http://127.0.0.1:5/cb?x=1", "http://127.0.0.1:5/other",
                "http://localhost:5/cb", "http://localhost:5/cb?x=2", "https://127.0.0.1:5/cb",
                "http://[::1]:5/cb#x", "http://u@127.0.0.1:5/cb", "http://127.0.0.1:bad/cb"):
        assert not client.match_redirect_uri(bad), bad


# -- odd JSON types and invalid Unicode in every accepted field (no 500, nothing stored) -----------
_URIS = ["http://127.0.0.1/cb"]
_STRING_FIELDS = ["token_endpoint_auth_method", "scope", "client_name", "software_id",
                  "software_version", "client_uri", "logo_uri", "policy_uri", "tos_uri", "jwks_uri"]
_LIST_FIELDS = ["redirect_uris", "grant_types", "response_types", "contacts"]
_NOT_A_STRING: list[Any] = [5, 2.5, True, False, [], ["none"], [["x"]], {}, {"a": "b"}]
_NOT_A_STRING_LIST: list[Any] = [5, True, "http://127.0.0.1/cb", "authorization_code", {},
                                 {"a": "b"}, [5], [None], [True], [["x"]], [{}], [{"a": "b"}]]
_ODD_JWKS: list[Any] = [
    5, "x", [], True, {}, {"keys": 5}, {"keys": "x"}, {"keys": {}}, {"keys": [[]]}, {"keys": [5]},
    {"keys": [None]}, {"keys": [{"kty": ["RSA"]}]}, {"keys": [{"kty": {"a": 1}}]},
    {"keys": [{"kty": "RSA", "n": 5, "e": "AQAB"}]}, {"keys": [{"kty": "RSA", "n": ["x"], "e": "AQAB"}]},
    {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "kid": {}}]},
    {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "x5c": "MII"}]},
    {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "key_ops": [1]}]},
    {"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}] * 11},
]
_ODD_CASES = (
    [(name, value) for name in _STRING_FIELDS for value in _NOT_A_STRING]
    + [(name, value) for name in _LIST_FIELDS for value in _NOT_A_STRING_LIST]
    + [("jwks", value) for value in _ODD_JWKS]
)


@pytest.mark.parametrize(("name", "value"), _ODD_CASES,
                         ids=[f"{n}-{i}" for i, (n, _v) in enumerate(_ODD_CASES)])
def test_rg04_odd_json_types_rejected(name: str, value: Any) -> None:
    app = make_app()
    body = {"redirect_uris": _URIS, name: value}
    error = "invalid_redirect_uri" if name == "redirect_uris" else "invalid_client_metadata"
    assert_rejected(app, body, error)


def test_odd_types_never_500_through_http(store_url: str) -> None:
    """The reviewer's bodies, raw over the endpoint, on both backends."""
    app = make_app(store_url)
    client = app.test_client()
    for body in ('{"redirect_uris":["http://127.0.0.1/cb"],"token_endpoint_auth_method":{}}',
                 '{"redirect_uris":["http://127.0.0.1/cb"],"token_endpoint_auth_method":["none"]}',
                 '{"redirect_uris":["http://127.0.0.1/cb"],"jwks":{"keys":[{"kty":["RSA"]}]}}',
                 '[]', 'null', '"x"', '{"redirect_uris":[null]}'):
        resp = client.post("/oauth/register", data=body, content_type="application/json")
        assert resp.status_code == 400, (body, resp.status_code)
        expected = "invalid_redirect_uri" if body == '{"redirect_uris":[null]}' else "invalid_client_metadata"
        assert resp.get_json()["error"] == expected, body
    assert stored_clients(app) == []


def test_jwks_registered_members_typed_others_kept() -> None:
    app = make_app()
    key = {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
           "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "key_ops": ["verify"], "ext": True,
           "x5c": ["MIIB"]}
    resp = post(app, {"redirect_uris": _URIS, "jwks": {"keys": [key], "note": [1, 2]}})
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["jwks"] == {"keys": [key]}


_SURROGATE = "\udcff"
_SURROGATE_CASES: list[tuple[str, Any]] = [
    ("client_name", _SURROGATE), ("client_name", "ok" + _SURROGATE + "ok"),
    ("software_id", _SURROGATE), ("software_version", "\ud800"),
    ("contacts", ["a@example.com", _SURROGATE]),
    ("redirect_uris", ["http://127.0.0.1/cb" + _SURROGATE]),
    ("client_uri", "https://c.example/" + _SURROGATE),
    ("jwks", {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "kid": _SURROGATE}]}),
    ("jwks", {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "x-note": {_SURROGATE: 1}}]}),
]


@pytest.mark.parametrize(("name", "value"), _SURROGATE_CASES,
                         ids=[f"{n}-{i}" for i, (n, _v) in enumerate(_SURROGATE_CASES)])
def test_lone_surrogates_rejected(store_url: str, name: str, value: Any) -> None:
    """JSON escapes allow lone surrogates; they cannot be encoded as UTF-8 and used to make the
    consent page a 500. The body is sent as raw JSON text, as a client would."""
    app = make_app(store_url)
    body = {"redirect_uris": _URIS, name: value}
    raw = json.dumps(body)  # ensure_ascii: "\udcff" travels as an escape
    assert "\\udcff" in raw or "\\ud800" in raw
    assert_rejected(app, None, "invalid_client_metadata", data=raw, content_type="application/json")


def test_valid_non_ascii_text_accepted() -> None:
    app = make_app()
    resp = post(app, {"redirect_uris": _URIS, "client_name": "Zoë app 😀 日本", "contacts": ["zoë@example.com"]})
    assert resp.status_code == 201
    assert resp.get_json()["client_name"] == "Zoë app 😀 日本"


def test_rg05_client_secret_only_for_confidential_and_only_once(store_url: str) -> None:
    """RFC 7591 §3.2.1 returns the secret in the registration response; nothing returns it again:
    no read route (RFC 7592 is not offered), no metadata or token response, the store holds a digest."""
    app = make_app(store_url, MCP_AUTH_CONFIDENTIAL_REGISTRATION=True)
    client = app.test_client()
    public = post(app, {"redirect_uris": ["https://c.example/cb"]})
    assert public.status_code == 201
    assert "client_secret" not in public.get_json() and "client_secret_expires_at" not in public.get_json()
    resp = post(app, {"redirect_uris": ["https://c.example/cb"], "token_endpoint_auth_method": "client_secret_post"})
    assert resp.status_code == 201
    body = resp.get_json()
    secret, cid = body["client_secret"], body["client_id"]
    assert "registration_access_token" not in body and "registration_client_uri" not in body
    # no way to read a registration back
    assert client.get("/oauth/register").status_code == 405
    for path in (f"/oauth/register/{cid}", f"/oauth/register?client_id={cid}"):
        for method in ("GET", "PUT", "DELETE"):
            got = client.open(path, method=method)
            assert got.status_code in (404, 405), (path, method, got.status_code)
            assert secret not in got.get_data(as_text=True)
    # the store holds only its digest
    for cid_stored in stored_clients(app):
        record = runtime(app).storage.get("client", cid_stored)
        assert record is not None and secret not in json.dumps(record)
    confidential = runtime(app).storage.get("client", cid)
    assert confidential is not None and confidential["secret_hash"] == digest(secret)
    # every GET route of the app, and a token response for this client, leave it out too
    for rule in app.url_map.iter_rules():
        if "GET" in (rule.methods or set()) and not rule.arguments:
            assert secret not in client.get(rule.rule).get_data(as_text=True), rule.rule
    verifier, challenge = pkce_pair()
    code, _sid = put_code(app, client_id=cid, challenge=challenge, redirect_uri="https://c.example/cb")
    token = redeem(client, code, verifier, cid, "https://c.example/cb", client_secret=secret)
    assert token.status_code == 200, token.get_json()
    assert secret not in token.get_data(as_text=True)
    assert secret not in json.dumps(post(app, {"redirect_uris": ["https://c.example/cb"],
                                               "token_endpoint_auth_method": "client_secret_post"}
                                         ).get_json())
