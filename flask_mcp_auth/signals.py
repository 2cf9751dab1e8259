"""Blinker signals for audit logging. Payloads carry ids only (client id, subject, session id,
provider and backend names, reason codes) — never token, code or secret values.

>>> from flask_mcp_auth import signals
>>> @signals.token_issued.connect
... def audit(app, **info): app.logger.info("token issued %s", info)
"""

from __future__ import annotations

from blinker import Namespace

__all__ = [
    "authentication_failed",
    "chain_completed",
    "token_exchanged",
    "token_issued",
    "token_revoked",
    "upstream_token_refreshed",
]

_signals = Namespace()

#: sender: the app; kwargs: client_id, subject, session_id, providers (tuple of names)
chain_completed = _signals.signal("mcp-auth-chain-completed")
#: sender: the app; kwargs: client_id, subject, session_id, grant_type, scopes, jti
token_issued = _signals.signal("mcp-auth-token-issued")
#: sender: the app; kwargs: client_id, session_id, token_type_hint, reason
token_revoked = _signals.signal("mcp-auth-token-revoked")
#: sender: the app; kwargs: subject, session_id, provider
upstream_token_refreshed = _signals.signal("mcp-auth-upstream-token-refreshed")
#: sender: the app; kwargs: backend, cache_hit (bool), subject
token_exchanged = _signals.signal("mcp-auth-token-exchanged")
#: sender: the app; kwargs: reason (short code such as "token_expired", "token_rejected"), path
authentication_failed = _signals.signal("mcp-auth-authentication-failed")
