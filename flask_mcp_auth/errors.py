"""The exception tree of flask_mcp_auth.

Every error a caller may see is a subclass of :class:`MCPAuthError`::

    MCPAuthError
    ├── ConfigError (also ValueError)        invalid configuration, lists every problem
    ├── OAuthError                           wire errors, RFC 6749 §5.2 / RFC 6750 §3.1 / RFC 8707
    │   ├── InvalidRequest        400  invalid_request
    │   ├── InvalidClient         401  invalid_client
    │   ├── InvalidGrant          400  invalid_grant
    │   ├── UnauthorizedClient    400  unauthorized_client
    │   ├── UnsupportedGrantType  400  unsupported_grant_type
    │   ├── UnsupportedResponseType 400 unsupported_response_type
    │   ├── InvalidScope          400  invalid_scope
    │   ├── InvalidTarget         400  invalid_target
    │   ├── AccessDenied          403  access_denied
    │   ├── ServerError           500  server_error
    │   ├── TemporarilyUnavailable 503 temporarily_unavailable
    │   ├── InvalidClientMetadata 400  invalid_client_metadata     (RFC 7591 §3.2.2)
    │   ├── InvalidRedirectURI    400  invalid_redirect_uri        (RFC 7591 §3.2.2)
    │   ├── TooManyRequests       429  too_many_requests
    │   ├── InvalidToken          401  invalid_token               (RFC 6750 §3.1)
    │   └── InsufficientScope     403  insufficient_scope          (RFC 6750 §3.1)
    ├── UpstreamError                        an upstream IdP / STS / backend failed
    │   ├── UpstreamTokenNotFound            a strategy needs a provider token the identity lacks
    │   └── TokenExchangeError               the STS refused or failed (RFC 8693 §2.2.2)
    └── StorageError                         storage failed (see flask_mcp_auth.storage)

Public text (``description``) is short, ASCII and safe to show; the cause goes to logs only,
at debug level, and never contains token values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "AccessDenied",
    "ConfigError",
    "InsufficientScope",
    "InvalidClient",
    "InvalidClientMetadata",
    "InvalidGrant",
    "InvalidRedirectURI",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTarget",
    "InvalidToken",
    "MCPAuthError",
    "OAuthError",
    "ServerError",
    "StorageError",
    "TemporarilyUnavailable",
    "TokenExchangeError",
    "TooManyRequests",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "UnsupportedResponseType",
    "UpstreamError",
    "UpstreamTokenNotFound",
]

Problem = tuple[str, str, str]


class MCPAuthError(Exception):
    """Root of every exception raised by flask_mcp_auth."""


class ConfigError(MCPAuthError, ValueError):
    """Invalid configuration. ``problems`` holds every ``(rule_id, config_key, message)`` found.

    >>> try:
    ...     MCPAuth(app)
    ... except ConfigError as exc:
    ...     for rule, key, message in exc.problems: print(rule, key, message)
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        lines = [f"[{rule}] {key}: {message}" for rule, key, message in self.problems]
        super().__init__(
            f"{len(self.problems)} configuration problem(s):\n  " + "\n  ".join(lines)
        )


class OAuthError(MCPAuthError):
    """An OAuth error with its wire code, HTTP status and a short public description."""

    error: str = "server_error"
    status_code: int = 400
    default_description: str = ""

    def __init__(
        self,
        description: str | None = None,
        *,
        state: str | None = None,
        scopes: Sequence[str] | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.description = description if description is not None else self.default_description
        self.state = state
        #: scopes needed (``insufficient_scope`` challenges name only the needed ones)
        self.scopes = tuple(scopes or ())
        self.retry_after = retry_after
        super().__init__(f"{self.error}: {self.description}" if self.description else self.error)

    def to_dict(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


class InvalidRequest(OAuthError):
    error = "invalid_request"
    default_description = "The request is missing a parameter or is malformed."


class InvalidClient(OAuthError):
    error = "invalid_client"
    status_code = 401
    default_description = "Client authentication failed."


class InvalidGrant(OAuthError):
    error = "invalid_grant"
    default_description = "The grant is invalid, expired, revoked or was issued to another client."


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"
    default_description = "The client may not use this grant type."


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
    default_description = "The grant type is not supported."


class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"
    default_description = "Only response_type=code is supported."


class InvalidScope(OAuthError):
    error = "invalid_scope"
    default_description = "The requested scope is invalid or not allowed for this client."


class InvalidTarget(OAuthError):
    error = "invalid_target"
    default_description = "The requested resource is not served by this authorization server."


class AccessDenied(OAuthError):
    error = "access_denied"
    status_code = 403
    default_description = "The request was denied."


class ServerError(OAuthError):
    error = "server_error"
    status_code = 500
    default_description = "The server could not complete the request."


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status_code = 503
    default_description = "The service is temporarily unavailable; try again shortly."

    def __init__(self, description: str | None = None, **kwargs: object) -> None:
        kwargs.setdefault("retry_after", 5)
        super().__init__(description, **kwargs)  # type: ignore[arg-type]


class InvalidClientMetadata(OAuthError):
    error = "invalid_client_metadata"
    default_description = "The client metadata is invalid."


class InvalidRedirectURI(OAuthError):
    error = "invalid_redirect_uri"
    default_description = "A redirect URI is invalid."


class TooManyRequests(OAuthError):
    error = "too_many_requests"
    status_code = 429
    default_description = "Too many requests; slow down."


class InvalidToken(OAuthError):
    error = "invalid_token"
    status_code = 401
    default_description = "The access token is invalid or expired."


class InsufficientScope(OAuthError):
    error = "insufficient_scope"
    status_code = 403
    default_description = "The access token lacks a required scope."


class UpstreamError(MCPAuthError):
    """An upstream identity provider, STS or backend failed. Never carries token values."""


class UpstreamTokenNotFound(UpstreamError):
    """The identity has no token for ``provider`` (absent, or its refresh failed)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        super().__init__(f"no upstream token for provider {provider!r}")


class TokenExchangeError(UpstreamError):
    """An RFC 8693 token exchange failed; ``error`` is the OAuth error code (or a local code)."""

    def __init__(self, error: str, backend: str | None = None, status_code: int | None = None) -> None:
        self.error = error
        self.backend = backend
        self.status_code = status_code
        where = f" for backend {backend!r}" if backend else ""
        super().__init__(f"token exchange failed{where}: {error}")


class StorageError(MCPAuthError):
    """Storage is unavailable or returned something unusable. Requests fail closed (503)."""
