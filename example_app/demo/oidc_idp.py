"""A demo OpenID Connect provider (OIDC Core 1.0, Discovery 1.0; RFC 6749 code grant with RFC 7636 PKCE).

Routes: ``/.well-known/openid-configuration``, ``/jwks``, ``/authorize`` (a login page: pick a demo
user), ``/token`` (``authorization_code`` and ``refresh_token``), ``/userinfo``.

It behaves like real IdPs in the ways that matter to a relying party: PKCE S256 is required, client
secrets are checked (Basic or form), codes are single-use and short-lived, id_tokens carry the
``nonce``, access tokens are JWTs signed with a key published in the JWKS (the demo STS trusts them as
RFC 8693 subject tokens), and a refresh token is issued only for ``offline_access`` together with
``prompt=consent`` (OIDC Core §11).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import jwt
from flask import Flask, Response, jsonify, request

from ._common import (
    PICK_AGAIN,
    Counter,
    DemoKey,
    client_credentials,
    error_page,
    login_page,
    pkce_matches,
    secret_matches,
)
from .users import DemoUser, user_for

__all__ = ["OIDCProvider", "RegisteredClient"]


@dataclass(frozen=True)
class RegisteredClient:
    client_id: str
    client_secret: str | None
    redirect_uris: tuple[str, ...]
    name: str = "MCP example"


class OIDCProvider:
    """One demo OIDC provider at ``issuer``; ``.app`` is its Flask app.

    >>> idp = OIDCProvider("http://127.0.0.1:9001", name="corp", title="Corp sign-in",
    ...                    subject=lambda u: u.corp_subject)
    """

    def __init__(
        self,
        issuer: str,
        *,
        name: str,
        title: str,
        subject: Callable[[DemoUser], str],
        background: str = "#e8eef7",
        access_ttl: int = 3600,
        code_ttl: int = 60,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.name = name
        self.title = title
        self.subject = subject
        self.background = background
        self.access_ttl = access_ttl
        self.code_ttl = code_ttl
        self.keys = [DemoKey()]
        self.clients: dict[str, RegisteredClient] = {}
        self.counters = Counter()
        self._lock = threading.Lock()
        self._codes: dict[str, dict[str, Any]] = {}
        self._refresh: dict[str, dict[str, Any]] = {}
        self._users_by_sub: dict[str, DemoUser] = {}
        self.app = self._build_app()

    # -- setup ------------------------------------------------------------------------------------
    def register_client(self, client_id: str, client_secret: str | None, redirect_uris: list[str]) -> None:
        self.clients[client_id] = RegisteredClient(client_id, client_secret, tuple(redirect_uris))

    def rotate_key(self) -> None:
        """Sign with a new key from now on; the old one stays published (as real IdPs do)."""
        self.keys.insert(0, DemoKey())

    def verify_access_token(self, token: str) -> dict[str, Any]:
        """Claims of an access token this provider issued (``jwt.InvalidTokenError`` otherwise)."""
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self.keys:
            if key.kid == kid:
                claims = key.verify(token, issuer=self.issuer)
                if claims.get("token_use") != "access":
                    raise jwt.InvalidTokenError("not an access token")
                return claims
        raise jwt.InvalidTokenError("unknown kid")

    # -- helpers ----------------------------------------------------------------------------------
    def _mint(self, user: DemoUser, client_id: str, scope: str, nonce: str | None) -> dict[str, Any]:
        now = int(time.time())
        sub = self.subject(user)
        with self._lock:
            self._users_by_sub[sub] = user
        key = self.keys[0]
        access = key.sign({"iss": self.issuer, "sub": sub, "aud": client_id, "client_id": client_id,
                           "scope": scope, "iat": now, "exp": now + self.access_ttl,
                           "jti": secrets.token_urlsafe(12), "token_use": "access"}, typ="at+jwt")
        id_claims: dict[str, Any] = {"iss": self.issuer, "sub": sub, "aud": client_id, "iat": now,
                                     "exp": now + 600, "name": user.name, "email": user.email,
                                     "preferred_username": user.username}
        if nonce:
            id_claims["nonce"] = nonce
        return {"access_token": access, "token_type": "Bearer", "expires_in": self.access_ttl,
                "scope": scope, "id_token": key.sign(id_claims)}

    @staticmethod
    def _error(code: str, status: int = 400) -> Response:
        response = jsonify(error=code)
        response.status_code = status
        response.headers["Cache-Control"] = "no-store"
        return response

    def _authorize_problem(self, params: Mapping[str, str]) -> str | None:
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            return "unknown client_id"
        if params.get("redirect_uri") not in client.redirect_uris:
            return "redirect_uri is not registered for this client"
        return None

    # -- the app ----------------------------------------------------------------------------------
    def _build_app(self) -> Flask:
        app = Flask(f"demo-idp-{self.name}")

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Response:
            return jsonify(
                issuer=self.issuer,
                authorization_endpoint=f"{self.issuer}/authorize",
                token_endpoint=f"{self.issuer}/token",
                userinfo_endpoint=f"{self.issuer}/userinfo",
                jwks_uri=f"{self.issuer}/jwks",
                response_types_supported=["code"],
                subject_types_supported=["public"],
                id_token_signing_alg_values_supported=["RS256"],
                code_challenge_methods_supported=["S256"],
                grant_types_supported=["authorization_code", "refresh_token"],
                token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post"],
                scopes_supported=["openid", "profile", "email", "offline_access"],
                authorization_response_iss_parameter_supported=True,
            )

        @app.get("/jwks")
        def jwks() -> Response:
            return jsonify(keys=[k.public_jwk for k in self.keys])

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Response | tuple[str, int]:
            params = {k: v for k, v in (request.args if request.method == "GET" else request.form).items()
                      if k not in ("username", "other", "decision")}
            problem = self._authorize_problem(params)
            if problem:  # never redirect to an unverified redirect_uri
                return error_page(title=self.title, background=self.background,
                                  message=f"{problem.capitalize()}.")
            redirect_uri = params["redirect_uri"]
            state = params.get("state", "")

            def back(**values: str) -> Response:
                query = {**values, "iss": self.issuer}
                if state:
                    query["state"] = state
                sep = "&" if "?" in redirect_uri else "?"
                return Response(status=302, headers={"Location": f"{redirect_uri}{sep}{urlencode(query)}"})

            if params.get("response_type") != "code":
                return back(error="unsupported_response_type")
            if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
                return back(error="invalid_request", error_description="PKCE S256 is required")
            if request.method == "GET":
                client = self.clients[params["client_id"]]
                return Response(login_page(title=self.title, background=self.background, client=client.name,
                                           scopes=params.get("scope", ""), action=f"{self.issuer}/authorize",
                                           params=params), mimetype="text/html")
            if request.form.get("decision") == "deny":
                return back(error="access_denied")
            user = user_for(request.form.get("other") or request.form.get("username", ""))
            if user is None:
                return error_page(title=self.title, background=self.background, message="Unknown user.",
                                  hint=PICK_AGAIN)
            scope = params.get("scope", "openid")
            offline = "offline_access" in scope.split() and params.get("prompt") == "consent"
            code = secrets.token_urlsafe(32)
            with self._lock:
                self._codes[code] = {
                    "user": user, "client_id": params["client_id"], "redirect_uri": redirect_uri,
                    "challenge": params["code_challenge"], "nonce": params.get("nonce"), "scope": scope,
                    "offline": offline, "exp": time.time() + self.code_ttl,
                }
            self.counters.incr("codes_issued")
            return back(code=code)

        @app.post("/token")
        def token() -> Response:
            client_id, secret = client_credentials(request)
            client = self.clients.get(client_id or "")
            if client is None or not secret_matches(secret, client.client_secret):
                return self._error("invalid_client", 401)
            grant = request.form.get("grant_type")
            if grant == "authorization_code":
                self.counters.incr("code_exchanges")
                with self._lock:
                    record = self._codes.pop(request.form.get("code", ""), None)  # single use
                if (record is None or record["exp"] < time.time() or record["client_id"] != client.client_id
                        or record["redirect_uri"] != request.form.get("redirect_uri")
                        or not pkce_matches(request.form.get("code_verifier"), record["challenge"])):
                    return self._error("invalid_grant")
                body = self._mint(record["user"], client.client_id, record["scope"], record["nonce"])
                if record["offline"]:
                    refresh = secrets.token_urlsafe(32)
                    with self._lock:
                        self._refresh[refresh] = {"user": record["user"], "client_id": client.client_id,
                                                  "scope": record["scope"]}
                    body["refresh_token"] = refresh
            elif grant == "refresh_token":
                self.counters.incr("refreshes")
                with self._lock:
                    record = self._refresh.pop(request.form.get("refresh_token", ""), None)  # rotated
                if record is None or record["client_id"] != client.client_id:
                    return self._error("invalid_grant")
                body = self._mint(record["user"], client.client_id, record["scope"], None)
                refresh = secrets.token_urlsafe(32)
                with self._lock:
                    self._refresh[refresh] = record
                body["refresh_token"] = refresh
            else:
                return self._error("unsupported_grant_type")
            response = jsonify(body)
            response.headers["Cache-Control"] = "no-store"
            return response

        @app.route("/userinfo", methods=["GET", "POST"])
        def userinfo() -> Response:
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            try:
                if scheme.lower() != "bearer":
                    raise jwt.InvalidTokenError("no bearer token")
                claims = self.verify_access_token(token)
            except jwt.InvalidTokenError:
                response = self._error("invalid_token", 401)
                response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
                return response
            with self._lock:
                user = self._users_by_sub.get(claims["sub"])
            if user is None:
                return self._error("invalid_token", 401)
            return jsonify(sub=claims["sub"], name=user.name, email=user.email,
                           preferred_username=user.username)

        return app
