"""Outgoing auth through the public API: strategies, sessions/adapters, ``backend_auth``, ``with_backend``,
error handlers, signals and config wiring — against real loopback backends and a loopback STS.

TESTPLAN 1.8: OB-01 (right token, right backend, never the inbound token), OB-03/OB-04/OB-05 end to end;
SPEC §2.1 V-01/V-02/V-06/V-08 through ``MCPAuth(app)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask import Flask, g, jsonify, request
from requests.adapters import HTTPAdapter

from flask_mcp_auth import (
    ConfigError,
    Identity,
    MCPAuth,
    TokenExchangeError,
    UpstreamTokenNotFound,
    signals,
)
from flask_mcp_auth.keys import generate_rsa_pem
from flask_mcp_auth.outgoing.requests import BackendAdapter, mount_prefix
from flask_mcp_auth.storage import UpstreamToken
from flask_mcp_auth.testing import issue_token
from tests.support.echo import EchoBackend, running_echo
from tests.support.servers import ServerThread
from tests.support.sts import ACCESS, FakeSTS, running_sts

PEM = generate_rsa_pem()
ISSUER = "http://127.0.0.1:5000"
UPSTREAMS = [
    {"name": name, "type": "oauth2", "client_id": f"{name}-client", "client_secret": "x",
     "authorization_endpoint": f"https://{name}.example/authorize",
     "token_endpoint": f"https://{name}.example/token"}
    for name in ("github", "corp")
]


#: the upstream tokens each test user's session holds (carol has no github token, as after a failed refresh)
UPSTREAM_TOKENS = {
    "alice": {"github": "gh-alice-token", "corp": "corp-alice-token"},
    "bob": {"github": "gh-bob-token", "corp": "corp-bob-token"},
    "carol": {"corp": "corp-carol-token"},
}


def make_app(backends: dict[str, Any], upstreams: list[dict[str, Any]] | None = None,
             before_init: Callable[[Flask], None] | None = None, **config: Any) -> tuple[Flask, MCPAuth]:
    """A Mode B app with the real identity hook; each test user gets a real access token (issue_token)."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True, SECRET_KEY="s" * 32, MCP_AUTH_ISSUER=ISSUER, MCP_AUTH_RESOURCE=f"{ISSUER}/mcp",
        MCP_AUTH_SIGNING_KEYS=[PEM], MCP_AUTH_UPSTREAMS=UPSTREAMS if upstreams is None else upstreams,
        MCP_AUTH_BACKENDS=backends, MCP_AUTH_UPSTREAM_TIMEOUT=3,
    )
    app.config.update(config)
    if before_init is not None:
        before_init(app)
    auth = MCPAuth(app)
    app.extensions["test_tokens"] = {
        user: issue_token(app, user, upstream_tokens=up) for user, up in UPSTREAM_TOKENS.items()
    }
    return app, auth


def _tok(app: Flask, user: str) -> str:
    return str(app.extensions["test_tokens"][user])


def _ident(app: Flask, user: str) -> Identity:
    """The Identity the real hook builds from the user's token (without a full request)."""
    with app.test_request_context("/", headers=_as(app, user)):
        app.preprocess_request()
        identity: Identity = g.identity
    return identity


