"""The package's own outgoing HTTP calls, bounded by a *total* deadline (``MCP_AUTH_UPSTREAM_TIMEOUT``).

requests' ``timeout=`` bounds each socket operation, not the call: an upstream that sends one byte just
inside the read timeout — in the body or in the status line and headers — keeps the caller (and any
lock it holds) for as long as it likes. :func:`fetch` makes one request with ``stream=True``,
``allow_redirects=False`` and the caller's explicit ``verify=``/``timeout=`` (``REQUESTS_CA_BUNDLE``
would otherwise override the session's ``verify``) and bounds connect + headers + body together:

* the request runs on a short-lived daemon thread and the caller waits for it only until the deadline,
  then raises :class:`HTTPFailure` ``"timeout"``. A thread, because http.client's header read cannot
  be interrupted from the calling thread and the socket is not reachable before the headers are in;
* the body is read one socket read at a time (``read1``) with the deadline and the size cap checked
  before each read; the response is closed on every path, so an abandoned call's thread ends at its
  next read (at most one per-read ``timeout`` later, or when the headers finally arrive).

Used for every protocol call the package makes itself (upstream token/userinfo/discovery/JWKS, Mode A
discovery/JWKS, RFC 8693 STS, ``flask mcp-auth check``). The app's own backend calls through
``auth.session()`` do not come here and keep requests' ordinary semantics.

:func:`make_protocol_session` builds that shared session. Like the app's backend sessions it holds no
per-user state: its cookie jar (:class:`NoCookieJar`) never stores a cookie, so a ``Set-Cookie`` an
upstream or STS sends in answer to one user's call is never replayed on another user's.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.client import HTTPException
from http.cookiejar import Cookie, DefaultCookiePolicy
from typing import Any

import requests
import urllib3
from requests.cookies import RequestsCookieJar

__all__ = ["HTTPFailure", "NoCookieJar", "Reply", "fetch", "make_protocol_session"]

#: Largest single read from the body; ``read1`` returns what one socket read gives, up to this.
_CHUNK = 16 * 1024

#: Most worker threads alive at once per process. A worker whose caller gave up ends at its next
#: socket read, but an upstream dribbling its headers can keep it longer; the cap keeps such
#: stragglers from piling up without bound: when it is reached, calls wait for a slot only until
#: their own deadline and then fail with ``"timeout"`` (a clean 503 upstream of the caller).
MAX_IN_FLIGHT = 64
_in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)


class HTTPFailure(Exception):
    """A call that produced no usable response. ``reason`` is one of ``"timeout"`` (the total deadline
    or a per-read timeout passed), ``"connection_error"`` (connect refused/reset, TLS, broken body),
    ``"request_error"`` (requests refused the request: bad URL, …) or ``"too_large"``.
    The message is the reason only: never a URL with parameters, a header or a body."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Reply:
    """A fully read (size-capped) HTTP response."""

    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object, or ``None`` when it is not one."""
        try:
            value = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # deeply nested JSON: not ours
            return None
        return value if isinstance(value, dict) else None


class _Call:
    """State shared by the caller and the worker thread of one :func:`fetch`."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.abandoned = False  # set by the caller when the deadline passes; the worker stops reading
        self.reply: Reply | None = None
        self.error: BaseException | None = None


def fetch(http: requests.Session, method: str, url: str, *, verify: bool | str, timeout: float,
          max_body: int, deadline: float | None = None, **kwargs: Any) -> Reply:
    """``method url`` through ``http``, body read up to ``max_body`` bytes, everything done within
    ``timeout`` seconds (or by ``deadline``, a ``time.monotonic()`` value shared by several calls).

    Raises :class:`HTTPFailure`; any other exception of the session (a bug, a test double) propagates.
    """
    end = time.monotonic() + timeout if deadline is None else deadline
    remaining = end - time.monotonic()
    if remaining <= 0:
        raise HTTPFailure("timeout")
    slots = _in_flight  # the worker releases the very semaphore it was admitted by
    if not slots.acquire(timeout=remaining):
        raise HTTPFailure("timeout")  # every slot held by slow calls: fail within our own deadline
    call = _Call()
    worker = threading.Thread(
        target=_run, args=(call, slots, http, method, url, verify, timeout, max_body, end, kwargs),
        name="flask_mcp_auth-http", daemon=True,
    )
    try:
        worker.start()
    except RuntimeError:  # the process cannot start another thread
        slots.release()
        raise HTTPFailure("timeout") from None
    if not call.done.wait(max(0.0, end - time.monotonic())):
        call.abandoned = True  # the worker closes the response at its next read (or on arrival)
        raise HTTPFailure("timeout")
    if call.error is not None:
        raise call.error
    assert call.reply is not None
    return call.reply


