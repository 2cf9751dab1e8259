"""Routes of the authorization server and the protected-resource metadata (placeholder; issue 3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from ..runtime import Runtime


def register(app: Flask, runtime: Runtime) -> None:
    """Mount the AS blueprint (Mode B) and the RFC 9728 route (both modes) (placeholder)."""