def _as(app: Flask, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {_tok(app, user)}"}


@pytest.fixture()
def echo_a() -> Iterator[EchoBackend]:
    with running_echo() as backend:
        yield backend


@pytest.fixture()
def echo_b() -> Iterator[EchoBackend]:
    with running_echo() as backend:
        yield backend


@pytest.fixture()
def echo_c() -> Iterator[EchoBackend]:
    with running_echo() as backend:
        yield backend


@pytest.fixture()
def sts() -> Iterator[FakeSTS]:
    with running_sts() as server:
        yield server


def _exchange_backend(sts: FakeSTS, url: str, **extra: Any) -> dict[str, Any]:
    return {"strategy": "token_exchange", "token_url": sts.token_url, "client_id": sts.client_id,
            "client_secret": sts.client_secret, "url": url, **extra}


def _seen_auth(backend: EchoBackend) -> list[str | None]:
    return [h.get("Authorization") for h in backend.seen]


# --- OB-01: right token on the right backend, nothing elsewhere, never the inbound token ------------------
def test_ob01_session_routes_each_provider_token_to_its_backend_only(
    echo_a: EchoBackend, echo_b: EchoBackend, echo_c: EchoBackend
) -> None:
    app, auth = make_app({
        "gh": {"strategy": "upstream_inject", "provider": "github", "url": echo_a.url},
        "corp-api": {"strategy": "upstream_inject", "provider": "corp", "url": f"{echo_b.url}/echo/"},
    })

    @app.get("/fanout")
    def fanout() -> Any:
        inbound = request.headers["Authorization"]
        with auth.session() as s:
            out = {}
            for label, url in (("a", echo_a.url), ("b", echo_b.url), ("c", echo_c.url)):
                # the view even tries to pass the inbound header through, twice
                r = s.get(f"{url}/echo/x", headers={"Authorization": inbound, "X-Forwarded-Auth": inbound},
                          timeout=5)
                out[label] = r.json()["headers"].get("Authorization")
        return out

    resp = app.test_client().get("/fanout", headers=_as(app, "alice"))
    assert resp.status_code == 200
    assert resp.json == {"a": "Bearer gh-alice-token", "b": "Bearer corp-alice-token", "c": None}
    for backend in (echo_a, echo_b, echo_c):
        assert backend.headers_containing(_tok(app, "alice")) == []
    assert echo_c.headers_containing("gh-alice-token") == []
    assert echo_c.headers_containing("corp-alice-token") == []
    assert echo_a.headers_containing("corp-alice-token") == []


def test_ob01_with_backend_injects_session_and_strips_inbound_token(echo_a: EchoBackend) -> None:
    app, auth = make_app({"gh": {"strategy": "upstream_inject", "provider": "github", "url": echo_a.url}})

    @app.get("/repos")
    @auth.with_backend("gh")
    def repos(gh: requests.Session) -> Any:
        r = gh.get(f"{echo_a.url}/echo/user/repos", headers=dict(request.headers), timeout=5)
        return r.json()

    client = app.test_client()
    for user in ("alice", "bob"):
        resp = client.get("/repos", headers=_as(app, user))
        assert resp.status_code == 200
        assert resp.json["headers"]["Authorization"] == f"Bearer gh-{user}-token"
        assert echo_a.headers_containing(_tok(app, user)) == []


def test_ob01_header_injection_and_unauthenticated_strip_authorization(
    echo_a: EchoBackend, echo_b: EchoBackend
) -> None:
    app, auth = make_app({
        "search": {"strategy": "header_injection", "header": "X-Api-Key", "value": "static-key",
                   "url": echo_a.url},
        "status": {"strategy": "unauthenticated", "url": echo_b.url},
    })

    @app.get("/both")
    def both() -> Any:
        s = auth.session("search", "status")
        inbound = {"Authorization": request.headers["Authorization"]}
        a = s.get(f"{echo_a.url}/echo/", headers=inbound, timeout=5).json()["headers"]
        b = s.get(f"{echo_b.url}/echo/", headers=inbound, timeout=5).json()["headers"]
        return {"a_key": a.get("X-Api-Key"), "a_auth": a.get("Authorization"), "b_auth": b.get("Authorization")}

    resp = app.test_client().get("/both", headers=_as(app, "alice"))
    assert resp.json == {"a_key": "static-key", "a_auth": None, "b_auth": None}
    for backend in (echo_a, echo_b):  # the inbound JWT reached neither, under any header
        assert backend.seen and backend.headers_containing(_tok(app, "alice")) == []
    assert echo_b.headers_containing("static-key") == []


def test_ob01_mount_prefix_does_not_match_lookalike_origins() -> None:
    assert mount_prefix("http://127.0.0.1:8000") == "http://127.0.0.1:8000/"
    assert mount_prefix("HTTPS://API.Example.com:443/v1") == "https://api.example.com/v1/"
    app, auth = make_app({
        "a": {"strategy": "upstream_inject", "provider": "github", "url": "http://127.0.0.1:8000"},
        "b": {"strategy": "upstream_inject", "provider": "corp", "url": "https://api.example.com"},
    })
    with app.app_context():
        s = auth.session()
    assert isinstance(s.get_adapter("http://127.0.0.1:8000/x"), BackendAdapter)
    assert isinstance(s.get_adapter("https://api.example.com/"), BackendAdapter)
    for other in ("http://127.0.0.1:80001/x", "https://api.example.com.evil.test/", "http://api.example.com/",
                  "https://api.example.community/"):
        assert not isinstance(s.get_adapter(other), BackendAdapter), other


def test_ob01_backend_auth_applies_one_backend_on_a_plain_session(echo_a: EchoBackend) -> None:
    app, auth = make_app({"gh": {"strategy": "upstream_inject", "provider": "github"}})  # no url needed
    with app.app_context():
        a = auth.backend_auth("gh", _ident(app, "bob"))
    r = requests.get(f"{echo_a.url}/echo/", auth=a, headers=_as(app, "bob"), timeout=5)
    assert r.json()["headers"]["Authorization"] == "Bearer gh-bob-token"

    # default identity: the current g.identity when the request is prepared
    @app.get("/plain")
    def plain() -> Any:
        return requests.get(f"{echo_a.url}/echo/", auth=auth.backend_auth("gh"), timeout=5).json()

    assert app.test_client().get("/plain", headers=_as(app, "alice")).json["headers"]["Authorization"] == \
        "Bearer gh-alice-token"


# --- redirects -----------------------------------------------------------------------------------------
def test_cross_origin_redirect_drops_injected_credentials(echo_a: EchoBackend, echo_b: EchoBackend) -> None:
    app, auth = make_app({
        "gh": {"strategy": "upstream_inject", "provider": "github", "url": echo_a.url},
        "search": {"strategy": "header_injection", "header": "X-Api-Key", "value": "static-key"},
    })
    target = f"{echo_b.url}/echo/landed"
    with app.app_context():
        session_bound = auth.session("gh")
        session_bound.identity = _ident(app, "alice")
        key_auth = auth.backend_auth("search", _ident(app, "alice"))
        gh_auth = auth.backend_auth("gh", _ident(app, "alice"))

    # through the adapter (two loopback ports = two origins)
    r = session_bound.get(f"{echo_a.url}/redirect", params={"to": target}, timeout=5)
    assert r.url == target and r.history[0].status_code == 302
    assert r.json()["headers"].get("Authorization") is None
    # same-origin redirect: the backend's adapter applies the credential again
    r = session_bound.get(f"{echo_a.url}/redirect", params={"to": f"{echo_a.url}/echo/again"}, timeout=5)
    assert r.json()["headers"]["Authorization"] == "Bearer gh-alice-token"
    # through AuthBase on a plain session, including a custom header requests itself would keep
    for code in ("302", "307"):
        r = requests.get(f"{echo_a.url}/redirect", params={"to": target, "code": code}, auth=key_auth, timeout=5)
        assert r.json()["headers"].get("X-Api-Key") is None
        r = requests.get(f"{echo_a.url}/redirect", params={"to": target, "code": code}, auth=gh_auth, timeout=5)
        assert r.json()["headers"].get("Authorization") is None
    assert echo_b.headers_containing("gh-alice-token") == []
    assert echo_b.headers_containing("static-key") == []
    assert "Bearer gh-alice-token" in _seen_auth(echo_a)


# --- token exchange end to end -----------------------------------------------------------------------
def test_ob03_subject_from_provider_vs_own_jwt(sts: FakeSTS, echo_a: EchoBackend, echo_b: EchoBackend) -> None:
    app, auth = make_app({
        "docs": _exchange_backend(sts, echo_a.url, subject_provider="corp", audience="docs-api",
                                  resource="https://docs.example/", scopes=["read"]),
        "self": _exchange_backend(sts, echo_b.url, audience="self-api"),
    })

    @app.get("/x")
    def x() -> Any:
        s = auth.session()
        a = s.get(f"{echo_a.url}/echo/", timeout=5).json()["headers"]["Authorization"]
        b = s.get(f"{echo_b.url}/echo/", timeout=5).json()["headers"]["Authorization"]
        return {"a": a, "b": b}

    resp = app.test_client().get("/x", headers=_as(app, "alice"))
    assert resp.status_code == 200
    first, second = (c.form for c in sts.calls)
    assert first["subject_token"] == "corp-alice-token"
    assert (first["audience"], first["resource"], first["scope"]) == ("docs-api", "https://docs.example/", "read")
    assert second["subject_token"] == _tok(app, "alice")
    assert first["subject_token_type"] == second["subject_token_type"] == ACCESS
    assert resp.json == {"a": "Bearer " + FakeSTS.token_for("corp-alice-token", 1, "docs-api"),
                         "b": "Bearer " + FakeSTS.token_for(_tok(app, "alice"), 2, "self-api")}
    # our JWT went to the STS (the configured subject) but never to a backend
    assert echo_a.headers_containing(_tok(app, "alice")) == [] and echo_b.headers_containing(_tok(app, "alice")) == []


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("error:invalid_target", 403, "invalid_target"),
        ("error:access_denied", 403, "access_denied"),
        ("error:invalid_request", 502, "invalid_request"),
        ("no_issued_type", 502, "server_error"),
        ("n_a", 502, "server_error"),
        ("html", 502, "temporarily_unavailable"),
        ("garbage", 502, "server_error"),
    ],
)
def test_ob04_ob05_exchange_failures_become_clean_json_and_nothing_is_sent(
    sts: FakeSTS, echo_a: EchoBackend, mode: str, status: int, code: str
) -> None:
    sts.mode = mode
    app, auth = make_app({"docs": _exchange_backend(sts, echo_a.url, subject_provider="corp")})

    @app.get("/tool")
    @auth.with_backend("docs")
    def tool(docs: requests.Session) -> Any:
        return docs.get(f"{echo_a.url}/echo/", timeout=5).json()

    resp = app.test_client().get("/tool", headers=_as(app, "alice"))
    assert (resp.status_code, resp.json) == (status, {"error": code})
    body = resp.get_data(as_text=True)
    assert "STS-SECRET-DETAIL" not in body and "corp-alice-token" not in body and _tok(app, "alice") not in body
    assert echo_a.seen == []  # nothing was injected, nothing was sent
    assert sts.call_count == 1  # no retry


