"""``MCPAuth``: the Flask extension. ``init_app`` wires settings → storage → keys → upstream clients →
AS blueprint (Mode B) → protected-resource metadata → ``before_request`` hook → outgoing auth → CLI.

This is the only module that knows every other one. It keeps no per-app state on ``self``: each app's
state is a :class:`~flask_mcp_auth.runtime.Runtime` in ``app.extensions["mcp_auth"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import requests
from flask import Flask, current_app

from . import cli
from ._http import make_protocol_session
from .config import apply_defaults, parse_settings
from .identity import Identity
from .identity import install as install_identity
from .identity import required as identity_required
from .keys import Cipher, KeySet, generate_rsa_pem
from .outgoing.decorators import install as install_outgoing
from .outgoing.decorators import with_backend as outgoing_with_backend
from .outgoing.requests import backend_auth as outgoing_backend_auth
from .outgoing.requests import make_session
from .runtime import Runtime
from .server.blueprint import register as register_server
from .storage import storage_from_url
from .storage.memory import MemoryStorage
from .storage.vault import TokenVault
from .tokens import TokenService
from .upstream import build_clients

__all__ = ["MCPAuth"]

EXTENSION_KEY = "mcp_auth"
F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("flask_mcp_auth")


class MCPAuth:
    """OAuth 2.1 front door for a Flask (MCP) app.

    >>> app = Flask(__name__)
    >>> app.config.update(MCP_AUTH_ISSUER="https://mcp.example.com",
    ...                   MCP_AUTH_RESOURCE="https://mcp.example.com/mcp")
    >>> auth = MCPAuth(app)          # or: auth = MCPAuth(); auth.init_app(app)
    >>> @app.post("/mcp")
    ... @auth.required()
    ... def mcp(): ...
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    # ------------------------------------------------------------------------------------------
    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "MCPAuth is already registered on this app; create one MCPAuth per app, or call "
                "init_app only once"
            )
        apply_defaults(app.config)
        settings, warnings = parse_settings(app.config)
        if settings.mode == "B":
            _harden_session_cookie(app, settings.issuer)
        for rule, key, message in warnings:
            logger.warning("[%s] %s: %s", rule, key, message)

        storage = storage_from_url(settings.storage, settings.storage_prefix)
        if isinstance(storage, MemoryStorage) and settings.mode == "B":
            logger.warning(
                "MCP_AUTH_STORAGE is memory://: state lives in this process only; with several "
                "workers or hosts use redis:// so callbacks and tokens are seen by every process"
            )
        http = make_protocol_session()  # shared by every user: stores no cookies

        keys: KeySet | None = None
        vault: TokenVault | None = None
        tokens: Any
        if settings.mode == "B":
            pems: list[str] = list(settings.signing_keys)
            if not pems:
                logger.warning(
                    "MCP_AUTH_SIGNING_KEYS is empty: generated an ephemeral RSA-2048 signing key; "
                    "tokens will not survive a restart and workers will not share it. Run "
                    "`flask mcp-auth keygen` and configure the key"
                )
                pems.append(generate_rsa_pem())
            keys = KeySet.from_pems(pems)
            tokens = TokenService(keys, issuer=settings.issuer, audience=settings.audience)
            vault = TokenVault(storage, Cipher(settings.encryption_keys))
            upstreams = build_clients(settings, http)
        else:
            from .identity import ExternalVerifier

            tokens = ExternalVerifier(settings, http)
            upstreams = {}

        runtime = Runtime(
            settings=settings,
            storage=storage,
            keys=keys,
            tokens=tokens,
            vault=vault,
            upstreams=upstreams,
            http=http,
            logger=logger,
        )
        app.extensions[EXTENSION_KEY] = runtime
        register_server(app, runtime)
        install_identity(app, runtime)
        install_outgoing(app, runtime)
        cli.register(app)

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def runtime(app: Flask | None = None) -> Runtime:
        """The state of ``app`` (default: the current app)."""
        target = app if app is not None else current_app
        try:
            state = target.extensions[EXTENSION_KEY]
        except KeyError:
            raise RuntimeError("MCPAuth is not initialised on this app; call init_app(app)") from None
        assert isinstance(state, Runtime)
        return state

    def required(
        self, scopes: Iterable[str] | None = None, providers: Iterable[str] | None = None
    ) -> Callable[[F], F]:
        """401 without a valid identity, 403 ``insufficient_scope`` when scopes are missing, 401 when
        a named provider's token is absent."""
        return identity_required(scopes=scopes, providers=providers)

    def with_backend(self, name: str, arg: str | None = None) -> Callable[[F], F]:
        """Inject a ``requests.Session`` bound to backend ``name`` and the current identity."""
        return outgoing_with_backend(name, arg)

    def session(self, *names: str) -> requests.Session:
        """A ``requests.Session`` with a ``BackendAdapter`` mounted at each named backend's ``url``."""
        return make_session(self.runtime(), names)

    def backend_auth(self, name: str, identity: Identity | None = None) -> requests.auth.AuthBase:
        """The ``requests.auth.AuthBase`` for one backend and identity (default: the current one)."""
        return outgoing_backend_auth(self.runtime(), name, identity)


def _harden_session_cookie(app: Flask, issuer: str) -> None:
    """The AS keeps browser-binding ids in Flask's session (SPEC §3.4), so its cookie is a login
    credential (TESTPLAN AZ-18). Settings the app left at Flask's defaults are tightened:
    SameSite=Lax (Flask already defaults to HttpOnly), and — when the issuer is https — always Secure,
    plus the ``__Host-`` name prefix when name, domain and path are Flask's defaults. A SameSite value
    or cookie name the app chose itself is kept."""
    config = app.config
    if config.get("SESSION_COOKIE_SAMESITE") is None:
        config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if not issuer.startswith("https://"):
        return
    if not config.get("SESSION_COOKIE_SECURE"):
        config["SESSION_COOKIE_SECURE"] = True
    if (
        config.get("SESSION_COOKIE_NAME", "session") == "session"
        and not config.get("SESSION_COOKIE_DOMAIN")
        and config.get("SESSION_COOKIE_PATH") in (None, "/")
    ):
        config["SESSION_COOKIE_NAME"] = "__Host-session"
