"""An MCP client nobody here wrote — the official ``mcp`` Python SDK — completes the whole flow against
the example app: 401 challenge → protected-resource metadata → AS metadata → dynamic registration →
PKCE authorization through all three demo IdPs → token → initialize → tools/call of every tool.

The SDK's ``redirect_handler`` hands the authorization URL to a headless browser (a
``requests.Session`` that follows the 302/303 chain, approves consent and signs in at each IdP); its
``callback_handler`` returns the ``code``, ``state`` and ``iss`` (RFC 9207) of the final redirect.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest
import requests
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from example_app.client import CALLBACK, walk_authorization
from example_app.demo import user_for
from example_app.stack import Stack, start_stack


class _MemoryTokenStorage:
    """The SDK's ``TokenStorage`` protocol, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class _HeadlessBrowser:
    """redirect_handler + callback_handler for the SDK, signing in as ``username`` everywhere."""

    def __init__(self, username: str) -> None:
        self.username = username
        self.session = requests.Session()
        self.result: dict[str, str] | None = None
        self.authorization_urls: list[str] = []

    async def redirect_handler(self, url: str) -> None:
        self.authorization_urls.append(url)
        self.result = await anyio.to_thread.run_sync(
            walk_authorization, self.session, url, CALLBACK, self.username)

    async def callback_handler(self) -> AuthorizationCodeResult:
        assert self.result is not None and "code" in self.result, "authorization did not return a code"
        return AuthorizationCodeResult(code=self.result["code"], state=self.result.get("state"),
                                       iss=self.result.get("iss"))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = start_stack()
    try:
        yield running
    finally:
        running.stop()


def _structured(result: Any) -> dict[str, Any]:
    assert result.is_error is False, result.content
    if result.structured_content is not None:
        return dict(result.structured_content)
    data: dict[str, Any] = json.loads(result.content[0].text)
    return data


async def _run_sdk_client(mcp_url: str, browser: _HeadlessBrowser, storage: _MemoryTokenStorage,
                          **client_kwargs: Any) -> dict[str, Any]:
    provider = OAuthClientProvider(
        server_url=mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name="mcp SDK test client", redirect_uris=[CALLBACK],
            grant_types=["authorization_code", "refresh_token"], response_types=["code"],
            token_endpoint_auth_method="none"),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    out: dict[str, Any] = {}
    async with httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(30.0)) as http:
        transport = streamable_http_client(mcp_url, http_client=http, terminate_on_close=False)
        async with Client(transport, **client_kwargs) as client:
            out["protocol_version"] = client.protocol_version
            out["server_info"] = client.server_info
            listed = await client.list_tools()
            out["tools"] = sorted(t.name for t in listed.tools)
            out["whoami"] = _structured(await client.call_tool("whoami", {}))
            out["list_repos"] = _structured(await client.call_tool("list_repos", {}))
            out["search_docs"] = _structured(await client.call_tool("search_docs", {"query": "gunicorn"}))
    return out


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_sdk_client_completes_the_flow_and_calls_every_tool(stack: Stack, mode: str) -> None:
    username = "alice" if mode == "auto" else "bob"
    user = user_for(username)
    assert user is not None
    browser = _HeadlessBrowser(username)
    storage = _MemoryTokenStorage()
    before = stack.services.code_exchanges()

    out = anyio.run(lambda: _run_sdk_client(stack.mcp_url, browser, storage, mode=mode))

    # The SDK discovered everything from the 401 and registered itself dynamically.
    assert storage.client_info is not None and storage.client_info.client_id
    assert storage.tokens is not None and storage.tokens.access_token
    assert len(browser.authorization_urls) == 1
    assert browser.authorization_urls[0].startswith(f"{stack.issuer}/oauth/authorize?")
    assert "code_challenge_method=S256" in browser.authorization_urls[0]
    assert browser.result is not None and browser.result["iss"] == stack.issuer

    assert out["protocol_version"] in ("2025-11-25", "2025-06-18", "2025-03-26")
    assert out["tools"] == ["list_repos", "search_docs", "whoami"]
    who = out["whoami"]
    assert who["client_id"] == storage.client_info.client_id
    assert {name for name, p in who["providers"].items() if p["connected"]} == {"corp", "cloud", "github"}
    assert who["providers"]["corp"]["account"]["sub"] == user.corp_subject
    assert who["providers"]["cloud"]["account"]["sub"] == user.cloud_subject
    assert out["list_repos"]["owner"] == user.github_login
    assert out["search_docs"]["caller"] == user.corp_subject
    assert any("gunicorn" in r["title"].lower() for r in out["search_docs"]["results"])
    # One login: exactly one code redemption at each of the three providers.
    after = stack.services.code_exchanges()
    assert {k: after[k] - before[k] for k in after} == {"corp": 1, "cloud": 1, "github": 1}
    # The token the SDK holds is never echoed back by a tool.
    assert storage.tokens.access_token not in json.dumps(out, default=str)