def test_ob05_sts_timeout_is_502_temporarily_unavailable(sts: FakeSTS, echo_a: EchoBackend) -> None:
    sts.mode, sts.slow_seconds = "slow", 2.5
    app, auth = make_app({"docs": _exchange_backend(sts, echo_a.url, subject_provider="corp")},
                         MCP_AUTH_UPSTREAM_TIMEOUT=0.3)

    @app.get("/tool")
    @auth.with_backend("docs")
    def tool(docs: requests.Session) -> Any:
        return docs.get(f"{echo_a.url}/echo/", timeout=5).json()

    resp = app.test_client().get("/tool", headers=_as(app, "alice"))
    assert (resp.status_code, resp.json) == (502, {"error": "temporarily_unavailable"})


def test_exchange_cache_hit_and_per_user_isolation(sts: FakeSTS, echo_a: EchoBackend) -> None:
    app, auth = make_app({"docs": _exchange_backend(sts, echo_a.url, subject_provider="corp")})

    @app.get("/tool")
    @auth.with_backend("docs")
    def tool(docs: requests.Session) -> Any:
        return {"auth": docs.get(f"{echo_a.url}/echo/", timeout=5).json()["headers"]["Authorization"]}

    client = app.test_client()
    seen = {user: [client.get("/tool", headers=_as(app, user)).json["auth"] for _ in range(3)] for user in ("alice", "bob")}
    assert sts.call_count == 2  # one exchange per user, then cache hits
    assert seen["alice"] == ["Bearer " + FakeSTS.token_for("corp-alice-token", 1, "")] * 3
    assert seen["bob"] == ["Bearer " + FakeSTS.token_for("corp-bob-token", 2, "")] * 3


