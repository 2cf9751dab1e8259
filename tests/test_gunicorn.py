"""The example app under gunicorn with two workers on Redis storage: the whole flow and every tool call
succeed while consecutive requests land on different worker processes (no sticky sessions).

The workers share the signing key (a PEM file in ``MCP_AUTH_SIGNING_KEYS``) and ``SECRET_KEY``; every
piece of state — pending legs, codes, upstream tokens, Flask's session (Flask-Session) — is in Redis.
The demo IdPs, APIs and STS run in this process on loopback threads. Gunicorn is stopped by PID.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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
        results = check_tools(session, username, str(result.claims["sub"]))
        assert results["whoami"]["providers"]["github"]["connected"] is True

        # Every hop of this login and every MCP call was answered by one of the two workers, and both
        # served some of them: state written by one process was read by the other.
        assert len(workers) >= 15
        assert len(set(workers)) == 2, workers
        assert any(a != b for a, b in itertools.pairwise(workers))
    assert services.code_exchanges() == {"corp": 2, "cloud": 2, "github": 2}
    log = gunicorn.log.read_text()
    assert "Traceback" not in log
