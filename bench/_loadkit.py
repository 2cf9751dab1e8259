"""Shared machinery of ``bench/load.py`` and ``bench/faults.py``: the example app under gunicorn on
its own Redis, the demo services on loopback threads, and a recorded headless login.

Everything binds 127.0.0.1; every process started here is stopped by PID (``BenchStack.stop``).
Hops are recorded with their path, status and, for an error redirect, the OAuth ``error`` code only:
URLs of the flow carry codes and states, which are never kept.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from example_app.client import FlowError, discover, login, register  # noqa: E402
from example_app.stack import DemoServices  # noqa: E402
from flask_mcp_auth.keys import generate_rsa_pem  # noqa: E402
from tests.support.redis_server import RedisServer, free_port, start_redis  # noqa: E402

__all__ = [
    "ROOT",
    "BenchStack",
    "ChainRun",
    "Hop",
    "TokenCallCounter",
    "count_token_calls",
    "recorded_sessions",
    "run_login",
]

WORKERS = 4
GUNICORN = Path(sys.executable).with_name("gunicorn")


# -- recorded browsing -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Hop:
    """One HTTP response seen by the client or the browser (no URL query, no body)."""

    sent: float  # time.monotonic() when the request went out (received - elapsed)
    received: float
    method: str
    where: str  # scheme://host:port/path
    status: int
    worker: str | None
    error: str | None  # OAuth ``error`` of a redirect, if any


def _hop(response: requests.Response) -> Hop:
    received = time.monotonic()
    url = response.request.url or ""
    parts = urlsplit(url)
    error = None
    location = response.headers.get("Location")
    if location:
        error = dict(parse_qsl(urlsplit(location).query)).get("error")
    return Hop(sent=received - response.elapsed.total_seconds(), received=received,
               method=response.request.method or "", where=f"{parts.scheme}://{parts.netloc}{parts.path}",
               status=response.status_code, worker=response.headers.get("X-Example-Worker"), error=error)


def recorded_sessions() -> tuple[requests.Session, requests.Session, list[Hop]]:
    """``(http, browser, hops)``: two fresh sessions whose every response is appended to ``hops``."""
    hops: list[Hop] = []
    http, browser = requests.Session(), requests.Session()

    def record(response: requests.Response, *args: object, **kwargs: object) -> None:
        hops.append(_hop(response))

    http.hooks["response"].append(record)
    browser.hooks["response"].append(record)
    return http, browser, hops


@dataclass
class ChainRun:
    """One login (one chain) as the client saw it."""

    username: str
    client_id: str
    started: float  # monotonic, before the first request
    ended: float
    ok: bool
    error: str | None = None
    access_token: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    hops: list[Hop] = field(default_factory=list)

    def app_hops(self, app_url: str) -> list[Hop]:
        return [h for h in self.hops if h.where.startswith(app_url)]

    def authorize_sent(self, app_url: str) -> float | None:
        """When the browser first asked our ``/oauth/authorize`` (the chain's start)."""
        for hop in self.app_hops(app_url):
            if hop.where.endswith("/oauth/authorize"):
                return hop.sent
        return None

    def last_app_hop(self, app_url: str) -> Hop | None:
        hops = self.app_hops(app_url)
        return hops[-1] if hops else None


def run_login(mcp_url: str, client_id: str, username: str,
              sessions: tuple[requests.Session, requests.Session, list[Hop]] | None = None) -> ChainRun:
    """A complete login as ``username`` through a fresh browser; never raises."""
    http, browser, hops = sessions or recorded_sessions()
    began = time.monotonic()
    try:
        result = login(mcp_url, username, http=http, browser=browser, client_id=client_id)
    except (FlowError, requests.RequestException, KeyError, ValueError) as exc:
        return ChainRun(username, client_id, began, time.monotonic(), False,
                        error=f"{type(exc).__name__}: {exc}", hops=hops)
    return ChainRun(username, client_id, began, time.monotonic(), True, access_token=result.access_token,
                    claims=result.claims, hops=hops)


# -- token-call counting at the demo IdPs ------------------------------------------------------------
class TokenCallCounter:
    """WSGI middleware: counts token-endpoint POSTs per authorization code (a retry shows up as 2).

    Codes are kept only as counters keyed in memory, in this process, for the run.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], path: str) -> None:
        self.app = app
        self.path = path
        self._lock = threading.Lock()
        self.per_code: dict[str, int] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO") == self.path:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            form = parse_qs(body.decode("latin-1"))
            if form.get("grant_type", ["authorization_code"])[0] == "authorization_code":
                code = form.get("code", [""])[0]
                with self._lock:
                    self.per_code[code] = self.per_code.get(code, 0) + 1
        return self.app(environ, start_response)

    def summary(self) -> tuple[int, int, int]:
        """``(legs, calls, max calls for one leg)``."""
        with self._lock:
            counts = list(self.per_code.values())
        return len(counts), sum(counts), max(counts, default=0)


def count_token_calls(services: DemoServices) -> dict[str, TokenCallCounter]:
    """Wrap each demo IdP's app so its token calls are counted per code."""
    paths = {"corp": "/token", "cloud": "/token", "github": "/login/oauth/access_token"}
    counters: dict[str, TokenCallCounter] = {}
    for name, path in paths.items():
        counters[name] = TokenCallCounter(services.apps()[name], path)
        services.servers[name].mount(counters[name])
    return counters


# -- the stack -------------------------------------------------------------------------------------
@dataclass
class BenchStack:
    """Redis + demo services + the example app under gunicorn (``workers`` sync workers)."""

    redis: RedisServer
    services: DemoServices
    proc: subprocess.Popen[bytes]
    url: str
    workdir: str
    workers: int

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    @property
    def log_path(self) -> Path:
        return Path(self.workdir, "gunicorn.log")

    @classmethod
    def start(cls, *, name: str = "load-bench", workers: int = WORKERS,
              prepare: Callable[[DemoServices], None] | None = None) -> BenchStack:
        """Start everything; ``prepare`` may adjust the demo services before the app starts."""
        redis_server = start_redis()
        services: DemoServices | None = None
        proc: subprocess.Popen[bytes] | None = None
        try:
            services = DemoServices.start()
            if prepare is not None:
                prepare(services)
            workdir = tempfile.mkdtemp(prefix=f"{name}-")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            services.register_mcp_server(url)
            key = Path(workdir, "signing-key.pem")
            key.write_text(generate_rsa_pem())
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_AUTH_", "EXAMPLE_"))}
            env.update(services.config())
            env.update(PYTHONPATH=str(ROOT), MCP_AUTH_ISSUER=url, MCP_AUTH_STORAGE=redis_server.url,
                       MCP_AUTH_SIGNING_KEYS=str(key), SECRET_KEY=f"{name}-" + "x" * 32,
                       EXAMPLE_WORKER_HEADER="1")
            with open(Path(workdir, "gunicorn.log"), "wb") as log:
                proc = subprocess.Popen([str(GUNICORN), "-w", str(workers), "-b", f"127.0.0.1:{port}",
                                         "--backlog", "256", "example_app.wsgi:app"],
                                        cwd=ROOT, env=env, stdout=log, stderr=log)
            stack = cls(redis_server, services, proc, url, workdir, workers)
            stack.wait_ready()
            return stack
        except BaseException:
            _stop_process(proc)
            if services is not None:
                services.stop()
            redis_server.stop()
            raise

    def wait_ready(self) -> None:
        """Until every worker has answered once (each builds its app after the fork), at most 30 s."""
        deadline = time.monotonic() + 30
        answered: set[str] = set()
        while time.monotonic() < deadline and len(answered) < self.workers:
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn exited during startup")
            try:
                response = requests.get(f"{self.url}/", timeout=5)
                if response.status_code == 200:
                    answered.add(response.headers["X-Example-Worker"])
            except requests.RequestException:  # not listening yet, or workers still booting
                pass
            time.sleep(0.02)
        if not answered:
            raise RuntimeError("gunicorn did not start within 30 s")

    def register_client(self) -> str:
        """One dynamic registration (RFC 7591) of the headless client; returns its ``client_id``."""
        http = requests.Session()
        return register(http, discover(http, self.mcp_url))

    def stop(self) -> None:
        _stop_process(self.proc)
        self.services.stop()
        self.redis.stop()


def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
