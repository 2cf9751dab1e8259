"""Routes of the authorization server (SPEC §3.1) and the RFC 9728 protected-resource metadata.

Thin: each view parses the request, calls a protocol module (``metadata``, ``clients``, ``authorize``,
``consent``, ``chain``, ``token``, ``revoke``) with explicit arguments, and renders the result.
Only the explicit paths of SPEC §3.1 are registered (no ``/.well-known/`` catch-all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint

if TYPE_CHECKING:
    from flask import Flask

    from ..runtime import Runtime

__all__ = ["register"]


def register(app: Flask, runtime: Runtime) -> None:
    """Mount the AS blueprint (Mode B) and the RFC 9728 route (both modes)."""
    bp = Blueprint("mcp_auth", __name__, template_folder="templates")
    _add_metadata_routes(bp, runtime)  # both modes: protected-resource metadata
    if runtime.settings.mode == "B":
        _add_endpoint_routes(bp, runtime)
        _add_chain_routes(bp, runtime)
    app.register_blueprint(bp)


# --- metadata / JWKS / registration / token / revoke routes (owner: AS-endpoints helper) -------------
def _add_metadata_routes(bp: Blueprint, runtime: Runtime) -> None:
    """RFC 9728 PRM (both modes); in Mode B also RFC 8414 / OIDC discovery and JWKS."""


def _add_endpoint_routes(bp: Blueprint, runtime: Runtime) -> None:
    """/oauth/register, /oauth/token, /oauth/revoke."""


# --- authorize / consent / callback routes (owner: AS-chain helper) ---------------------------------
def _add_chain_routes(bp: Blueprint, runtime: Runtime) -> None:
    """/oauth/authorize, /oauth/consent, /oauth/callback."""
