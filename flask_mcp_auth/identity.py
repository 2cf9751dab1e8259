"""Incoming identity (SPEC §5): :class:`Identity`, ``current_identity``, the ``before_request`` hook
and ``required()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

from flask import g
from werkzeug.local import LocalProxy

__all__ = ["Identity", "current_identity"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Identity:
    """The caller of the current request, built by the hook from a verified bearer token.

    ``upstream_tokens`` maps provider name to a live access token (already refreshed); it is
    read-only. ``repr``/``str`` never show a token.

    >>> from flask_mcp_auth import current_identity
    >>> current_identity.subject, sorted(current_identity.upstream_tokens)
    """

    subject: str
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)
    token: str = field(default="", repr=False)
    session_id: str | None = field(default=None, repr=False)
    name: str | None = None
    email: str | None = None
    upstream_tokens: Mapping[str, str] = field(default_factory=lambda: _EMPTY, repr=False)
    upstream_id_tokens: Mapping[str, str] = field(default_factory=lambda: _EMPTY, repr=False)
    missing_providers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # Freeze the mappings so views cannot change what later code sees.
        for name in ("upstream_tokens", "upstream_id_tokens", "claims"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(dict(value)))

    def __str__(self) -> str:
        return f"Identity(subject={self.subject!r}, client_id={self.client_id!r})"

    @property
    def providers(self) -> frozenset[str]:
        return frozenset(self.upstream_tokens)


def _get_identity() -> Identity | None:
    return cast("Identity | None", g.get("identity"))


#: The current request's :class:`Identity` (or ``None``), like ``g.identity``.
current_identity: Identity | None = cast("Identity | None", LocalProxy(_get_identity))


# --- placeholders; the incoming-identity work (issue 4) replaces these -------------------------
from collections.abc import Callable, Iterable  # noqa: E402
from typing import TYPE_CHECKING, TypeVar  # noqa: E402

if TYPE_CHECKING:
    import requests
    from flask import Flask

    from .config import Settings
    from .runtime import Runtime

F = TypeVar("F", bound=Callable[..., Any])


class ExternalVerifier:
    """Mode A: verifies JWTs of an external issuer (placeholder)."""

    def __init__(self, settings: Settings, http: requests.Session) -> None:
        self.settings = settings
        self.http = http


def install(app: Flask, runtime: Runtime) -> None:
    """Register the before_request hook (placeholder)."""


def required(
    scopes: Iterable[str] | None = None, providers: Iterable[str] | None = None
) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        raise NotImplementedError

    return decorator
