"""Login-chain benchmark (SPEC §9): complete logins per second for 1, 2 and 3 upstream legs.

One login = ``/oauth/authorize`` (consent already remembered) → for each leg: the IdP's authorize
→ our ``/oauth/callback`` (which redeems the code upstream) → finally ``/oauth/token`` with the PKCE
verifier. Everything is real HTTP on loopback: the AS (one app per leg count, sharing the IdPs) and
fake IdPs that answer at once (two OIDC providers and a GitHub-like OAuth2 one, from
``tests/support/idp.py``). The client registers once (RFC 7591) and approves consent once per app.

Runs on memory storage and on Redis (its own redis-server on a free port). The leg counts are
interleaved round by round and the best round is kept, so background noise on a shared machine hurts
every scenario alike. Target: 3 legs cost at most 3.3 times one leg (cost grows linearly with legs).

Usage: ``python bench/chain.py`` (no arguments; about 20-40 s). The last line is machine-readable::

    chain-bench: legs3_over_legs1=<ratio> memory_logins_per_s=<n> redis_logins_per_s=<n>

(``*_logins_per_s`` are for the 3-leg chain; the ratio is the worse of the two backends.)
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import time
from contextlib import ExitStack
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from flask_mcp_auth.keys import generate_rsa_pem
from tests.support.as_app import ASServer, serve_as
from tests.support.idp import FakeGitHub, FakeOIDC
from tests.support.redis_server import start_redis

REDIRECT = "http://127.0.0.1:53682/callback"
ROUNDS = 8
LOGINS_PER_ROUND = 15
TIME_BUDGET = 45.0  # seconds for the measuring rounds of both backends


class Client:
    """A registered public client with its own browser (cookie jar) and HTTP connection pool."""

    def __init__(self, srv: ASServer) -> None:
        self.srv = srv
        self.browser = requests.Session()
        self.browser.trust_env = False
        reg = self.browser.post(f"{srv.url}/oauth/register", json={
            "redirect_uris": [REDIRECT], "client_name": "bench",
            "scope": "openid profile email"}, timeout=10)
        reg.raise_for_status()
        self.client_id = reg.json()["client_id"]

    def login(self, *, approve: bool = False) -> None:
        verifier = secrets.token_urlsafe(48)
        state = secrets.token_urlsafe(16)
        url = f"{self.srv.url}/oauth/authorize?" + urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": REDIRECT,
            "state": state, "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256", "scope": "openid profile email"})
        method, data = "GET", None
        for _ in range(20):
            resp = self.browser.request(method, url, data=data, allow_redirects=False, timeout=10)
            if resp.status_code in (302, 303):
                target = urljoin(url, resp.headers["Location"])
                if target.startswith(REDIRECT):
                    params = parse_qs(urlsplit(target).query)
                    if params.get("state") != [state] or "code" not in params:
                        raise RuntimeError(f"login failed: {params.get('error')}")
                    break
                url, method, data = target, "GET", None
                continue
            if approve and resp.status_code == 200 and urlsplit(url).path == "/oauth/consent":
                fields = dict(_hidden(resp.text))
                url, method, data = f"{self.srv.url}/oauth/consent", "POST", {**fields,
                                                                                "action": "approve"}
                continue
            raise RuntimeError(f"unexpected {resp.status_code} at {urlsplit(url).path}")
        else:
            raise RuntimeError("too many hops")
        token = self.browser.post(f"{self.srv.url}/oauth/token", data={
            "grant_type": "authorization_code", "code": params["code"][0], "code_verifier": verifier,
            "client_id": self.client_id, "redirect_uri": REDIRECT}, timeout=10)
        if token.status_code != 200:
            raise RuntimeError(f"token endpoint answered {token.status_code}")


def _hidden(html: str) -> list[tuple[str, str]]:
    return re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', html)


def measure(storage: str, entries: list[dict[str, Any]], deadline: float) -> dict[int, float]:
    """Best seconds per login for 1, 2, 3 legs on ``storage``."""
    key = generate_rsa_pem()
    best: dict[int, float] = {}
    with ExitStack() as stack:
        clients: dict[int, Client] = {}
        for legs in (1, 2, 3):
            srv = stack.enter_context(serve_as(
                entries[:legs], storage, MCP_AUTH_SIGNING_KEYS=[key],
                MCP_AUTH_STORAGE_PREFIX=f"bench:{{legs{legs}}}:"))
            clients[legs] = Client(srv)
            clients[legs].login(approve=True)  # consent remembered from now on
            for _ in range(3):
                clients[legs].login()  # warm connection pools, JWKS caches
        for _round in range(ROUNDS):
            for legs in (1, 2, 3):
                start = time.perf_counter()
                for _ in range(LOGINS_PER_ROUND):
                    clients[legs].login()
                per_login = (time.perf_counter() - start) / LOGINS_PER_ROUND
                best[legs] = min(best.get(legs, per_login), per_login)
            if time.perf_counter() > deadline:
                break
    return best


def main() -> None:
    logging.disable(logging.WARNING)  # the memory-storage and ephemeral-key warnings
    started = time.perf_counter()
    results: dict[str, dict[int, float]] = {}
    with FakeOIDC(users=["alice"], client_id="corp") as corp, \
            FakeOIDC(users=["bob"], client_id="partner") as partner, \
            FakeGitHub(users=["octocat"]) as gh:
        entries = [corp.upstream_entry("corp"), partner.upstream_entry("partner"),
                   gh.upstream_entry("github")]
        results["memory"] = measure("memory://", entries, started + TIME_BUDGET / 2)
        redis = start_redis()
        try:
            results["redis"] = measure(redis.url, entries, started + TIME_BUDGET)
        finally:
            redis.stop()

    print(f"{'storage':<8} {'legs':>4} {'ms/login':>9} {'logins/s':>9} {'x 1 leg':>8}")
    for backend, best in results.items():
        for legs in (1, 2, 3):
            print(f"{backend:<8} {legs:>4} {best[legs] * 1000:>9.2f} {1 / best[legs]:>9.1f} "
                  f"{best[legs] / best[1]:>8.2f}")
    ratio = max(best[3] / best[1] for best in results.values())
    print(f"(elapsed {time.perf_counter() - started:.1f} s; target legs3/legs1 <= 3.3)")
    print(f"chain-bench: legs3_over_legs1={ratio:.2f} "
          f"memory_logins_per_s={1 / results['memory'][3]:.1f} "
          f"redis_logins_per_s={1 / results['redis'][3]:.1f}")


if __name__ == "__main__":
    main()
