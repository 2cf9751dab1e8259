"""A loopback backend that answers with the headers it received, and can redirect elsewhere.

``GET /echo/...`` → ``{"headers": {...}, "path": ...}``; ``GET /redirect?to=<url>`` → 302 to ``to``.
Every request's headers are also kept in ``backend.seen`` so tests can search all of them (e.g. for
the incoming access token, which must never arrive). With ``set_cookie="name=value"`` every echo
answer also sets that cookie (like a backend with session middleware), to test that no session keeps it.

>>> with running_echo() as a, running_echo() as b:   # two ports = two origins
...     requests.get(f"{a.url}/redirect", params={"to": f"{b.url}/echo/x"})
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, jsonify, redirect, request

from tests.support.servers import ServerThread


@dataclass
class EchoBackend:
    seen: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ServerThread | None = None
    #: ``"name=value"``: sent as ``Set-Cookie`` on every ``/echo`` answer
    set_cookie: str | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def headers_containing(self, needle: str) -> list[str]:
        """Names of every header, in every request seen, whose value contains ``needle``."""
        with self._lock:
            return [k for h in self.seen for k, v in h.items() if needle in v]

    def app(self) -> Flask:
        app = Flask("echo_backend")

        @app.before_request
        def record() -> None:
            with self._lock:
                self.seen.append(dict(request.headers))

        @app.route("/echo/", defaults={"path": ""}, methods=["GET", "POST"])
        @app.route("/echo/<path:path>", methods=["GET", "POST"])
        def echo(path: str) -> Any:
            resp = jsonify(headers=dict(request.headers), path=path)
            if self.set_cookie:
                resp.headers["Set-Cookie"] = f"{self.set_cookie}; Path=/"
            return resp

        @app.get("/redirect")
        def go() -> Any:
            return redirect(request.args["to"], code=int(request.args.get("code", 302)))

        return app


@contextmanager
def running_echo() -> Iterator[EchoBackend]:
    backend = EchoBackend()
    backend.server = ServerThread(backend.app()).start()
    try:
        yield backend
    finally:
        backend.server.stop()
