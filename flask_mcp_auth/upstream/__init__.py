"""Upstream identity providers: the client protocol (base), OIDC and plain OAuth2 clients, refresh."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError, Problem
from .oauth2 import OAuth2Client
from .oidc import OIDCClient

if TYPE_CHECKING:
    import requests

    from ..config import Settings
    from .base import UpstreamClient

__all__ = ["OAuth2Client", "OIDCClient", "build_clients"]


def build_clients(settings: Settings, http: requests.Session) -> dict[str, UpstreamClient]:
    """One client per configured upstream, in configuration order.

    OIDC providers are discovered here (so at ``init_app``); every provider that fails contributes
    its problems to one :class:`ConfigError`.
    """
    clients: dict[str, UpstreamClient] = {}
    problems: list[Problem] = []
    for config in settings.upstreams:
        verify, timeout = settings.tls_verify, settings.upstream_timeout
        try:
            if config.type == "oidc":
                clients[config.name] = OIDCClient(config, http, verify=verify, timeout=timeout)
            else:
                clients[config.name] = OAuth2Client(config, http, verify=verify, timeout=timeout)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return clients
