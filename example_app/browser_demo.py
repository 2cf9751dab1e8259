"""``/demo``: a built-in browser client, so a person can walk the whole chain with nothing but a browser.

``python -m example_app`` turns it on (``EXAMPLE_BROWSER_DEMO``). It is an ordinary OAuth client of the
embedded authorization server — pre-registered as public client ``demo-browser`` with redirect URI
``<issuer>/demo/callback`` — that does what an MCP client does: PKCE S256 authorization with
``resource``, code redemption at the token endpoint, then ``initialize`` and ``tools/call`` on ``/mcp``
with the bearer token. The page shows the tool results and the token's claims, never a token value.

It calls this same server over HTTP from inside a request, so it needs a server that can answer two
requests at once (the threaded werkzeug server of ``python -m example_app``); leave it off under
gunicorn.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from html import escape
from typing import Any
from urllib.parse import urlencode

import requests
from flask import Blueprint, Flask, Response, current_app, request, session

from .client import FlowError, Login, MCPSession

__all__ = ["CLIENT_ID", "client_config", "register"]

CLIENT_ID = "demo-browser"
_SESSION_KEY = "example_demo_client"

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>flask_mcp_auth demo</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}}
pre{{background:#f4f4f4;padding:.8rem;overflow:auto}} .err{{color:#a00}}</style></head>
<body><h1>flask_mcp_auth demo</h1>{body}</body></html>"""


def client_config(issuer: str) -> dict[str, Any]:
    """The ``MCP_AUTH_CLIENTS`` entry of the browser demo client."""
    return {"client_id": CLIENT_ID, "client_name": "Browser demo (built into the example app)",
            "redirect_uris": [f"{issuer}/demo/callback"]}


def _page(body: str, status: int = 200) -> Response:
    return Response(_PAGE.format(body=body), status=status, mimetype="text/html",
                    headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def register(app: Flask) -> None:
    bp = Blueprint("example_demo", __name__)

    @bp.get("/demo")
    def index() -> Response:
        return _page(
            "<p>This page is an OAuth client of the MCP server's authorization server. Signing in walks "
            "you through <b>consent</b>, then <b>three identity providers</b> in a row (corp, cloud, "
            "GitHub-like); each has a login page where you pick a demo user. Afterwards this page "
            "calls every MCP tool with the token it received.</p>"
            "<p>With the default <code>MCP_AUTH_CONSENT=once</code> consent is asked once per browser: "
            "signing in again goes straight to the first provider.</p>"
            '<p><a href="/demo/start">Sign in and call the tools &rarr;</a></p>')

    @bp.get("/demo/start")
    def start() -> Response:
        issuer = current_app.config["MCP_AUTH_ISSUER"]
        verifier = secrets.token_urlsafe(48)
        state = secrets.token_urlsafe(24)
        session[_SESSION_KEY] = {"verifier": verifier, "state": state}
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": f"{issuer}/demo/callback",
                  "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
                  "resource": current_app.config["MCP_AUTH_RESOURCE"], "scope": "openid profile email"}
        return Response(status=302, headers={"Location": f"{issuer}/oauth/authorize?{urlencode(params)}"})

    @bp.get("/demo/callback")
    def callback() -> Response:
        issuer = current_app.config["MCP_AUTH_ISSUER"]
        started = session.pop(_SESSION_KEY, None)
        if not started or not secrets.compare_digest(request.args.get("state", ""), started["state"]):
            return _page('<p class="err">This sign-in was not started here (state mismatch). '
                         '<a href="/demo/start">Start again</a>.</p>', 400)
        if request.args.get("iss") != issuer:
            return _page('<p class="err">Wrong or missing issuer in the response (RFC 9207).</p>', 400)
        if "error" in request.args:
            why = ("You denied access at the consent page or cancelled at a provider's login page. "
                   if request.args["error"] == "access_denied" else "")
            return _page(f'<p class="err">{why}The authorization ended with <code>'
                         f'{escape(request.args["error"])}</code>.</p>'
                         '<p><a href="/demo/start">Try again</a></p>')
        try:
            answer = requests.post(f"{issuer}/oauth/token", timeout=30, data={
                "grant_type": "authorization_code", "code": request.args.get("code", ""),
                "redirect_uri": f"{issuer}/demo/callback", "client_id": CLIENT_ID,
                "code_verifier": started["verifier"], "resource": current_app.config["MCP_AUTH_RESOURCE"]})
            if answer.status_code != 200:
                raise FlowError(f"token endpoint answered HTTP {answer.status_code}")
            body = answer.json()
            login = Login(access_token=body["access_token"], refresh_token=body.get("refresh_token"),
                          client_id=CLIENT_ID, token_response=body)
            mcp = MCPSession(current_app.config["MCP_AUTH_RESOURCE"], login.access_token)
            info = mcp.open()
            results = {"whoami": mcp.call_tool("whoami"), "list_repos": mcp.call_tool("list_repos"),
                       "search_docs": mcp.call_tool("search_docs", {"query": "token exchange"})}
        except (FlowError, requests.RequestException, KeyError, ValueError) as exc:
            return _page(f'<p class="err">{escape(str(exc))}</p>', 502)
        claims = {k: v for k, v in login.claims.items() if k != "tsid"}
        sections = "".join(f"<h2>tools/call {escape(name)}</h2>"
                           f"<pre>{escape(json.dumps(value, indent=2))}</pre>"
                           for name, value in results.items())
        return _page(
            f"<p>Signed in. MCP session opened with protocol <code>{escape(info['protocolVersion'])}</code>."
            f"</p><h2>Access token claims (the token itself stays secret)</h2>"
            f"<pre>{escape(json.dumps(claims, indent=2))}</pre>{sections}"
            '<p><a href="/demo/start">Sign in again</a></p>')

    app.register_blueprint(bp)
