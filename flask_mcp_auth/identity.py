"""Incoming identity (SPEC §5): :class:`Identity`, ``current_identity``, the ``before_request`` hook,
``required()`` and the RFC 6750 §3 / RFC 9728 §5.1 challenges.

The hook reads a bearer token from the ``Authorization`` header only (RFC 6750 §2.1; query-string
tokens are ignored, a token in the header *and* the form body is ``invalid_request``), validates it
(Mode A: an external issuer's JWT against its JWKS, fetched lazily with a refetch cooldown; Mode B:
our own JWT against local keys) and, in Mode B, loads the session's upstream tokens in one storage
round trip, refreshing expired ones. The result is ``g.identity``. ``required()`` and
``MCP_AUTH_PROTECTED_PATHS`` enforce it; failures render as JSON with a ``WWW-Authenticate: Bearer``
challenge carrying ``resource_metadata``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

import requests
from flask import Response, current_app, g, request
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from werkzeug.local import LocalProxy

from . import signals
from ._http import HTTPFailure, fetch
from .config import is_loopback_host
from .errors import (
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    OAuthError,
    StorageError,
    TemporarilyUnavailable,
)
from .keys import PublicKey
from .storage import UpstreamToken
from .tokens import MAX_TOKEN_LENGTH, VerifiedTokenCache, algorithms_for_key
from .upstream.base import UpstreamRejected, UpstreamUnavailable
from .upstream.refresh import Refresher, refresh_due, refresh_skew

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings
    from .runtime import Runtime

__all__ = [
    "ExternalVerifier",
    "Identity",
    "challenge_response",
    "current_identity",
    "install",
    "require_providers",
    "required",
    "unavailable_providers",
]

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("flask_mcp_auth.identity")

_EMPTY: Mapping[str, str] = MappingProxyType({})
#: Name of the AS blueprint (server/blueprint.py): its endpoints authenticate clients themselves.
_AS_BLUEPRINT = "mcp_auth"
#: ``g`` attribute holding providers whose refresh failed transiently in this request.
_G_TRANSIENT = "_mcp_auth_transient"
#: Cap on decrypted upstream-token records kept in memory (see ``_SessionLoader``).
_DECODED_CACHE_SIZE = 30_000
#: Seconds a transient refresh failure of one ``(session, provider)`` is reused before the upstream is
#: asked again (``Refresher.failure_backoff``): bounds the cost of a failing or hanging IdP.
_REFRESH_FAILURE_BACKOFF = 10.0
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Identity:
    """The caller of the current request, built by the hook from a verified bearer token.

    ``upstream_tokens`` maps provider name to a live access token (already refreshed); it is
    read-only. ``repr``/``str`` never show a token.

    >>> from flask_mcp_auth import current_identity
    >>> current_identity.subject, sorted(current_identity.upstream_tokens)
    """

    subject: str
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)
    token: str = field(default="", repr=False)
    session_id: str | None = field(default=None, repr=False)
    name: str | None = None
    email: str | None = None
    upstream_tokens: Mapping[str, str] = field(default_factory=lambda: _EMPTY, repr=False)
    upstream_id_tokens: Mapping[str, str] = field(default_factory=lambda: _EMPTY, repr=False)
    missing_providers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # Freeze the mappings so views cannot change what later code sees.
        for name in ("upstream_tokens", "upstream_id_tokens", "claims"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(dict(value)))

    def __str__(self) -> str:
        return f"Identity(subject={self.subject!r}, client_id={self.client_id!r})"

    @property
    def providers(self) -> frozenset[str]:
        return frozenset(self.upstream_tokens)


def _get_identity() -> Identity | None:
    return cast("Identity | None", g.get("identity"))


#: The current request's :class:`Identity` (or ``None``), like ``g.identity``.
current_identity: Identity | None = cast("Identity | None", LocalProxy(_get_identity))


# --- Mode A: an external issuer's tokens ------------------------------------------------------------
class _FetchError(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class _KeyTable:
    by_kid: Mapping[str, tuple[PublicKey, tuple[str, ...]]]
    all: tuple[tuple[PublicKey, tuple[str, ...]], ...]

    def find(self, kid: str | None) -> tuple[PublicKey, tuple[str, ...]] | None:
        if kid is None:  # no kid: only an unambiguous single-key set is usable (never "try each")
            return self.all[0] if len(self.all) == 1 else None
        return self.by_kid.get(kid)


_JWK_LOADERS: Mapping[str, Any] = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}


def _parse_jwks(doc: Mapping[str, Any]) -> _KeyTable:
    """Public signature keys of a JWKS; unparseable, private-only, HMAC or ``use != sig`` keys are
    skipped (one bad key must not break the others)."""
    by_kid: dict[str, tuple[PublicKey, tuple[str, ...]]] = {}
    every: list[tuple[PublicKey, tuple[str, ...]]] = []
    raw_keys = doc.get("keys")
    for jwk in raw_keys if isinstance(raw_keys, list) else ():
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        loader: Any = _JWK_LOADERS.get(str(jwk.get("kty")))
        if loader is None:
            continue
        try:
            key: Any = loader.from_jwk(jwk)
        except Exception:  # any malformed member makes this key unusable, and nothing else
            logger.debug("skipping an unparseable JWK (kid %r)", jwk.get("kid"))
            continue
        if hasattr(key, "public_key") and not hasattr(key, "verify"):
            key = key.public_key()  # a JWK carrying private members: use its public half only
        allowed = algorithms_for_key(key)
        if isinstance(jwk.get("alg"), str):
            allowed = (jwk["alg"],) if jwk["alg"] in allowed else ()
        if not allowed:
            continue
        entry = (cast("PublicKey", key), allowed)
        every.append(entry)
        kid = jwk.get("kid")
        if isinstance(kid, str):
            by_kid.setdefault(kid, entry)
    return _KeyTable(by_kid=by_kid, all=tuple(every))


#: Mode A accepts RFC 9068 access tokens and plain JWTs (many issuers send ``typ: JWT`` or none).
_EXTERNAL_TYPES: frozenset[str | None] = frozenset({None, "jwt", "at+jwt", "application/at+jwt"})


class ExternalVerifier:
    """Mode A: verify JWTs of the external issuer ``settings.issuer`` for ``settings.audience``.

    The JWKS comes from ``settings.jwks_uri`` or the issuer's discovery document
    (``/.well-known/openid-configuration``, then ``/.well-known/oauth-authorization-server``), fetched
    on first use (the app starts while the issuer is down), cached, and refetched at most once per
    ``cooldown`` seconds when a token names an unknown ``kid`` (LD-04: a flood of random kids costs at
    most one fetch per cooldown). Stale keys keep working while the issuer is unreachable.

    >>> verifier = ExternalVerifier(settings, requests.Session())
    >>> verifier.verify(token)["sub"]
    """

    failure_backoff = 5.0  # seconds before retrying after a failed fetch (≤ cooldown)
    max_document_bytes = 512 * 1024

    def __init__(
        self,
        settings: Settings,
        http: requests.Session,
        *,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        cache: VerifiedTokenCache | None = None,
    ) -> None:
        self.settings = settings
        self.http = http
        self.cooldown = cooldown
        self.clock = clock
        self.cache = cache if cache is not None else VerifiedTokenCache()
        #: wall clock for exp/nbf checks (``clock`` above paces JWKS fetches)
        self.wall_clock: Callable[[], float] = time.time
        #: number of JWKS fetch attempts so far (for tests and metrics)
        self.fetches = 0
        self._jwks_uri = settings.jwks_uri
        self._table: _KeyTable | None = None
        self._next_fetch = float("-inf")
        self._lock = threading.Lock()

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or :class:`InvalidToken` (``TemporarilyUnavailable`` when no key set
        could be fetched yet)."""
        return self.cache.verify(
            token,
            self._resolve,
            clock=self.wall_clock,
            issuer=self.settings.issuer,
            audience=self.settings.audience,
            typ=_EXTERNAL_TYPES,
            require=("exp", "iss", "aud", "sub"),
        )

    def _resolve(self, header: Mapping[str, Any]) -> tuple[PublicKey, tuple[str, ...]]:
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("unknown signing key")
        table = self._table
        found = table.find(kid) if table is not None else None
        if found is None:
            table = self._refetch(kid)
            found = table.find(kid) if table is not None else None
        if found is None:
            if table is None:
                raise TemporarilyUnavailable("The token issuer's signing keys cannot be fetched right now.")
            raise InvalidToken("unknown signing key")
        return found

    def _refetch(self, kid: str | None) -> _KeyTable | None:
        with self._lock:
            table = self._table
            if table is not None and table.find(kid) is not None:
                return table  # another thread fetched while we waited
            now = self.clock()
            if now < self._next_fetch:
                return table
            self.fetches += 1
            try:
                self._table = self._fetch_keys()
                self._next_fetch = now + self.cooldown
            except _FetchError as exc:
                logger.warning("JWKS of issuer %s unavailable: %s", self.settings.issuer, exc.reason)
                self._next_fetch = now + min(self.cooldown, self.failure_backoff)
            return self._table

    def _fetch_keys(self) -> _KeyTable:
        # One total budget for discovery + JWKS: the caller holds ``_lock`` for all of it.
        deadline = time.monotonic() + self.settings.upstream_timeout
        uri = self._jwks_uri or self._discover(deadline)
        table = _parse_jwks(self._get_json(uri, deadline))
        if not table.all:
            raise _FetchError("no_usable_keys")
        return table

    def _discover(self, deadline: float) -> str:
        issuer = self.settings.issuer
        parts = urlsplit(issuer)
        candidates = [
            issuer + "/.well-known/openid-configuration",
            f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path}",
        ]
        reason = "discovery_failed"
        for url in candidates:
            try:
                doc = self._get_json(url, deadline)
            except _FetchError as exc:
                reason = exc.reason
                continue
            if doc.get("issuer") != issuer:  # RFC 8414 §3.3: must be identical
                reason = "discovery_issuer_mismatch"
                continue
            jwks_uri = doc.get("jwks_uri")
            if isinstance(jwks_uri, str) and _acceptable_url(jwks_uri):
                self._jwks_uri = jwks_uri
                return jwks_uri
            reason = "discovery_without_jwks_uri"
        raise _FetchError(reason)

    def _get_json(self, url: str, deadline: float) -> dict[str, Any]:
        try:
            reply = fetch(self.http, "GET", url, headers={"Accept": "application/json"},
                          verify=self.settings.tls_verify, timeout=self.settings.upstream_timeout,
                          max_body=self.max_document_bytes, deadline=deadline)
        except HTTPFailure as exc:
            reason = {"timeout": "timeout", "too_large": "too_large"}.get(exc.reason, "unreachable")
            raise _FetchError(reason) from None
        if reply.status != 200:
            raise _FetchError(f"http_{reply.status}")
        doc = reply.json_object()
        if doc is None:
            raise _FetchError("not_json")
        return doc


