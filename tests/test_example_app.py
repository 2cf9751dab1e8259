"""The example app: a real MCP server (Streamable HTTP, JSON-RPC 2.0) behind the full three-provider
login, its demo services, and the ``python -m example_app`` commands.

Everything runs on loopback: the demo IdPs, APIs and STS on threads, the MCP server on a thread (and
in subprocesses for the command tests). The browser is a ``requests.Session``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis
import requests

from example_app.client import CALLBACK, FlowError, MCPSession, discover, login, walk_authorization
from example_app.demo import user_for
from example_app.selftest import run_flow
from example_app.stack import Stack, start_stack

ROOT = Path(__file__).resolve().parent.parent
JSON_SSE = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = start_stack(config={"EXAMPLE_BROWSER_DEMO": True})
    try:
        yield running
    finally:
        running.stop()


def _open(stack: Stack, username: str) -> tuple[str, MCPSession]:
    result = login(stack.mcp_url, username)
    session = MCPSession(stack.mcp_url, result.access_token)
    session.open()
    return result.access_token, session


def _post(url: str, body: object, headers: dict[str, str]) -> requests.Response:
    return requests.post(url, data=body if isinstance(body, (str, bytes)) else json.dumps(body),
                         headers={"Content-Type": "application/json", "Accept": JSON_SSE, **headers}, timeout=10)


# -- the whole flow ------------------------------------------------------------------------------------
def test_full_flow_memory_storage(stack: Stack) -> None:
    before = stack.services.code_exchanges()
    results = run_flow(stack, "alice")
    user = user_for("alice")
    assert user is not None
    assert results["whoami"]["name"] == "Alice Example"
    assert results["list_repos"]["owner"] == user.github_login
    assert {r["full_name"] for r in results["list_repos"]["repositories"]} >= {f"{user.github_login}/notes"}
    assert results["search_docs"]["caller"] == user.corp_subject
    after = stack.services.code_exchanges()
    assert {k: after[k] - before[k] for k in after} == {"corp": 1, "cloud": 1, "github": 1}
    assert stack.services.sts.counters["exchanges"] >= 1


def test_full_flow_redis_storage_with_server_side_sessions(redis_url: str) -> None:
    running = start_stack(config={"MCP_AUTH_STORAGE": redis_url})
    try:
        results = run_flow(running, "bob")
        assert results["whoami"]["name"] == "Bob Example"
        assert running.services.code_exchanges() == {"corp": 1, "cloud": 1, "github": 1}
        client = redis.Redis.from_url(redis_url)
        try:
            keys = [k.decode() for k in client.keys("*")]
        finally:
            client.close()
        # Flask's session (browser binding, consent) lives in the same Redis through Flask-Session,
        # next to the extension's own records.
        assert any(k.startswith("example-app:session:") for k in keys)
        assert any(k.startswith("mcp-auth:") for k in keys)
    finally:
        running.stop()


def test_expired_corp_token_is_refreshed_and_tools_keep_working() -> None:
    # The OIDC providers issue 1-second access tokens (a refreshed one is due half a second early, so
    # a token is not refreshed on every request): wait out each one before the next tool call.
    running = start_stack(access_ttl=1)
    try:
        _, session = _open(running, "alice")
        corp = running.services.corp
        for query in ("mcp", "oauth"):
            time.sleep(1.1)  # the corp token has expired
            before = corp.counters["refreshes"]
            assert session.call_tool("search_docs", {"query": query})["caller"] == "corp-alice"
            assert corp.counters["refreshes"] > before  # refreshed with the stored refresh token
        who = session.call_tool("whoami")
        assert who["providers"]["corp"]["connected"] is True
        assert who["providers"]["github"]["connected"] is True  # GitHub tokens do not expire
        # The cloud login asked for no offline_access, so it has no refresh token: once expired, cloud
        # is reported missing (a tool that needed it would get a 401 re-authorization challenge).
        assert who["providers"]["cloud"]["connected"] is False
        assert who["missing_providers"] == ["cloud"]
        assert running.services.cloud.counters["refreshes"] == 0
    finally:
        running.stop()


def test_tools_answer_as_the_tokens_user_with_interleaved_users(stack: Stack) -> None:
    _, alice = _open(stack, "alice")
    _, bob = _open(stack, "bob")
    for _ in range(2):
        for session, name in ((alice, "alice"), (bob, "bob")):
            user = user_for(name)
            assert user is not None
            assert session.call_tool("list_repos")["owner"] == user.github_login
            assert session.call_tool("search_docs", {"query": "mcp"})["caller"] == user.corp_subject
            who = session.call_tool("whoami")
            assert who["providers"]["cloud"]["account"]["sub"] == user.cloud_subject


def test_whoami_shows_no_token_values(stack: Stack) -> None:
    token, session = _open(stack, "carol")
    who = session.call_tool("whoami")
    text = json.dumps(who)
    assert token not in text
    assert not re.search(r"eyJ[\w-]+\.[\w-]+\.", text)  # no JWT of any kind
    assert "gho_" not in text  # no GitHub token
    assert who["name"] == "Carol" and who["missing_providers"] == []


def test_cancel_at_the_second_idp_gives_the_client_access_denied(stack: Stack) -> None:
    found = discover(requests.Session(), stack.mcp_url)
    client_id = requests.post(found.metadata["registration_endpoint"], timeout=10, json={
        "redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}).json()["client_id"]
    before = stack.services.code_exchanges()
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": CALLBACK, "state": "st-123",
              "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256"}
    result = walk_authorization(requests.Session(), f"{found.metadata['authorization_endpoint']}?{urlencode(params)}",
                                CALLBACK, "alice", deny_at=stack.services.cloud.issuer)
    assert result.get("error") == "access_denied"
    assert result["state"] == "st-123" and result["iss"] == stack.issuer
    assert "code" not in result
    after = stack.services.code_exchanges()
    assert {k: after[k] - before[k] for k in after} == {"corp": 1, "cloud": 0, "github": 0}


# -- MCP over Streamable HTTP ---------------------------------------------------------------------------
def test_mcp_lifecycle_and_json_rpc_errors(stack: Stack) -> None:
    token, session = _open(stack, "alice")
    auth = {"Authorization": f"Bearer {token}"}
    sid = {"Mcp-Session-Id": session.session_id or "", "MCP-Protocol-Version": session.protocol_version}
    assert session.protocol_version == "2025-06-18"

    ping = _post(stack.mcp_url, {"jsonrpc": "2.0", "id": "p1", "method": "ping"}, {**auth, **sid})
    assert ping.status_code == 200
    assert ping.headers["Content-Type"] == "application/json"  # JSON even though SSE is accepted
    assert ping.json() == {"jsonrpc": "2.0", "id": "p1", "result": {}}

    tools = {t["name"]: t for t in session.list_tools()}
    assert tools["search_docs"]["inputSchema"]["required"] == ["query"]

    def error(body: object, headers: dict[str, str]) -> tuple[int, int]:
        response = _post(stack.mcp_url, body, headers)
        return response.status_code, response.json()["error"]["code"]

    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}
    assert error(call, auth) == (400, -32600)  # no Mcp-Session-Id after initialize
    assert error(call, {**auth, **sid, "Mcp-Session-Id": "forged.session"}) == (404, -32001)
    assert error(call, {**auth, **sid, "MCP-Protocol-Version": "1999-01-01"}) == (400, -32600)
    assert error({"jsonrpc": "2.0", "id": 8, "method": "resources/list"}, {**auth, **sid}) == (200, -32601)
    assert error({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "rm -rf"}},
                 {**auth, **sid}) == (200, -32602)
    assert error("{not json", {**auth, **sid}) == (400, -32700)
    assert error([call, call], {**auth, **sid}) == (400, -32600)  # no batches

    # A tool's own failure is a result with isError, not a protocol error.
    failed = session.request("tools/call", {"name": "search_docs", "arguments": {"query": " "}})
    assert failed["isError"] is True and "query" in failed["content"][0]["text"]
    with pytest.raises(FlowError):
        session.call_tool("search_docs", {"query": ""})

    # Notifications and client responses: 202, no body.
    for message in ({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
                    {"jsonrpc": "2.0", "id": 99, "result": {}}):
        accepted = _post(stack.mcp_url, message, {**auth, **sid})
        assert accepted.status_code == 202 and accepted.content == b""

    # No server-initiated stream and no client-side termination.
    assert requests.get(stack.mcp_url, headers={**auth, "Accept": "text/event-stream"}, timeout=10).status_code == 405
    assert requests.delete(stack.mcp_url, headers={**auth, **sid}, timeout=10).status_code == 405


def test_foreign_browser_origin_is_refused(stack: Stack) -> None:
    token, session = _open(stack, "alice")
    headers = {"Authorization": f"Bearer {token}", "Mcp-Session-Id": session.session_id or "",
               "MCP-Protocol-Version": session.protocol_version}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    # DNS rebinding: a page on another site reaching this loopback server.
    assert _post(stack.mcp_url, ping, {**headers, "Origin": "https://evil.example"}).status_code == 403
    assert _post(stack.mcp_url, ping, {**headers, "Origin": "http://evil.127.0.0.1.nip.io"}).status_code == 403
    for origin in (stack.issuer, "http://localhost:6274"):
        assert _post(stack.mcp_url, ping, {**headers, "Origin": origin}).status_code == 200


def test_initialize_negotiates_the_protocol_version(stack: Stack) -> None:
    token, _ = _open(stack, "alice")
    for requested, expected in (("2025-03-26", "2025-03-26"), ("2025-11-25", "2025-11-25"),
                                ("2099-01-01", "2025-11-25")):
        response = _post(stack.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": requested, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
            {"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        assert response.json()["result"]["protocolVersion"] == expected
        assert re.fullmatch(r"[\x21-\x7e]+", response.headers["Mcp-Session-Id"])  # visible ASCII only


def test_rs14_session_id_is_bound_to_the_user_and_never_authenticates(stack: Stack) -> None:
    alice_token, alice = _open(stack, "alice")
    bob_token, bob = _open(stack, "bob")
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    version = {"MCP-Protocol-Version": alice.protocol_version}

    # Only a session id, no bearer token: 401 with the RFC 9728 challenge.
    anonymous = _post(stack.mcp_url, listing, {"Mcp-Session-Id": alice.session_id or "", **version})
    assert anonymous.status_code == 401
    assert "resource_metadata=" in anonymous.headers["WWW-Authenticate"]

    # Alice's session id with Bob's valid token: unknown session for Bob.
    stolen = _post(stack.mcp_url, listing, {"Authorization": f"Bearer {bob_token}",
                                            "Mcp-Session-Id": alice.session_id or "", **version})
    assert stolen.status_code == 404 and stolen.json()["error"]["code"] == -32001

    # Each with their own session id still works.
    assert _post(stack.mcp_url, listing, {"Authorization": f"Bearer {alice_token}",
                                          "Mcp-Session-Id": alice.session_id or "", **version}).status_code == 200
    assert bob.call_tool("whoami")["name"] == "Bob Example"


def test_mcp_without_token_is_challenged_and_bad_token_is_invalid(stack: Stack) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    response = _post(stack.mcp_url, init, {})
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ") and "error=" not in challenge
    prm_url = re.search(r'resource_metadata="([^"]+)"', challenge)
    assert prm_url is not None
    prm = requests.get(prm_url.group(1), timeout=10).json()
    assert prm["resource"] == stack.mcp_url and prm["authorization_servers"] == [stack.issuer]

    bad = _post(stack.mcp_url, init, {"Authorization": "Bearer not.a.jwt"})
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["WWW-Authenticate"]


def _browser_demo(base: str, username: str) -> str:
    browser = requests.Session()
    callback = f"{base}/demo/callback"
    params = walk_authorization(browser, f"{base}/demo/start", callback, username)
    page = browser.get(f"{callback}?{urlencode(params)}", timeout=30)
    assert page.status_code == 200, page.text
    return page.text


def test_browser_demo_page_walks_the_chain_and_shows_the_tools(stack: Stack) -> None:
    assert "Sign in and call the tools" in requests.get(f"{stack.issuer}/demo", timeout=10).text
    page = _browser_demo(stack.issuer, "bob")
    for expected in ("tools/call whoami", "tools/call list_repos", "bob-gh/notes", "corp-bob",
                     "Token exchange (RFC 8693) explained", "demo-browser"):
        assert expected in page
    assert not re.search(r"eyJ[\w-]+\.[\w-]+\.", page)  # claims shown, never a token

    # A callback that this browser did not start is refused.
    stray = requests.get(f"{stack.issuer}/demo/callback?code=x&state=y&iss={stack.issuer}", timeout=10)
    assert stray.status_code == 400


# -- tools with missing or refused upstream credentials (flask_mcp_auth.testing.issue_token) ----------
def test_tool_needing_a_missing_upstream_token_answers_a_401_challenge(stack: Stack) -> None:
    from flask_mcp_auth.testing import issue_token

    # A login whose GitHub token is gone (as after a failed refresh): no "github" upstream token.
    token = issue_token(stack.app, "dave", upstream_tokens={"corp": "c", "cloud": "c"})
    session = MCPSession(stack.mcp_url, token)
    session.open()
    who = session.call_tool("whoami")
    assert who["subject"] == "dave" and who["providers"]["github"] == {"connected": False}
    response = session.post({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                             "params": {"name": "list_repos", "arguments": {}}})
    # with_backend turns the missing token into the RFC 6750/9728 challenge: the client re-authorizes.
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert "resource_metadata=" in response.headers["WWW-Authenticate"]
    assert token not in response.text


def test_upstream_refusals_become_tool_errors_without_leaking_bodies(stack: Stack) -> None:
    from flask_mcp_auth.testing import issue_token

    token = issue_token(stack.app, "erin", upstream_tokens={"corp": "not-a-corp-token", "cloud": "c",
                                                           "github": "gho_revoked"})
    session = MCPSession(stack.mcp_url, token)
    session.open()
    before = stack.services.sts.counters["exchanges"]
    repos = session.request("tools/call", {"name": "list_repos", "arguments": {}})
    assert repos["isError"] is True
    assert repos["content"][0]["text"] == "the github API answered HTTP 401"
    docs = session.request("tools/call", {"name": "search_docs", "arguments": {"query": "mcp"}})
    assert docs["isError"] is True
    assert docs["content"][0]["text"] == "the token exchange for the docs API failed (invalid_request)"
    assert stack.services.sts.counters["exchanges"] == before  # the STS issued nothing
    assert "not-a-corp-token" not in json.dumps([repos, docs]) and "gho_revoked" not in json.dumps([repos, docs])


# -- the demo services -------------------------------------------------------------------------------------
def test_demo_idp_has_a_real_login_page_and_refuses_unknown_redirects(stack: Stack) -> None:
    corp = stack.services.corp
    params = {"response_type": "code", "client_id": "mcp-example", "redirect_uri": f"{stack.issuer}/oauth/callback",
              "state": "s", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
              "code_challenge_method": "S256", "scope": "openid"}
    page = requests.get(f"{corp.issuer}/authorize", params=params, timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert '<form method="post"' in page.text
    assert 'value="alice"' in page.text and 'value="bob"' in page.text

    evil = requests.get(f"{corp.issuer}/authorize", params={**params, "redirect_uri": "https://evil.example/cb"},
                        allow_redirects=False, timeout=10)
    assert evil.status_code == 400 and "Location" not in evil.headers
    no_pkce = dict(params)
    del no_pkce["code_challenge"]
    refused = requests.get(f"{corp.issuer}/authorize", params=no_pkce, allow_redirects=False, timeout=10)
    assert refused.status_code == 302 and "error=invalid_request" in refused.headers["Location"]


def test_demo_github_answers_form_encoded_and_errors_with_200(stack: Stack) -> None:
    github = stack.services.github
    response = requests.post(github.token_endpoint, data={"client_id": "mcp-example", "client_secret": "github-demo-secret",
                                                          "code": "nope", "code_verifier": "x" * 43}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert response.text == "error=bad_verification_code"


# -- the commands --------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_AUTH_", "EXAMPLE_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_selftest_command_runs_the_flow_and_exits_zero() -> None:
    done = subprocess.run([sys.executable, "-m", "example_app", "--selftest", "--user", "bob"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.rstrip().endswith("selftest: OK")
    for step in ("tools/list: list_repos, search_docs, whoami", "tools/call whoami", "tools/call list_repos",
                 "tools/call search_docs", '"owner": "bob-gh"', "{'corp': 1, 'cloud': 1, 'github': 1}"):
        assert step in out


def _free_port_block(size: int) -> int:
    for base in range(23000, 60000, 97):
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free block of ports")


def test_demo_command_serves_everything_until_interrupted() -> None:
    base = _free_port_block(6)
    proc = subprocess.Popen([sys.executable, "-m", "example_app", "--port", str(base)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        banner = "".join(lines)
        mcp_url = f"http://127.0.0.1:{base}/mcp"
        assert re.search(rf"^MCP server: +{re.escape(mcp_url)}$", banner, re.M)
        assert "alice" in banner and "bob" in banner
        assert requests.get(f"http://127.0.0.1:{base}/", timeout=10).json()["mcp_endpoint"] == mcp_url
        # A person can walk the chain with a browser (the /demo page); so can the headless client.
        assert "alice-gh/dotfiles" in _browser_demo(f"http://127.0.0.1:{base}", "alice")
        result = login(mcp_url, "alice")
        session = MCPSession(mcp_url, result.access_token)
        session.open()
        assert session.call_tool("list_repos")["owner"] == "alice-gh"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "stopped" in out
        assert "WARNING" not in err and "Traceback" not in err  # a quiet first screen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_example_app_uses_only_the_public_api_and_nothing_from_tests() -> None:
    for path in (ROOT / "example_app").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module
            elif isinstance(node, ast.Import):
                module = node.names[0].name
            else:
                continue
            assert not module.startswith("tests"), path
            assert not module.startswith("flask_mcp_auth."), f"{path}: private import {module}"


# -- JSON-RPC batches: MUST be accepted at 2025-03-26, removed in 2025-06-18 ------------------------------
def _session_at(stack: Stack, token: str, version: str) -> str:
    response = _post(stack.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"Authorization": f"Bearer {token}"})
    assert response.json()["result"]["protocolVersion"] == version
    return str(response.headers["Mcp-Session-Id"])


def test_batch_is_answered_with_an_array_at_2025_03_26(stack: Stack) -> None:
    token, _ = _open(stack, "alice")
    auth = {"Authorization": f"Bearer {token}", "Mcp-Session-Id": _session_at(stack, token, "2025-03-26")}
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},  # no response owed
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 4, "method": "resources/list"},
        {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "rm -rf"}},
        {"jsonrpc": "2.0", "id": 6, "method": "initialize", "params": {}},  # never batched (Lifecycle)
        {"jsonrpc": "2.0", "id": None, "method": "ping"},  # MCP ids are never null
        {"jsonrpc": "2.0", "id": 99, "result": {}},  # a client response: nothing owed
        1,
    ]
    # A 2025-03-26 client sends no MCP-Protocol-Version header; one that does is treated the same.
    for extra in ({}, {"MCP-Protocol-Version": "2025-03-26"}):
        response = _post(stack.mcp_url, batch, {**auth, **extra})
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        answers = response.json()
        assert isinstance(answers, list) and len(answers) == 8
        by_id = {a["id"]: a for a in answers if a["id"] is not None}
        assert by_id["a"]["result"] == {}
        assert "whoami" in {t["name"] for t in by_id[2]["result"]["tools"]}
        assert by_id[3]["result"]["structuredContent"]["name"] == "Alice Example"  # the token's user
        assert (by_id[4]["error"]["code"], by_id[5]["error"]["code"], by_id[6]["error"]["code"]) == (
            -32601, -32602, -32600)
        nulls = [a for a in answers if a["id"] is None]
        assert [a["error"]["code"] for a in nulls] == [-32600, -32600]  # null id, non-object member
        assert all(a["jsonrpc"] == "2.0" for a in answers)

    # Only notifications and responses: 202 with no body.
    quiet = _post(stack.mcp_url, [{"jsonrpc": "2.0", "method": "notifications/initialized"},
                                  {"jsonrpc": "2.0", "id": 7, "result": {}}], auth)
    assert quiet.status_code == 202 and quiet.content == b""
    empty = _post(stack.mcp_url, [], auth)
    assert (empty.status_code, empty.json()["error"]["code"]) == (400, -32600)


def test_batch_needs_a_session_bound_to_the_user(stack: Stack) -> None:
    alice_token, _ = _open(stack, "alice")
    bob_token, _ = _open(stack, "bob")
    alice_sid = _session_at(stack, alice_token, "2025-03-26")
    ping = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}]
    missing = _post(stack.mcp_url, ping, {"Authorization": f"Bearer {alice_token}"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (400, -32600)
    stolen = _post(stack.mcp_url, ping, {"Authorization": f"Bearer {bob_token}", "Mcp-Session-Id": alice_sid})
    assert (stolen.status_code, stolen.json()["error"]["code"]) == (404, -32001)
    anonymous = _post(stack.mcp_url, ping, {"Mcp-Session-Id": alice_sid})
    assert anonymous.status_code == 401


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
def test_batch_is_refused_from_2025_06_18(stack: Stack, version: str) -> None:
    token, _ = _open(stack, "alice")
    headers = {"Authorization": f"Bearer {token}", "Mcp-Session-Id": _session_at(stack, token, version),
               "MCP-Protocol-Version": version}
    response = _post(stack.mcp_url, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}], headers)
    assert (response.status_code, response.json()["error"]["code"]) == (400, -32600)
    assert "batch" in response.json()["error"]["message"]
    # a single message still works at that version
    single = _post(stack.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers)
    assert single.json() == {"jsonrpc": "2.0", "id": 1, "result": {}}


def test_request_with_a_null_id_is_invalid(stack: Stack) -> None:
    token, session = _open(stack, "alice")
    headers = {"Authorization": f"Bearer {token}", "Mcp-Session-Id": session.session_id or "",
               "MCP-Protocol-Version": session.protocol_version}
    for bad in (None, True, {"x": 1}):
        response = _post(stack.mcp_url, {"jsonrpc": "2.0", "id": bad, "method": "ping"}, headers)
        assert (response.status_code, response.json()["error"]["code"]) == (400, -32600)
