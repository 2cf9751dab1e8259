"""The embedded authorization server (SPEC §3): protocol modules plus the thin blueprint."""

from __future__ import annotations

import secrets

from .._encoding import sha256_b64url

__all__ = ["digest", "random_token"]


def digest(value: str) -> str:
    """SHA-256, base64url: how codes, refresh tokens and client secrets are stored and looked up."""
    return sha256_b64url(value.encode())


def random_token(nbytes: int = 32) -> str:
    """A CSPRNG token (≥ 128 bits; default 256) for codes, states, nonces, verifiers, ids."""
    return secrets.token_urlsafe(nbytes)
