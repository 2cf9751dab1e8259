"""Helpers for testing apps protected by flask_mcp_auth (SPEC §1): mint a valid access token for a
user, with upstream tokens already stored, without walking the login chain.

>>> from flask_mcp_auth.testing import issue_token
>>> token = issue_token(app, "alice", upstream_tokens={"github": "gho_test"}, scopes=["tools"])
>>> resp = app.test_client().post("/mcp", headers={"Authorization": f"Bearer {token}"})
>>> # in the view: g.identity.subject == "alice", g.identity.upstream_tokens["github"] == "gho_test"

Only for Mode B apps (upstreams configured): in Mode A the tokens come from an external issuer whose
keys this app does not hold.

:class:`MockIdP` is a minimal, well-behaved upstream provider for apps' own tests: OpenID Connect
(discovery, JWKS, authorize, token with PKCE and refresh, userinfo) or a GitHub-like OAuth 2.0
provider, served on a loopback thread. ``/authorize`` signs in at once as :meth:`MockIdP.login_as`'s
user, and :attr:`MockIdP.issued_tokens` records what it issued, so a test can check which upstream
token reached the app. A test walking the whole chain (the app through its test client, the mocks
over real HTTP)::

    import re
    from urllib.parse import parse_qs, urlsplit

    import requests
    from authlib.oauth2.rfc7636 import create_s256_code_challenge
    from flask import Flask

    from flask_mcp_auth import MCPAuth, current_identity
    from flask_mcp_auth.testing import MockIdP


    def create_app(upstreams):
        app = Flask(__name__)
        app.config.update(SECRET_KEY="test", MCP_AUTH_ISSUER="http://localhost",
                          MCP_AUTH_RESOURCE="http://localhost/mcp", MCP_AUTH_UPSTREAMS=upstreams)
        auth = MCPAuth(app)

        @app.get("/whoami")
        @auth.required()
        def whoami():
            return dict(current_identity.upstream_tokens)

        return app


    with MockIdP("oidc", users=["alice"]) as corp, MockIdP("oauth2", users=["octocat"]) as github:
        app = create_app([corp.upstream_entry("corp"), github.upstream_entry("github")])
        browser = app.test_client()
        callback = "http://127.0.0.1:9/callback"  # the MCP client's redirect URI; never called
        client_id = browser.post("/oauth/register", json={"redirect_uris": [callback]}).json["client_id"]
        verifier = "v" * 64
        url = browser.get("/oauth/authorize", query_string={
            "response_type": "code", "client_id": client_id, "redirect_uri": callback, "state": "s1",
            "code_challenge": create_s256_code_challenge(verifier), "code_challenge_method": "S256",
        }).location
        form = dict(re.findall(r'name="(request|csrf)" value="([^"]*)"', browser.get(url).text))
        url = browser.post("/oauth/consent", data={**form, "action": "approve"}).location
        while not url.startswith(callback):  # one leg per upstream; each mock approves at once
            if url.startswith((corp.url, github.url)):
                url = requests.get(url, allow_redirects=False, timeout=10).headers["Location"]
            else:
                url = browser.get(url).location
        token = browser.post("/oauth/token", data={
            "grant_type": "authorization_code", "code": parse_qs(urlsplit(url).query)["code"][0],
            "code_verifier": verifier, "client_id": client_id, "redirect_uri": callback,
        }).json["access_token"]
        seen = browser.get("/whoami", headers={"Authorization": f"Bearer {token}"}).json
        assert seen == {"corp": corp.issued_tokens[-1].access_token,
                        "github": github.issued_tokens[-1].access_token}
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote_plus, urlencode, urlsplit

import jwt
from flask import Flask, Response, jsonify, redirect, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from ._encoding import b64url_encode
from .keys import SigningKey, generate_rsa_pem, load_signing_key
from .storage import UpstreamToken

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["IssuedToken", "MockIdP", "issue_token"]


def issue_token(
    app: Flask,
    subject: str,
    upstream_tokens: Mapping[str, str | UpstreamToken] | None = None,
    scopes: Iterable[str] = (),
    expires_in: int = 3600,
    client_id: str = "test-client",
) -> str:
    """Store ``upstream_tokens`` (provider name → access token string or :class:`UpstreamToken`) under
    a fresh session owned by ``subject`` in the app's storage, and return a signed access token for
    ``MCP_AUTH_AUDIENCE`` carrying that session. Providers left out are simply absent (as after a
    failed refresh), so ``required(providers=[...])`` answers 401 for them.

    Raises ``RuntimeError`` in Mode A, ``ValueError`` for a provider that is not configured.
    """
    runtime: Runtime | None = app.extensions.get("mcp_auth")
    if runtime is None:
        raise RuntimeError("MCPAuth is not initialised on this app; call MCPAuth(app) first")
    settings = runtime.settings
    if settings.mode != "B" or runtime.vault is None:
        raise RuntimeError(
            "issue_token needs Mode B (MCP_AUTH_UPSTREAMS configured): in Mode A access tokens come "
            "from the external issuer, so mint them with its keys (or a test issuer) instead"
        )
    unknown = sorted(set(upstream_tokens or {}) - set(settings.provider_names))
    if unknown:
        raise ValueError(f"providers {unknown} are not configured; known: {list(settings.provider_names)}")
    sid = secrets.token_urlsafe(32)
    ttl = max(settings.refresh_token_ttl, expires_in)
    for provider, value in (upstream_tokens or {}).items():
        if isinstance(value, UpstreamToken):
            record = dataclasses.replace(value, provider=provider)
        else:
            record = UpstreamToken(provider=provider, access_token=str(value))
        runtime.vault.save(sid, record, ttl)
    runtime.storage.set_session(sid, owner=subject, ttl=ttl, complete=True)
    token, _claims = runtime.tokens.mint(
        subject=subject,
        client_id=client_id,
        audience=settings.audience,
        scopes=list(scopes),
        session_id=sid,
        ttl=expires_in,
    )
    return str(token)


# --- mock upstream identity provider --------------------------------------------------------------------
_mock_ids = itertools.count(1)


class _QuietHandler(WSGIRequestHandler):
    """No access log: the mock's URLs carry codes and states (SPEC §8), which must not reach logs."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


