"""The flask_mcp_auth example: a real MCP server (Streamable HTTP at ``/mcp``) behind the full
multi-provider login, with demo identity providers, APIs and an STS (``example_app.demo``).

``python -m example_app`` runs everything on loopback; ``--selftest`` walks the whole flow headlessly.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
