"""Our JWT access tokens (RFC 9068 profile, SPEC §3.6): minting and verification. No Flask here.

Minting uses the current signing key; verification resolves keys locally by ``kid`` (Mode B) — no HTTP.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from .errors import InvalidToken
from .keys import KeySet

__all__ = ["TokenService"]

LEEWAY = 60  # seconds of clock-skew tolerance for exp/nbf/iat (SPEC §5)


class TokenService:
    """Mint and verify this AS's access tokens.

    >>> svc = TokenService(keyset, issuer="https://mcp.example.com", audience="https://mcp.example.com/mcp")
    >>> token, claims = svc.mint(subject="u1", client_id="c", audience=svc.audience, scopes=["openid"],
    ...                          session_id="sid", ttl=3600)
    >>> svc.verify(token)["sub"]
    'u1'
    """

    def __init__(self, keys: KeySet, *, issuer: str, audience: str) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience

    def mint(
        self,
        *,
        subject: str,
        client_id: str,
        audience: str,
        scopes: Sequence[str],
        session_id: str,
        ttl: int,
        name: str | None = None,
        email: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": client_id,
            "scope": " ".join(scopes),
            "tsid": session_id,
        }
        if name:
            claims["name"] = name
        if email:
            claims["email"] = email
        if extra:
            claims.update(extra)
        key = self.keys.current
        token = jwt.encode(
            claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"}
        )
        return token, claims

    def verify(self, token: str) -> dict[str, Any]:
        """Verify signature (local key by ``kid``), ``typ``, ``iss``, ``aud``, ``exp``/``nbf``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        kid = header.get("kid")
        key = self.keys.by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("unknown signing key")
        if header.get("alg") != key.alg:
            raise InvalidToken("unexpected algorithm")
        if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise InvalidToken("not an access token")
        if header.get("crit"):
            raise InvalidToken("unsupported critical header")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken("token rejected") from exc
        return claims