def _s256(verifier: str) -> str:
    """RFC 7636 §4.2 ``S256`` challenge of ``verifier``."""
    return b64url_encode(hashlib.sha256(verifier.encode("ascii", "replace")).digest())


def _at_hash(access_token: str) -> str:
    """OpenID Connect Core §3.1.3.6: left half of SHA-256 of the access token, base64url."""
    digest = hashlib.sha256(access_token.encode()).digest()
    return b64url_encode(digest[: len(digest) // 2])


@dataclasses.dataclass(frozen=True)
class IssuedToken:
    """One successful token response of a :class:`MockIdP` (``grant_type`` says which grant made it)."""

    user: str
    access_token: str
    grant_type: str
    scope: str
    refresh_token: str | None = dataclasses.field(default=None, repr=False)
    id_token: str | None = dataclasses.field(default=None, repr=False)
    expires_at: float = 0.0


class MockIdP:
    """A minimal, well-behaved upstream identity provider on a loopback thread, for apps' own tests.

    ``kind="oidc"``: OpenID Connect Discovery (``issuer`` exactly ``.url``), JWKS with one RS256 key
    (``kid`` = RFC 7638 thumbprint), ``/authorize``, ``/token`` (``authorization_code`` with PKCE,
    ``refresh_token`` with rotation), ``/userinfo``; id_tokens carry ``nonce`` and ``at_hash``.
    ``kind="oauth2"``: GitHub-like paths (``/login/oauth/authorize``, ``/login/oauth/access_token``,
    ``/user``), JSON token responses when asked with ``Accept: application/json`` (else form-encoded),
    numeric ``id`` in ``/user``.

    ``/authorize`` approves at once as the user chosen with :meth:`login_as` (default: the first of
    ``users``); it requires ``state``, an absolute ``redirect_uri`` and an S256 ``code_challenge``.
    ``users`` is a list of names or ``{name: claims}``; ``idp.users[name]`` is the live claims dict.

    >>> with MockIdP("oidc", users=["alice", "bob"]) as corp:
    ...     app.config["MCP_AUTH_UPSTREAMS"] = [corp.upstream_entry("corp")]
    ...     corp.login_as("bob")
    ...     ...  # walk the login chain; then:
    ...     corp.issued_tokens[-1].access_token   # the token the app should now hold for "corp"
    """

    def __init__(
        self,
        kind: Literal["oidc", "oauth2"] = "oidc",
        users: Iterable[str] | Mapping[str, Mapping[str, Any]] | None = None,
        *,
        client_id: str = "mcp-test",
        client_secret: str | None = "mcp-test-secret",
        issue_refresh_tokens: bool = True,
        access_token_ttl: int = 3600,
    ) -> None:
        if kind not in ("oidc", "oauth2"):
            raise ValueError(f"kind must be 'oidc' or 'oauth2', not {kind!r}")
        self.kind = kind
        self.client_id = client_id
        self.client_secret = client_secret
        self.issue_refresh_tokens = issue_refresh_tokens
        self.access_token_ttl = access_token_ttl
        names = list(users) if users is not None else ["alice"]
        if not names:
            raise ValueError("MockIdP needs at least one user")
        self.users: dict[str, dict[str, Any]] = {}
        for number, name in enumerate(names):
            given = dict(users[name]) if isinstance(users, Mapping) else {}
            self.users[name] = {**self._default_claims(name, number), **given}
        self._current = names[0]
        self._lock = threading.Lock()
        self._codes: dict[str, dict[str, Any]] = {}
        self._access: dict[str, IssuedToken] = {}
        self._refresh: dict[str, IssuedToken] = {}
        self._issued: list[IssuedToken] = []
        self.signing_key: SigningKey | None = None
        if kind == "oidc":
            self.signing_key = load_signing_key(generate_rsa_pem())
        self.app = Flask(f"flask_mcp_auth.testing.mock_idp_{next(_mock_ids)}")
        self._add_routes()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> MockIdP:
        """Bind a free port on 127.0.0.1 and serve on a daemon thread."""
        if self._server is not None:
            raise RuntimeError("this MockIdP is already running")
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"mock-idp-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (a no-op when not running)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> MockIdP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (only while running)."""
        if self._server is None:
            raise RuntimeError("MockIdP is not running; call start() or use it as a context manager")
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def issuer(self) -> str:
        """The OIDC issuer (and discovery's ``issuer``): exactly :attr:`url`."""
        return self.url

    # -- test controls -----------------------------------------------------------------------------
    def login_as(self, user: str) -> None:
        """Who ``/authorize`` signs in from now on (``KeyError`` for an unknown user)."""
        if user not in self.users:
            raise KeyError(user)
        with self._lock:
            self._current = user

    @property
    def issued_tokens(self) -> list[IssuedToken]:
        """Every successful token response so far, oldest first (a copy)."""
        with self._lock:
            return list(self._issued)

    def upstream_entry(self, name: str, **overrides: Any) -> dict[str, Any]:
        """An ``MCP_AUTH_UPSTREAMS`` entry named ``name`` for this provider (``overrides`` win)."""
        entry: dict[str, Any] = {"name": name, "type": self.kind, "client_id": self.client_id}
        if self.client_secret is not None:
            entry["client_secret"] = self.client_secret
        else:
            entry["token_endpoint_auth_method"] = "none"
        if self.kind == "oidc":
            entry.update(issuer=self.issuer, scopes=["openid", "profile", "email", "offline_access"])
        else:
            entry.update(
                authorization_endpoint=f"{self.url}/login/oauth/authorize",
                token_endpoint=f"{self.url}/login/oauth/access_token",
                userinfo_endpoint=f"{self.url}/user",
                userinfo_fields={"subject": ["id"], "name": ["name", "login"], "email": ["email"]},
                scopes=["read:user"],
            )
        entry.update(overrides)
        return entry

    # -- routes ------------------------------------------------------------------------------------
    def _default_claims(self, name: str, number: int) -> dict[str, Any]:
        if self.kind == "oidc":
            return {"sub": f"{name}-sub", "name": name.title(), "email": f"{name}@example.com",
                    "preferred_username": name}
        return {"id": 1001 + number, "login": name, "name": name.title(), "email": f"{name}@example.com"}

    def _add_routes(self) -> None:
        add = self.app.add_url_rule
        if self.kind == "oidc":
            add("/.well-known/openid-configuration", "discovery", self._discovery)
            add("/jwks", "jwks", self._jwks)
            add("/authorize", "authorize", self._authorize)
            add("/token", "token", self._token, methods=["POST"])
            add("/userinfo", "userinfo", self._userinfo, methods=["GET", "POST"])
        else:
            add("/login/oauth/authorize", "authorize", self._authorize)
            add("/login/oauth/access_token", "token", self._token, methods=["POST"])
            add("/user", "userinfo", self._userinfo)

    def _discovery(self) -> Response:
        base = self.url
        return jsonify({
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "authorization_response_iss_parameter_supported": True,
        })

    def _jwks(self) -> Response:
        assert self.signing_key is not None
        return jsonify({"keys": [dict(self.signing_key.public_jwk)]})

    def _authorize(self) -> Response:
        args = request.args
        redirect_uri = args.get("redirect_uri", "")
        target = urlsplit(redirect_uri)
        # Never redirect to a client or URI we cannot trust (RFC 6749 §4.1.2.1): answer a page.
        if args.get("client_id") != self.client_id:
            return Response("unknown client_id", status=400, mimetype="text/plain")
        if target.scheme not in ("http", "https") or not target.netloc or target.fragment:
            return Response("redirect_uri must be an absolute http(s) URL", status=400, mimetype="text/plain")
        state = args.get("state")
        back: dict[str, str] = {"state": state} if state else {}
        if self.kind == "oidc":
            back["iss"] = self.issuer  # RFC 9207
        if args.get("response_type") != "code":
            return self._redirect(redirect_uri, {"error": "unsupported_response_type", **back})
        if not state or not args.get("code_challenge") or args.get("code_challenge_method") != "S256":
            return self._redirect(redirect_uri, {"error": "invalid_request", **back})
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = {"user": self._current, "redirect_uri": redirect_uri,
                                 "challenge": args["code_challenge"], "nonce": args.get("nonce"),
                                 "scope": args.get("scope", ""), "expires": time.time() + 300}
        return self._redirect(redirect_uri, {"code": code, **back})

    def _redirect(self, uri: str, params: Mapping[str, str]) -> Response:
        sep = "&" if urlsplit(uri).query else "?"
        return redirect(uri + sep + urlencode(params), code=302)  # type: ignore[return-value]

    def _client_ok(self) -> bool:
        """RFC 6749 §2.3.1: ``client_secret_basic`` (form-encoded id/secret) or ``client_secret_post``."""
        auth = request.authorization
        if auth is not None and auth.type == "basic":
            client_id, secret = unquote_plus(auth.username or ""), unquote_plus(auth.password or "")
        else:
            client_id, secret = request.form.get("client_id", ""), request.form.get("client_secret", "")
        if not hmac.compare_digest(client_id.encode(), self.client_id.encode()):
            return False
        if self.client_secret is None:
            return True  # public client: PKCE is the proof
        return hmac.compare_digest(secret.encode(), self.client_secret.encode())

    def _token(self) -> Response:
        form = request.form
        grant = form.get("grant_type", "authorization_code" if self.kind == "oauth2" else "")
        if grant not in ("authorization_code", "refresh_token"):
            return self._token_reply({"error": "unsupported_grant_type"}, 400)
        if not self._client_ok():
            return self._token_reply({"error": "invalid_client"}, 401)
        nonce: str | None = None
        with self._lock:
            if grant == "authorization_code":
                record = self._codes.pop(form.get("code", ""), None)  # single use, even on failure
                verifier = form.get("code_verifier", "")
                if (record is None or record["expires"] < time.time()
                        or form.get("redirect_uri") != record["redirect_uri"] or not verifier
                        or not hmac.compare_digest(_s256(verifier), record["challenge"])):
                    return self._token_reply({"error": "invalid_grant"}, 400)
                user, scope, nonce = record["user"], record["scope"], record["nonce"]
            else:
                old = self._refresh.pop(form.get("refresh_token", ""), None)  # rotation: one use each
                if old is None:
                    return self._token_reply({"error": "invalid_grant"}, 400)
                user, scope = old.user, old.scope
            issued = self._issue(user, scope, grant, nonce)
        body: dict[str, Any] = {"access_token": issued.access_token, "token_type": "Bearer",
                                "expires_in": self.access_token_ttl, "scope": scope}
        if issued.refresh_token is not None:
            body["refresh_token"] = issued.refresh_token
        if issued.id_token is not None:
            body["id_token"] = issued.id_token
        return self._token_reply(body, 200)

    def _issue(self, user: str, scope: str, grant: str, nonce: str | None) -> IssuedToken:
        """Mint and record a token set (called with the lock held)."""
        prefix = "gho_" if self.kind == "oauth2" else "at-"
        access = prefix + secrets.token_urlsafe(24)
        refresh = f"rt-{secrets.token_urlsafe(24)}" if self.issue_refresh_tokens else None
        id_token = None
        if self.kind == "oidc" and "openid" in scope.split():
            id_token = self._id_token(user, access, nonce)
        issued = IssuedToken(user=user, access_token=access, grant_type=grant, scope=scope,
                             refresh_token=refresh, id_token=id_token,
                             expires_at=time.time() + self.access_token_ttl)
        self._access[access] = issued
        if refresh is not None:
            self._refresh[refresh] = issued
        self._issued.append(issued)
        return issued

    def _id_token(self, user: str, access_token: str, nonce: str | None) -> str:
        assert self.signing_key is not None
        now = int(time.time())
        claims: dict[str, Any] = {**self.users[user], "iss": self.issuer, "aud": self.client_id,
                                  "iat": now, "exp": now + 300, "auth_time": now,
                                  "at_hash": _at_hash(access_token)}
        if nonce is not None:
            claims["nonce"] = nonce
        key = self.signing_key
        return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid})

    def _token_reply(self, body: Mapping[str, Any], status: int) -> Response:
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if self.kind == "oauth2" and "application/json" not in request.headers.get("Accept", ""):
            # GitHub answers form-encoded unless the client asks for JSON.
            return Response(urlencode({k: str(v) for k, v in body.items()}), status=status,
                            headers=headers, content_type="application/x-www-form-urlencoded")
        resp = jsonify(body)
        resp.status_code = status
        resp.headers.update(headers)
        return resp

    def _userinfo(self) -> Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        with self._lock:
            issued = self._access.get(token.strip()) if scheme.lower() in ("bearer", "token") else None
        if issued is None or issued.expires_at < time.time():
            return Response("", status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return jsonify(self.users[issued.user])
