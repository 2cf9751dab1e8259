"""``with_backend`` and the error handlers of outgoing auth (placeholder; issue 5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from flask import Flask

    from ..runtime import Runtime

F = TypeVar("F", bound=Callable[..., Any])


def install(app: Flask, runtime: Runtime) -> None:
    """Validate backends and register error handlers (placeholder)."""


def with_backend(name: str, arg: str | None = None) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        raise NotImplementedError

    return decorator
