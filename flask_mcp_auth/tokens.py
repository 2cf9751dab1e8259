"""Our JWT access tokens (RFC 9068 profile, SPEC §3.6): minting and verification, plus the bounded
verified-token cache of SPEC §5 step 5. No Flask here.

Minting uses the current signing key; verification resolves keys locally by ``kid`` (Mode B) — no
HTTP. :func:`decode_jwt` is the one JWS/JWT validator used for both our tokens and (Mode A) an
external issuer's: length cap before any parsing, fixed algorithm allow-list per key type (never
``none`` or HMAC), unknown ``crit`` rejected, header ``jwk``/``jku``/``x5u``/``x5c`` never used (``kid`` is
only a lookup key), exact ``iss``, ``aud`` containing the audience, ``exp``/``nbf`` with ≤ 60 s leeway
(RFC 7515 §4.1, RFC 7519 §4.1, RFC 8725 §3).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Generic, TypeVar

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ._encoding import b64url_decode
from .errors import InvalidToken
from .keys import KeySet, PublicKey

__all__ = [
    "LEEWAY",
    "MAX_HEADER_LENGTH",
    "MAX_TOKEN_LENGTH",
    "BoundedCache",
    "TokenService",
    "VerifiedTokenCache",
    "algorithms_for_key",
    "decode_jwt",
    "token_digest",
]

LEEWAY = 60  # seconds of clock-skew tolerance for exp/nbf/iat (SPEC §5)
MAX_TOKEN_LENGTH = 8192  # bytes; longer bearer strings are refused before any parsing (RS-13)
#: base64url characters allowed in the JOSE header: ours is ~100; 4096 still fits an external
#: issuer's header carrying an ``x5c`` chain of two certificates (never used, but tolerated)
MAX_HEADER_LENGTH = 4096

# Compact JWS: three base64url segments. Checked with one regex because PyJWT 2.x validates the
# base64url alphabet character by character in Python (~35 µs per 700-byte token).
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

_ALGORITHMS = jwt.algorithms.get_default_algorithms()
_EC_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
#: RFC 9068 §2.1: our access tokens carry ``typ: at+jwt``.
_ACCESS_TOKEN_TYPES: frozenset[str | None] = frozenset({"at+jwt", "application/at+jwt"})

K = TypeVar("K")
V = TypeVar("V")


def algorithms_for_key(key: PublicKey) -> tuple[str, ...]:
    """The fixed allow-list of JWS algorithms for one public key type (never ``none``/HS*)."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGS if key.key_size >= 2048 else ()
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_CURVE_ALG.get(key.curve.name)
        return (alg,) if alg else ()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ("EdDSA",)
    return ()


