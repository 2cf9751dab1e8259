"""The upstream client protocol shared by OIDC and plain OAuth2 providers (SPEC §4).

An :class:`UpstreamClient` knows one provider: it builds the authorization URL of a leg (always with
PKCE S256, state and — for OIDC — nonce), redeems a leg's code **at its own token endpoint only**
(mix-up defence), resolves the upstream identity, and refreshes tokens. It never touches Flask.

Failures are classified so callers can act on them:

* :class:`UpstreamRejected` — the provider said no for good (``invalid_grant``, bad id_token, …):
  drop the stored row / abort the chain.
* :class:`UpstreamUnavailable` — timeout, connection error, 5xx, HTML or otherwise unusable body:
  transient; keep stored rows, answer 503 / ``temporarily_unavailable``.

Messages carry provider names and short reason codes only — never token values or upstream bodies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import UpstreamConfig
from ..errors import UpstreamError
from ..storage import UpstreamToken

__all__ = [
    "LegResult",
    "UpstreamClient",
    "UpstreamIdentity",
    "UpstreamRejected",
    "UpstreamUnavailable",
]


class UpstreamRejected(UpstreamError):
    """The provider refused (permanent). ``reason`` is a short code safe to log."""

    def __init__(self, provider: str, reason: str) -> None:
        self.provider = provider
        self.reason = reason
        super().__init__(f"upstream {provider!r} rejected the request: {reason}")


class UpstreamUnavailable(UpstreamError):
    """The provider could not be used right now (transient). ``reason`` is safe to log."""

    def __init__(self, provider: str, reason: str) -> None:
        self.provider = provider
        self.reason = reason
        super().__init__(f"upstream {provider!r} unavailable: {reason}")


@dataclass(frozen=True)
class UpstreamIdentity:
    """Who the user is at one provider. ``subject`` is always a string (numbers are converted)."""

    subject: str
    name: str | None = None
    email: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class LegResult:
    token: UpstreamToken
    identity: UpstreamIdentity


class UpstreamClient(Protocol):
    """One configured provider."""

    config: UpstreamConfig

    @property
    def name(self) -> str: ...

    def authorization_url(
        self, *, redirect_uri: str, state: str, code_challenge: str, nonce: str | None
    ) -> str:
        """The URL the browser is sent to for this leg (PKCE S256 always)."""
        ...

    def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str, nonce: str | None
    ) -> LegResult:
        """Redeem ``code`` at this provider's token endpoint and resolve the identity."""
        ...

    def refresh(self, token: UpstreamToken) -> UpstreamToken:
        """Refresh with ``token.refresh_token`` (sending the original scope); keep the old refresh token
        when none is returned; a new id_token must keep ``token.subject``."""
        ...

    def check(self) -> None:
        """Reach the provider's discovery document/endpoints (for ``flask mcp-auth check``)."""
        ...
