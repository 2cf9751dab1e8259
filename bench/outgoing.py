"""Outgoing auth benchmark (SPEC §9): ``token_exchange`` with a warm cache vs ``upstream_inject``.

Starts a loopback echo backend and a loopback RFC 8693 STS that counts calls, builds a Mode B app with
both backends on one pooled session, then for one identity:

* sends 1 000+ requests through the ``token_exchange`` backend and counts STS calls (target: 1);
* times both backends call by call, interleaved (same server, same pooled connection), and reports
  the ratio of the median per-call times (target: ≤ 1.10).

No arguments; runs in a few seconds. Last line:
``outgoing-bench: sts_calls=<n> exchange_over_inject=<ratio>``
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from flask import Flask, g

from flask_mcp_auth import MCPAuth
from flask_mcp_auth.keys import generate_rsa_pem
from flask_mcp_auth.outgoing.requests import make_session
from flask_mcp_auth.testing import issue_token
from tests.support.echo import running_echo
from tests.support.sts import running_sts

CALLS = 1000
WARMUP = 50


def main() -> None:
    logging.getLogger("flask_mcp_auth").setLevel(logging.ERROR)
    with running_echo() as echo, running_sts(expires_in=3600) as sts:
        issuer = "http://127.0.0.1:5000"
        app = Flask("outgoing_bench")
        app.config.update(
            SECRET_KEY="b" * 32,
            MCP_AUTH_ISSUER=issuer,
            MCP_AUTH_RESOURCE=f"{issuer}/mcp",
            MCP_AUTH_SIGNING_KEYS=[generate_rsa_pem()],
            MCP_AUTH_UPSTREAMS=[
                {"name": name, "type": "oauth2", "client_id": name, "client_secret": "x",
                 "authorization_endpoint": f"https://{name}.example/authorize",
                 "token_endpoint": f"https://{name}.example/token"}
                for name in ("github", "corp")
            ],
            MCP_AUTH_BACKENDS={
                "inject": {"strategy": "upstream_inject", "provider": "github",
                           "url": f"{echo.url}/echo/inject/"},
                "exchange": {"strategy": "token_exchange", "token_url": sts.token_url,
                             "client_id": sts.client_id, "client_secret": sts.client_secret,
                             "subject_provider": "corp", "audience": "bench-api",
                             "url": f"{echo.url}/echo/exchange/"},
            },
        )
        MCPAuth(app)
        token = issue_token(app, "bench-user", upstream_tokens={"github": "gh-bench", "corp": "corp-bench"})
        with app.test_request_context("/", headers={"Authorization": f"Bearer {token}"}):
            app.preprocess_request()
            identity = g.identity
        runtime = app.extensions["mcp_auth"]
        session = make_session(runtime, ["inject", "exchange"], identity=identity)
        urls = {"inject": f"{echo.url}/echo/inject/x", "exchange": f"{echo.url}/echo/exchange/x"}

        def call(name: str) -> float:
            start = time.perf_counter()
            session.get(urls[name], timeout=10).raise_for_status()
            return time.perf_counter() - start

        for _ in range(WARMUP):
            call("inject")
            call("exchange")
        # Interleave single calls (alternating which goes first) so drift and noise from other
        # processes hit both sides alike; compare medians of the per-call times.
        samples: dict[str, list[float]] = {"inject": [], "exchange": []}
        for i in range(CALLS):
            order = ("inject", "exchange") if i % 2 == 0 else ("exchange", "inject")
            for name in order:
                samples[name].append(call(name))
        sent = session.get(urls["exchange"], timeout=10).json()["headers"].get("Authorization", "")
        assert sent.startswith("Bearer xchg."), "the exchanged token was not injected"
        inject_us = statistics.median(samples["inject"]) * 1e6
        exchange_us = statistics.median(samples["exchange"]) * 1e6
        print(f"calls through token_exchange by one identity: {WARMUP + CALLS + 1}")
        print(f"per call (median of {CALLS}, pooled keep-alive session): upstream_inject {inject_us:.0f} us, "
              f"token_exchange {exchange_us:.0f} us")
        # the strategies alone, without HTTP: what the ratio above is made of
        prepared = requests.Request("GET", urls["exchange"]).prepare()
        strategies = runtime.parts["backends"]
        apply_us = {}
        for name in ("inject", "exchange"):
            n = 20_000
            start = time.perf_counter()
            for _ in range(n):
                strategies[name].apply(prepared, identity)
            apply_us[name] = (time.perf_counter() - start) / n * 1e6
        print(f"apply() alone: upstream_inject {apply_us['inject']:.1f} us, "
              f"token_exchange (cache hit) {apply_us['exchange']:.1f} us")
        session.close()
        print(f"outgoing-bench: sts_calls={sts.call_count} exchange_over_inject={exchange_us / inject_us:.3f}")


if __name__ == "__main__":
    main()
