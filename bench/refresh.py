"""Refresh stampede benchmark (TESTPLAN LD-06; SPEC §4.2): 100 parallel requests of one user whose
upstream token has expired must make exactly one upstream refresh call, and cost about one upstream
round-trip.

A Mode B app with one ``type: oauth2`` upstream whose token endpoint is the loopback fake of
``tests/support/token_endpoint.py`` (it counts refresh calls, rotates refresh tokens and refuses a
reused one) with an artificial ``UPSTREAM_DELAY`` before each answer. ``issue_token`` stores an
upstream token that expired 5 s ago (with a refresh token); then 100 threads, each with its own
connection, wait on a barrier and GET a view that needs that provider.

Two scenarios:

* ``memory`` — one process: the app on a threaded werkzeug server on loopback, memory storage
  (in-process single flight);
* ``redis`` — the same app under gunicorn, 2 ``gthread`` workers x 16 threads, on its own redis-server
  (in-process single flight plus the cross-process storage lock).

Before each stampede a "warm" stampede with a fresh (non-expired) token of another session measures
what 100 concurrent requests cost without any refresh, so the refresh's own share is visible.

Usage: ``python bench/refresh.py`` (no arguments; about 10-20 s). The last line is machine-readable::

    refresh-bench: refresh_calls=<n> p99_over_upstream=<ratio> errors=<n>

(``refresh_calls`` is the worse backend's count — it must be 1 each; the ratio is the worse p99 over
``UPSTREAM_DELAY``; ``errors`` counts non-200 answers over both backends.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from flask import Flask, g, jsonify  # noqa: E402

from flask_mcp_auth import MCPAuth  # noqa: E402
from flask_mcp_auth.keys import generate_rsa_pem  # noqa: E402
from flask_mcp_auth.storage import UpstreamToken  # noqa: E402
from flask_mcp_auth.testing import issue_token  # noqa: E402
from tests.support.redis_server import free_port, start_redis  # noqa: E402
from tests.support.servers import serve  # noqa: E402
from tests.support.token_endpoint import TokenEndpoint  # noqa: E402

PARALLEL = 100
UPSTREAM_DELAY = 0.05  # seconds the fake token endpoint sleeps before answering a refresh
WORKERS = 2
THREADS = 16
GUNICORN = Path(sys.executable).with_name("gunicorn")
ENV_CONFIG = "REFRESH_BENCH_CONFIG"


def build_app(config: dict[str, Any]) -> Flask:
    """The app under test: ``/needs-corp`` needs the ``corp`` upstream token."""
    app = Flask("refresh-bench")
    app.config.update(SECRET_KEY="refresh-bench-" + "x" * 32, **config)
    auth = MCPAuth(app)

    def view() -> Any:
        return jsonify(corp=g.identity.upstream_tokens.get("corp"))

    app.add_url_rule("/needs-corp", "needs_corp", auth.required(providers=["corp"])(view))
    app.add_url_rule("/ping", "ping", lambda: "ok")
    return app


def gunicorn_app() -> Flask:
    """Factory for the gunicorn workers (``bench.refresh:gunicorn_app()``); config from the env."""
    logging.disable(logging.WARNING)
    return build_app(json.loads(os.environ[ENV_CONFIG]))


def _config(idp: TokenEndpoint, storage: str, issuer: str, pem: str) -> dict[str, Any]:
    return {
        "MCP_AUTH_ISSUER": issuer,
        "MCP_AUTH_RESOURCE": f"{issuer}/mcp",
        "MCP_AUTH_UPSTREAMS": [idp.upstream_entry("corp")],
        "MCP_AUTH_SIGNING_KEYS": [pem],
        "MCP_AUTH_STORAGE": storage,
    }


def _expired(idp: TokenEndpoint) -> UpstreamToken:
    return UpstreamToken(provider="corp", access_token="old-at", refresh_token=idp.seed(),
                         expires_at=time.time() - 5, scope="read", subject="up-alice")


def _fresh() -> UpstreamToken:
    return UpstreamToken(provider="corp", access_token="live-at", refresh_token=None,
                         expires_at=time.time() + 3600, scope="read", subject="up-alice")


def stampede(url: str, token: str) -> tuple[list[float], list[int], set[str]]:
    """``PARALLEL`` threads, one connection each, released together: latencies, statuses, corp tokens."""
    sessions = []
    for _ in range(PARALLEL):
        session = requests.Session()
        session.trust_env = False
        session.get(f"{url}/ping", timeout=10)  # open the connection before the barrier
        sessions.append(session)
    barrier = threading.Barrier(PARALLEL)
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: list[int] = []
    seen: set[str] = set()

    def worker(session: requests.Session) -> None:
        barrier.wait()
        began = time.perf_counter()
        try:
            resp = session.get(f"{url}/needs-corp", headers={"Authorization": f"Bearer {token}"},
                               timeout=30)
            status, corp = resp.status_code, (resp.json().get("corp") if resp.status_code == 200 else None)
        except (requests.RequestException, ValueError):
            status, corp = 0, None
        elapsed = time.perf_counter() - began
        with lock:
            latencies.append(elapsed)
            statuses.append(status)
            if corp:
                seen.add(corp)

    threads = [threading.Thread(target=worker, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for session in sessions:
        session.close()
    return latencies, statuses, seen


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run(name: str, url: str, app: Flask, idp: TokenEndpoint) -> dict[str, Any]:
    warm_token = issue_token(app, "bob", {"corp": _fresh()})
    stampede(url, warm_token)  # warm-up: imports, JWKS-free verify caches, pools
    warm, warm_status, _ = stampede(url, warm_token)
    idp.refresh_calls = 0
    idp.reused = 0
    token = issue_token(app, "alice", {"corp": _expired(idp)})
    latencies, statuses, seen = stampede(url, token)
    return {
        "name": name, "calls": idp.refresh_calls, "reused": idp.reused,
        "errors": sum(1 for s in statuses if s != 200) + sum(1 for s in warm_status if s != 200),
        "distinct": len(seen), "p50": statistics.median(latencies), "p99": _pct(latencies, 0.99),
        "warm_p50": statistics.median(warm), "warm_p99": _pct(warm, 0.99),
    }


def run_memory(idp: TokenEndpoint, pem: str) -> dict[str, Any]:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    app = build_app(_config(idp, "memory://", issuer, pem))
    with serve(app, port) as srv:
        return run("memory", srv.url, app, idp)


@contextmanager
def gunicorn(config: dict[str, Any], port: int) -> Iterator[str]:
    workdir = tempfile.mkdtemp(prefix="refresh-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_AUTH_")}
    env.update({ENV_CONFIG: json.dumps(config), "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    with open(Path(workdir, "gunicorn.log"), "wb") as log:
        proc = subprocess.Popen([str(GUNICORN), "-w", str(WORKERS), "-k", "gthread", "--threads",
                                 str(THREADS), "-b", f"127.0.0.1:{port}", "--backlog", "256",
                                 "bench.refresh:gunicorn_app()"], cwd=ROOT, env=env, stdout=log,
                                stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start; see {workdir}/gunicorn.log")
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.05)
        time.sleep(1.0)  # let the second worker finish booting too
        yield url
        shutil.rmtree(workdir, ignore_errors=True)  # kept (with the log) when something failed
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def run_redis(idp: TokenEndpoint, pem: str) -> dict[str, Any]:
    redis_server = start_redis()
    try:
        port = free_port()
        config = _config(idp, redis_server.url, f"http://127.0.0.1:{port}", pem)
        app = build_app(config)  # the issuing side: same storage, same key
        with gunicorn(config, port) as url:
            result = run(f"redis/{WORKERS}proc", url, app, idp)
        MCPAuth.runtime(app).storage.close()
        return result
    finally:
        redis_server.stop()


def main() -> None:
    logging.disable(logging.WARNING)  # the memory-storage warning
    started = time.perf_counter()
    pem = generate_rsa_pem()
    results = []
    with TokenEndpoint() as idp:
        idp.delay = UPSTREAM_DELAY
        results.append(run_memory(idp, pem))
        results.append(run_redis(idp, pem))
    print(f"{PARALLEL} parallel requests, one expired upstream token; upstream delay "
          f"{UPSTREAM_DELAY * 1000:.0f} ms")
    print(f"{'backend':<12} {'calls':>5} {'reused':>6} {'tokens':>6} {'errors':>6} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'p99/up':>6} {'warm p50':>8} {'warm p99':>8} {'(p99-warm)/up':>13}")
    for r in results:
        print(f"{r['name']:<12} {r['calls']:>5} {r['reused']:>6} {r['distinct']:>6} {r['errors']:>6} "
              f"{r['p50'] * 1000:>7.1f} {r['p99'] * 1000:>7.1f} {r['p99'] / UPSTREAM_DELAY:>6.2f} "
              f"{r['warm_p50'] * 1000:>8.1f} {r['warm_p99'] * 1000:>8.1f} "
              f"{(r['p99'] - r['warm_p99']) / UPSTREAM_DELAY:>13.2f}")
    print(f"(elapsed {time.perf_counter() - started:.1f} s; 'warm' = the same stampede with a live "
          "token, no refresh; target: calls = 1 per backend, no errors)")
    calls = next((r["calls"] for r in results if r["calls"] != 1), 1)  # the first backend that is off
    ratio = max(r["p99"] for r in results) / UPSTREAM_DELAY
    errors = sum(r["errors"] for r in results)
    print(f"refresh-bench: refresh_calls={calls} p99_over_upstream={ratio:.2f} errors={errors}")


if __name__ == "__main__":
    main()
