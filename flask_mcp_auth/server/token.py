"""The token endpoint's grants (RFC 6749 §4.1.3, §6; OAuth 2.1 §4.1.3, §4.3; RFC 7636 §4.6; RFC 8707
§2.2; SPEC §3.6). No Flask here: the blueprint passes the parsed form and the ``Authorization``
header, and renders the returned body (or the raised :class:`~flask_mcp_auth.errors.OAuthError`).

Storage records (keys are SHA-256 digests, never the secret values)::

    ("code", digest(code))          written by the chain; consumed here with take() (single use)
    ("code_used", digest(code))     {session_id}: a replayed code revokes the grant it started
    ("refresh", digest(token))      one record per refresh token of a family (see below)

Refresh tokens are opaque, rotated on every use, and belong to a *family* — every token descended from
one authorization code. Each record carries ``superseded_at`` (``None`` while current). A superseded
token still works for :data:`REFRESH_GRACE` seconds, returning a **fresh pair** each time, so a client
whose response was lost (or that refreshed twice concurrently) keeps working; the original
``superseded_at`` is never moved forward. Presenting a superseded token after the grace is treated as
theft: the whole grant is revoked. A family maps to exactly one session (``tsid``), so killing a family
is ``storage.revoke_session(tsid)``: every access token carrying that ``tsid`` is refused by the RS,
the session's upstream tokens are deleted, and no token of the family refreshes again (each refresh
checks the session's revocation marker, which outlives every refresh token).

Why not Authlib's ``AuthorizationServer``/grant classes: they assume one authorize request answered by
one consent, and store codes and tokens through their own model mixins keyed by the plaintext values.
Here a code is minted only at the end of a multi-leg chain, every single-use item is consumed with an
atomic storage ``take`` keyed by a digest, a replayed code must revoke the grant it started, and refresh
families map to sessions whose upstream tokens die with them — so the grants are written against our
:class:`~flask_mcp_auth.storage.Storage`. Authlib still computes the PKCE S256 challenge.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from ..config import Settings
from ..errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from ..storage import Storage
from ..tokens import LEEWAY, TokenService
from . import digest, random_token
from .clients import Client, ClientRegistry

__all__ = [
    "REFRESH_GRACE",
    "TokenEndpoint",
    "TokenResult",
    "revocation_ttl",
    "verify_pkce",
]

#: Seconds a rotated-out refresh token keeps working (SPEC §3.6: ≤ 60 s).
REFRESH_GRACE = 60
# RFC 7636 §4.1: code_verifier = 43*128unreserved.
_VERIFIER_RE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
# Codes and refresh tokens we mint are 43 characters; anything far longer is not ours.
_MAX_TOKEN_LENGTH = 512


def revocation_ttl(settings: Settings) -> int:
    """How long a session's revocation marker is kept: longer than any token of the grant lives."""
    return max(settings.access_token_ttl, settings.refresh_token_ttl) + LEEWAY


def verify_pkce(verifier: str | None, challenge: str, method: str) -> bool:
    """RFC 7636 §4.6 with S256 only; a verifier outside the §4.1 ABNF never matches."""
    if method != "S256" or not verifier or not _VERIFIER_RE.match(verifier):
        return False
    return hmac.compare_digest(create_s256_code_challenge(verifier), challenge)


@dataclass(frozen=True)
class TokenResult:
    """The JSON body to send plus the ids for the ``token_issued`` signal (no token values)."""

    body: dict[str, Any]
    client_id: str
    subject: str
    session_id: str
    grant_type: str
    scopes: tuple[str, ...]
    jti: str


@dataclass(frozen=True)
class _Grant:
    """What a code or refresh token grants; copied from record to record across rotations."""

    client_id: str
    user_id: str
    session_id: str
    family_id: str
    scopes: tuple[str, ...]
    resource: str
    name: str | None
    email: str | None
    providers: tuple[str, ...]
    auth_time: int | None

    def record(self, superseded_at: float | None = None) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "user_id": self.user_id,
            "session_id": self.session_id,
            "family_id": self.family_id,
            "scopes": list(self.scopes),
            "resource": self.resource,
            "name": self.name,
            "email": self.email,
            "providers": list(self.providers),
            "auth_time": self.auth_time,
            "superseded_at": superseded_at,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], *, family_id: str | None = None) -> _Grant:
        try:
            auth_time = rec.get("auth_time")
            return cls(
                client_id=str(rec["client_id"]),
                user_id=str(rec["user_id"]),
                session_id=str(rec["session_id"]),
                family_id=str(family_id or rec["family_id"]),
                scopes=tuple(str(s) for s in rec.get("scopes") or ()),
                resource=str(rec["resource"]),
                name=rec.get("name"),
                email=rec.get("email"),
                providers=tuple(str(p) for p in rec.get("providers") or ()),
                auth_time=int(auth_time) if auth_time is not None else None,
            )
        except (KeyError, TypeError, ValueError):
            raise InvalidGrant() from None


