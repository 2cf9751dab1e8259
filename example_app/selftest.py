"""``python -m example_app --selftest``: the whole flow, headless, with checks.

register → authorize → consent → corp, cloud and GitHub logins → token → initialize → tools/list →
tools/call of every tool. Prints what each tool returned; any failure is an exception (exit 1).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .client import FlowError, MCPSession, login
from .demo import user_for
from .stack import Stack

__all__ = ["check_tools", "run_flow"]

EXPECTED_TOOLS = {"whoami", "list_repos", "search_docs"}


def check_tools(session: MCPSession, username: str, subject: str) -> dict[str, dict[str, Any]]:
    """Call every tool as ``username`` and check each answer belongs to that user (no mix-ups)."""
    user = user_for(username)
    assert user is not None
    results = {
        "whoami": session.call_tool("whoami"),
        "list_repos": session.call_tool("list_repos"),
        "search_docs": session.call_tool("search_docs", {"query": "token exchange"}),
    }
    who = results["whoami"]
    problems = []
    if who["subject"] != subject:
        problems.append("whoami subject is not the token's sub")
    if sorted(p for p, v in who["providers"].items() if v["connected"]) != ["cloud", "corp", "github"]:
        problems.append("not every provider is connected")
    if who["providers"]["corp"].get("account", {}).get("sub") != user.corp_subject:
        problems.append("corp account is not this user's")
    if who["providers"]["cloud"].get("account", {}).get("sub") != user.cloud_subject:
        problems.append("cloud account is not this user's")
    if results["list_repos"]["owner"] != user.github_login:
        problems.append("repositories are not this user's")
    if results["search_docs"]["caller"] != user.corp_subject or not results["search_docs"]["results"]:
        problems.append("docs search did not run as this user")
    if problems:
        raise FlowError("; ".join(problems))
    return results


def run_flow(stack_or_url: Stack | str, username: str = "alice",
             say: Callable[[str], None] = lambda _line: None) -> dict[str, dict[str, Any]]:
    mcp_url = stack_or_url if isinstance(stack_or_url, str) else stack_or_url.mcp_url
    say(f"• logging in as {username} (register → authorize → consent → corp → cloud → github → token)")
    result = login(mcp_url, username)
    say(f"  token issued: sub={result.claims['sub']} client_id={result.client_id} "
        f"scope={result.token_response.get('scope', '')!r}")
    session = MCPSession(mcp_url, result.access_token)
    info = session.open()
    say(f"• initialize: protocol {info['protocolVersion']}, server {info['serverInfo']['name']}")
    tools = {t["name"] for t in session.list_tools()}
    say(f"• tools/list: {', '.join(sorted(tools))}")
    if tools != EXPECTED_TOOLS:
        raise FlowError(f"unexpected tools {sorted(tools)}")
    results = check_tools(session, username, str(result.claims["sub"]))
    for name, value in results.items():
        say(f"• tools/call {name}:")
        for line in json.dumps(value, indent=2).splitlines():
            say(f"    {line}")
    return results