def test_exchange_not_cached_when_expires_in_is_within_margin(sts: FakeSTS, echo_a: EchoBackend) -> None:
    sts.expires_in = 30
    app, auth = make_app({"docs": _exchange_backend(sts, echo_a.url, subject_provider="corp")})
    with app.app_context():
        s = auth.session()
        s.identity = _ident(app, "alice")
        for _ in range(3):
            s.get(f"{echo_a.url}/echo/", timeout=5)
    assert sts.call_count == 3
    assert len({h["Authorization"] for h in echo_a.seen}) == 3


def test_concurrent_misses_make_one_sts_call(sts: FakeSTS, echo_a: EchoBackend) -> None:
    sts.delay = 0.3
    app, auth = make_app({"docs": _exchange_backend(sts, echo_a.url, subject_provider="corp")})
    with app.app_context():
        session = auth.session()
        session.identity = _ident(app, "alice")
    results: list[str] = []

    def call() -> None:
        results.append(session.get(f"{echo_a.url}/echo/", timeout=10).json()["headers"]["Authorization"])

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert sts.call_count == 1
    assert results == ["Bearer " + FakeSTS.token_for("corp-alice-token", 1, "")] * 8


def test_token_exchanged_signal_carries_no_token_values(sts: FakeSTS, echo_a: EchoBackend) -> None:
    app, auth = make_app({"docs": _exchange_backend(sts, echo_a.url, subject_provider="corp")})
    received: list[tuple[Any, dict[str, Any]]] = []

    def listener(sender: Any, **info: Any) -> None:
        received.append((sender, info))

    signals.token_exchanged.connect(listener)
    try:
        with app.app_context():
            s = auth.session()
            s.identity = _ident(app, "alice")
            s.get(f"{echo_a.url}/echo/", timeout=5)
            s.get(f"{echo_a.url}/echo/", timeout=5)
    finally:
        signals.token_exchanged.disconnect(listener)
    assert [(sender is app, info) for sender, info in received] == [
        (True, {"backend": "docs", "cache_hit": False, "subject": "alice"}),
        (True, {"backend": "docs", "cache_hit": True, "subject": "alice"}),
    ]
    text = repr(received)
    for secret in ("corp-alice-token", _tok(app, "alice"), "xchg."):
        assert secret not in text