def token_digest(token: str) -> bytes:
    """SHA-256 of the token string: the cache key (the token itself is never a key)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _b64json(segment: str, limit: int) -> Any:
    """Decode one base64url JSON segment of an untrusted token, or raise :class:`InvalidToken`.

    Any failure of the parse is "malformed": besides ``ValueError`` (bad JSON, bad UTF-8, huge
    integers) ``json.loads`` raises ``RecursionError`` on ~1000 nested ``[`` — 1.3 KB of bearer.
    """
    if len(segment) > limit:
        raise InvalidToken("malformed token")
    try:
        raw = b64url_decode(segment)
        return json.loads(raw)
    except Exception as exc:  # untrusted input: every parse failure is a 401, never a 500
        raise InvalidToken("malformed token") from exc


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def decode_jwt(
    token: str,
    resolve_key: Callable[[Mapping[str, Any]], tuple[PublicKey, Collection[str]]],
    *,
    issuer: str,
    audience: str,
    typ: Collection[str | None] | None,
    now: float | None = None,
    leeway: float = LEEWAY,
    require: Sequence[str] = ("exp", "iss", "aud", "sub"),
) -> dict[str, Any]:
    """Validate a compact JWS access token and return its claims, or raise :class:`InvalidToken`.

    ``resolve_key(header)`` returns the verification key and the algorithms allowed with it; it sees
    only ``kid``/``alg`` semantics (never ``jwk``/``jku``/``x5u``) and raises ``InvalidToken`` itself.
    ``typ`` is the set of accepted lower-cased ``typ`` values (``None`` in it: absent is fine; ``typ=None``:
    anything).
    Hand-written around PyJWT's algorithm objects for speed (see ``_COMPACT_JWS``).
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not _COMPACT_JWS.fullmatch(token):
        raise InvalidToken("malformed token")
    head_b64, payload_b64, sig_b64 = token.split(".")
    header = _b64json(head_b64, MAX_HEADER_LENGTH)
    if not isinstance(header, dict):
        raise InvalidToken("malformed token")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg == "none" or alg.upper().startswith("HS"):
        raise InvalidToken("unsupported algorithm")
    if "crit" in header:  # we implement no JWS extension, so every critical one is unknown (§4.1.11)
        raise InvalidToken("unsupported critical header")
    if typ is not None:
        found = header.get("typ")
        if (found.lower() if isinstance(found, str) else found) not in typ:
            raise InvalidToken("not an access token")
    key, allowed = resolve_key(header)
    if alg not in allowed or alg not in _ALGORITHMS:
        raise InvalidToken("unexpected algorithm")
    try:
        signature = b64url_decode(sig_b64)
        valid = _ALGORITHMS[alg].verify(f"{head_b64}.{payload_b64}".encode("ascii"), key, signature)
    except (ValueError, TypeError, binascii.Error):
        valid = False
    if not valid:
        raise InvalidToken("bad signature")
    claims = _b64json(payload_b64, MAX_TOKEN_LENGTH)
    if not isinstance(claims, dict):
        raise InvalidToken("malformed token")
    for name in require:
        if claims.get(name) in (None, ""):
            raise InvalidToken(f"missing claim {name}")
    if claims.get("iss") != issuer:  # exact match: no prefix/suffix/case variants
        raise InvalidToken("wrong issuer")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise InvalidToken("wrong audience")
    if "sub" in claims and not isinstance(claims["sub"], str):
        raise InvalidToken("malformed subject")
    t = time.time() if now is None else now
    exp = claims.get("exp")
    if exp is not None:
        if not _number(exp):
            raise InvalidToken("malformed exp")
        if t >= exp + leeway:
            raise InvalidToken("token expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not _number(nbf) or t < nbf - leeway):
        raise InvalidToken("token not yet valid")
    iat = claims.get("iat")
    if iat is not None and (not _number(iat) or iat > t + leeway):
        raise InvalidToken("token issued in the future")
    return claims


class BoundedCache(Generic[K, V]):
    """A thread-safe LRU map with a per-entry deadline (unix time) and a size bound.

    >>> cache = BoundedCache[str, int](max_entries=2)
    >>> cache.put("a", 1, until=time.time() + 60)
    >>> cache.get("a")
    1
    """

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, now: float | None = None) -> V | None:
        """The value while ``now < until`` (default ``clock()``); an entry past its deadline is dropped,
        never returned."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if (self.clock() if now is None else now) >= entry[0]:
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return entry[1]

    def put(self, key: K, value: V, until: float, now: float | None = None) -> None:
        if until <= (self.clock() if now is None else now) or self.max_entries <= 0:
            return
        with self._lock:
            self._data[key] = (until, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def discard(self, key: K) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class VerifiedTokenCache(BoundedCache[bytes, Mapping[str, Any]]):
    """Claims of verified access tokens keyed by :func:`token_digest`, kept until the token's ``exp``
    (never beyond) so repeated requests skip signature verification (SPEC §5 step 5). Expiry is
    enforced on every lookup; revocation is the caller's per-request session check (Mode B)."""

    def remember(self, token: str, claims: Mapping[str, Any], now: float | None = None) -> None:
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            self.put(token_digest(token), dict(claims), float(exp), now)

    def lookup(self, token: str, now: float | None = None) -> dict[str, Any] | None:
        claims = self.get(token_digest(token), now)
        return dict(claims) if claims is not None else None

    def verify(
        self,
        token: str,
        resolve_key: Callable[[Mapping[str, Any]], tuple[PublicKey, Collection[str]]],
        *,
        clock: Callable[[], float],
        issuer: str,
        audience: str,
        typ: Collection[str | None] | None,
        require: Sequence[str],
    ) -> dict[str, Any]:
        """Length cap, then this cache, then :func:`decode_jwt` (whose claims are remembered): the
        verification path shared by our tokens (Mode B) and an external issuer's (Mode A)."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed token")
        now = clock()
        cached = self.lookup(token, now)
        if cached is not None:
            return cached
        claims = decode_jwt(
            token, resolve_key, issuer=issuer, audience=audience, typ=typ, now=now, require=require
        )
        self.remember(token, claims, now)
        return claims


class TokenService:
    """Mint and verify this AS's access tokens.

    >>> svc = TokenService(keyset, issuer="https://mcp.example.com", audience="https://mcp.example.com/mcp")
    >>> token, claims = svc.mint(subject="u1", client_id="c", audience=svc.audience, scopes=["openid"],
    ...                          session_id="sid", ttl=3600)
    >>> svc.verify(token)["sub"]
    'u1'
    """

    def __init__(
        self, keys: KeySet, *, issuer: str, audience: str, cache: VerifiedTokenCache | None = None
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.cache = cache if cache is not None else VerifiedTokenCache()
        #: wall clock for exp/nbf checks (tests move it)
        self.clock: Callable[[], float] = time.time
        self._allowed = {k.kid: (k.public_key, (k.alg,)) for k in keys.keys}

    def mint(
        self,
        *,
        subject: str,
        client_id: str,
        audience: str,
        scopes: Sequence[str],
        session_id: str,
        ttl: int,
        name: str | None = None,
        email: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": client_id,
            "scope": " ".join(scopes),
            "tsid": session_id,
        }
        if name:
            claims["name"] = name
        if email:
            claims["email"] = email
        if extra:
            claims.update(extra)
        key = self.keys.current
        token = jwt.encode(
            claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"}
        )
        return token, claims

    def _resolve(self, header: Mapping[str, Any]) -> tuple[PublicKey, Collection[str]]:
        kid = header.get("kid")
        found = self._allowed.get(kid) if isinstance(kid, str) else None
        if found is None:
            raise InvalidToken("unknown signing key")
        return found

    def verify(self, token: str) -> dict[str, Any]:
        """Verify signature (local key by ``kid``), ``typ``, ``iss``, ``aud``, ``exp``/``nbf``.

        Tokens verified before are answered from the cache until their ``exp``."""
        return self.cache.verify(
            token,
            self._resolve,
            clock=self.clock,
            issuer=self.issuer,
            audience=self.audience,
            typ=_ACCESS_TOKEN_TYPES,
            require=("exp", "iat", "iss", "aud", "sub"),
        )