class TokenEndpoint:
    """``POST /oauth/token`` without Flask.

    >>> endpoint = TokenEndpoint(settings=s, storage=store, registry=registry, tokens=token_service)
    >>> result = endpoint.handle({"grant_type": "authorization_code", ...}, authorization=None)
    >>> result.body["token_type"]
    'Bearer'
    """

    def __init__(
        self,
        *,
        settings: Settings,
        storage: Storage,
        registry: ClientRegistry,
        tokens: TokenService,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.registry = registry
        self.tokens = tokens
        self.clock = clock
        #: called with (client_id, session_id, reason) when a grant is revoked here (for the signal)
        self.on_revoke: Callable[[str, str, str], None] | None = None

    # -------------------------------------------------------------------------------------------------
    def handle(self, form: Mapping[str, str], authorization: str | None) -> TokenResult:
        grant_type = form.get("grant_type")
        if not grant_type:
            raise InvalidRequest("grant_type is missing.")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise UnsupportedGrantType()
        client = self.registry.authenticate_request(form, authorization)
        if grant_type not in client.grant_types:
            raise UnauthorizedClient()
        if grant_type == "authorization_code":
            result = self._authorization_code(client, form)
        else:
            result = self._refresh_token(client, form)
        self.registry.touch(client)
        return result

    # -- authorization_code -------------------------------------------------------------------------------
    def _authorization_code(self, client: Client, form: Mapping[str, str]) -> TokenResult:
        code = form.get("code")
        if not code:
            raise InvalidRequest("code is missing.")
        if len(code) > _MAX_TOKEN_LENGTH:
            raise InvalidGrant()
        key = digest(code)
        # The "used" marker is written BEFORE the single-use take, so that of concurrent redemptions
        # every loser of the take finds it and revokes the grant (SPEC §3.6): no replay goes unseen.
        peek = self.storage.get("code", key)
        if peek is not None and peek.get("session_id"):
            self.storage.put("code_used", key, {"session_id": str(peek["session_id"])},
                             self.settings.code_ttl)
        record = self.storage.take("code", key)
        if record is None:
            self._detect_code_replay(key, client)
            raise InvalidGrant()
        grant = _Grant.from_record(
            {**record, "resource": record.get("resource") or self.settings.audience},
            family_id=random_token(16),
        )
        if grant.client_id != client.client_id:
            raise InvalidGrant()
        redirect_uri = form.get("redirect_uri")
        if redirect_uri is None:
            # OAuth 2.1 §4.1.3: required when the authorization request carried one.
            if record.get("redirect_uri_provided", True):
                raise InvalidGrant("redirect_uri is required.")
        elif redirect_uri != record.get("redirect_uri"):
            raise InvalidGrant()
        if not verify_pkce(form.get("code_verifier"), str(record.get("code_challenge") or ""),
                           str(record.get("code_challenge_method") or "")):
            raise InvalidGrant()
        self._check_resource(form, grant.resource)
        session = self.storage.load_session(grant.session_id)
        if session.revoked or (session.owner is not None and session.owner != grant.user_id):
            raise InvalidGrant()

        refresh = "offline_access" in grant.scopes and "refresh_token" in client.grant_types
        body: dict[str, Any] = {}
        if refresh:
            body["refresh_token"] = self._new_refresh_token(grant)
        ttl = self.settings.refresh_token_ttl if refresh else self.settings.access_token_ttl + LEEWAY
        self.storage.set_session(grant.session_id, grant.user_id, ttl, complete=True)
        return self._issue(grant, grant.scopes, body, "authorization_code",
                           nonce=record.get("nonce"))

    def _detect_code_replay(self, key: str, client: Client) -> None:
        used = self.storage.get("code_used", key)
        if used is None:
            return
        # RFC 6749 §4.1.2 / SPEC §3.6: a replayed code revokes everything its first use produced.
        session_id = str(used.get("session_id") or "")
        if session_id:
            self.storage.revoke_session(session_id, revocation_ttl(self.settings))
            if self.on_revoke is not None:
                self.on_revoke(client.client_id, session_id, "code_replay")

    # -- refresh_token ------------------------------------------------------------------------------------
    def _refresh_token(self, client: Client, form: Mapping[str, str]) -> TokenResult:
        token = form.get("refresh_token")
        if not token:
            raise InvalidRequest("refresh_token is missing.")
        if len(token) > _MAX_TOKEN_LENGTH:
            raise InvalidGrant()
        key = digest(token)
        record = self.storage.get("refresh", key)
        if record is None:
            raise InvalidGrant()
        grant = _Grant.from_record(record)
        if grant.client_id != client.client_id:
            raise InvalidGrant()
        scopes = grant.scopes
        requested = (form.get("scope") or "").split()
        if requested:
            if not set(requested) <= set(grant.scopes):
                raise InvalidScope("The requested scope exceeds the granted scope.")
            scopes = tuple(dict.fromkeys(requested))
        self._check_resource(form, grant.resource)
        session = self.storage.load_session(grant.session_id)
        if session.revoked or (session.owner is not None and session.owner != grant.user_id):
            raise InvalidGrant()

        now = self.clock()
        superseded_at = record.get("superseded_at")
        if superseded_at is None and not self.storage.swap(
            "refresh", key, record, {**record, "superseded_at": now}, self.settings.refresh_token_ttl
        ):
            # A concurrent request rotated it first: judge this one as a retry.
            record = self.storage.get("refresh", key)
            if record is None:
                raise InvalidGrant()
            superseded_at = record.get("superseded_at")
        if superseded_at is not None and now - float(superseded_at) > REFRESH_GRACE:
            self.storage.revoke_session(grant.session_id, revocation_ttl(self.settings))
            if self.on_revoke is not None:
                self.on_revoke(client.client_id, grant.session_id, "refresh_reuse")
            raise InvalidGrant()

        body = {"refresh_token": self._new_refresh_token(grant)}
        self.storage.set_session(grant.session_id, grant.user_id, self.settings.refresh_token_ttl,
                                 complete=True)
        return self._issue(grant, scopes, body, "refresh_token", nonce=None)

    def _new_refresh_token(self, grant: _Grant) -> str:
        token = random_token(32)
        self.storage.put("refresh", digest(token), grant.record(None), self.settings.refresh_token_ttl,
                         nx=True)
        return token

    # -- shared -------------------------------------------------------------------------------------------
    def _check_resource(self, form: Mapping[str, str], granted: str) -> None:
        """RFC 8707 §2.2: a ``resource`` at the token endpoint may only repeat the granted one."""
        resource = form.get("resource")
        if resource is not None and resource != granted:
            raise InvalidTarget()

    def _issue(
        self,
        grant: _Grant,
        scopes: tuple[str, ...],
        body: dict[str, Any],
        grant_type: str,
        *,
        nonce: Any,
    ) -> TokenResult:
        ttl = self.settings.access_token_ttl
        access_token, claims = self.tokens.mint(
            subject=grant.user_id,
            client_id=grant.client_id,
            audience=grant.resource,
            scopes=scopes,
            session_id=grant.session_id,
            ttl=ttl,
            name=grant.name,
            email=grant.email,
        )
        response: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": " ".join(scopes),
        }
        response.update(body)
        if "openid" in scopes:
            response["id_token"] = self._id_token(grant, scopes, nonce)
        return TokenResult(
            body=response,
            client_id=grant.client_id,
            subject=grant.user_id,
            session_id=grant.session_id,
            grant_type=grant_type,
            scopes=scopes,
            jti=str(claims["jti"]),
        )

    def _id_token(self, grant: _Grant, scopes: tuple[str, ...], nonce: Any) -> str:
        """OIDC Core §2 ID token for ``openid`` grants (``aud`` = the client)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": grant.user_id,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + self.settings.access_token_ttl,
        }
        if grant.auth_time is not None:
            claims["auth_time"] = grant.auth_time
        if isinstance(nonce, str) and nonce:
            claims["nonce"] = nonce
        if "profile" in scopes and grant.name:
            claims["name"] = grant.name
        if "email" in scopes and grant.email:
            claims["email"] = grant.email
        key = self.tokens.keys.current
        return jwt.encode(claims, key.private_key, algorithm=key.alg,
                          headers={"kid": key.kid, "typ": "JWT"})
