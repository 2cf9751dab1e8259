"""Redis keyspace benchmark (TESTPLAN §8 "Memory and keyspace"; SPEC §7): 10 000 abandoned login chains
must leave nothing behind once the pending TTL has passed, and no key may lack a TTL.

A Mode B app with two legs (a fake OIDC provider, then a GitHub-like one, both loopback fakes from
``tests/support/idp.py``) on its own redis-server, ``MCP_AUTH_PENDING_TTL=60`` (the minimum), a
pre-registered first-party client and ``MCP_AUTH_CONSENT="never"``, so ``/oauth/authorize`` answers
302 to the first upstream at once and stores the chain's pending record. The app is driven through
the Flask test client (no HTTP server for the AS; the upstream callbacks call the fake IdPs over real
HTTP):

* ``AUTHORIZE_ONLY`` chains stop at that redirect (the user never logs in upstream);
* ``AFTER_LEG1`` chains complete leg 1 — the fake IdP's authorize, then our ``/oauth/callback``,
  which redeems the code and stores a provisional upstream-token row — and stop at the redirect to
  leg 2.

``DBSIZE`` and ``INFO memory`` ``used_memory`` are read before, right after, and then polled until the
key count is back to the baseline (at most ``PENDING_TTL + GRACE`` seconds after the last write). Every
key is checked right after the drive for a TTL (``TTL`` = -1 means none; must be 0 such keys) and the
largest TTL seen is reported (must not exceed the pending TTL).

Usage: ``python bench/keyspace.py`` (no arguments; about 75-90 s, most of it waiting for the TTL).
The last line is machine-readable::

    keyspace-bench: abandoned=<n> keys_after=<n> keys_baseline=<n> no_ttl=<n>

(``keys_after`` is the count at the end of the wait.)
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis
import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from flask import Flask

from flask_mcp_auth import MCPAuth
from flask_mcp_auth.keys import generate_rsa_pem
from tests.support.idp import FakeGitHub, FakeOIDC
from tests.support.redis_server import start_redis

AUTHORIZE_ONLY = 10_000
AFTER_LEG1 = 300
PENDING_TTL = 60
GRACE = 12.0  # seconds past the TTL we keep polling (Redis reclaims expired keys in its active cycle)
CLIENT_ID = "bench-first-party"
REDIRECT = "http://127.0.0.1:53682/callback"
ISSUER = "http://127.0.0.1:8765"  # never listened on: the AS is driven through the test client
SCOPE = "openid profile email"


def build_app(storage: str, upstreams: list[dict[str, Any]]) -> Flask:
    app = Flask("keyspace-bench")
    app.config.update(
        SECRET_KEY=secrets.token_urlsafe(32),
        MCP_AUTH_ISSUER=ISSUER,
        MCP_AUTH_RESOURCE=f"{ISSUER}/mcp",
        MCP_AUTH_UPSTREAMS=upstreams,
        MCP_AUTH_STORAGE=storage,
        MCP_AUTH_SIGNING_KEYS=[generate_rsa_pem()],
        MCP_AUTH_PENDING_TTL=PENDING_TTL,
        MCP_AUTH_CONSENT="never",
        MCP_AUTH_CLIENTS=[{"client_id": CLIENT_ID, "redirect_uris": [REDIRECT], "scopes": SCOPE.split(),
                           "first_party": True, "client_name": "Keyspace bench"}],
    )
    MCPAuth(app)
    return app


def authorize(app: Flask) -> tuple[Any, str]:
    """One fresh browser's ``/oauth/authorize``: ``(test client, Location of the 302)``."""
    client = app.test_client()
    verifier = secrets.token_urlsafe(48)
    query = urlencode({"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
                       "state": secrets.token_urlsafe(16), "scope": SCOPE,
                       "code_challenge": create_s256_code_challenge(verifier),
                       "code_challenge_method": "S256"})
    resp = client.get(f"/oauth/authorize?{query}", base_url=ISSUER)
    if resp.status_code != 302:
        raise RuntimeError(f"authorize answered {resp.status_code}")
    return client, resp.headers["Location"]


def abandon_after_leg1(app: Flask, idp: requests.Session, leg1_url: str, leg2_url: str) -> None:
    client, location = authorize(app)
    if not location.startswith(leg1_url):
        raise RuntimeError("authorize did not redirect to leg 1")
    back = idp.get(location, allow_redirects=False, timeout=10)
    target = back.headers.get("Location", "")
    if back.status_code != 302 or not target.startswith(f"{ISSUER}/oauth/callback"):
        raise RuntimeError(f"leg-1 IdP answered {back.status_code}")
    parts = urlsplit(target)
    resp = client.get(f"{parts.path}?{parts.query}", base_url=ISSUER)
    if resp.status_code != 302 or not resp.headers["Location"].startswith(leg2_url):
        raise RuntimeError(f"callback answered {resp.status_code}, not the redirect to leg 2")