# --- with_backend: 401 before the view; naming ------------------------------------------------------------
def test_with_backend_missing_provider_token_is_401_before_the_view(sts: FakeSTS, echo_a: EchoBackend) -> None:
    app, auth = make_app({
        "gh": {"strategy": "upstream_inject", "provider": "github", "url": echo_a.url},
        "self": _exchange_backend(sts, echo_a.url + "/echo/self/"),
        "docs": _exchange_backend(sts, echo_a.url + "/echo/docs/", subject_provider="github"),
    })
    ran: list[str] = []

    for name in ("gh", "self", "docs"):
        @app.get(f"/{name}", endpoint=name)
        @auth.with_backend(name)
        def view(name: str = name, **kw: Any) -> Any:
            ran.append(name)
            return "ran"

    client = app.test_client()
    for path, user in (("/gh", "carol"), ("/docs", "carol"), ("/gh", None), ("/self", None)):
        resp = client.get(path, headers=_as(app, user) if user else {})
        assert resp.status_code == 401, path
        challenge = resp.headers["WWW-Authenticate"]
        # a token without the provider's: invalid_token (re-authorize); no token at all: bare challenge
        assert resp.json.get("error") == ("invalid_token" if user else None)
        assert ('error="invalid_token"' in challenge) == bool(user)
        assert challenge.startswith("Bearer ") and f'resource_metadata="{ISSUER}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert ran == []
    assert sts.call_count == 0 and echo_a.seen == []
    assert client.get("/self", headers=_as(app, "carol")).status_code == 200  # own JWT is the subject: fine
    assert ran == ["self"]


def test_with_backend_keyword_names(echo_a: EchoBackend) -> None:
    app, auth = make_app({"my-api": {"strategy": "upstream_inject", "provider": "github", "url": echo_a.url}})

    @app.get("/default")
    @auth.with_backend("my-api")
    def default(my_api: requests.Session) -> Any:
        return my_api.get(f"{echo_a.url}/echo/", timeout=5).json()["headers"]

    @app.get("/named")
    @auth.with_backend("my-api", arg="client")
    def named(client: requests.Session) -> Any:
        return client.get(f"{echo_a.url}/echo/", timeout=5).json()["headers"]

    c = app.test_client()
    assert c.get("/default", headers=_as(app, "alice")).json["Authorization"] == "Bearer gh-alice-token"
    assert c.get("/named", headers=_as(app, "bob")).json["Authorization"] == "Bearer gh-bob-token"


