"""A small MCP server over Streamable HTTP (MCP 2025-03-26 … 2025-11-25, "Transports" and "Lifecycle").

One endpoint, ``POST /mcp``, speaking JSON-RPC 2.0: ``initialize``, ``notifications/initialized``,
``ping``, ``tools/list`` and ``tools/call``. Responses are always ``application/json`` (the spec lets a
server answer a single request with JSON even when the client also accepts ``text/event-stream``);
notifications and client responses get ``202 Accepted`` with no body. ``GET /mcp`` is 405: this
server offers no server-initiated stream. ``DELETE /mcp`` is 405 too: sessions end by expiry of the
user's token, which the spec allows.

Batches: a JSON array of messages is accepted when the client speaks 2025-03-26 (its
``MCP-Protocol-Version`` header, absent meaning 2025-03-26), whose servers MUST accept batches; the
answer is an array of responses (none for notifications, 202 when nothing is owed). From 2025-06-18,
which removed batching, an array is a 400 ``-32600``. ``initialize`` may never be batched.

Sessions (``Mcp-Session-Id``): issued at ``initialize`` and required on every later request. A session
id is *not* a credential — every request still needs a valid bearer token — and it is bound to the
token's user and client: the id is ``<random>.<HMAC(secret, random, subject, client)>``, so any worker
can check it without shared state, and an id presented with another user's token is unknown (404),
as the MCP security best practices require ("bind session ids to user-specific information").

Origins: a request carrying an ``Origin`` header from a site that is not allowed gets 403, as the
transport spec requires against DNS rebinding (a page on ``evil.example`` whose name resolves to
127.0.0.1 would otherwise reach a server on loopback). Requests without ``Origin`` (non-browser
clients) are unaffected; the bearer token is required either way.

Hand-written rather than the ``mcp`` SDK's server because that one is ASGI (Starlette) and this app is
a plain WSGI Flask app protected by ``flask_mcp_auth``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from flask import Response, request

__all__ = ["PROTOCOL_VERSIONS", "MCPServer", "Tool", "ToolError"]

#: Handshake-era protocol versions this server speaks, newest first.
PROTOCOL_VERSIONS: tuple[str, ...] = ("2025-11-25", "2025-06-18", "2025-03-26")
#: What a request without ``MCP-Protocol-Version`` is assumed to speak (MCP 2025-06-18 "Transports").
DEFAULT_HEADER_VERSION = "2025-03-26"
#: Versions whose servers MUST accept JSON-RPC batches; 2025-06-18 removed batching.
BATCH_VERSIONS: frozenset[str] = frozenset({"2025-03-26"})

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SESSION_NOT_FOUND = -32001

logger = logging.getLogger("example_app.mcp")


class ToolError(Exception):
    """A tool failed in a way the model should see (``isError: true``); the message must be safe."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    handler: Callable[..., Any]  # called as handler(arguments); decorators may inject more
    input_schema: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}, "additionalProperties": False}
    )
    title: str | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "description": self.description,
                               "inputSchema": dict(self.input_schema)}
        if self.title:
            out["title"] = self.title
        return out


