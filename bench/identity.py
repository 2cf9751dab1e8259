"""Incoming-identity benchmark (SPEC §9): µs per protected request through the Flask test client.

Scenarios (every app with the same SECRET_KEY, see below), all measured in this one process and interleaved round by round (the minimum batch time
of each is kept, so background noise on a shared machine hurts every scenario alike):

  (a) bare Flask view
  (b) a before_request hook that only calls ``jwt.decode`` with a preloaded RS256 key
  (c) MCPAuth Mode A (external issuer, JWKS served on loopback), token seen before
  (d) MCPAuth Mode B, 3 providers, memory storage, token seen before
  (e) the same with a token never seen before on every request (and a fresh session each time)
  (f) MCPAuth Mode B, 3 providers, Redis storage (its own redis-server), token seen before

Then Redis round trips per request for 1, 3 and 10 providers, counted by wrapping redis-py's
``send_packed_command`` (a pipeline or script call is one send). Targets: (d) ≤ 1.25x(a),
(e) ≤ 1.15x(b), round trips = 1. Usage: ``python bench/identity.py`` (no arguments).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jwt
import redis.connection
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, g

from flask_mcp_auth import MCPAuth
from flask_mcp_auth.keys import generate_rsa_pem
from flask_mcp_auth.testing import issue_token
from tests.support.redis_server import start_redis
from tests.support.servers import serve

ISSUER = "https://mcp.example.com"
RESOURCE = "https://mcp.example.com/mcp"
PEM = generate_rsa_pem()
ROUNDS = 15
BATCH = 200
#: Every app gets the same SECRET_KEY: Flask then opens its signed-cookie session on every request
#: (~40 µs here), a cost of the host app with or without this extension (Mode B needs a secret key).
SECRET_KEY = "bench"

logging.getLogger("flask_mcp_auth").setLevel(logging.ERROR)


def _upstreams(n: int) -> list[dict[str, Any]]:
    return [{"name": f"p{i}", "type": "oauth2", "client_id": f"c{i}", "client_secret": "x",
             "authorization_endpoint": "http://127.0.0.1:9/authorize",
             "token_endpoint": "http://127.0.0.1:9/token"} for i in range(n)]


def _view() -> str:
    return "ok"


def bare_app() -> Flask:
    app = Flask("bare")
    app.secret_key = SECRET_KEY
    app.add_url_rule("/mcp", "mcp", _view)
    return app


def decode_hook_app(public_key: Any) -> Flask:
    app = Flask("decode-hook")
    app.secret_key = SECRET_KEY

    @app.before_request
    def hook() -> None:
        from flask import request

        header = request.headers.get("Authorization", "")
        g.claims = jwt.decode(header.split(" ", 1)[1], public_key, algorithms=["RS256"],
                              audience=RESOURCE, issuer=ISSUER)

    app.add_url_rule("/mcp", "mcp", _view)
    return app


def mode_b_app(storage: str, providers: int = 3) -> Flask:
    app = Flask("mode-b")
    app.config.update(SECRET_KEY=SECRET_KEY, MCP_AUTH_ISSUER=ISSUER, MCP_AUTH_RESOURCE=RESOURCE,
                      MCP_AUTH_UPSTREAMS=_upstreams(providers), MCP_AUTH_SIGNING_KEYS=[PEM],
                      MCP_AUTH_STORAGE=storage)
    auth = MCPAuth(app)
    app.add_url_rule("/mcp", "mcp", auth.required()(_view))
    return app


def mode_b_token(app: Flask, providers: int = 3) -> str:
    return issue_token(app, "alice", {f"p{i}": f"upstream-token-{i}" for i in range(providers)},
                       scopes=["tools"])


def mode_a_app(issuer_url: str) -> Flask:
    app = Flask("mode-a")
    app.config.update(SECRET_KEY=SECRET_KEY, MCP_AUTH_ISSUER=issuer_url, MCP_AUTH_RESOURCE=RESOURCE,
                      MCP_AUTH_JWKS_URI=f"{issuer_url}/jwks")
    auth = MCPAuth(app)
    app.add_url_rule("/mcp", "mcp", auth.required()(_view))
    return app


def jwks_server_app(public_key: Any) -> Any:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public_key))
    jwk.update(kid="ext-1", alg="RS256", use="sig")
    body = json.dumps({"keys": [jwk]}).encode()

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


class Scenario:
    def __init__(self, name: str, app: Flask, tokens: Callable[[], str], *, cold: bool = False) -> None:
        self.name = name
        self.cold = cold
        self.client = app.test_client()
        self.tokens = tokens
        self.best = float("inf")

    def run(self, n: int) -> None:
        client, tokens = self.client, self.tokens
        headers = [{"Authorization": f"Bearer {tokens()}"} for _ in range(n)]
        gc.collect()
        start = time.perf_counter()
        for h in headers:
            resp = client.get("/mcp", headers=h)
        elapsed = (time.perf_counter() - start) / n
        if resp.status_code != 200:
            raise SystemExit(f"{self.name}: unexpected status {resp.status_code} {resp.get_data()[:200]!r}")
        self.best = min(self.best, elapsed)


class _SendCounter:
    def __init__(self) -> None:
        self.count = 0
        self._orig = redis.connection.AbstractConnection.send_packed_command

    def __enter__(self) -> _SendCounter:
        orig = self._orig

        def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            return orig(conn, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        redis.connection.AbstractConnection.send_packed_command = self._orig  # type: ignore[method-assign]


def round_trips(url: str, providers: int, requests_: int = 50) -> float:
    app = mode_b_app(url, providers)
    token = mode_b_token(app, providers)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(5):  # warm: script loaded, connection pooled, token cached
        client.get("/mcp", headers=headers)
    with _SendCounter() as counter:
        for _ in range(requests_):
            assert client.get("/mcp", headers=headers).status_code == 200
    return counter.count / requests_


def main() -> None:
    started = time.monotonic()
    server = start_redis()
    try:
        memory_b = mode_b_app("memory://")
        redis_b = mode_b_app(server.url)
        key = memory_b.extensions["mcp_auth"].keys.current
        warm_token = mode_b_token(memory_b)
        redis_token = mode_b_token(redis_b)
        # (e): first sight of each token; every token also opens a session never seen before, so
        # its upstream rows are decrypted afresh too (the worst case: a new login every request).
        fresh = [mode_b_token(memory_b) for _ in range(ROUNDS * BATCH)]
        fresh.reverse()
        # (e'): first sight of each token of one known session (an access token after a refresh).
        runtime = memory_b.extensions["mcp_auth"]
        sid = jwt.decode(warm_token, options={"verify_signature": False})["tsid"]
        same_session = [runtime.tokens.mint(subject="alice", client_id="c", audience=RESOURCE, scopes=["tools"],
                                            session_id=sid, ttl=3600)[0] for _ in range(ROUNDS * BATCH)]

        ext_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with serve(jwks_server_app(ext_key.public_key())) as issuer:
            now = int(time.time())
            ext_token = jwt.encode({"iss": issuer.url, "sub": "u", "aud": RESOURCE, "exp": now + 3600,
                                    "iat": now, "scope": "tools"}, ext_key, algorithm="RS256",
                                   headers={"kid": "ext-1"})
            scenarios = [
                Scenario("(a) bare Flask", bare_app(), lambda: warm_token),
                Scenario("(b) jwt.decode hook", decode_hook_app(key.public_key), lambda: warm_token),
                Scenario("(c) Mode A, seen token", mode_a_app(issuer.url), lambda: ext_token),
                Scenario("(d) Mode B 3 prov memory, seen token", memory_b, lambda: warm_token),
                Scenario("(e) Mode B 3 prov memory, new token+session", memory_b, fresh.pop, cold=True),
                Scenario("(e') Mode B 3 prov memory, new token", memory_b, same_session.pop, cold=True),
                Scenario("(f) Mode B 3 prov redis, seen token", redis_b, lambda: redis_token),
            ]
            for s in scenarios:  # warm-up (JWKS fetch, caches, Redis script load)
                if not s.cold:
                    s.run(50)
                    s.best = float("inf")
            for _ in range(ROUNDS):
                for s in scenarios:
                    s.run(BATCH)
        trips = {n: round_trips(server.url, n) for n in (1, 3, 10)}
    finally:
        server.stop()

    a, b = scenarios[0].best, scenarios[1].best
    print(f"{'scenario':42} {'µs/req':>8} {'x(a)':>6} {'x(b)':>6}")
    for s in scenarios:
        print(f"{s.name:42} {s.best * 1e6:8.1f} {s.best / a:6.2f} {s.best / b:6.2f}")
    for n, value in trips.items():
        print(f"redis round trips per request, {n:2d} providers: {value:g}")
    print(f"(targets: d/a ≤ 1.25, e/b ≤ 1.15, round trips = 1; run took {time.monotonic() - started:.1f} s)")
    warm = scenarios[3].best / a
    cold = scenarios[4].best / b
    worst_trips = max(trips.values())
    print(f"identity-bench: warm={warm:.2f} cold={cold:.2f} redis_round_trips={worst_trips:g}")


if __name__ == "__main__":
    main()
