"""Plain OAuth 2.0 upstream client (GitHub-like providers) and the HTTP plumbing shared with OIDC.

Implements the client side of the authorization code grant (RFC 6749 §4.1) with PKCE S256
(RFC 7636 §4.3) and refresh (RFC 6749 §6), written for providers that do not follow the RFC closely:

* The token request sends ``Accept: application/json`` but a **form-encoded** answer is parsed too
  (GitHub ignores the header on some paths); an ``error`` member is a failure **even with HTTP 200**.
* ``token_type`` must be ``bearer`` (any case); a missing one is taken as bearer (RFC 6749 §5.1
  requires it but several providers omit it); anything else (``mac`` …) ⇒ :class:`UpstreamRejected`.
* ``expires_in``: a positive integer (or a string of digits — form-encoded bodies have only strings).
  Anything else (``-5``, ``0``, ``"abc"``, ``1.5``, ``true``) ⇒ :class:`UpstreamRejected`
  (``invalid_expires_in``): a provider that cannot state a lifetime is not trusted with the grant. An
  absent ``expires_in`` means "unknown": ``expires_at = None`` (GitHub OAuth App tokens never expire).
* Bodies are read with ``stream=True`` and capped at :data:`MAX_BODY` (1 MiB) ⇒ beyond it
  :class:`UpstreamUnavailable`. Each call is bounded by ``timeout`` seconds *in total* (connect,
  headers and body: :func:`flask_mcp_auth._http.fetch`), not per socket read. Timeouts, connection
  errors, 5xx, 429, HTML or undecodable bodies, redirects and a 200 without ``access_token`` are
  :class:`UpstreamUnavailable` (transient). ``error`` codes other than
  ``temporarily_unavailable``/``server_error``/``slow_down`` are :class:`UpstreamRejected`.
* Identity: ``GET userinfo_endpoint`` with the access token; ``userinfo_fields`` maps ``subject`` /
  ``name`` / ``email`` to lists of field names tried in order (defaults ``sub,id`` / ``name,login,
  preferred_username`` / ``email``); numbers become strings (GitHub ``"id": 12345`` ⇒ ``"12345"``).
  **Without a userinfo endpoint** there is no stable account id, so the subject is synthetic and
  random — ``tk-`` + a SHA-256 hex of 32 random bytes — and **every login is a new user**. It is never
  derived from a token.

Every HTTP call goes through the shared ``requests.Session`` (via ``_http.fetch``) with ``verify=``
and ``timeout=`` passed explicitly (``REQUESTS_CA_BUNDLE`` would otherwise override the session's
``verify``) and never follows redirects. Exceptions and logs carry the provider name and a short
reason code only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

import requests
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri

from .._http import HTTPFailure, Reply, fetch
from ..config import UpstreamConfig
from ..storage import UpstreamToken
from .base import LegResult, UpstreamIdentity, UpstreamRejected, UpstreamUnavailable

__all__ = ["MAX_BODY", "OAuth2Client"]

logger = logging.getLogger("flask_mcp_auth.upstream")

#: Largest upstream response body read (token, userinfo, discovery, JWKS).
MAX_BODY = 1024 * 1024

DEFAULT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "subject": ("sub", "id"),
    "name": ("name", "login", "preferred_username"),
    "email": ("email",),
}

#: OAuth error codes that mean "try again later" rather than "no".
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})
#: Error codes echoed as reason codes; anything else becomes "error_response" (never upstream text).
_KNOWN_ERRORS = frozenset({
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
    "unsupported_grant_type", "invalid_scope", "access_denied", "bad_verification_code",
    "incorrect_client_credentials", "redirect_uri_mismatch", "expired_token", "invalid_token",
    *_TRANSIENT_ERRORS,
})
_DIGITS = re.compile(r"^[0-9]{1,10}$")


def parse_token_body(reply: Reply) -> dict[str, Any] | None:
    """JSON object, or a form-encoded body (providers that ignore ``Accept``); ``None`` otherwise."""
    ctype = reply.content_type.split(";")[0].strip().lower()
    head = reply.body.lstrip()[:1]
    if ctype == "application/json" or ctype.endswith("+json") or head == b"{":
        return reply.json_object()
    if ctype in ("application/x-www-form-urlencoded", "text/plain", ""):
        try:
            pairs = parse_qsl(reply.body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return None
        keys = [k for k, _ in pairs]
        if not pairs or len(set(keys)) != len(keys):
            return None
        return dict(pairs)
    return None  # HTML login walls, error pages, XML, …


def basic_auth(client_id: str, secret: str) -> str:
    # hand-written: RFC 6749 §2.3.1 form-encodes id and secret before Base64; requests' and Authlib's
    # Basic helpers do not, which breaks secrets containing ':' or non-ASCII characters
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _pick(data: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = data.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str) and value:
            return value
    return None


def parse_expires_in(value: Any) -> int | None:
    """Seconds from ``expires_in``; ``None`` if absent. Raises ``ValueError`` if unusable."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _DIGITS.match(value):
        value = int(value)
    if not isinstance(value, int) or value <= 0:
        raise ValueError("not a positive integer")
    return value