def test_with_backend_unknown_name_or_missing_url_is_a_config_error(echo_a: EchoBackend) -> None:
    app, auth = make_app({"gh": {"strategy": "upstream_inject", "provider": "github"}})

    @app.get("/typo")
    @auth.with_backend("gihtub")
    def typo(gihtub: requests.Session) -> str:
        return "never"

    @app.get("/nourl")
    @auth.with_backend("gh")
    def nourl(gh: requests.Session) -> str:
        return "never"

    with pytest.raises(ConfigError) as info:
        app.test_client().get("/typo", headers=_as(app, "alice"))
    assert "gihtub" in str(info.value)
    with pytest.raises(ConfigError) as info:
        app.test_client().get("/nourl", headers=_as(app, "alice"))
    assert info.value.problems[0][0] == "V-08" and "url" in info.value.problems[0][2]
    with app.app_context(), pytest.raises(ConfigError):
        auth.with_backend("nope")  # checked at decoration when an app context is present


# --- error handlers --------------------------------------------------------------------------------------
def test_error_handlers_for_views_that_use_the_session_directly(echo_a: EchoBackend) -> None:
    app, auth = make_app({"gh": {"strategy": "upstream_inject", "provider": "github", "url": echo_a.url}})

    @app.get("/direct")
    def direct() -> Any:
        return auth.session().get(f"{echo_a.url}/echo/", timeout=5).json()

    resp = app.test_client().get("/direct", headers=_as(app, "carol"))
    assert resp.status_code == 401
    assert "resource_metadata=" in resp.headers["WWW-Authenticate"]
    assert echo_a.seen == []


def test_app_handlers_win_whether_registered_before_or_after_init(sts: FakeSTS, echo_a: EchoBackend) -> None:
    sts.mode = "error:invalid_target"

    def before(app: Flask) -> None:
        @app.errorhandler(TokenExchangeError)
        def mine(exc: TokenExchangeError) -> Any:
            return jsonify(custom=exc.error), 418

    app, auth = make_app({"docs": _exchange_backend(sts, echo_a.url, subject_provider="corp"),
                          "gh": {"strategy": "upstream_inject", "provider": "github", "url": echo_a.url}},
                         before_init=before)

    @app.errorhandler(UpstreamTokenNotFound)
    def mine_too(exc: UpstreamTokenNotFound) -> Any:
        return jsonify(missing=exc.provider), 409

    @app.get("/docs")
    @auth.with_backend("docs")
    def docs(docs: requests.Session) -> Any:
        return docs.get(f"{echo_a.url}/echo/", timeout=5).json()

    @app.get("/gh")
    @auth.with_backend("gh")
    def gh(gh: requests.Session) -> Any:
        return gh.get(f"{echo_a.url}/echo/", timeout=5).json()

    c = app.test_client()
    resp = c.get("/docs", headers=_as(app, "alice"))
    assert (resp.status_code, resp.json) == (418, {"custom": "invalid_target"})
    resp = c.get("/gh", headers=_as(app, "carol"))
    assert (resp.status_code, resp.json) == (409, {"missing": "github"})


# --- verify / pooling ----------------------------------------------------------------------------------------
def test_configured_ca_path_reaches_send_despite_requests_ca_bundle(
    sts: FakeSTS, echo_a: EchoBackend, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "corp-ca.pem"
    ca.write_text("not used for http URLs")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "env-bundle.pem"))
    seen: list[tuple[str, Any]] = []
    original: Callable[..., Any] = HTTPAdapter.send

    def recording_send(self: HTTPAdapter, request: requests.PreparedRequest, **kwargs: Any) -> Any:
        seen.append((request.url or "", kwargs.get("verify")))
        return original(self, request, **kwargs)

    monkeypatch.setattr(HTTPAdapter, "send", recording_send)
    app, auth = make_app({"docs": _exchange_backend(sts, echo_a.url, subject_provider="corp")},
                         MCP_AUTH_TLS_VERIFY=str(ca))
    with app.app_context():
        s = auth.session()
        s.identity = _ident(app, "alice")
        s.get(f"{echo_a.url}/echo/", timeout=5)
    assert [v for _, v in seen] == [str(ca), str(ca)]  # STS call, then the backend call
    assert seen[0][0] == sts.token_url
    # the trap this guards against: a plain session's verify loses to the environment
    plain = requests.Session()
    plain.verify = str(ca)
    assert plain.merge_environment_settings(echo_a.url, {}, None, None, None)["verify"] == str(
        tmp_path / "env-bundle.pem")


