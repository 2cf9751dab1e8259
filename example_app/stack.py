"""Run the demo services (and optionally the MCP server) on loopback threads.

``DemoServices.start()`` binds one werkzeug server per service (two OIDC IdPs, the GitHub-like
provider, the STS, the docs API); ``register_mcp_server(issuer)`` registers the MCP server's
authorization server as a client of each (callback ``<issuer>/oauth/callback``). ``start_stack()``
adds the MCP server itself. Everything binds 127.0.0.1 and stops with ``stop()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from . import settings
from .demo import DocsAPI, GitHubLike, OIDCProvider, SecurityTokenService

__all__ = ["DemoServices", "LoopbackServer", "Stack", "start_stack"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    """No access log: these URLs carry codes and states, which must not end up in logs."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class _Slot:
    """A WSGI app filled in after the port is known (the apps need their own URL)."""

    def __init__(self) -> None:
        self.app: WSGIApp | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"starting\n"]
        return self.app(environ, start_response)


class LoopbackServer:
    """A threaded werkzeug server bound now (so ``url`` is known), serving whatever is ``mount``-ed."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self._slot = _Slot()
        self.server: BaseWSGIServer = make_server(host, port, self._slot, threaded=True,
                                                  request_handler=_QuietHandler)
        self.port = int(self.server.server_port)
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name=f"loopback-{self.port}")

    def mount(self, app: WSGIApp | Flask) -> LoopbackServer:
        self._slot.app = app
        return self

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@dataclass
class DemoServices:
    corp: OIDCProvider
    cloud: OIDCProvider
    github: GitHubLike
    sts: SecurityTokenService
    docs: DocsAPI
    servers: dict[str, LoopbackServer] = field(default_factory=dict)

    @classmethod
    def start(cls, *, ports: Mapping[str, int] | None = None, host: str = "127.0.0.1",
              access_ttl: int = 3600) -> DemoServices:
        """``access_ttl``: lifetime of the OIDC providers' access tokens (short = refresh on use)."""
        ports = ports or {}
        servers = {name: LoopbackServer(ports.get(name, 0), host) for name in settings.SERVICE_KEYS}
        try:
            corp = OIDCProvider(servers["corp"].url, name="corp", title="Corp sign-in (demo OIDC)",
                                subject=lambda u: u.corp_subject, background="#e8eef7",
                                access_ttl=access_ttl)
            cloud = OIDCProvider(servers["cloud"].url, name="cloud", title="Cloud sign-in (demo OIDC)",
                                 subject=lambda u: u.cloud_subject, background="#eaf6ec",
                                 access_ttl=access_ttl)
            github = GitHubLike(servers["github"].url)
            sts = SecurityTokenService(servers["sts"].url, trust=corp.verify_access_token)
            sts.register_client(settings.CLIENT_ID, settings.SECRETS["sts"])
            docs = DocsAPI(servers["docs"].url, sts=sts)
            services = cls(corp=corp, cloud=cloud, github=github, sts=sts, docs=docs, servers=servers)
            for name, app in services.apps().items():
                servers[name].mount(app).start()
        except BaseException:
            for server in servers.values():
                server.stop()
            raise
        return services

    def apps(self) -> dict[str, Flask]:
        return {"corp": self.corp.app, "cloud": self.cloud.app, "github": self.github.app,
                "sts": self.sts.app, "docs": self.docs.app}

    def register_mcp_server(self, issuer: str) -> None:
        """Register the MCP server's AS at each provider, with its one callback URL (SPEC §4.1)."""
        callback = f"{issuer.rstrip('/')}/oauth/callback"
        self.corp.register_client(settings.CLIENT_ID, settings.SECRETS["corp"], [callback])
        self.cloud.register_client(settings.CLIENT_ID, settings.SECRETS["cloud"], [callback])
        self.github.register_client(settings.CLIENT_ID, settings.SECRETS["github"], [callback])

    def config(self) -> dict[str, str]:
        """The ``EXAMPLE_*`` URL keys for ``create_app`` (also usable as environment variables)."""
        return {key: self.servers[name].url for name, (key, _offset) in settings.SERVICE_KEYS.items()}

    def code_exchanges(self) -> dict[str, int]:
        """Authorization-code redemptions each provider has seen (the benchmark's per-leg count)."""
        return {"corp": self.corp.counters["code_exchanges"], "cloud": self.cloud.counters["code_exchanges"],
                "github": self.github.counters["code_exchanges"]}

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


@dataclass
class Stack:
    """The MCP server plus its demo services, all on loopback."""

    services: DemoServices
    server: LoopbackServer
    app: Flask

    @property
    def issuer(self) -> str:
        return str(self.app.config["MCP_AUTH_ISSUER"])

    @property
    def mcp_url(self) -> str:
        return str(self.app.config["MCP_AUTH_RESOURCE"])

    def stop(self) -> None:
        self.server.stop()
        self.services.stop()


def start_stack(*, port: int = 0, service_ports: Mapping[str, int] | None = None,
                config: Mapping[str, Any] | None = None, host: str = "127.0.0.1",
                access_ttl: int = 3600) -> Stack:
    """Start the demo services, then the MCP server on ``port`` (0 = a free one) with ``config``
    overrides (e.g. ``MCP_AUTH_STORAGE``). The issuer is the server's own loopback URL."""
    from .app import create_app

    services = DemoServices.start(ports=service_ports, host=host, access_ttl=access_ttl)
    try:
        server = LoopbackServer(port, host)
        try:
            services.register_mcp_server(server.url)
            overrides: dict[str, Any] = {"MCP_AUTH_ISSUER": server.url,
                                         "MCP_AUTH_RESOURCE": f"{server.url}/mcp",
                                         **services.config(), **(config or {})}
            app = create_app(overrides)
            server.mount(app).start()
        except BaseException:
            server.stop()
            raise
    except BaseException:
        services.stop()
        raise
    return Stack(services=services, server=server, app=app)
