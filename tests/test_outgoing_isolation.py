"""Outgoing sessions hold no per-user state, and a redirect into a backend gets no credential.

* Cookies: ``auth.session()`` sessions are shared across users (SPEC §1 builds one at module level) and
  ``runtime.http`` serves every user's upstream/STS calls, so neither may store a backend's
  ``Set-Cookie`` (one user's cookie would be replayed on the next user's call).
* Redirects: requests sends each redirect hop through the adapter mounted for the hop's URL; a page
  on another origin fetched through the session must not be able to redirect *into* a backend URL and
  have that backend's credential added (TESTPLAN OB-01: the credential goes to its backend only).

Real loopback backends (``tests/support/echo.py``) and a loopback STS (``tests/support/sts.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from flask import Flask, request

from flask_mcp_auth import MCPAuth
from flask_mcp_auth._http import NoCookieJar, fetch, make_protocol_session
from tests import test_outgoing as _outgoing
from tests.support.echo import EchoBackend
from tests.support.sts import FakeSTS
from tests.test_outgoing import _ident, _tok
from tests.test_outgoing import make_app as _outgoing_app


def make_app(backends: dict[str, Any]) -> tuple[Flask, MCPAuth, dict[str, str]]:
    """test_outgoing's app (same issuer, upstreams and users); returns each user's access token too."""
    app, auth = _outgoing_app(backends)
    return app, auth, {user: _tok(app, user) for user in ("alice", "bob")}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _cookies_seen(backend: EchoBackend) -> list[str | None]:
    return [h.get("Cookie") for h in backend.seen]


# test_outgoing's loopback echo backends and STS (fixtures), under the names these tests read best with
echo_a, echo_b, echo_c, sts = _outgoing.echo_a, _outgoing.echo_b, _outgoing.echo_c, _outgoing.sts


@pytest.fixture()
def api(echo_a: EchoBackend) -> EchoBackend:
    return echo_a


@pytest.fixture()
def api2(echo_b: EchoBackend) -> EchoBackend:
    return echo_b


@pytest.fixture()
def evil(echo_c: EchoBackend) -> EchoBackend:
    return echo_c


# --- cookies ---------------------------------------------------------------------------------------------
def test_ob01_shared_session_never_replays_one_users_cookie_to_another(api: EchoBackend) -> None:
    api.set_cookie = "backend_session=alice-session"
    app, auth, tokens = make_app({"gh": {"strategy": "upstream_inject", "provider": "github", "url": api.url}})
    with app.app_context():
        shared = auth.session()  # module-level, as in SPEC §1

    @app.get("/call")
    def call() -> Any:
        r = shared.get(f"{api.url}/echo/me", timeout=5)
        return {"auth": r.json()["headers"].get("Authorization"), "cookie": r.json()["headers"].get("Cookie"),
                "set_cookie": r.headers.get("Set-Cookie")}

    client = app.test_client()
    alice = client.get("/call", headers=_bearer(tokens["alice"])).json
    bob = client.get("/call", headers=_bearer(tokens["bob"])).json
    assert alice["set_cookie"] is not None and "alice-session" in alice["set_cookie"]  # the backend did set it
    assert (alice["auth"], alice["cookie"]) == ("Bearer gh-alice-token", None)
    assert (bob["auth"], bob["cookie"]) == ("Bearer gh-bob-token", None)
    assert _cookies_seen(api) == [None, None]
    assert len(shared.cookies) == 0


def test_ob01_with_backend_session_stores_no_cookie(api: EchoBackend) -> None:
    api.set_cookie = "backend_session=s1"
    app, auth, tokens = make_app({"gh": {"strategy": "upstream_inject", "provider": "github", "url": api.url}})

    @app.get("/twice")
    @auth.with_backend("gh")
    def twice(gh: requests.Session) -> Any:
        first = gh.get(f"{api.url}/echo/a", timeout=5)
        second = gh.get(f"{api.url}/echo/b", timeout=5)
        return {"set": first.headers.get("Set-Cookie"), "second_cookie": second.json()["headers"].get("Cookie"),
                "jar": len(gh.cookies)}

    for user in ("alice", "bob"):
        resp = app.test_client().get("/twice", headers=_bearer(tokens[user])).json
        assert resp["set"] is not None
        assert (resp["second_cookie"], resp["jar"]) == (None, 0)
    assert _cookies_seen(api) == [None] * 4


def test_cookies_can_still_be_sent_per_request(api: EchoBackend) -> None:
    app, auth, tokens = make_app({"gh": {"strategy": "upstream_inject", "provider": "github", "url": api.url}})

    @app.get("/explicit")
    def explicit() -> Any:
        with auth.session() as s:
            s.cookies.set("shared", "nope")  # session-wide state is refused, not stored
            a = s.get(f"{api.url}/echo/a", cookies={"mine": "1"}, timeout=5).json()["headers"]
            b = s.get(f"{api.url}/echo/b", headers={"Cookie": "mine=2"}, timeout=5).json()["headers"]
            return {"a": a.get("Cookie"), "b": b.get("Cookie"), "jar": len(s.cookies)}

    assert app.test_client().get("/explicit", headers=_bearer(tokens["alice"])).json == \
        {"a": "mine=1", "b": "mine=2", "jar": 0}


def test_no_cookie_jar_refuses_every_way_of_storing() -> None:
    jar = NoCookieJar()
    jar.set("a", "b", domain="127.0.0.1")
    jar.update({"c": "d"})
    assert len(jar) == 0 and jar.get("a") is None


def test_protocol_session_stores_no_cookie(api: EchoBackend) -> None:
    api.set_cookie = "upstream_session=for-alice"
    http = make_protocol_session()
    for _ in range(2):
        reply = fetch(http, "GET", f"{api.url}/echo/token", verify=True, timeout=5, max_body=65536)
        assert reply.status == 200 and "upstream_session" in reply.headers.get("Set-Cookie", "")
    assert _cookies_seen(api) == [None, None]
    assert len(http.cookies) == 0 and http.headers["User-Agent"] == "flask_mcp_auth"


def test_ob03_sts_cookie_is_not_replayed_for_the_next_user(sts: FakeSTS, api: EchoBackend) -> None:
    sts.set_cookie = "sts_session=bound-to-alice"
    app, auth, tokens = make_app({"docs": {
        "strategy": "token_exchange", "token_url": sts.token_url, "client_id": sts.client_id,
        "client_secret": sts.client_secret, "subject_provider": "corp", "url": api.url}})

    @app.get("/call")
    @auth.with_backend("docs")
    def call(docs: requests.Session) -> Any:
        return docs.get(f"{api.url}/echo/x", timeout=5).json()["headers"]

    client = app.test_client()
    for user in ("alice", "bob"):
        resp = client.get("/call", headers=_bearer(tokens[user]))
        assert resp.status_code == 200
        assert resp.json["Authorization"].startswith("Bearer xchg.")
    assert [c.form["subject_token"] for c in sts.calls] == ["corp-alice-token", "corp-bob-token"]
    assert [c.cookie for c in sts.calls] == [None, None]
    assert len(MCPAuth.runtime(app).http.cookies) == 0


# --- redirects into a backend ----------------------------------------------------------------------------
def _two_backends(api: EchoBackend, api2: EchoBackend) -> tuple[Flask, MCPAuth, dict[str, str]]:
    return make_app({
        "gh": {"strategy": "upstream_inject", "provider": "github", "url": api.url},
        "search": {"strategy": "header_injection", "header": "X-Api-Key", "value": "static-key", "url": api2.url},
    })


@pytest.mark.parametrize("code", ["302", "307"])
def test_ob01_redirect_from_untrusted_origin_into_backend_gets_no_credential(
    api: EchoBackend, api2: EchoBackend, evil: EchoBackend, code: str
) -> None:
    app, auth, tokens = _two_backends(api, api2)

    @app.get("/fetch")
    def fetch_url() -> Any:  # a "fetch this URL" tool: the URL the user asked for is not a backend
        with auth.session() as s:
            out = {}
            for label, target in (("gh", f"{api.url}/echo/user/repos"), ("search", f"{api2.url}/echo/q")):
                r = s.get(f"{evil.url}/redirect", params={"to": target, "code": code}, timeout=5)
                assert r.history and r.url == target
                out[label] = r.json()["headers"]
            return out

    resp = app.test_client().get("/fetch", headers=_bearer(tokens["alice"])).json
    assert resp["gh"].get("Authorization") is None
    assert resp["search"].get("X-Api-Key") is None and resp["search"].get("Authorization") is None
    assert api.headers_containing("gh-alice-token") == [] and api2.headers_containing("static-key") == []
    for backend in (api, api2, evil):
        assert backend.headers_containing(tokens["alice"]) == []


def test_ob01_redirect_into_backend_through_with_backend_and_manual_follow(
    api: EchoBackend, evil: EchoBackend
) -> None:
    app, auth, tokens = make_app({"gh": {"strategy": "upstream_inject", "provider": "github", "url": api.url}})
    target = f"{api.url}/echo/user"

    @app.get("/tool")
    @auth.with_backend("gh")
    def tool(gh: requests.Session) -> Any:
        followed = gh.get(f"{evil.url}/redirect", params={"to": target}, timeout=5).json()["headers"]
        first = gh.get(f"{evil.url}/redirect", params={"to": target}, allow_redirects=False, timeout=5)
        assert first.next is not None
        manual = gh.send(first.next, timeout=5).json()["headers"]
        return {"followed": followed.get("Authorization"), "manual": manual.get("Authorization")}

    assert app.test_client().get("/tool", headers=_bearer(tokens["alice"])).json == \
        {"followed": None, "manual": None}
    assert api.headers_containing("gh-alice-token") == []


def test_redirect_within_one_backend_keeps_the_credential(api: EchoBackend) -> None:
    app, auth, _tokens = make_app({"gh": {"strategy": "upstream_inject", "provider": "github", "url": api.url}})
    with app.app_context():
        s = auth.session()
    s.identity = _ident(app, "alice")
    # one hop, then two hops, all inside the backend's prefix (e.g. /v1/x -> /v1/y)
    inner = f"{api.url}/redirect?to={api.url}/echo/final"
    for start in (f"{api.url}/echo/final", inner):
        r = s.get(f"{api.url}/redirect", params={"to": start}, timeout=5)
        assert r.history and r.json()["path"] == "final"
        assert r.json()["headers"]["Authorization"] == "Bearer gh-alice-token"


def test_redirect_that_left_the_backend_does_not_regain_it(
    api: EchoBackend, api2: EchoBackend, evil: EchoBackend
) -> None:
    app, auth, _tokens = _two_backends(api, api2)
    with app.app_context():
        s = auth.session()
    s.identity = _ident(app, "alice")
    # backend -> untrusted page -> back into the backend: the untrusted page chose the last URL
    back = f"{evil.url}/redirect?to={api.url}/echo/back"
    r = s.get(f"{api.url}/redirect", params={"to": back}, timeout=5)
    assert r.json()["path"] == "back" and len(r.history) == 2
    assert r.json()["headers"].get("Authorization") is None
    assert evil.headers_containing("gh-alice-token") == []
    # one backend redirecting into another: the second backend's credential is not added either
    r = s.get(f"{api.url}/redirect", params={"to": f"{api2.url}/echo/other"}, timeout=5)
    assert r.json()["headers"].get("X-Api-Key") is None and r.json()["headers"].get("Authorization") is None
    # the backend's own first hops did carry it
    assert api.seen[0].get("Authorization") == "Bearer gh-alice-token"


def test_direct_request_still_gets_the_credential_after_a_refused_redirect(
    api: EchoBackend, evil: EchoBackend
) -> None:
    app, auth, tokens = make_app({"gh": {"strategy": "upstream_inject", "provider": "github", "url": api.url}})

    @app.get("/both")
    def both() -> Any:
        with auth.session() as s:
            s.get(f"{evil.url}/redirect", params={"to": f"{api.url}/echo/x"}, timeout=5)
            return {"direct": s.get(f"{api.url}/echo/y", timeout=5).json()["headers"].get("Authorization"),
                    "inbound_seen": request.headers["Authorization"] in str(api.seen)}

    assert app.test_client().get("/both", headers=_bearer(tokens["alice"])).json == \
        {"direct": "Bearer gh-alice-token", "inbound_seen": False}