def _run(call: _Call, slots: threading.BoundedSemaphore, http: requests.Session, method: str,
         url: str, verify: bool | str, timeout: float, max_body: int, end: float,
         kwargs: dict[str, Any]) -> None:
    try:
        call.reply = _request(call, http, method, url, verify, timeout, max_body, end, kwargs)
    except BaseException as exc:  # handed to the caller; nothing may escape a worker thread
        call.error = exc
    finally:
        slots.release()  # the slot is the thread's, held until it really ends
        call.done.set()


def _request(call: _Call, http: requests.Session, method: str, url: str, verify: bool | str,
             timeout: float, max_body: int, end: float, kwargs: dict[str, Any]) -> Reply:
    try:
        resp = http.request(method, url, verify=verify, timeout=timeout, allow_redirects=False,
                            stream=True, **kwargs)
    except requests.Timeout:
        raise HTTPFailure("timeout") from None
    except requests.ConnectionError:
        raise HTTPFailure("connection_error") from None
    except requests.RequestException:
        raise HTTPFailure("request_error") from None
    try:
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > max_body:
            raise HTTPFailure("too_large")
        body = _read_body(call, resp.raw, max_body, end)
        return Reply(resp.status_code, resp.headers.get("Content-Type", ""), body, resp.headers)
    finally:
        resp.close()


def _read_body(call: _Call, raw: Any, max_body: int, end: float) -> bytes:
    # urllib3's read1 returns after one socket read; anything else (urllib3 1.x, test doubles) gets
    # small plain reads
    one_read = isinstance(raw, urllib3.HTTPResponse) and hasattr(raw, "read1")
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            if call.abandoned or time.monotonic() >= end:
                raise HTTPFailure("timeout")
            chunk = raw.read1(_CHUNK, decode_content=True) if one_read else raw.read(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > max_body:
                raise HTTPFailure("too_large")
            chunks.append(chunk)
    except (urllib3.exceptions.ReadTimeoutError, TimeoutError, requests.Timeout):
        raise HTTPFailure("timeout") from None
    except (urllib3.exceptions.HTTPError, HTTPException, OSError,
            requests.RequestException):
        raise HTTPFailure("connection_error") from None


class NoCookieJar(RequestsCookieJar):
    """A cookie jar that never stores a cookie, for sessions shared by every user of the app.

    requests' default jar keeps each response's ``Set-Cookie`` and sends it on every later call of the
    session — whoever that call is for. Here the policy refuses every cookie (``extract_cookies``) and
    ``set_cookie`` does nothing, so an explicit ``session.cookies.set(...)`` cannot add shared state
    either. Cookies passed per call (``cookies=``) and those set within one call's redirect chain are
    requests' per-request jar and still work.
    """

    def __init__(self) -> None:
        super().__init__(policy=DefaultCookiePolicy(allowed_domains=[]))

    def set_cookie(self, cookie: Cookie, *args: Any, **kwargs: Any) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


def make_protocol_session() -> requests.Session:
    """The session of the package's own protocol calls (``runtime.http``): shared by every user, so it
    stores no cookies; every call still goes through :func:`fetch` (explicit ``verify``/``timeout``)."""
    http = requests.Session()
    http.cookies = NoCookieJar()
    http.headers["User-Agent"] = "flask_mcp_auth"
    return http
