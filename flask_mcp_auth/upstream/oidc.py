"""OpenID Connect upstream client: discovery, id_token verification with a JWKS cache, refresh.

Implements the relying-party side of OpenID Connect Core 1.0 §3.1 (authorization code flow) on top of
:class:`~flask_mcp_auth.upstream.oauth2.OAuth2Client`:

* **Discovery** (OpenID Connect Discovery §4) runs when the client is built, i.e. at ``init_app``:
  ``{issuer}/.well-known/openid-configuration`` must answer and its ``issuer`` must equal the
  configured issuer **exactly** (§4.3, RFC 8414 §3.3); otherwise :class:`ConfigError` (V-05).
  Endpoints given in the upstream entry override discovered ones.
* **id_token verification** (Core §3.1.3.7): signature with a key from the provider's JWKS (alg
  allow-list = the discovered ``id_token_signing_alg_values_supported`` ∩ asymmetric algorithms, never
  ``none``/HMAC; the key type must fit the alg), ``iss`` exact, ``aud`` contains our ``client_id``
  (and ``azp`` equals it when there are several audiences or ``azp`` is present), ``exp``/``iat`` with
  :data:`LEEWAY` seconds of clock skew, the subject claim present, ``nonce`` present and equal, and
  ``at_hash`` (§3.1.3.8) when present.
* **JWKS cache** (:class:`JWKSCache`): fetched on first use; an unknown ``kid`` triggers a refetch at
  most once per ``jwks_cooldown`` seconds (30 by default, cf. TESTPLAN LD-04), so key rotation works
  and a flood of random ``kid``s costs one fetch per cooldown. A token without ``kid`` is tried against
  every key of the right type. Unparseable keys are skipped.
* **Refresh** (Core §12.2): a returned id_token must verify (no nonce is expected) and carry the same
  subject, else :class:`UpstreamRejected` (``subject_changed``).

Identity: subject from ``subject_claim`` (default ``sub``; numbers become strings), ``name`` from
``name``/``preferred_username``, ``email`` from ``email`` — or, when the upstream entry names a
``userinfo_endpoint``, from the UserInfo response (Core §5.3), whose ``sub`` must match the id_token's.

Why not Authlib's OIDC ``CodeIDToken`` validation: it runs on ``authlib.jose``, which is deprecated, and
gives no control over the JWKS refetch cooldown that TESTPLAN LD-04 asks for; the checks above use PyJWT
per key with an explicit algorithm allow-list instead. Authlib still builds the authorization URLs
(``prepare_grant_uri`` in :mod:`~flask_mcp_auth.upstream.oauth2`).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import requests

from .._encoding import b64url_encode
from ..config import UpstreamConfig, is_loopback_host
from ..errors import ConfigError
from ..storage import UpstreamToken
from .base import UpstreamIdentity, UpstreamUnavailable
from .oauth2 import MAX_BODY, OAuth2Client, _pick

__all__ = ["LEEWAY", "JWKSCache", "OIDCClient"]

#: Allowed clock skew for ``exp``/``iat`` (TESTPLAN ID-07: at most 5 minutes).
LEEWAY = 120.0
JWKS_COOLDOWN = 30.0

#: Asymmetric JWS algorithms we accept for id_tokens, with the key type each needs.
_ALG_KTY: Mapping[str, str] = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC",
    "EdDSA": "OKP",
}
#: RFC 7518 §3.4: each ECDSA algorithm is bound to one curve.
_EC_CURVE: Mapping[str, str] = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_AT_HASH: Mapping[str, Callable[[bytes], Any]] = {
    "256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512,
}


def _url_ok(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if not parts.netloc or parts.fragment:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname))


class JWKSCache:
    """A provider's JWKS with a refetch cooldown (unknown ``kid`` ⇒ at most one fetch per cooldown).

    ``fetch`` returns the parsed JWKS document and raises ``UpstreamUnavailable`` on failure. The lock
    is held across the fetch (one fetch per cooldown); ``OIDCClient._fetch`` bounds it by the upstream
    timeout in total (``_http.fetch``), so waiters are held at most that long.
    """

    def __init__(self, provider: str, fetch: Callable[[], Mapping[str, Any]], *,
                 cooldown: float = JWKS_COOLDOWN, clock: Callable[[], float] = time.monotonic) -> None:
        self._provider = provider
        self._fetch = fetch
        self._cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[dict[str, Any]] = []
        self._attempted_at: float | None = None
        self._loaded = False
        self.fetches = 0

    def keys_for(self, kid: str | None, alg: str, *, refetch: bool = False) -> list[Any]:
        """Public keys (crypto objects) that may have signed a token with this header.

        Unknown ``kid`` (or ``refetch=True``: no cached key verified a kid-less token) ⇒ one fetch if
        the cooldown allows; with ``refetch=True`` the answer is ``[]`` when no fetch happened.
        """
        seen = self.fetches
        if not refetch:
            keys = self._match(kid, alg)
            if keys:
                return keys
        with self._lock:
            if self.fetches != seen:  # another thread refetched meanwhile
                return self._match(kid, alg)
            if not refetch:
                keys = self._match(kid, alg)
                if keys:
                    return keys
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._cooldown:
                if not self._loaded:
                    # never loaded: an outage, not an unknown key; wait for the cooldown to retry
                    raise UpstreamUnavailable(self._provider, "jwks_unavailable")
                return []
            self._attempted_at = now
            self.fetches += 1
            doc = self._fetch()
            raw = doc.get("keys")
            self._keys = [k for k in raw if isinstance(k, dict)] if isinstance(raw, list) else []
            self._loaded = True
        return self._match(kid, alg)

    def _match(self, kid: str | None, alg: str) -> list[Any]:
        kty = _ALG_KTY[alg]
        found = []
        for data in self._keys:
            if data.get("kty") != kty or data.get("use", "sig") != "sig":
                continue
            if data.get("alg") not in (None, alg):
                continue
            if kty == "EC" and data.get("crv") != _EC_CURVE.get(alg):
                continue  # ``alg`` is optional in a JWK: a P-384 key must not be tried for ES256
            if kid is not None and data.get("kid") != kid:
                continue
            try:
                found.append(jwt.PyJWK(data, algorithm=alg).key)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue  # unparseable key (TESTPLAN ID-12): ignore it, others may still verify
        return found


class OIDCClient(OAuth2Client):
    """One OpenID Connect provider; discovery happens in the constructor.

    >>> client = OIDCClient(settings.upstream("corp"), http, verify=True, timeout=10)  # may raise
    >>> client.authorization_url(redirect_uri=cb, state=s, code_challenge=cc, nonce=n)  # ConfigError
    """

    def __init__(self, config: UpstreamConfig, http: requests.Session, *, verify: bool | str = True,
                 timeout: float = 10.0, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, jwks_cooldown: float = JWKS_COOLDOWN,
                 leeway: float = LEEWAY, max_body: int = MAX_BODY) -> None:
        super().__init__(config, http, verify=verify, timeout=timeout, clock=clock, max_body=max_body)
        self.issuer = str(config.issuer or "")
        self.leeway = leeway
        where = f"MCP_AUTH_UPSTREAMS[{config.name}]"
        try:
            self.metadata = self._discover()
        except UpstreamUnavailable as exc:
            raise ConfigError([("V-05", where, f"OpenID discovery at {self._discovery_url()} failed "
                                f"({exc.reason}); check the issuer URL and that the provider is "
                                "reachable from this host")]) from None
        meta = self.metadata
        self.authorization_endpoint = config.authorization_endpoint or meta.get("authorization_endpoint", "")
        self.token_endpoint = config.token_endpoint or meta.get("token_endpoint", "")
        self.jwks_uri = config.jwks_uri or meta.get("jwks_uri", "")
        self.userinfo_endpoint = config.userinfo_endpoint  # only when configured (see module docstring)
        problems = [
            ("V-05", where, f"discovery gives no usable {name} (need an https URL, or http on loopback)")
            for name, value in (("authorization_endpoint", self.authorization_endpoint),
                                ("token_endpoint", self.token_endpoint), ("jwks_uri", self.jwks_uri))
            if not _url_ok(value)
        ]
        advertised = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        self.algorithms = tuple(a for a in advertised if isinstance(a, str) and a in _ALG_KTY)
        if not self.algorithms:
            problems.append(("V-05", where, "the provider signs id_tokens with no asymmetric algorithm "
                             "we accept (RS*, PS*, ES*, EdDSA)"))
        if problems:
            raise ConfigError(problems)
        #: RFC 9207: the provider promises ``iss`` on its authorization responses
        self.iss_parameter_supported = meta.get("authorization_response_iss_parameter_supported") is True
        self.jwks = JWKSCache(self.name, self._fetch_jwks, cooldown=jwks_cooldown, clock=monotonic)

    # -- protocol -------------------------------------------------------------------------------
    def authorization_url(self, *, redirect_uri: str, state: str, code_challenge: str,
                          nonce: str | None) -> str:
        if not nonce:
            raise ValueError("an OpenID Connect leg needs a nonce")
        return self._grant_uri(redirect_uri=redirect_uri, state=state, code_challenge=code_challenge,
                               nonce=nonce)

    def check(self) -> None:
        """Fetch the discovery document again; a changed issuer is ``UpstreamRejected``."""
        try:
            self._discover()
        except ConfigError:
            raise self._rejected("discovery_issuer_mismatch") from None

    def verify_id_token(self, id_token: str, *, nonce: str | None, access_token: str | None = None,
                        require_nonce: bool = True) -> dict[str, Any]:
        """Verified claims of ``id_token`` or :class:`UpstreamRejected` with a reason code."""
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise self._rejected("id_token_malformed") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise self._rejected("id_token_alg")  # none, HS256 (ID-02, ID-03) or unadvertised
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise self._rejected("id_token_malformed")
        keys = self.jwks.keys_for(kid, alg)
        if not keys:
            raise self._rejected("id_token_unknown_key")
        claims = self._decode(id_token, alg, keys)
        if claims is None and kid is None:
            # no kid and no cached key fits: the provider may have rotated (ID-10/ID-11)
            claims = self._decode(id_token, alg, self.jwks.keys_for(None, alg, refetch=True))
        if claims is None:
            raise self._rejected("id_token_signature")
        if claims.get("iss") != self.issuer:  # exact, whatever PyJWT's container semantics
            raise self._rejected("id_token_issuer")
        aud = claims["aud"]
        azp = claims.get("azp")
        several = isinstance(aud, list) and len(aud) > 1
        if (several or azp is not None) and azp != self.config.client_id:
            raise self._rejected("id_token_azp")
        if _pick(claims, (self.config.subject_claim,)) is None:
            raise self._rejected("id_token_missing_claim")
        if require_nonce or nonce is not None:
            got = claims.get("nonce")
            if not nonce or not isinstance(got, str) or not hmac.compare_digest(got, nonce):
                raise self._rejected("id_token_nonce")
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token is not None:
            hasher = hashlib.sha512 if alg == "EdDSA" else _AT_HASH[alg[-3:]]
            digest = hasher(access_token.encode()).digest()
            expected = b64url_encode(digest[: len(digest) // 2])
            if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash, expected):
                raise self._rejected("id_token_at_hash")
        return claims

    def _decode(self, id_token: str, alg: str, keys: list[Any]) -> dict[str, Any] | None:
        """Claims verified with the first key whose signature matches; ``None`` if none does."""
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    id_token, key=key, algorithms=[alg], audience=self.config.client_id,
                    issuer=self.issuer, leeway=self.leeway,
                    options={"require": ["iss", "aud", "exp", "iat", "sub"]},
                )
                return claims
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue  # not this key: try the next candidate (ID-10)
            except jwt.ExpiredSignatureError:
                raise self._rejected("id_token_expired") from None
            except jwt.ImmatureSignatureError:
                raise self._rejected("id_token_not_yet_valid") from None
            except jwt.InvalidAudienceError:
                raise self._rejected("id_token_audience") from None
            except jwt.InvalidIssuerError:
                raise self._rejected("id_token_issuer") from None
            except jwt.MissingRequiredClaimError:
                raise self._rejected("id_token_missing_claim") from None
            except jwt.PyJWTError:
                raise self._rejected("id_token_invalid") from None
        return None

    # -- hooks ----------------------------------------------------------------------------------
    def _leg_identity(self, body: Mapping[str, Any], fields: Mapping[str, Any],
                      nonce: str | None) -> UpstreamIdentity:
        id_token = fields["id_token"]
        if not id_token:
            raise self._rejected("missing_id_token")
        claims = self.verify_id_token(id_token, nonce=nonce, access_token=fields["access_token"])
        subject = _pick(claims, (self.config.subject_claim,))
        assert subject is not None  # checked by verify_id_token
        if self.userinfo_endpoint:
            data = self._userinfo(fields["access_token"])
            if _pick(data, ("sub",)) != _pick(claims, ("sub",)):  # Core §5.3.4: prevent substitution
                raise self._rejected("userinfo_subject_mismatch")
            return UpstreamIdentity(subject=subject, name=_pick(data, self._fields("name")),
                                    email=_pick(data, self._fields("email")), claims=claims)
        return UpstreamIdentity(subject=subject, name=_pick(claims, ("name", "preferred_username")),
                                email=_pick(claims, ("email",)), claims=claims)

    def _refreshed_id_token(self, body: Mapping[str, Any], fields: Mapping[str, Any],
                            old: UpstreamToken) -> str | None:
        id_token = fields["id_token"]
        if not id_token:
            return old.id_token
        claims = self.verify_id_token(id_token, nonce=None, access_token=fields["access_token"],
                                      require_nonce=False)
        if old.subject is not None and _pick(claims, (self.config.subject_claim,)) != old.subject:
            raise self._rejected("subject_changed")
        return str(id_token)

    # -- documents ------------------------------------------------------------------------------
    def _discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    def _document(self, url: str, what: str) -> dict[str, Any]:
        reply = self._fetch("GET", url, what=what, headers={"Accept": "application/json"})
        if reply.status != 200:
            raise self._unavailable(f"{what}_http_error")
        doc = reply.json_object()
        if doc is None:
            raise self._unavailable(f"{what}_unusable_response")
        return doc

    def _discover(self) -> dict[str, Any]:
        doc = self._document(self._discovery_url(), "discovery")
        found = doc.get("issuer")
        if found != self.issuer:
            shown = repr(found)[:200] if isinstance(found, str) else "no issuer"
            raise ConfigError([("V-05", f"MCP_AUTH_UPSTREAMS[{self.name}]",
                                f"discovery document issuer {shown} does not equal the configured "
                                f"issuer {self.issuer!r} exactly; fix 'issuer' (trailing slash? "
                                "tenant path?)")])
        return doc

    def _fetch_jwks(self) -> Mapping[str, Any]:
        return self._document(self.jwks_uri, "jwks")