def test_keep_alive_connections_are_pooled_across_sessions(echo_a: EchoBackend) -> None:
    app, auth = make_app({"gh": {"strategy": "upstream_inject", "provider": "github", "url": echo_a.url}})

    @app.get("/call")
    @auth.with_backend("gh")
    def call(gh: requests.Session) -> Any:
        return gh.get(f"{echo_a.url}/echo/", timeout=5).json()["headers"]

    c = app.test_client()
    for user in ("alice", "bob", "alice"):
        assert c.get("/call", headers=_as(app, user)).json["Authorization"] == f"Bearer gh-{user}-token"
    with app.app_context():
        adapter = auth.session().get_adapter(echo_a.url + "/")
    assert isinstance(adapter, BackendAdapter)
    assert len(adapter.poolmanager.pools) == 1
    (key,) = adapter.poolmanager.pools.keys()  # the container refuses plain iteration
    pool = adapter.poolmanager.pools[key]
    assert pool.num_connections == 1  # three views, three sessions, two users: one kept-alive connection


def test_two_apps_keep_their_own_backends(echo_a: EchoBackend) -> None:
    app1, auth1 = make_app({"api": {"strategy": "upstream_inject", "provider": "github", "url": echo_a.url}})
    app2, auth2 = make_app({"api": {"strategy": "header_injection", "header": "X-Api-Key", "value": "k2",
                                    "url": echo_a.url}})
    for app, auth in ((app1, auth1), (app2, auth2)):
        @app.get("/api")
        @auth.with_backend("api")
        def api(api: requests.Session) -> Any:
            return api.get(f"{echo_a.url}/echo/", timeout=5).json()["headers"]

    h1 = app1.test_client().get("/api", headers=_as(app1, "alice")).json
    h2 = app2.test_client().get("/api", headers=_as(app2, "alice")).json
    assert (h1.get("Authorization"), h1.get("X-Api-Key")) == ("Bearer gh-alice-token", None)
    assert (h2.get("Authorization"), h2.get("X-Api-Key")) == (None, "k2")


# --- config wiring (SPEC §2.1) ---------------------------------------------------------------------------------
def _problems(backends: dict[str, Any], upstreams: list[dict[str, Any]] | None = None) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as info:
        make_app(backends, upstreams=upstreams)
    return info.value.problems


def test_v01_upstream_inject_or_subject_provider_in_mode_a() -> None:
    problems = _problems({
        "gh": {"strategy": "upstream_inject", "provider": "github"},
        "docs": {"strategy": "token_exchange", "token_url": "https://sts.example/token", "subject_provider": "corp"},
    }, upstreams=[])
    assert sorted((rule, key) for rule, key, _ in problems) == [
        ("V-01", "MCP_AUTH_BACKENDS[docs]"), ("V-01", "MCP_AUTH_BACKENDS[gh]")]


def test_v02_unknown_provider_suggests_closest_name() -> None:
    problems = _problems({
        "gh": {"strategy": "upstream_inject", "provider": "gihtub"},
        "docs": {"strategy": "token_exchange", "token_url": "https://sts.example/token", "subject_provider": "crop"},
    })
    assert [p[0] for p in problems] == ["V-02", "V-02"]
    assert "'github'" in problems[0][2] and "'corp'" in problems[1][2]


