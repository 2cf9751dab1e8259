"""flask_mcp_auth: an OAuth 2.1 front door for Flask MCP servers, with multi-upstream login chains."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    AccessDenied,
    ConfigError,
    InsufficientScope,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    InvalidToken,
    MCPAuthError,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    TokenExchangeError,
    UpstreamError,
    UpstreamTokenNotFound,
)
from .extension import MCPAuth
from .identity import Identity, current_identity

try:
    __version__ = version("flask_mcp_auth")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AccessDenied",
    "ConfigError",
    "Identity",
    "InsufficientScope",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTarget",
    "InvalidToken",
    "MCPAuth",
    "MCPAuthError",
    "OAuthError",
    "ServerError",
    "TemporarilyUnavailable",
    "TokenExchangeError",
    "UpstreamError",
    "UpstreamTokenNotFound",
    "__version__",
    "current_identity",
]
