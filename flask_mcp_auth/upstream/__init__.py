"""Upstream identity providers: the client protocol (base), OIDC and plain OAuth2 clients, refresh."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

    from ..config import Settings
    from .base import UpstreamClient

__all__ = ["build_clients"]


def build_clients(settings: Settings, http: requests.Session) -> dict[str, UpstreamClient]:
    """One client per configured upstream, in order (placeholder; issue 3)."""
    return {}
