"""Token revocation (RFC 7009), without Flask.

* A refresh token of ours ends its whole grant: the session is revoked (``storage.revoke_session``),
  which kills the refresh-token family, deletes the session's upstream tokens and makes the RS refuse
  every access token carrying that ``tsid``.
* An access token (one of our JWTs, signature and issuer checked, expiry not required) does the same:
  a JWT cannot be recalled on its own without a per-``jti`` deny-list, and a client revoking its
  access token means to end the grant.
* A token issued to another client is refused (RFC 7009 §2.1, ``invalid_grant``); an unknown, expired
  or malformed token is answered with 200 like a successful revocation (RFC 7009 §2.2).

Why not Authlib's RFC 7009 ``RevocationEndpoint``: revocation here is "end the grant" — a refresh token
or one of our access tokens revokes its whole session (family, upstream tokens, RS acceptance), which is
an operation on our Storage rather than a per-token ``revoke_token`` model hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from ..config import Settings
from ..errors import InvalidGrant, InvalidRequest
from ..storage import Storage
from ..tokens import LEEWAY, TokenService
from . import digest
from .clients import ClientRegistry
from .token import revocation_ttl

__all__ = ["RevocationEndpoint", "Revoked"]

_MAX_TOKEN_LENGTH = 16384


@dataclass(frozen=True)
class Revoked:
    """What was revoked, for the ``token_revoked`` signal (ids only)."""

    client_id: str
    session_id: str
    token_type: str  # "refresh_token" or "access_token"


class RevocationEndpoint:
    """``POST /oauth/revoke`` without Flask.

    >>> endpoint = RevocationEndpoint(settings=s, storage=store, registry=registry, tokens=svc)
    >>> endpoint.handle({"token": refresh_token, "client_id": "abc"}, authorization=None)
    Revoked(client_id='abc', session_id='…', token_type='refresh_token')
    """

    def __init__(
        self, *, settings: Settings, storage: Storage, registry: ClientRegistry, tokens: TokenService
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.registry = registry
        self.tokens = tokens

    def handle(self, form: Mapping[str, str], authorization: str | None) -> Revoked | None:
        """Authenticate the client and revoke; ``None`` when there was nothing to revoke."""
        client = self.registry.authenticate_request(form, authorization)
        token = form.get("token")
        if not token:
            raise InvalidRequest("token is missing.")
        if len(token) > _MAX_TOKEN_LENGTH:
            return None
        # token_type_hint only orders the lookups (RFC 7009 §2.1); both kinds are always tried.
        lookups = [self._refresh, self._access]
        if form.get("token_type_hint") == "access_token":
            lookups.reverse()
        for lookup in lookups:
            found = lookup(token)
            if found is None:
                continue
            client_id, session_id, token_type = found
            if client_id != client.client_id:
                raise InvalidGrant("The token was issued to another client.")
            self.storage.revoke_session(session_id, revocation_ttl(self.settings))
            return Revoked(client_id=client_id, session_id=session_id, token_type=token_type)
        return None

    def _refresh(self, token: str) -> tuple[str, str, str] | None:
        record = self.storage.get("refresh", digest(token))
        if not record or not record.get("session_id"):
            return None
        return str(record.get("client_id")), str(record["session_id"]), "refresh_token"

    def _access(self, token: str) -> tuple[str, str, str] | None:
        claims = self._our_jwt_claims(token)
        if claims is None or not claims.get("tsid"):
            return None
        return str(claims.get("client_id")), str(claims["tsid"]), "access_token"

    def _our_jwt_claims(self, token: str) -> dict[str, Any] | None:
        """Claims of a JWT we signed (any of our audiences); ``None`` for anything else or expired."""
        if token.count(".") != 2:
            return None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        kid = header.get("kid")
        key = self.tokens.keys.by_kid.get(kid) if isinstance(kid, str) else None
        if key is None or header.get("alg") != key.alg:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.alg],
                issuer=self.settings.issuer,
                leeway=LEEWAY,
                options={"verify_aud": False, "require": ["exp", "iss", "sub"]},
            )
        except jwt.PyJWTError:
            return None  # expired tokens need no revocation; forged ones are not ours
        return claims
