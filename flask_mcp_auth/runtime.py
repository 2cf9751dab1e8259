"""The per-app state object that ``init_app`` builds into ``app.extensions["mcp_auth"]``.

Thin layers (``server/blueprint``, ``identity``, ``outgoing/decorators``) read their components from
it; protocol modules receive the components they need as explicit arguments.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import requests

from .config import Settings
from .keys import KeySet
from .storage import Storage
from .storage.vault import TokenVault
from .upstream.base import UpstreamClient

__all__ = ["Runtime"]


@dataclass
class Runtime:
    """Everything one app's extension needs at request time. Built once by ``init_app``."""

    settings: Settings
    storage: Storage
    keys: KeySet | None  # Mode B: our signing keys (Mode A: None)
    tokens: Any  # Mode B: tokens.TokenService; Mode A: the external-issuer verifier (identity)
    vault: TokenVault | None  # Mode B only
    upstreams: dict[str, UpstreamClient]
    http: requests.Session  # one pooled session for upstream/STS calls; always pass verify=
    logger: logging.Logger
    #: component-owned state (e.g. "verified_cache", "refresher", "backends"); each owner documents its key
    parts: dict[str, Any] = field(default_factory=dict)

    @property
    def verify(self) -> bool | str:
        """The ``verify=`` argument for every outgoing request (REQUESTS_CA_BUNDLE would override
        ``Session.verify``, so callers pass it explicitly)."""
        return self.settings.tls_verify

    @property
    def timeout(self) -> float:
        return self.settings.upstream_timeout
