"""RFC 8693 OAuth 2.0 Token Exchange: the client request (§2.1), response validation (§2.2.1),
error responses (§2.2.2), and a bounded, single-flight cache of exchanged tokens. No Flask here.

Hand-written because Authlib ships no RFC 8693 *client* (only server-side grant scaffolding).

Wire rules we enforce on the STS answer (fail closed, never inject something that is not a bearer
access token):

* ``access_token`` is a non-empty string;
* ``issued_token_type`` is present and is ``urn:ietf:params:oauth:token-type:access_token`` (or
  ``…:jwt`` when that was requested);
* ``token_type`` is ``Bearer`` (case-insensitive) — ``N_A`` means "not an access token" (§2.2.1);
* ``expires_in``, when present, is a positive number.

An STS error body yields :class:`~flask_mcp_auth.errors.TokenExchangeError` carrying only the OAuth
``error`` code (sanitised); anything unusable (HTML, garbage, oversize, timeout, connection error)
yields ``server_error`` / ``temporarily_unavailable``. The STS body is never logged or echoed. Each
call is bounded by ``timeout`` seconds in total (connect, headers and body: ``_http.fetch``).

Caching (SPEC §6): results are kept per (backend, user subject, SHA-256 of the subject token) until
30 s before ``expires_in`` and never beyond the subject token's own expiry; concurrent misses for one
key make one STS call (single-flight). The key includes the user subject as well as the subject-token
hash, so an entry can never be served to another user.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import requests

from .._encoding import b64url_decode
from .._http import HTTPFailure, fetch
from ..config import TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT
from ..errors import TokenExchangeError

__all__ = [
    "EXPIRY_MARGIN",
    "GRANT_TYPE_TOKEN_EXCHANGE",
    "ExchangeCache",
    "ExchangeRequest",
    "ExchangeResult",
    "TokenExchangeClient",
    "jwt_expiry",
    "merge_not_after",
    "response_status",
    "subject_digest",
]

GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
#: Seconds before ``expires_in`` at which a cached exchanged token stops being served.
EXPIRY_MARGIN = 30
#: STS answers larger than this are refused unread (a token response is a few KiB at most).
MAX_RESPONSE_BYTES = 64 * 1024
# RFC 6749 §5.2 allows more characters; we pass on only plain codes so nothing odd reaches clients.
_ERROR_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class ExchangeRequest:
    """One RFC 8693 §2.1 request. ``subject_token`` is secret: excluded from ``repr``."""

    backend: str
    token_url: str
    subject_token: str
    subject_token_type: str
    requested_token_type: str = TOKEN_TYPE_ACCESS
    client_id: str | None = None
    client_secret: str | None = None
    audience: str | None = None
    resource: str | None = None
    scopes: Sequence[str] = ()

    def __repr__(self) -> str:
        return f"ExchangeRequest(backend={self.backend!r}, token_url={self.token_url!r})"

    def form(self) -> dict[str, str]:
        data = {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": self.subject_token,
            "subject_token_type": self.subject_token_type,
            "requested_token_type": self.requested_token_type,
        }
        if self.audience:
            data["audience"] = self.audience
        if self.resource:
            data["resource"] = self.resource
        if self.scopes:
            data["scope"] = " ".join(self.scopes)
        return data

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.client_id:
            headers["Authorization"] = basic_auth(self.client_id, self.client_secret or "")
        return headers


@dataclass(frozen=True)
class ExchangeResult:
    access_token: str
    issued_token_type: str
    expires_in: float | None

    def __repr__(self) -> str:
        return f"ExchangeResult(issued_token_type={self.issued_token_type!r}, expires_in={self.expires_in})"


def basic_auth(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded *before* HTTP Basic encoding."""
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def subject_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT-shaped token, read WITHOUT verification — used only to shorten caching,
    never to trust anything. ``None`` for opaque tokens."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(b64url_decode(payload))
    except (binascii.Error, ValueError, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        return float(exp)
    return None


def response_status(code: str) -> int:
    """HTTP status our app answers for a failed exchange: the STS refusing this user or target is a
    403 (retrying will not help); anything else is the gateway failing, 502."""
    return 403 if code in ("invalid_target", "access_denied") else 502


def _fail(code: str, backend: str) -> TokenExchangeError:
    return TokenExchangeError(code, backend, response_status(code))


def _error_code(value: Any) -> str:
    return value if isinstance(value, str) and _ERROR_CODE_RE.match(value) else "server_error"


class TokenExchangeClient:
    """Performs RFC 8693 exchanges over one pooled ``requests.Session``.

    >>> client = TokenExchangeClient(runtime.http, verify=runtime.verify, timeout=runtime.timeout)
    >>> client.exchange(ExchangeRequest(backend="docs", token_url="https://sts/token",
    ...                                 subject_token=tok, subject_token_type=TOKEN_TYPE_ACCESS)).expires_in
    """

    def __init__(self, http: requests.Session, *, verify: bool | str, timeout: float) -> None:
        self.http = http
        self.verify = verify
        self.timeout = timeout

    def exchange(self, req: ExchangeRequest) -> ExchangeResult:
        try:
            # allow_redirects=False inside fetch: a token endpoint that redirects is misconfigured
            reply = fetch(self.http, "POST", req.token_url, data=req.form(), headers=req.headers(),
                          verify=self.verify, timeout=self.timeout, max_body=MAX_RESPONSE_BYTES)
        except HTTPFailure as exc:
            transient = exc.reason in ("timeout", "connection_error")
            code = "temporarily_unavailable" if transient else "server_error"
            raise _fail(code, req.backend) from None
        return self._parse(req, reply.status, reply.body)

    @staticmethod
    def _parse(req: ExchangeRequest, status: int, body: bytes) -> ExchangeResult:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # garbage or deeply nested JSON from the STS
            doc = None
        if not isinstance(doc, dict):
            # HTML error page, empty body, garbage: transient when the STS says so, else a server error
            code = "temporarily_unavailable" if status in (502, 503, 504) else "server_error"
            raise _fail(code, req.backend)
        if "error" in doc or status != 200:
            # §2.2.2: only the code travels on; the description and the rest of the body do not
            raise _fail(_error_code(doc.get("error")), req.backend)
        token = doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise _fail("server_error", req.backend)
        accepted = {TOKEN_TYPE_ACCESS}
        if req.requested_token_type == TOKEN_TYPE_JWT:
            accepted.add(TOKEN_TYPE_JWT)
        issued = doc.get("issued_token_type")
        if issued not in accepted:
            raise _fail("server_error", req.backend)
        token_type = doc.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            # includes "N_A": the issued token is not an access token and must not become a Bearer
            raise _fail("server_error", req.backend)
        expires_in = _parse_expires_in(doc.get("expires_in", None), req.backend)
        return ExchangeResult(access_token=token, issued_token_type=str(issued), expires_in=expires_in)


def _parse_expires_in(value: Any, backend: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _fail("server_error", backend)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, (int, float)) or value <= 0:
        raise _fail("server_error", backend)
    return float(value)


CacheKey = tuple[str, str, str]  # (backend, user subject, sha256 of the subject token)


@dataclass
class _Entry:
    token: str
    expires_at: float


class _Flight:
    __slots__ = ("done", "error", "token")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.token: str | None = None
        self.error: str | None = None


class ExchangeCache:
    """Bounded LRU of exchanged tokens with single-flight misses. Thread-safe.

    >>> cache = ExchangeCache(max_entries=10_000)
    >>> token, hit = cache.get_or_fetch(("docs", "user-1", subject_digest(tok)),
    ...                                 lambda: (client.exchange(req), jwt_expiry(tok)))
    """

    def __init__(
        self, max_entries: int = 10_000, *, clock: Callable[[], float] = time.time, wait_timeout: float = 30
    ) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self.wait_timeout = wait_timeout
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._flights: dict[CacheKey, _Flight] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get_or_fetch(
        self,
        key: CacheKey,
        fetch: Callable[[], tuple[ExchangeResult, float | None]],
    ) -> tuple[str, bool]:
        """The cached token for ``key`` or the result of ``fetch()``; returns ``(token, cache_hit)``.

        ``fetch`` returns the exchange result and a bound on the entry's lifetime (the subject token's
        own expiry, or ``None``); it runs only on a miss. Concurrent callers for one key while a fetch
        runs wait for it and share its outcome (``cache_hit=True``).
        """
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if entry.expires_at > now:
                    self._entries.move_to_end(key)
                    return entry.token, True
                del self._entries[key]
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            return self._follow(key, flight), True
        try:
            result, not_after = fetch()
        except TokenExchangeError as exc:
            flight.error = exc.error
            raise
        except BaseException:
            flight.error = "server_error"
            raise
        else:
            flight.token = result.access_token
            self._store(key, result, not_after)
            return result.access_token, False
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _follow(self, key: CacheKey, flight: _Flight) -> str:
        if not flight.done.wait(self.wait_timeout):
            raise _fail("temporarily_unavailable", key[0])
        if flight.token is None:
            # the leader's failure is everyone's failure: no retry storm against a failing STS
            raise _fail(flight.error or "server_error", key[0])
        return flight.token

    def _store(self, key: CacheKey, result: ExchangeResult, not_after: float | None) -> None:
        if result.expires_in is None:
            return  # no lifetime given: do not guess, exchange again next time
        now = self.clock()
        expires_at = now + result.expires_in - EXPIRY_MARGIN
        if not_after is not None:
            expires_at = min(expires_at, not_after)
        if expires_at <= now:
            return
        with self._lock:
            self._entries[key] = _Entry(result.access_token, expires_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def merge_not_after(*bounds: float | None) -> float | None:
    """The earliest of the known expiry bounds (``None`` = unknown)."""
    known = [b for b in bounds if b is not None]
    return min(known) if known else None