class OAuth2Client:
    """One plain OAuth 2.0 provider.

    >>> client = OAuth2Client(settings.upstream("github"), http, verify=True, timeout=10)
    >>> url = client.authorization_url(redirect_uri=cb, state=state, code_challenge=cc, nonce=None)
    >>> result = client.exchange_code(code=code, redirect_uri=cb, code_verifier=verifier, nonce=None)
    >>> result.identity.subject
    '12345'
    """

    def __init__(self, config: UpstreamConfig, http: requests.Session, *, verify: bool | str = True,
                 timeout: float = 10.0, clock: Callable[[], float] = time.time,
                 max_body: int = MAX_BODY) -> None:
        self.config = config
        self._http = http
        self._verify = verify
        self._timeout = timeout
        self._clock = clock
        self._max_body = max_body
        self.authorization_endpoint = config.authorization_endpoint or ""
        self.token_endpoint = config.token_endpoint or ""
        self.userinfo_endpoint = config.userinfo_endpoint

    @property
    def name(self) -> str:
        return self.config.name

    # -- protocol -------------------------------------------------------------------------------
    def authorization_url(self, *, redirect_uri: str, state: str, code_challenge: str,
                          nonce: str | None) -> str:
        """RFC 6749 §4.1.1 + RFC 7636 §4.3; ``nonce`` is ignored by plain OAuth 2.0 providers."""
        return self._grant_uri(redirect_uri=redirect_uri, state=state, code_challenge=code_challenge)

    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str,
                      nonce: str | None) -> LegResult:
        body = self._token_request({
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        })
        issued_at = time.time()  # with expires_at, the lifetime: refresh margin = min(30 s, lifetime/2)
        fields = self._token_fields(body)
        identity = self._leg_identity(body, fields, nonce)
        token = UpstreamToken(
            provider=self.name,
            access_token=fields["access_token"],
            refresh_token=fields["refresh_token"],
            id_token=fields["id_token"],
            expires_at=fields["expires_at"],
            scope=fields["scope"] or self._requested_scope() or None,
            subject=identity.subject,
            issued_at=issued_at,
        )
        return LegResult(token=token, identity=identity)

    def refresh(self, token: UpstreamToken) -> UpstreamToken:
        """RFC 6749 §6 with the original scope; keeps the old refresh token when none is returned."""
        if not token.refresh_token:
            raise self._rejected("no_refresh_token")
        data = {"grant_type": "refresh_token", "refresh_token": token.refresh_token}
        scope = token.scope or self._requested_scope()
        if scope:
            data["scope"] = scope
        body = self._token_request(data)
        fields = self._token_fields(body)
        id_token = self._refreshed_id_token(body, fields, token)
        return UpstreamToken(
            provider=self.name,
            access_token=fields["access_token"],
            refresh_token=fields["refresh_token"] or token.refresh_token,
            id_token=id_token,
            expires_at=fields["expires_at"],
            scope=fields["scope"] or token.scope,
            subject=token.subject,
        )

    def check(self) -> None:
        """Reach the authorization endpoint (any non-5xx answer means the provider is there)."""
        reply = self._fetch("GET", self.authorization_endpoint, what="check")
        if reply.status >= 500:
            raise self._unavailable("check_http_5xx")

    # -- hooks for OIDC ---------------------------------------------------------------------------
    def _grant_uri(self, **extra: str) -> str:
        params = dict(self.config.authorize_params)
        params.update(extra, code_challenge_method="S256")
        return str(prepare_grant_uri(
            self.authorization_endpoint, self.config.client_id, "code",
            scope=self._requested_scope() or None, **params,
        ))

    def _leg_identity(self, body: Mapping[str, Any], fields: Mapping[str, Any],
                      nonce: str | None) -> UpstreamIdentity:
        if not self.userinfo_endpoint:
            # no identity source: a random subject, so each login is a new user (see module docstring)
            return UpstreamIdentity(subject="tk-" + hashlib.sha256(secrets.token_bytes(32)).hexdigest())
        data = self._userinfo(fields["access_token"])
        subject = _pick(data, self._fields("subject"))
        if subject is None:
            raise self._rejected("userinfo_no_subject")
        return UpstreamIdentity(subject=subject, name=_pick(data, self._fields("name")),
                                email=_pick(data, self._fields("email")), claims=data)

    def _refreshed_id_token(self, body: Mapping[str, Any], fields: Mapping[str, Any],
                            old: UpstreamToken) -> str | None:
        return old.id_token

    # -- helpers ---------------------------------------------------------------------------------
    def _requested_scope(self) -> str:
        return " ".join(self.config.scopes)

    def _fields(self, name: str) -> tuple[str, ...]:
        return tuple(self.config.userinfo_fields.get(name) or DEFAULT_FIELDS[name])

    def _rejected(self, reason: str) -> UpstreamRejected:
        logger.info("upstream %s rejected: %s", self.name, reason)
        return UpstreamRejected(self.name, reason)

    def _unavailable(self, reason: str) -> UpstreamUnavailable:
        logger.warning("upstream %s unavailable: %s", self.name, reason)
        return UpstreamUnavailable(self.name, reason)

    def _fetch(self, method: str, url: str, *, what: str, **kwargs: Any) -> Reply:
        """One HTTP call, body read up to the cap, all of it within ``timeout`` seconds (``_http``).
        Raises UpstreamUnavailable (``<what>_timeout`` / ``_connection_error`` / ``_response_too_large``)."""
        try:
            return fetch(self._http, method, url, verify=self._verify, timeout=self._timeout,
                         max_body=self._max_body, **kwargs)
        except HTTPFailure as exc:
            reason = {"timeout": "timeout", "too_large": "response_too_large"}.get(
                exc.reason, "connection_error")
            raise self._unavailable(f"{what}_{reason}") from None

    def _token_request(self, data: dict[str, str]) -> dict[str, Any]:
        """POST to this provider's own token endpoint (never another one: mix-up defence)."""
        headers = {"Accept": "application/json"}
        cfg = self.config
        method = cfg.token_endpoint_auth_method
        if method == "client_secret_basic" and cfg.client_secret is not None:
            headers["Authorization"] = basic_auth(cfg.client_id, cfg.client_secret)
        else:
            data = {**data, "client_id": cfg.client_id}
            if method == "client_secret_post" and cfg.client_secret is not None:
                data["client_secret"] = cfg.client_secret
        reply = self._fetch("POST", self.token_endpoint, what="token", data=data, headers=headers)
        body = parse_token_body(reply)
        error = body.get("error") if body is not None else None
        if error is not None:
            code = error if isinstance(error, str) and error in _KNOWN_ERRORS else "error_response"
            if code in _TRANSIENT_ERRORS or reply.status >= 500 or reply.status == 429:
                raise self._unavailable(f"token_{code}")
            raise self._rejected(code)
        if reply.status >= 500 or reply.status == 429:
            raise self._unavailable("token_http_5xx" if reply.status >= 500 else "token_http_429")
        if not 200 <= reply.status < 300:
            raise self._unavailable(f"token_http_{reply.status}")
        if body is None:
            raise self._unavailable("token_unusable_response")
        return body

    def _token_fields(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a successful token response (RFC 6749 §5.1) into typed fields."""
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise self._unavailable("token_no_access_token")
        token_type = body.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise self._rejected("unsupported_token_type")
        try:
            expires_in = parse_expires_in(body.get("expires_in"))
        except ValueError:
            raise self._rejected("invalid_expires_in") from None
        out: dict[str, Any] = {
            "access_token": access,
            "expires_at": self._clock() + expires_in if expires_in is not None else None,
        }
        for name in ("refresh_token", "id_token", "scope"):
            value = body.get(name)
            if value is not None and not isinstance(value, str):
                raise self._unavailable(f"token_malformed_{name}")
            out[name] = value or None
        return out

    def _userinfo(self, access_token: str) -> dict[str, Any]:
        assert self.userinfo_endpoint is not None
        reply = self._fetch("GET", self.userinfo_endpoint, what="userinfo", headers={
            "Authorization": f"Bearer {access_token}", "Accept": "application/json"})
        if reply.status in (401, 403):
            raise self._rejected("userinfo_unauthorized")
        if reply.status != 200:
            raise self._unavailable("userinfo_http_error")
        data = reply.json_object()
        if data is None:
            raise self._unavailable("userinfo_unusable_response")
        return data
