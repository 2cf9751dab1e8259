"""Flask glue of outgoing auth (SPEC §6): ``install`` (strategies + error handlers) and ``with_backend``.

``install(app, runtime)`` builds one strategy per backend into ``runtime.parts["backends"]``,
collects their validation problems into one ``ConfigError``, and registers the app-level handlers:

* ``UpstreamTokenNotFound`` ⇒ 401 JSON ``invalid_token`` with a ``WWW-Authenticate`` challenge, so
  the MCP client re-authorizes (and gets a fresh upstream token) — or 503 when that provider's refresh
  failed transiently in this request (re-authorizing would not help);
* ``TokenExchangeError`` ⇒ 403 for the STS codes ``invalid_target`` / ``access_denied`` (the STS
  refuses this user or target: retrying will not help), else 502; body ``{"error": "<code>"}``.

A handler the app registered for exactly these classes (before or after ``init_app``) wins.
Neither body ever carries a token or the STS's own answer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Response, current_app, g, has_app_context, jsonify, request

from .. import signals
from ..errors import (
    ConfigError,
    InvalidToken,
    MCPAuthError,
    OAuthError,
    TemporarilyUnavailable,
    TokenExchangeError,
    UpstreamTokenNotFound,
)
from ..identity import challenge_response, unavailable_providers
from .exchange import response_status
from .requests import make_session, strategies
from .strategies import StrategyContext, build_strategies

if TYPE_CHECKING:
    from flask import Flask

    from ..identity import Identity
    from ..runtime import Runtime
    from .strategies import Strategy

__all__ = ["install", "with_backend"]

F = TypeVar("F", bound=Callable[..., Any])
_EXTENSION_KEY = "mcp_auth"


def install(app: Flask, runtime: Runtime) -> None:
    """Build and validate every backend's strategy; register the outgoing error handlers."""

    def notify(**info: Any) -> None:
        signals.token_exchanged.send(app, **info)

    context = StrategyContext(http=runtime.http, verify=runtime.verify, timeout=runtime.timeout,
                              notify=notify)
    built, problems = build_strategies(runtime.settings, context)
    if problems:
        raise ConfigError(problems)
    runtime.parts["backends"] = built
    runtime.parts.pop("backend_adapters", None)

    def on_missing_token(exc: UpstreamTokenNotFound) -> Response:
        runtime.logger.info("outgoing: no upstream token for provider %s", exc.provider)
        return challenge_response(runtime, _missing_token_error(exc.provider))

    def on_exchange_failed(exc: TokenExchangeError) -> Response:
        runtime.logger.warning("outgoing: token exchange for backend %s failed: %s", exc.backend, exc.error)
        resp = jsonify({"error": exc.error})
        resp.status_code = response_status(exc.error)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    _register_unless_handled(app, UpstreamTokenNotFound, on_missing_token)
    _register_unless_handled(app, TokenExchangeError, on_exchange_failed)


def _register_unless_handled(
    app: Flask, exc_class: type[MCPAuthError], handler: Callable[[Any], Response]
) -> None:
    # app.register_error_handler would silently replace a handler the app registered before init_app
    existing = app.error_handler_spec.get(None, {}).get(None, {})
    if exc_class not in existing:
        app.register_error_handler(exc_class, handler)


def _missing_token_error(provider: str) -> OAuthError:
    if provider in unavailable_providers():
        # its refresh failed for a transient reason in this request: retry later, not re-authorize
        return TemporarilyUnavailable("An upstream provider is unavailable; try again shortly.")
    return InvalidToken("Authorization with an upstream provider is needed again; re-authorize.")


def _lookup(runtime: Runtime, name: str) -> Strategy:
    found = strategies(runtime)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ConfigError([("V-08", "MCP_AUTH_BACKENDS",
                            f"with_backend({name!r}): no backend of that name (configured: {known})")])
    strategy = found[name]
    if not strategy.config.url:
        raise ConfigError([("V-08", f"MCP_AUTH_BACKENDS[{name}]",
                            f"with_backend({name!r}) needs the backend's 'url' (where its credential "
                            "may be sent)")])
    return strategy


def _runtime() -> Runtime:
    try:
        return cast("Runtime", current_app.extensions[_EXTENSION_KEY])
    except KeyError:
        raise RuntimeError("MCPAuth is not initialised on this app; call init_app(app)") from None


def with_backend(name: str, arg: str | None = None) -> Callable[[F], F]:
    """Inject a ``requests.Session`` for backend ``name`` bound to the current identity, as keyword
    ``arg`` (default: ``name`` with ``-`` → ``_``). Before the view runs, a credential the strategy
    cannot produce (no upstream token for its provider, no identity) becomes a 401 challenge.

    >>> @app.get("/repos")
    ... @auth.required()
    ... @auth.with_backend("github")
    ... def repos(github):
    ...     return github.get("https://api.github.com/user/repos").json()
    """
    keyword = arg or name.replace("-", "_")
    if not keyword.isidentifier():
        raise ValueError(f"with_backend({name!r}): {keyword!r} is not a valid keyword; pass arg=")
    if has_app_context() and _EXTENSION_KEY in current_app.extensions:
        _lookup(_runtime(), name)  # fail at decoration when we can

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            runtime = _runtime()
            strategy = _lookup(runtime, name)
            identity: Identity | None = g.get("identity")
            if request.method == "OPTIONS":
                # Preflight: Flask's default answer, like required(); the view would run with no
                # credential check at all.
                return current_app.make_default_options_response()
            try:
                # UpstreamTokenNotFound propagates to its handler (ours: 401 re-authorize challenge)
                strategy.check(identity)
            except (InvalidToken, UpstreamTokenNotFound):
                if identity is None:
                    return challenge_response(runtime, None)  # no token at all: plain challenge
                raise
            kwargs[keyword] = make_session(runtime, [name], identity=identity)
            return current_app.ensure_sync(view)(*args, **kwargs)

        return cast("F", wrapper)

    return decorator
