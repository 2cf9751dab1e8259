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

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from example_app.client import FlowError, MCPSession, discover, login, register  # noqa: E402
from example_app.demo import user_for  # noqa: E402
from example_app.stack import DemoServices  # noqa: E402
from flask_mcp_auth.keys import generate_rsa_pem  # noqa: E402
from tests.support.redis_server import free_port, start_redis  # noqa: E402

N = 50
WORKERS = 4
DEADLINE_S = 120.0
GUNICORN = Path(sys.executable).with_name("gunicorn")


def _one_login(mcp_url: str, client_id: str, index: int, start: threading.Barrier) -> dict[str, Any]:
    """One user's complete login and tool calls; returns what happened (never raises)."""
    username = f"user-{index}"
    user = user_for(username)
    assert user is not None
    workers: list[str] = []
    http, browser = requests.Session(), requests.Session()

    def record(response: requests.Response, *args: object, **kwargs: object) -> None:
        if "X-Example-Worker" in response.headers:
            workers.append(response.headers["X-Example-Worker"])

    http.hooks["response"].append(record)
    browser.hooks["response"].append(record)
    start.wait()
    began = time.perf_counter()
    try:
        result = login(mcp_url, username, http=http, browser=browser, client_id=client_id)
        elapsed = time.perf_counter() - began
        session = MCPSession(mcp_url, result.access_token, http=http)
        session.open()
        who = session.call_tool("whoami")
        repos = session.call_tool("list_repos")
        docs = session.call_tool("search_docs", {"query": "mcp"})
    except (FlowError, requests.RequestException, KeyError, ValueError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "workers": workers}
    mixed = (
        who["subject"] != result.claims["sub"]
        or who["providers"]["corp"].get("account", {}).get("sub") != user.corp_subject
        or who["providers"]["cloud"].get("account", {}).get("sub") != user.cloud_subject
        or repos["owner"] != user.github_login
        or docs["caller"] != user.corp_subject
    )
    return {"ok": True, "mixup": mixed, "login_s": elapsed, "workers": workers}


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Until every worker has answered once (each builds its app after the fork), at most 30 s."""
    deadline = time.monotonic() + 30
    answered: set[str] = set()
    while time.monotonic() < deadline and len(answered) < WORKERS:
        if proc.poll() is not None:
            raise RuntimeError("gunicorn exited during startup")
        try:
            response = requests.get(f"{url}/", timeout=5)
            if response.status_code == 200:
                answered.add(response.headers["X-Example-Worker"])
        except requests.RequestException:  # not listening yet, or workers still booting
            pass
        time.sleep(0.02)
    if not answered:
        raise RuntimeError("gunicorn did not start within 30 s")


def main() -> int:
    redis_server = start_redis()
    services = DemoServices.start()
    workdir = tempfile.mkdtemp(prefix="load-bench-")
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        services.register_mcp_server(url)
        key = Path(workdir, "signing-key.pem")
        key.write_text(generate_rsa_pem())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_AUTH_", "EXAMPLE_"))}
        env.update(services.config())
        env.update(PYTHONPATH=str(ROOT), MCP_AUTH_ISSUER=url, MCP_AUTH_STORAGE=redis_server.url,
                   MCP_AUTH_SIGNING_KEYS=str(key), SECRET_KEY="load-bench-" + "x" * 32, EXAMPLE_WORKER_HEADER="1")
        with open(Path(workdir, "gunicorn.log"), "wb") as log:
            proc = subprocess.Popen([str(GUNICORN), "-w", str(WORKERS), "-b", f"127.0.0.1:{port}",
                                     "--backlog", "256", "example_app.wsgi:app"],
                                    cwd=ROOT, env=env, stdout=log, stderr=log)
        _wait_ready(url, proc)
        # One MCP client product used by N people: one registration (DCR is rate-limited per address),
        # N concurrent logins through it — the case where a mix-up between users would hide best.
        http = requests.Session()
        client_id = register(http, discover(http, f"{url}/mcp"))

        start = threading.Barrier(N + 1)
        with ThreadPoolExecutor(max_workers=N) as pool:
            futures = [pool.submit(_one_login, f"{url}/mcp", client_id, i, start) for i in range(N)]
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
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        services.stop()
        redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
