"""The example app under gunicorn with two workers on Redis storage: the whole flow and every tool call
succeed while consecutive requests land on different worker processes (no sticky sessions).

The workers share the signing key (a PEM file in ``MCP_AUTH_SIGNING_KEYS``) and ``SECRET_KEY``; every
piece of state — pending legs, codes, upstream tokens, Flask's session (Flask-Session) — is in Redis.
The demo IdPs, APIs and STS run in this process on loopback threads. Gunicorn is stopped by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from example_app.client import MCPSession, login
from example_app.selftest import check_tools
from example_app.stack import DemoServices
from flask_mcp_auth.keys import generate_rsa_pem
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")

pytestmark = pytest.mark.slow

_BATCH = 8  # concurrent tool calls per round
_MAX_EXTRA_CALLS = 400  # still one worker after this many: fail


class _Gunicorn:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log


@pytest.fixture()
def services() -> Iterator[DemoServices]:
    running = DemoServices.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture()
def gunicorn(redis_url: str, services: DemoServices, tmp_path: Path) -> Iterator[_Gunicorn]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    services.register_mcp_server(url)
    key = tmp_path / "signing-key.pem"
    key.write_text(generate_rsa_pem())
    key.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_AUTH_", "EXAMPLE_"))}
    env.update(services.config())
    env.update(PYTHONPATH=str(ROOT), MCP_AUTH_ISSUER=url, MCP_AUTH_STORAGE=redis_url,
               MCP_AUTH_SIGNING_KEYS=str(key), SECRET_KEY="gunicorn-test-" + "x" * 32, EXAMPLE_WORKER_HEADER="1")
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([str(GUNICORN), "-w", "2", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5",
                                 "example_app.wsgi:app"], cwd=ROOT, env=env, stdout=sink, stderr=sink)
    try:
        # Ready when both workers have answered (each builds its app after the fork).
        deadline = time.monotonic() + 30
        answered: set[str] = set()
        while len(answered) < 2:
            assert proc.poll() is None, f"gunicorn exited early:\n{log.read_text()[-2000:]}"
            try:
                response = requests.get(f"{url}/", timeout=5)
                if response.status_code == 200:
                    answered.add(response.headers["X-Example-Worker"])
            except requests.RequestException:  # not listening yet, or workers still booting
                pass
            assert time.monotonic() < deadline, f"gunicorn did not start:\n{log.read_text()[-2000:]}"
            time.sleep(0.02)
        yield _Gunicorn(proc, url, log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def _recording_session(workers: list[str]) -> requests.Session:
    session = requests.Session()

    def record(response: requests.Response, *args: object, **kwargs: object) -> None:
        if "X-Example-Worker" in response.headers:
            workers.append(response.headers["X-Example-Worker"])

    session.hooks["response"].append(record)
    return session


def _whoami_on_fresh_connection(mcp_url: str, token: str, session_id: str, protocol: str) -> tuple[str, Any]:
    """One ``tools/call whoami`` on its own TCP connection; (answering worker, structured result)."""
    with requests.Session() as http:
        http.headers["Connection"] = "close"
        session = MCPSession(mcp_url, token, http=http, protocol_version=protocol)
        session.session_id = session_id
        result = session.call_tool("whoami")
        assert len(session.workers) == 1
        return session.workers[0], result


def _tool_calls_until_both_workers(mcp_url: str, token: str, session_id: str, protocol: str,
                                   seen: set[str]) -> list[tuple[str, Any]]:
    """Concurrent tool calls, each on a fresh connection, in bounded batches until a second worker
    has answered one. The kernel does not promise to spread accepts over two idle workers, but a
    sync worker busy with one request cannot accept the next, so concurrent calls reach the other."""
    answers: list[tuple[str, Any]] = []
    with ThreadPoolExecutor(max_workers=_BATCH) as pool:
        while len(seen) < 2 and len(answers) < _MAX_EXTRA_CALLS:
            batch = [pool.submit(_whoami_on_fresh_connection, mcp_url, token, session_id, protocol)
                     for _ in range(_BATCH)]
            for future in batch:
                worker, result = future.result()  # a failed call raises here and fails the test
                answers.append((worker, result))
                seen.add(worker)
    return answers


def test_flow_and_tools_across_two_gunicorn_workers_on_redis(gunicorn: _Gunicorn,
                                                             services: DemoServices) -> None:
    mcp_url = f"{gunicorn.url}/mcp"
    for username in ("alice", "bob"):
        workers: list[str] = []
        http, browser = _recording_session(workers), _recording_session(workers)
        result = login(mcp_url, username, http=http, browser=browser)
        session = MCPSession(mcp_url, result.access_token, http=http)
        session.open()
        assert {t["name"] for t in session.list_tools()} == {"whoami", "list_repos", "search_docs"}
        subject = str(result.claims["sub"])
        results = check_tools(session, username, subject)
        assert results["whoami"]["providers"]["github"]["connected"] is True
        assert len(workers) >= 15  # every hop of the login and every MCP call carried the header

        # The same token and MCP session used against both processes: whichever worker finished the
        # login, the other one reads its state (session, upstream tokens) from Redis and answers.
        assert session.session_id is not None
        seen = set(session.workers)  # workers that answered this session's MCP calls so far
        extra = _tool_calls_until_both_workers(mcp_url, result.access_token, session.session_id,
                                               session.protocol_version, seen)
        assert len(seen) == 2, f"one worker answered all {len(session.workers) + len(extra)} MCP calls"
        for _worker, whoami in extra:
            assert whoami["subject"] == subject
            assert whoami["providers"]["github"]["connected"] is True
        assert set(workers) <= seen  # the login hops were answered by these same two processes
    assert services.code_exchanges() == {"corp": 2, "cloud": 2, "github": 2}
    log = gunicorn.log.read_text()
    assert "Traceback" not in log