def test_v06_and_v08_all_reported_together() -> None:
    problems = _problems({
        "empty": {"strategy": "upstream_inject", "provider": ""},
        "weird": {"strategy": "magic"},
        "sts": {"strategy": "token_exchange"},
        "hdr": {"strategy": "header_injection", "header": "X-Key"},
        "rel": {"strategy": "unauthenticated", "url": "/relative"},
    })
    assert sorted((rule, key) for rule, key, _ in problems) == [
        ("V-06", "MCP_AUTH_BACKENDS[empty]"),
        ("V-08", "MCP_AUTH_BACKENDS[hdr]"),
        ("V-08", "MCP_AUTH_BACKENDS[rel]"),
        ("V-08", "MCP_AUTH_BACKENDS[sts]"),
        ("V-08", "MCP_AUTH_BACKENDS[weird]"),
    ]


def test_strategy_validation_at_init_app() -> None:
    problems = _problems({
        "refresh": {"strategy": "token_exchange", "token_url": "https://sts.example/token",
                    "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        "crlf": {"strategy": "header_injection", "header": "X-Key", "value": "a\r\nX-Evil: 1"},
        "badname": {"strategy": "header_injection", "header": "X Key:", "value": "v"},
    })
    assert sorted((rule, key) for rule, key, _ in problems) == [
        ("V-08", "MCP_AUTH_BACKENDS[badname]"),
        ("V-08", "MCP_AUTH_BACKENDS[crlf]"),
        ("V-08", "MCP_AUTH_BACKENDS[refresh]"),
    ]
    assert all("a\r\nX-Evil" not in message for _, _, message in problems)


def test_with_backend_transient_refresh_failure_is_503_not_reauthorize(echo_a: EchoBackend) -> None:
    dead = ServerThread(lambda env, start: []).start()
    dead.stop()  # connection refused from now on: the upstream's token endpoint is down
    upstreams = [dict(UPSTREAMS[0], token_endpoint=f"{dead.url}/token"), UPSTREAMS[1]]
    app, auth = make_app({"gh": {"strategy": "upstream_inject", "provider": "github", "url": echo_a.url}},
                         upstreams=upstreams)
    expired = UpstreamToken(provider="github", access_token="gh-old", refresh_token="gh-refresh",
                            expires_at=time.time() - 600)
    token = issue_token(app, "dave", upstream_tokens={"github": expired})
    ran: list[bool] = []

    @app.get("/gh")
    @auth.with_backend("gh")
    def gh(gh: requests.Session) -> str:
        ran.append(True)
        return "never"

    resp = app.test_client().get("/gh", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 503 and resp.headers.get("Retry-After")
    assert resp.json["error"] == "temporarily_unavailable"
    assert ran == [] and echo_a.seen == []


def test_backend_auth_drops_credential_on_scheme_upgrade_redirect() -> None:
    # requests itself keeps Authorization on an http->https redirect to the same host; we do not
    app, auth = make_app({"gh": {"strategy": "upstream_inject", "provider": "github"}})
    with app.app_context():
        gh_auth = auth.backend_auth("gh", _ident(app, "alice"))
    prepared = requests.Request("GET", "http://api.example/x", auth=gh_auth).prepare()
    assert prepared.headers["Authorization"] == "Bearer gh-alice-token"
    response = requests.Response()
    response.status_code, response.request, response.url = 302, prepared, prepared.url
    for location, kept in (("https://api.example/x", False), ("/y", True), ("http://api.example:8080/", False)):
        prepared.headers["Authorization"] = "Bearer gh-alice-token"
        response.headers["location"] = location
        for hook in prepared.hooks["response"]:
            hook(response)
        assert ("Authorization" in prepared.headers) is kept, location


def test_with_backend_answers_options_itself(echo_a: EchoBackend) -> None:
    """A route listing OPTIONS with only ``with_backend`` never runs the view on a preflight."""
    app, auth = make_app({"gh": {"strategy": "upstream_inject", "provider": "github", "url": echo_a.url}})
    ran: list[Any] = []

    @app.route("/sync", methods=["POST", "OPTIONS"])
    @auth.with_backend("gh")
    def sync(gh: requests.Session) -> Any:
        ran.append(request.method)
        return {"ok": True}

    resp = app.test_client().options("/sync")
    assert resp.status_code == 200
    assert resp.get_data() == b""
    assert "POST" in resp.headers["Allow"]
    assert ran == []
    assert app.test_client().post("/sync").status_code == 401  # no token: challenge, view not run
    assert ran == []
