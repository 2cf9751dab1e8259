"""A headless MCP client for the selftest, the tests and the load benchmark.

It does what a real MCP client does, with ``requests``: the first POST to ``/mcp`` gets 401; the
``resource_metadata`` of the challenge leads to the protected-resource metadata (RFC 9728), that to
the authorization-server metadata (RFC 8414); the client registers (RFC 7591), sends the browser to
``/authorize`` with PKCE S256 and ``resource`` (RFC 8707), and redeems the code. The "browser" is a
``requests.Session`` that follows redirects, approves the consent page and signs in at each demo
provider's login page. Then it speaks JSON-RPC to ``/mcp``.

Errors name the step and the host/path only: URLs of this flow carry codes and states.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import requests

__all__ = [
    "FlowError",
    "Login",
    "MCPSession",
    "discover",
    "login",
    "register",
    "walk_authorization",
]

TIMEOUT = 15
CALLBACK = "http://127.0.0.1:53682/callback"  # nobody listens: the walk stops at this redirect
_APPROVE = ("approve", "allow", "accept", "consent", "authorize", "login", "sign", "continue", "yes")
_DENY = ("deny", "cancel", "reject", "decline", "no")


class FlowError(Exception):
    """A step of the flow failed; the message is safe to print (no codes, states or tokens)."""


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


# -- the headless browser -----------------------------------------------------------------------------
@dataclass
class _Form:
    action: str = ""
    method: str = "get"
    fields: list[tuple[str, str, str, bool]] = field(default_factory=list)  # name, value, type, checked
    buttons: list[tuple[str, str]] = field(default_factory=list)  # name, value


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self._button: tuple[str, str] | None = None
        self._button_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(_Form(action=a.get("action", ""), method=a.get("method", "get").lower()))
        elif not self.forms:
            return
        elif tag == "input":
            kind = a.get("type", "text").lower()
            if kind == "submit":
                self.forms[-1].buttons.append((a.get("name", ""), a.get("value", "")))
            elif a.get("name"):
                self.forms[-1].fields.append((a["name"], a.get("value", ""), kind, "checked" in a))
        elif tag == "button" and a.get("type", "submit").lower() == "submit":
            self._button = (a.get("name", ""), a.get("value", ""))
            self._button_text = ""

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button_text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None and self.forms:
            name, value = self._button
            self.forms[-1].buttons.append((name, value or self._button_text.strip()))
            self._button = None


def _fill(form: _Form, username: str, deny: bool = False) -> dict[str, str]:
    """Submit ``form`` the way a person would: keep hidden fields, pick ``username``, press the
    approving button (consent: approve; login page: sign in) — or the cancelling one if ``deny``."""
    data: dict[str, str] = {}
    radios = {value for name, value, kind, _ in form.fields if kind == "radio" and name == "username"}
    for name, value, kind, checked in form.fields:
        if kind == "radio":
            if name == "username":
                if value == username:
                    data[name] = value
            elif checked:
                data[name] = value
        elif kind == "checkbox":
            if checked:
                data[name] = value or "on"
        elif name == "other":
            if username not in radios:
                data[name] = username
        else:
            data[name] = value
    for name, value in form.buttons:
        label = f"{name} {value}".lower()
        denies = any(re.search(rf"\b{w}\b", label) for w in _DENY)
        if denies if deny else (any(w in label for w in _APPROVE) and not denies):
            if name:
                data[name] = value
            break
    else:
        raise FlowError(f"no {'cancelling' if deny else 'approving'} button on the page")
    return data


def walk_authorization(browser: requests.Session, url: str, redirect_uri: str, username: str,
                       *, deny_at: str | None = None, max_steps: int = 40) -> dict[str, str]:
    """Drive the browser from ``url`` until it is redirected to ``redirect_uri``; return that
    redirect's query parameters (``code``, ``state``, ``iss`` — or ``error``). On a page whose URL
    starts with ``deny_at`` the person presses "cancel"/"deny" instead."""
    method, data = "GET", None
    for _ in range(max_steps):
        response = browser.request(method, url, data=data, allow_redirects=False, timeout=TIMEOUT)
        if response.status_code in (301, 302, 303, 307, 308):
            if response.status_code in (307, 308):
                raise FlowError(f"{response.status_code} redirect from {_where(url)} would replay a form")
            location = urljoin(url, response.headers.get("Location", ""))
            if location.split("?", 1)[0] == redirect_uri:
                return dict(parse_qsl(urlsplit(location).query))
            method, data, url = "GET", None, location
            continue
        content_type = response.headers.get("Content-Type", "")
        if response.status_code == 200 and content_type.startswith("text/html"):
            parser = _FormParser()
            parser.feed(response.text)
            forms = [f for f in parser.forms if f.buttons]
            if not forms:
                raise FlowError(f"page without a form at {_where(url)}")
            form = forms[0]
            data = _fill(form, username, deny=deny_at is not None and url.startswith(deny_at))
            url = urljoin(url, form.action or url)
            method = "POST" if form.method == "post" else "GET"
            if method == "GET":
                url = f"{url.split('?', 1)[0]}?{urlencode(data)}"
                data = None
            continue
        raise FlowError(f"HTTP {response.status_code} at {_where(url)}")
    raise FlowError("too many steps in the authorization flow")


# -- discovery, registration, authorization, token -------------------------------------------------
def _challenge_params(header: str) -> dict[str, str]:
    return {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)="([^"]*)"', header)}


def _metadata_url(issuer: str) -> str:
    # RFC 8414 §3.1: the well-known segment goes between host and path.
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class Discovery:
    resource: str
    resource_metadata: Mapping[str, Any]
    metadata: Mapping[str, Any]


def discover(http: requests.Session, mcp_url: str) -> Discovery:
    """401 challenge → protected-resource metadata → authorization-server metadata."""
    response = http.post(mcp_url, json={"jsonrpc": "2.0", "id": 0, "method": "ping"}, timeout=TIMEOUT,
                         headers={"Accept": "application/json, text/event-stream"})
    if response.status_code != 401:
        raise FlowError(f"expected 401 from {mcp_url} without a token, got {response.status_code}")
    challenge = response.headers.get("WWW-Authenticate", "")
    prm_url = _challenge_params(challenge).get("resource_metadata")
    if not challenge.lower().startswith("bearer") or not prm_url:
        raise FlowError("the 401 challenge has no Bearer resource_metadata")
    prm = http.get(prm_url, timeout=TIMEOUT).json()
    if prm.get("resource") != mcp_url:
        raise FlowError("protected-resource metadata names another resource")
    issuer = prm["authorization_servers"][0]
    metadata = http.get(_metadata_url(issuer), timeout=TIMEOUT).json()
    if metadata.get("issuer") != issuer:
        raise FlowError("authorization-server metadata issuer mismatch (RFC 8414 §3.3)")
    if "S256" not in metadata.get("code_challenge_methods_supported", []):
        raise FlowError("the authorization server does not advertise PKCE S256")
    return Discovery(resource=prm["resource"], resource_metadata=prm, metadata=metadata)


@dataclass(frozen=True)
class Login:
    access_token: str
    refresh_token: str | None
    client_id: str
    token_response: Mapping[str, Any]

    @property
    def claims(self) -> dict[str, Any]:
        """The access token's claims, unverified (the client only reads them; the server verifies)."""
        payload = self.access_token.split(".")[1]
        data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return data