def _valid_id(value: Any) -> bool:
    # MCP "Basic": a request id is a string or a number and, unlike plain JSON-RPC, never null.
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _error_body(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class _Reject(Exception):
    """An HTTP-level rejection carrying a JSON-RPC error body."""

    def __init__(self, status: int, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.request_id = status, code, message, request_id


class MCPServer:
    """Dispatches one HTTP request to the JSON-RPC methods. ``handle(subject, client_id)`` is called
    from the Flask view *after* the bearer token was validated."""

    def __init__(self, *, name: str, version: str, tools: Sequence[Tool], secret: str | bytes,
                 instructions: str | None = None, allowed_origins: Sequence[str] = (),
                 allow_loopback_origins: bool = False) -> None:
        self.name = name
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.allow_loopback_origins = allow_loopback_origins
        self.version = version
        self.tools = {t.name: t for t in tools}
        self.instructions = instructions
        material = secret.encode() if isinstance(secret, str) else secret
        self._session_key = hashlib.sha256(b"example_app mcp-session v1\x00" + material).digest()

    # -- sessions ---------------------------------------------------------------------------------
    def _mac(self, nonce: str, subject: str, client_id: str) -> str:
        message = "\x00".join((nonce, subject, client_id)).encode()
        digest = hmac.new(self._session_key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def new_session(self, subject: str, client_id: str) -> str:
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._mac(nonce, subject, client_id)}"

    def session_valid(self, session_id: str, subject: str, client_id: str) -> bool:
        nonce, dot, mac = session_id.partition(".")
        if not dot or not nonce or len(session_id) > 200:
            return False
        return hmac.compare_digest(mac, self._mac(nonce, subject, client_id))

    # -- HTTP -------------------------------------------------------------------------------------
    @staticmethod
    def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        response = Response(json.dumps(body, separators=(",", ":")), status=status,
                            mimetype="application/json")
        response.headers["Cache-Control"] = "no-store"
        for key, value in (headers or {}).items():
            response.headers[key] = value
        return response

    def _error(self, status: int, code: int, message: str, request_id: Any = None) -> Response:
        return self._json(_error_body(request_id, code, message), status)

    def handle(self, subject: str, client_id: str) -> Response:
        try:
            return self._handle(subject, client_id)
        except _Reject as reject:
            return self._error(reject.status, reject.code, reject.message, reject.request_id)

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        host = urlsplit(origin).hostname or ""
        return self.allow_loopback_origins and host in ("localhost", "127.0.0.1", "::1")

    def _handle(self, subject: str, client_id: str) -> Response:
        if not self.origin_allowed(request.headers.get("Origin")):
            raise _Reject(403, INVALID_REQUEST, "Forbidden: Origin not allowed")
        accept = request.headers.get("Accept", "")
        if accept and not any(t in accept for t in ("application/json", "*/*", "application/*")):
            raise _Reject(406, INVALID_REQUEST, "Not Acceptable: the client must accept application/json")
        if not request.mimetype == "application/json":
            raise _Reject(415, INVALID_REQUEST, "Unsupported Media Type: send application/json")
        try:
            message = json.loads(request.get_data(cache=False) or b"")
        except ValueError:
            raise _Reject(400, PARSE_ERROR, "Parse error") from None
        if isinstance(message, list):
            return self._batch(message, subject, client_id)
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise _Reject(400, INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message")
        method = message.get("method")
        request_id = message.get("id")
        is_request = isinstance(method, str) and "id" in message
        if method is None and ("result" in message or "error" in message):
            return Response(status=202)  # a response to a server request; we never send any
        if is_request and not _valid_id(request_id):
            raise _Reject(400, INVALID_REQUEST, "Invalid Request: id must be a string or a number")

        if method == "initialize" and is_request:
            return self._initialize(message, subject, client_id)

        self._check_version_header(request_id)
        self._check_session(subject, client_id, request_id)

        if not isinstance(method, str):
            raise _Reject(400, INVALID_REQUEST, "Invalid Request", request_id)
        if not is_request:
            return Response(status=202)  # notifications (notifications/initialized, cancelled, …)
        params = message.get("params") or {}
        if not isinstance(params, dict):
            raise _Reject(400, INVALID_PARAMS, "Invalid params", request_id)
        return self._json(self._dispatch(request_id, method, params))

    def _check_session(self, subject: str, client_id: str, request_id: Any = None) -> None:
        session_id = request.headers.get("Mcp-Session-Id")
        if not session_id:
            raise _Reject(400, INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required", request_id)
        if not self.session_valid(session_id, subject, client_id):
            # Unknown, forged, or issued to another user/client: the same answer for all three.
            raise _Reject(404, SESSION_NOT_FOUND, "Session not found", request_id)

    def _dispatch(self, request_id: Any, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The response object for one request (``_Reject`` for an error with an HTTP status)."""
        if method == "ping":
            return self._result_body(request_id, {})
        if method == "tools/list":
            return self._result_body(request_id, {"tools": [t.describe() for t in self.tools.values()]})
        if method == "tools/call":
            return self._call_tool(request_id, params)
        return _error_body(request_id, METHOD_NOT_FOUND, "Method not found")

    def _batch(self, messages: list[Any], subject: str, client_id: str) -> Response:
        """A JSON-RPC 2.0 batch (§6), which MCP 2025-03-26 servers MUST accept ("Basic", "JSON-RPC
        Batching") and 2025-06-18 removed. The version is the negotiated one the client announces in
        ``MCP-Protocol-Version`` (absent means 2025-03-26, as the transport spec says)."""
        self._check_version_header(None)
        version = request.headers.get("MCP-Protocol-Version", DEFAULT_HEADER_VERSION)
        if version not in BATCH_VERSIONS:
            raise _Reject(400, INVALID_REQUEST, f"Invalid Request: JSON-RPC batches are not supported in "
                          f"protocol version {version} (removed in 2025-06-18)")
        # "initialize" MUST NOT be batched (Lifecycle), so every batch belongs to an existing session.
        self._check_session(subject, client_id)
        if not messages:
            raise _Reject(400, INVALID_REQUEST, "Invalid Request: empty batch")
        responses = [r for r in (self._batch_item(m) for m in messages) if r is not None]
        if not responses:
            return Response(status=202)  # only notifications and/or responses (Transports, 2025-03-26)
        return self._json(responses)

    def _batch_item(self, message: Any) -> dict[str, Any] | None:
        """One batch member's response object, or ``None`` for notifications and client responses."""
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return _error_body(None, INVALID_REQUEST, "Invalid Request")
        method = message.get("method")
        if method is None and ("result" in message or "error" in message):
            return None  # a response to a server request; we never send any
        if "id" not in message:
            return None  # a notification gets no response, not even an error (JSON-RPC §4.1)
        request_id = message.get("id")
        if not _valid_id(request_id):
            return _error_body(None, INVALID_REQUEST, "Invalid Request: id must be a string or a number")
        if not isinstance(method, str):
            return _error_body(request_id, INVALID_REQUEST, "Invalid Request")
        if method == "initialize":
            return _error_body(request_id, INVALID_REQUEST, "Invalid Request: initialize must not be batched")
        params = message.get("params") or {}
        if not isinstance(params, dict):
            return _error_body(request_id, INVALID_PARAMS, "Invalid params")
        try:
            return self._dispatch(request_id, method, params)
        except _Reject as reject:
            return _error_body(reject.request_id, reject.code, reject.message)

    def _check_version_header(self, request_id: Any) -> None:
        version = request.headers.get("MCP-Protocol-Version", DEFAULT_HEADER_VERSION)
        if version not in PROTOCOL_VERSIONS:
            raise _Reject(400, INVALID_REQUEST, "Bad Request: unsupported MCP-Protocol-Version", request_id)

    @staticmethod
    def _result_body(request_id: Any, result: Mapping[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": request_id, "result": dict(result)}

    def _initialize(self, message: Mapping[str, Any], subject: str, client_id: str) -> Response:
        params = message.get("params") or {}
        requested = params.get("protocolVersion") if isinstance(params, dict) else None
        # Lifecycle: echo a version we support, else answer with our latest and let the client decide.
        version = requested if requested in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": self.name, "version": self.version},
        }
        if self.instructions:
            result["instructions"] = self.instructions
        session_id = self.new_session(subject, client_id)
        return self._json({"jsonrpc": "2.0", "id": message.get("id"), "result": result},
                          headers={"Mcp-Session-Id": session_id})

    def _call_tool(self, request_id: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        tool = self.tools.get(str(params.get("name")))
        if tool is None:
            raise _Reject(200, INVALID_PARAMS, "Unknown tool", request_id)
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise _Reject(200, INVALID_PARAMS, "Tool arguments must be an object", request_id)
        try:
            data = tool.handler(arguments)
        except ToolError as exc:
            return self._result_body(request_id, {"content": [{"type": "text", "text": str(exc)}],
                                                  "isError": True})
        result: dict[str, Any] = {"content": [{"type": "text", "text": json.dumps(data, indent=2)}],
                                  "isError": False}
        if isinstance(data, dict):
            result["structuredContent"] = data
        return self._result_body(request_id, result)