def _acceptable_url(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return bool(parts.netloc)
    return parts.scheme == "http" and is_loopback_host(parts.hostname or "")


#: Slack on top of the upstream calls for storage round trips, decryption and thread scheduling.
_REFRESH_LOCK_MARGIN = 10.0


def _refresh_lock_ttl(timeout: float) -> float:
    """TTL of the cross-process refresh lock: longer than one refresh can take, so a second process
    never replays a refresh token that is still in flight (rotating providers answer invalid_grant).

    One refresh is the token call plus, for OIDC, at most one JWKS fetch (or a wait for another
    thread's) to verify a new id_token; ``_http.fetch`` bounds each by ``timeout`` seconds in total.
    """
    return 2 * timeout + _REFRESH_LOCK_MARGIN


# --- Mode B: the session's upstream tokens -----------------------------------------------------------
class _SessionLoader:
    """Load, check, decrypt and refresh one session's upstream tokens (SPEC §5 step 3).

    Decrypted records are kept in a bounded map keyed by ``(sid, provider, ciphertext)``: the same
    blob always decrypts to the same record, so repeated requests skip AES-GCM and JSON; a refreshed
    or deleted row has another (or no) blob and is decrypted afresh. The map is emptied when it
    reaches its bound (a plain dict read needs no lock on the hot path; an LRU would).
    """

    def __init__(self, runtime: Runtime, refresher: Refresher) -> None:
        assert runtime.vault is not None
        self.storage = runtime.storage
        self.vault = runtime.vault
        self.refresher = refresher
        self.providers = frozenset(runtime.settings.provider_names)
        self.decoded: dict[tuple[str, str, str], UpstreamToken] = {}
        self.max_decoded = _DECODED_CACHE_SIZE
        # sid -> (token, blobs, valid_until, identity): the Identity built last time for this token and
        # these exact stored rows, reused while no row needs a refresh (Identity is immutable).
        self.memo: dict[str, tuple[str, Mapping[str, str], float, Identity]] = {}

    def _decode(self, sid: str, provider: str, blob: str) -> UpstreamToken | None:
        key = (sid, provider, blob)
        record = self.decoded.get(key)
        if record is None:
            try:
                record = self.vault.decode(sid, provider, blob)
            except StorageError:
                logger.warning("upstream token of %s for session %s cannot be decrypted", provider, sid[:8])
                return None
            if len(self.decoded) >= self.max_decoded:
                self.decoded.clear()
            self.decoded[key] = record
        return record

    def load(self, token: str, claims: dict[str, Any]) -> tuple[Identity, frozenset[str]]:
        sid = claims.get("tsid")
        if not isinstance(sid, str) or not sid:
            raise InvalidToken("token has no session")
        session = self.storage.load_session(sid)  # ONE round trip, whatever the number of providers
        if session.revoked:
            raise InvalidToken("session revoked")
        subject: str = claims["sub"]
        if session.owner != subject or not session.complete:
            raise InvalidToken("session not found")
        now = time.time()
        memo = self.memo.get(sid)
        if memo is not None and now < memo[2] and memo[0] == token and memo[1] == session.tokens:
            return memo[3], _NONE
        tokens: dict[str, str] = {}
        id_tokens: dict[str, str] = {}
        transient: set[str] = set()
        valid_until = float("inf")
        for provider, blob in session.tokens.items():
            record = self._decode(sid, provider, blob)
            if record is None:
                continue
            if refresh_due(record, now):
                try:
                    record = self.refresher.refresh(sid, record, subject)
                except UpstreamRejected:
                    continue  # the refresher deleted the row; the client must re-authorize
                except UpstreamUnavailable:
                    transient.add(provider)
                    continue
            tokens[provider] = record.access_token
            if record.id_token:
                id_tokens[provider] = record.id_token
            if record.expires_at is not None:
                valid_until = min(valid_until, record.expires_at - refresh_skew(record))
        # Read-only views handed over as such, so Identity does not copy them again.
        identity = Identity(
            subject=subject,
            client_id=claims.get("client_id"),
            scopes=_scopes(claims),
            claims=MappingProxyType(claims),  # verify() returned a fresh dict that nobody else holds
            token=token,
            session_id=sid,
            name=claims.get("name"),
            email=claims.get("email"),
            upstream_tokens=MappingProxyType(tokens),
            upstream_id_tokens=MappingProxyType(id_tokens) if id_tokens else _EMPTY,
            missing_providers=self.providers.difference(tokens),
        )
        if transient:
            return identity, frozenset(transient)
        if len(self.memo) >= self.max_decoded:
            self.memo.clear()
        # Rows refreshed above were rewritten: the next read returns other blobs and misses the memo.
        self.memo[sid] = (token, session.tokens, valid_until, identity)
        return identity, _NONE


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    value = claims.get("scope", claims.get("scp"))
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(str(s) for s in value)
    return frozenset()


def _external_identity(token: str, claims: dict[str, Any]) -> Identity:
    return Identity(
        subject=claims["sub"],
        client_id=claims.get("client_id") or claims.get("azp"),
        scopes=_scopes(claims),
        claims=MappingProxyType(claims),
        token=token,
        name=claims.get("name"),
        email=claims.get("email"),
    )


# --- challenges and error rendering -------------------------------------------------------------------
class _AuthenticationRequired(InvalidToken):
    """No bearer token where one is required: a challenge without an error code (RFC 6750 §3.1)."""

    default_description = "A bearer access token is required."


def _quote(value: str) -> str:
    # auth-param values are quoted-strings (RFC 9110 §11.2); ours are ASCII, but never let a quote through
    return "".join(ch for ch in value if 0x20 <= ord(ch) < 0x7F and ch not in '"\\')


def challenge_response(
    runtime: Runtime, error: OAuthError | None, *, scopes: Iterable[str] = ()
) -> Response:
    """The RS's error response: JSON ``{"error", "error_description"}`` plus ``WWW-Authenticate: Bearer
    resource_metadata="…"[, error="…"][, scope="…"]`` (RFC 6750 §3, RFC 9728 §5.1).

    ``error=None`` (no token was sent) gives a 401 challenge without an error code. A 503 carries
    ``Retry-After``. Used by the hook, ``required()`` and outgoing auth (``UpstreamTokenNotFound``).
    """
    settings = runtime.settings
    params = [f'resource_metadata="{_quote(settings.resource_metadata_url)}"']
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    wanted = tuple(scopes)
    if error is None or isinstance(error, _AuthenticationRequired):
        status = 401
        description = error.description if error is not None else ""
        description = description or _AuthenticationRequired.default_description
        body: dict[str, str] = {"error_description": description}
        wanted = wanted or (error.scopes if error is not None else ())
    else:
        status = error.status_code
        body = error.to_dict()
        if status in (400, 401, 403):
            params.append(f'error="{_quote(error.error)}"')
            if error.description:
                params.append(f'error_description="{_quote(error.description)}"')
        wanted = wanted or error.scopes
        if status == 503:
            headers["Retry-After"] = str(error.retry_after or 5)
    if wanted:
        params.append(f'scope="{_quote(" ".join(wanted))}"')
    if status in (400, 401, 403):
        headers["WWW-Authenticate"] = "Bearer " + ", ".join(params)
    return current_app.response_class(
        json.dumps(body), status=status, headers=headers, mimetype="application/json"
    )


def unavailable_providers() -> frozenset[str]:
    """Providers whose expired token could not be refreshed in this request for a transient reason."""
    return cast("frozenset[str]", g.get(_G_TRANSIENT, frozenset()))


def require_providers(identity: Identity, providers: Iterable[str]) -> None:
    """Raise unless ``identity`` holds a token for every provider: 503 when a refresh failed
    transiently, else 401 ``invalid_token`` telling the client to re-authorize (SPEC §5 step 3)."""
    absent = [p for p in providers if p not in identity.upstream_tokens]
    if not absent:
        return
    transient = unavailable_providers()
    if any(p in transient for p in absent):
        raise TemporarilyUnavailable("An upstream provider is unavailable; try again shortly.")
    raise InvalidToken("Authorization with an upstream provider is needed again; re-authorize.")


def _enforce(scopes: tuple[str, ...], providers: tuple[str, ...]) -> None:
    identity: Identity | None = g.get("identity")
    if identity is None:
        _failed("no_token")
        raise _AuthenticationRequired(scopes=scopes)
    if scopes:
        missing = [s for s in scopes if s not in identity.scopes]
        if missing:
            _failed("insufficient_scope")
            raise InsufficientScope(scopes=missing)
    if providers:
        require_providers(identity, providers)


def _failed(reason: str) -> None:
    if signals.authentication_failed.receivers:
        signals.authentication_failed.send(
            current_app._get_current_object(),  # type: ignore[attr-defined]
            reason=reason,
            path=request.path,
        )


def _names(value: Iterable[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    return tuple(value)


def required(
    scopes: Iterable[str] | str | None = None, providers: Iterable[str] | str | None = None
) -> Callable[[F], F]:
    """Protect a view: 401 without a valid identity, 403 ``insufficient_scope`` naming only the
    missing scopes, 401 (re-authorize) when a named provider's token is absent, 503 when its refresh
    failed transiently. An OPTIONS request (CORS preflight) gets Flask's default OPTIONS response
    without calling the view, even when the route lists OPTIONS: the view never runs unauthenticated.

    >>> @app.post("/mcp")
    ... @auth.required(scopes=["tools"], providers=["github"])
    ... def mcp(): ...
    """
    wanted_scopes = _names(scopes)
    wanted_providers = _names(providers)

    def decorator(view: F) -> F:
        # ensure_sync only changes coroutine functions; deciding once keeps it off the hot path.
        is_async = inspect.iscoroutinefunction(view)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if request.method == "OPTIONS":
                return current_app.make_default_options_response()
            _enforce(wanted_scopes, wanted_providers)
            if is_async:
                return current_app.ensure_sync(view)(*args, **kwargs)
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorator


# --- the hook -----------------------------------------------------------------------------------------
def _bearer(header: str) -> str | None:
    """The token of an ``Authorization: Bearer`` header (scheme case-insensitive), ``None`` for other
    schemes."""
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return rest.strip()  # an empty token fails validation like any malformed one


def _path_matcher(paths: Iterable[str]) -> Callable[[str], bool] | None:
    """A test for ``MCP_AUTH_PROTECTED_PATHS`` that fails closed: each entry is a plain path prefix
    (SPEC §2), so ``/mcp`` covers ``/mcp``, ``/mcp/x`` and also ``/mcpx``; an entry with a trailing
    slash also covers the bare path (``/mcp/`` covers ``/mcp``), which a plain prefix would leave
    open. ``/`` covers every path. ``None`` when nothing is protected."""
    prefixes = tuple(sorted(set(paths)))
    if not prefixes:
        return None
    if "/" in prefixes:
        return lambda path: True
    bare = frozenset(p.rstrip("/") for p in prefixes if p.endswith("/"))
    return lambda path: path.startswith(prefixes) or path in bare


def install(app: Flask, runtime: Runtime) -> None:
    """Register the ``before_request`` hook and the RS error handlers on ``app``.

    Stores ``runtime.parts["verified_cache"]`` (the verified-token cache), and in Mode B
    ``runtime.parts["refresher"]`` (the upstream :class:`Refresher`).
    """
    settings = runtime.settings
    verify: Callable[[str], dict[str, Any]] = runtime.tokens.verify
    protected = _path_matcher(settings.protected_paths)
    runtime.parts["verified_cache"] = runtime.tokens.cache
    loader: _SessionLoader | None = None
    if settings.mode == "B":
        assert runtime.vault is not None

        def refreshed(sid: str, provider: str, subject: str | None) -> None:
            signals.upstream_token_refreshed.send(app, subject=subject, session_id=sid, provider=provider)

        refresher = Refresher(
            runtime.storage,
            runtime.vault,
            runtime.upstreams,
            ttl=settings.refresh_token_ttl,  # a bound: storage caps a refreshed row at its session's TTL
            lock_ttl=_refresh_lock_ttl(settings.upstream_timeout),
            failure_backoff=_REFRESH_FAILURE_BACKOFF,
            on_refreshed=refreshed,
        )
        runtime.parts["refresher"] = refresher
        loader = _SessionLoader(runtime, refresher)

    def authenticate(token: str) -> Identity:
        try:
            claims = verify(token)
            if loader is None:
                return _external_identity(token, claims)
            identity, transient = loader.load(token, claims)
        except InvalidToken as exc:
            _failed(exc.description.replace(" ", "_")[:40] or "invalid_token")
            raise
        except (StorageError, TemporarilyUnavailable) as exc:
            _failed("unavailable")
            logger.warning("identity unavailable for %s: %s", request.path, type(exc).__name__)
            raise TemporarilyUnavailable() from exc
        if transient:
            setattr(g, _G_TRANSIENT, transient)
        return identity

    def load_identity() -> Response | None:
        # Hot path: resolve the context-local proxies once.
        req = request._get_current_object()  # type: ignore[attr-defined]
        ctx_g = g._get_current_object()
        ctx_g.identity = None
        if req.blueprint == _AS_BLUEPRINT:
            return None  # the AS's endpoints authenticate clients themselves
        environ = req.environ
        header = environ.get("HTTP_AUTHORIZATION")
        if header:
            if len(header) > MAX_TOKEN_LENGTH + 16:
                _failed("malformed_token")
                raise InvalidToken("malformed token")
            token = _bearer(header)
            if token is not None:
                if (environ.get("CONTENT_TYPE") and req.mimetype == "application/x-www-form-urlencoded"
                        and "access_token" in req.form):
                    _failed("multiple_methods")
                    raise InvalidRequest("Send the access token in one place only: the Authorization header.")
                ctx_g.identity = authenticate(token)
        if protected is not None and protected(req.path):
            if req.method != "OPTIONS":
                _enforce((), ())
            elif req.url_rule is not None:
                # Preflight: Flask's default answer (Allow header; CORS extensions add theirs in
                # after_request) — never the view, which would run without an identity.
                return current_app.make_default_options_response()
        return None

    def render(error: OAuthError) -> Response:
        if request.blueprint == _AS_BLUEPRINT:  # RFC 6749 §5.2 body, no Bearer challenge
            headers = {"Cache-Control": "no-store"}
            if error.retry_after:
                headers["Retry-After"] = str(error.retry_after)
            return current_app.response_class(
                json.dumps(error.to_dict()), status=error.status_code, headers=headers,
                mimetype="application/json",
            )
        return challenge_response(runtime, error)

    app.before_request(load_identity)
    # An app that registered its own handler for one of these before init_app keeps it.
    existing = app.error_handler_spec.get(None, {}).get(None, {})
    for cls in (InvalidToken, InsufficientScope, InvalidRequest, TemporarilyUnavailable):
        if cls not in existing:
            app.register_error_handler(cls, render)