def register(http: requests.Session, found: Discovery, *, redirect_uri: str = CALLBACK,
             client_name: str = "example_app headless client") -> str:
    """RFC 7591 registration of a public client (PKCE, no secret); returns its ``client_id``."""
    scope = " ".join(found.resource_metadata.get("scopes_supported") or [])
    registration: dict[str, Any] = {
        "client_name": client_name, "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    if scope:
        registration["scope"] = scope
    response = http.post(found.metadata["registration_endpoint"], json=registration, timeout=TIMEOUT)
    if response.status_code not in (200, 201):
        raise FlowError(f"registration failed with HTTP {response.status_code}")
    client_id: str = response.json()["client_id"]
    return client_id


def login(mcp_url: str, username: str, *, http: requests.Session | None = None,
          browser: requests.Session | None = None, redirect_uri: str = CALLBACK,
          client_id: str | None = None) -> Login:
    """The whole client side of the flow, as user ``username`` at every provider. Registers a new
    client unless ``client_id`` (registered with ``redirect_uri``) is given."""
    http = http or requests.Session()
    browser = browser or requests.Session()
    found = discover(http, mcp_url)
    meta = found.metadata
    scope = " ".join(found.resource_metadata.get("scopes_supported") or [])
    if client_id is None:
        client_id = register(http, found, redirect_uri=redirect_uri)

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(24)
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state,
              "code_challenge": challenge, "code_challenge_method": "S256", "resource": found.resource}
    if scope:
        params["scope"] = scope
    result = walk_authorization(browser, f"{meta['authorization_endpoint']}?{urlencode(params)}",
                                redirect_uri, username)
    if result.get("state") != state:
        raise FlowError("state mismatch in the authorization response")
    if "iss" in result and result["iss"] != meta["issuer"]:
        raise FlowError("iss mismatch in the authorization response (RFC 9207)")
    if "code" not in result:
        raise FlowError(f"authorization failed: {result.get('error', 'no code')}")
    response = http.post(meta["token_endpoint"], timeout=TIMEOUT, data={
        "grant_type": "authorization_code", "code": result["code"], "redirect_uri": redirect_uri,
        "client_id": client_id, "code_verifier": verifier, "resource": found.resource})
    if response.status_code != 200:
        error = response.json().get("error", "?") if response.headers.get("Content-Type", "").startswith(
            "application/json") else "?"
        raise FlowError(f"token request failed with HTTP {response.status_code} ({error})")
    body = response.json()
    return Login(access_token=body["access_token"], refresh_token=body.get("refresh_token"),
                 client_id=client_id, token_response=body)


