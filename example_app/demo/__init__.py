"""Demo services for the example app: two OIDC identity providers, a GitHub-like OAuth2 provider with
its API, an RFC 8693 security token service and a docs API.

Each is a small Flask app built by a ``create_*`` factory; :mod:`example_app.stack` runs them on
loopback threads. They are deliberately small and hand-written (no Authlib server) so every protocol
step a person walks through in the browser is visible in one short file. They are demo parts, not
production identity providers.
"""

from __future__ import annotations

from .docs_api import DocsAPI
from .github import GitHubLike
from .oidc_idp import OIDCProvider
from .sts import SecurityTokenService
from .users import DEMO_USERS, DemoUser, user_for

__all__ = [
    "DEMO_USERS",
    "DemoUser",
    "DocsAPI",
    "GitHubLike",
    "OIDCProvider",
    "SecurityTokenService",
    "user_for",
]
