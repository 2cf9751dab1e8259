"""The example app's MCP tools. Each shows one piece of ``flask_mcp_auth``:

* ``whoami`` — the incoming identity (``current_identity``): who called, through which client, and
  which upstream providers this login connected. No token values, ever.
* ``list_repos`` — an ``upstream_inject`` backend: the call to the GitHub-like API carries the user's
  own GitHub token, never the bearer token the MCP client sent us.
* ``search_docs`` — a ``token_exchange`` backend: the user's corp token is exchanged at the STS
  (RFC 8693) for a token meant for the docs API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt
import requests
from flask import current_app

from flask_mcp_auth import MCPAuth, TokenExchangeError, current_identity

from .mcp_server import Tool, ToolError

__all__ = ["build_tools"]


def _identity_claims(id_token: str) -> dict[str, Any]:
    # The AS verified this id_token (signature, iss, aud, nonce) at the callback; this only reads it
    # back for display.
    try:
        claims = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return {k: claims[k] for k in ("sub", "name", "preferred_username", "email") if k in claims}


def _get(http: requests.Session, backend: str, path: str, params: Mapping[str, str] | None = None) -> Any:
    base = str(current_app.config["MCP_AUTH_BACKENDS"][backend]["url"]).rstrip("/")
    try:
        response = http.get(f"{base}{path}", params=params, timeout=10)
    except requests.RequestException:
        raise ToolError(f"the {backend} API is unreachable") from None
    if response.status_code != 200:
        raise ToolError(f"the {backend} API answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:  # an HTML error page with status 200: say so, never echo it
        raise ToolError(f"the {backend} API answered something that is not JSON") from None


def build_tools(auth: MCPAuth) -> list[Tool]:
    def whoami(arguments: Mapping[str, Any]) -> dict[str, Any]:
        identity = current_identity
        assert identity is not None  # the /mcp view requires a valid token
        configured = [u["name"] for u in current_app.config["MCP_AUTH_UPSTREAMS"]]
        providers: dict[str, Any] = {}
        for name in configured:
            entry: dict[str, Any] = {"connected": name in identity.upstream_tokens}
            if name in identity.upstream_id_tokens:
                entry["account"] = _identity_claims(identity.upstream_id_tokens[name])
            providers[name] = entry
        return {
            "subject": identity.subject,
            "name": identity.name,
            "email": identity.email,
            "client_id": identity.client_id,
            "scopes": sorted(identity.scopes),
            "providers": providers,
            "missing_providers": sorted(identity.missing_providers),
        }

    # with_backend: the decorated function gets a requests.Session (keyword ``github``) whose adapter,
    # mounted on the backend's URL, adds this user's GitHub token; a missing GitHub token becomes a
    # 401 challenge (the MCP client re-authorizes) before the function runs.
    @auth.with_backend("github")
    def list_repos(arguments: Mapping[str, Any], github: requests.Session) -> dict[str, Any]:
        with github:
            repos = _get(github, "github", "/user/repos")
        return {"repositories": [{"full_name": r["full_name"], "private": r["private"]} for r in repos],
                "owner": repos[0]["owner"]["login"] if repos else None}

    def search_docs(arguments: Mapping[str, Any]) -> dict[str, Any]:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ToolError("'query' must be a non-empty string")
        # auth.session(name): the same thing without a decorator. Requests to the docs API carry a
        # token the STS issued for it in exchange for the user's corp token (cached until near expiry);
        # requests to any other host carry nothing.
        with auth.session("docs") as docs:
            try:
                found = _get(docs, "docs", "/search", {"q": query[:200]})
            except TokenExchangeError as exc:
                raise ToolError(f"the token exchange for the docs API failed ({exc.error})") from None
        return {"query": found["query"], "caller": found["caller"], "results": found["results"]}

    return [
        Tool("whoami", "Who am I? The signed-in user, the MCP client, and the connected providers.",
             whoami, title="Who am I"),
        Tool("list_repos", "List the user's repositories on the (demo) GitHub, with the user's own "
             "GitHub token.", list_repos, title="List GitHub repositories"),
        Tool("search_docs", "Search the (demo) docs API; access is obtained by exchanging the user's "
             "corp token at the STS (RFC 8693).", search_docs, title="Search docs",
             input_schema={"type": "object", "properties": {"query": {"type": "string",
                                                                      "description": "search words"}},
                           "required": ["query"], "additionalProperties": False}),
    ]