# -- MCP over Streamable HTTP -----------------------------------------------------------------------
class MCPError(FlowError):
    def __init__(self, status: int, error: Mapping[str, Any] | None) -> None:
        self.status = status
        self.error = dict(error or {})
        super().__init__(f"MCP error (HTTP {status}): {self.error.get('message', 'no JSON-RPC error')}")


class MCPSession:
    """JSON-RPC 2.0 over Streamable HTTP with a bearer token. ``workers`` records the
    ``X-Example-Worker`` header of every response (which process answered)."""

    def __init__(self, mcp_url: str, access_token: str, *, http: requests.Session | None = None,
                 protocol_version: str = "2025-06-18") -> None:
        self.url = mcp_url
        self.http = http or requests.Session()
        self.token = access_token
        self.protocol_version = protocol_version
        self.session_id: str | None = None
        self.workers: list[str] = []
        self._next_id = 1

    def post(self, message: Mapping[str, Any], *, session_id: str | None = None,
             token: str | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.token}",
                   "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        sid = session_id or self.session_id
        if sid:
            headers["Mcp-Session-Id"] = sid
        if message.get("method") != "initialize":
            headers["MCP-Protocol-Version"] = self.protocol_version
        response = self.http.post(self.url, data=json.dumps(message), headers=headers, timeout=TIMEOUT)
        if "X-Example-Worker" in response.headers:
            self.workers.append(response.headers["X-Example-Worker"])
        return response

    def request(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        self._next_id += 1
        if params is not None:
            message["params"] = dict(params)
        response = self.post(message)
        body = response.json() if response.headers.get("Content-Type", "").startswith("application/json") \
            else None
        if response.status_code != 200 or not isinstance(body, dict) or "error" in body:
            raise MCPError(response.status_code, body.get("error") if isinstance(body, dict) else None)
        return body["result"]

    def open(self) -> dict[str, Any]:
        """``initialize`` + ``notifications/initialized``."""
        message = {"jsonrpc": "2.0", "id": self._next_id, "method": "initialize", "params": {
            "protocolVersion": self.protocol_version, "capabilities": {},
            "clientInfo": {"name": "example_app.client", "version": "0.1.0"}}}
        self._next_id += 1
        response = self.post(message)
        if response.status_code != 200:
            raise MCPError(response.status_code, None)
        self.session_id = response.headers.get("Mcp-Session-Id")
        if not self.session_id:
            raise FlowError("initialize answered without Mcp-Session-Id")
        result: dict[str, Any] = response.json()["result"]
        self.protocol_version = result["protocolVersion"]
        notified = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if notified.status_code != 202 or notified.content:
            raise FlowError(f"notifications/initialized answered {notified.status_code}, expected 202")
        return result

    def list_tools(self) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = self.request("tools/list")["tools"]
        return tools

    def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The tool's structured result; raises ``FlowError`` when the tool reports an error."""
        result = self.request("tools/call", {"name": name, "arguments": dict(arguments or {})})
        if result.get("isError"):
            text = " ".join(c.get("text", "") for c in result.get("content", []))
            raise FlowError(f"tool {name} failed: {text}")
        data: dict[str, Any] = result.get("structuredContent") or json.loads(result["content"][0]["text"])
        return data
