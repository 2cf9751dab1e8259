"""Load benchmark: N=50 concurrent complete logins through the example app under gunicorn (4 workers,
non-sticky) on Redis, each followed by the three tool calls.

Starts its own redis-server (``tests/support/redis_server.py``), the demo IdPs/APIs/STS on loopback
threads in this process, and gunicorn; stops all of them at the end. Prints completed logins,
failures, cross-user mix-ups (a JWT whose ``whoami`` shows another user's upstream accounts, or whose
tools answer with another user's GitHub/docs identity; all N users share one registered client), upstream code exchanges per leg (counted at
the demo IdPs: 1.00 means every leg redeemed its code exactly once), and logins/s. The last line is
``load-bench: completed=<n>/<N> mixups=<n> exchanges_per_leg=<x>``. Runtime is bounded (about 2 minutes
at most); exit status 1 when a login failed or mixed up users.

    python bench/load.py
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench._loadkit import WORKERS, BenchStack, recorded_sessions, run_login
from example_app.client import FlowError, MCPSession
from example_app.demo import user_for

N = 50
DEADLINE_S = 120.0


def _one_login(mcp_url: str, client_id: str, index: int, start: threading.Barrier) -> dict[str, Any]:
    """One user's complete login and tool calls; returns what happened (never raises)."""
    username = f"user-{index}"
    user = user_for(username)
    assert user is not None
    http, browser, hops = recorded_sessions()
    start.wait()
    run = run_login(mcp_url, client_id, username, (http, browser, hops))

    def workers() -> list[str]:
        return [h.worker for h in hops if h.worker is not None]

    if not run.ok:
        return {"ok": False, "error": run.error, "workers": workers()}
    assert run.access_token is not None
    try:
        session = MCPSession(mcp_url, run.access_token, http=http)
        session.open()
        who = session.call_tool("whoami")
        repos = session.call_tool("list_repos")
        docs = session.call_tool("search_docs", {"query": "mcp"})
    except (FlowError, requests.RequestException, KeyError, ValueError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "workers": workers()}
    mixed = (
        who["subject"] != run.claims["sub"]
        or who["providers"]["corp"].get("account", {}).get("sub") != user.corp_subject
        or who["providers"]["cloud"].get("account", {}).get("sub") != user.cloud_subject
        or repos["owner"] != user.github_login
        or docs["caller"] != user.corp_subject
    )
    return {"ok": True, "mixup": mixed, "login_s": run.ended - run.started, "workers": workers()}


def main() -> int:
    stack = BenchStack.start(name="load-bench")
    try:
        # One MCP client product used by N people: one registration (DCR is rate-limited per address),
        # N concurrent logins through it — the case where a mix-up between users would hide best.
        client_id = stack.register_client()
        services = stack.services

        start = threading.Barrier(N + 1)
        with ThreadPoolExecutor(max_workers=N) as pool:
            futures = [pool.submit(_one_login, stack.mcp_url, client_id, i, start) for i in range(N)]
            start.wait()
            began = time.perf_counter()
            done, pending = wait(futures, timeout=DEADLINE_S)
            wall = time.perf_counter() - began
            for future in pending:
                future.cancel()
        results = [f.result() for f in done]
        completed = [r for r in results if r["ok"]]
        failures = [r for r in results if not r["ok"]] + [{"error": "timed out"}] * len(pending)
        mixups = sum(1 for r in completed if r["mixup"])
        exchanges = services.code_exchanges()
        legs = 3 * len(completed)
        per_leg = sum(exchanges.values()) / legs if legs else 0.0
        pids = {pid for r in results for pid in r["workers"]}
        latencies = sorted(r["login_s"] for r in completed)

        print(f"setup: gunicorn -w {WORKERS} (sync workers, no sticky sessions), Redis storage, "
              f"{N} concurrent users, 3 upstream legs per login")
        print(f"completed logins:       {len(completed)}/{N}")
        print(f"failures:               {len(failures)}")
        for failure in failures[:5]:
            print(f"  - {failure['error']}")
        print(f"cross-user mix-ups:     {mixups}")
        print(f"code exchanges:         {exchanges} (per leg {per_leg:.2f})")
        print(f"workers that answered:  {len(pids)} of {WORKERS}")
        if latencies:
            p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
            print(f"login latency:          p50 {statistics.median(latencies) * 1000:.0f} ms, "
                  f"p95 {p95 * 1000:.0f} ms (login only; tools excluded)")
        print(f"throughput:             {len(completed) / wall:.1f} logins/s incl. tool calls "
              f"({wall:.2f} s wall)")
        print(f"load-bench: completed={len(completed)}/{N} mixups={mixups} exchanges_per_leg={per_leg:.2f}")
        return 0 if len(completed) == N and mixups == 0 else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
