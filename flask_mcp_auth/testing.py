"""Helpers for testing apps protected by flask_mcp_auth (SPEC §1): mint a valid access token for a
user, with upstream tokens already stored, without walking the login chain.

>>> from flask_mcp_auth.testing import issue_token
>>> token = issue_token(app, "alice", upstream_tokens={"github": "gho_test"}, scopes=["tools"])
>>> resp = app.test_client().post("/mcp", headers={"Authorization": f"Bearer {token}"})
>>> # in the view: g.identity.subject == "alice", g.identity.upstream_tokens["github"] == "gho_test"

Only for Mode B apps (upstreams configured): in Mode A the tokens come from an external issuer whose
keys this app does not hold.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .storage import UpstreamToken

if TYPE_CHECKING:
    from flask import Flask

    from .runtime import Runtime

__all__ = ["issue_token"]


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