def snapshot(r: redis.Redis) -> tuple[int, int]:
    return int(r.dbsize()), int(r.info("memory")["used_memory"])


def _kind(key: bytes) -> str:
    """``pending``, ``upstream:*``, ``identity:corp``…: the key after its prefix, random parts as ``*``."""
    rest = key.decode("utf-8", "replace").split("}:", 1)[-1]
    return ":".join("*" if len(part) >= 16 else part for part in rest.split(":"))


def ttl_survey(r: redis.Redis) -> tuple[int, dict[str, int], Counter[str]]:
    """``(keys without TTL, largest TTL per kind in s, key count per kind)`` over the whole keyspace."""
    no_ttl, max_ttl, kinds = 0, dict[str, int](), Counter[str]()
    keys = list(r.scan_iter(count=1000))
    for start in range(0, len(keys), 1000):
        chunk = keys[start:start + 1000]
        pipe = r.pipeline(transaction=False)
        for key in chunk:
            pipe.ttl(key)
        for key, ttl in zip(chunk, pipe.execute(), strict=True):
            no_ttl += ttl == -1
            kind = _kind(key)
            kinds[kind] += 1
            max_ttl[kind] = max(max_ttl.get(kind, -2), int(ttl))
    return no_ttl, max_ttl, kinds


def main() -> None:
    logging.disable(logging.WARNING)
    started = time.perf_counter()
    server = start_redis()
    try:
        r = redis.Redis.from_url(server.url)
        with FakeOIDC(users=["alice"], client_id="corp") as corp, FakeGitHub(users=["octocat"]) as gh:
            app = build_app(server.url, [corp.upstream_entry("corp"), gh.upstream_entry("github")])
            leg1_url, leg2_url = f"{corp.url}/authorize", f"{gh.url}/"
            baseline_keys, baseline_mem = snapshot(r)
            idp = requests.Session()
            idp.trust_env = False
            drive_began = time.perf_counter()
            for _ in range(AFTER_LEG1):
                abandon_after_leg1(app, idp, leg1_url, leg2_url)
            for _ in range(AUTHORIZE_ONLY):
                authorize(app)
            last_write = time.monotonic()
            drive_s = time.perf_counter() - drive_began
            after_keys, after_mem = snapshot(r)
            no_ttl, max_ttl, kinds = ttl_survey(r)
            # Per-user records (the upstream-identity → internal-user map, SPEC §3.6 find-or-create)
            # outlive a chain by design; everything per chain must go with the pending TTL.
            per_user = sum(n for kind, n in kinds.items() if kind.startswith("identity:"))
            deadline = last_write + PENDING_TTL + GRACE
            time.sleep(max(0.0, last_write + PENDING_TTL - 2 - time.monotonic()))
            while True:
                end_keys, end_mem = snapshot(r)
                if end_keys <= baseline_keys + per_user or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            cleared_after = time.monotonic() - last_write
            _no, _ttls, left = ttl_survey(r)
            MCPAuth.runtime(app).storage.close()
        r.close()
    finally:
        server.stop()

    abandoned = AUTHORIZE_ONLY + AFTER_LEG1
    print(f"{abandoned} abandoned chains ({AUTHORIZE_ONLY} at the first redirect, {AFTER_LEG1} after leg 1) "
          f"driven in {drive_s:.1f} s; pending TTL {PENDING_TTL} s")
    print(f"{'point':<14} {'keys':>7} {'used_memory':>12}")
    for label, keys, mem in (("baseline", baseline_keys, baseline_mem), ("after drive", after_keys, after_mem),
                             (f"+{cleared_after:.0f} s", end_keys, end_mem)):
        print(f"{label:<14} {keys:>7} {mem / 1024 / 1024:>10.2f}MB")
    print("after the drive, kind=count (largest TTL s): "
          + ", ".join(f"{k}={n} ({max_ttl[k]})" for k, n in kinds.most_common()))
    print("left at the end: " + (", ".join(f"{k}={n}" for k, n in left.most_common()) or "nothing")
          + f" (per-user identity keys allowed: {per_user})")
    chain_ttl = max((t for k, t in max_ttl.items() if not k.startswith("identity:")), default=0)
    print(f"keys without TTL: {no_ttl}; largest per-chain TTL: {chain_ttl} s (pending TTL {PENDING_TTL} s); "
          f"elapsed {time.perf_counter() - started:.1f} s")
    print(f"keyspace-bench: abandoned={abandoned} keys_after={end_keys} keys_baseline={baseline_keys} "
          f"no_ttl={no_ttl}")


if __name__ == "__main__":
    main()
