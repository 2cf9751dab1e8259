"""``flask mcp-auth check|keygen|jwks`` (placeholder; issue 6)."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    """Add the ``mcp-auth`` command group (placeholder)."""
