"""Rude, realistic loopback identity providers for tests: :class:`FakeOIDC` and :class:`FakeGitHub`.

Each fake is a small Flask app served over real HTTP on 127.0.0.1 (``tests/support/servers``). The
socket is bound at construction, so ``.url`` is known before ``start()``; use it as a context manager::

    with FakeOIDC(users=["alice", "bob"]) as idp, FakeGitHub(users=["carol"]) as gh:
        app.config["MCP_AUTH_UPSTREAMS"] = [
            idp.upstream_entry("corp", offline=True),     # offline_access + prompt=consent
            gh.upstream_entry("github"),
        ]
        browser = requests.Session()
        idp.login(browser, "bob")       # this browser is "bob" at idp (cookie); others stay default
        ...
        assert idp.code_exchanges == 1

Who is logged in (both fakes)
    ``/authorize`` never shows a login page: it picks the user from the browser's login cookie (set by
    ``GET /login?user=NAME`` — ``idp.login(session, NAME)`` does that for a ``requests.Session``; the
    cookie name is unique per fake, so fakes on the same host do not collide) or else ``idp.current_user``
    (``idp.login_as(NAME)``; default: the first user). ``error_on_authorize = "access_denied"`` makes
    it redirect back with ``error=…&state=…`` instead.

Users
    ``users`` is a list of names or a ``{name: claims}`` dict. OIDC claims default to
    ``sub="sub-NAME-<idp id>"``, ``name=NAME.title()``, ``email=NAME@example.com``; GitHub users get
    ``id`` (a distinct **int**), ``login=NAME``, ``name=NAME.title()``, ``email=None``.
    ``idp.users[NAME]`` is a live dict: change a claim (e.g. ``sub``) and later tokens carry it.

FakeOIDC (OpenID Connect Core + Discovery, RFC 6749, RFC 7636, RFC 9207)
    ``/.well-known/openid-configuration`` (``issuer`` = ``.url`` exactly unless ``issuer_override``),
    ``/jwks``, ``/authorize``, ``/token``, ``/userinfo``, ``/login``.

    * ``/authorize`` checks ``response_type=code``, ``client_id``, ``redirect_uri`` (against
      ``redirect_uris`` when set, else any absolute URL), **requires** ``code_challenge`` with
      ``code_challenge_method=S256``; bad client/redirect ⇒ 400 HTML page, other errors ⇒ redirect with
      ``error``. Redirects back with ``code``, ``state`` and ``iss`` (``send_iss``).
    * ``/token``: client auth ``client_secret_basic`` or ``client_secret_post`` (``auth_methods``);
      ``authorization_code`` (single-use codes, same redirect_uri, PKCE S256 verified) and
      ``refresh_token``. Refresh tokens are issued **only** when the authorize request had
      ``offline_access`` in ``scope`` **and** ``prompt=consent``. Refresh rotates (``rotate_refresh``):
      the used refresh token dies and reusing it gives ``invalid_grant``; with ``rotate_refresh=False``
      the response has no ``refresh_token`` and the old one stays valid. A refresh answers a new
      id_token (``id_token_on_refresh``) with the user's *current* claims and no nonce.
    * id_tokens: signed with the current key (``kid`` in the header), ``iss``, ``aud=client_id``,
      ``sub``, ``iat``, ``exp``, ``nonce`` (when sent), ``at_hash`` (hash sized for the alg), ``name``,
      ``email``. The key is RS256 unless ``signing_alg=`` (any of :data:`SIGNING_ALGS`: RS*/PS* on
      RSA 2048, ES256/384/512 on P-256/384/521, EdDSA on Ed25519) or ``key=JwsKey(alg)`` says
      otherwise; discovery advertises the current and published keys' algs in
      ``id_token_signing_alg_values_supported`` (or exactly ``advertised_algs`` when set), and the
      JWKS publishes each key's ``kty``/``crv``/``kid``/``use`` and ``alg`` (not with
      ``jwks_with_alg=False``).
      ``id_token_overrides`` merges claims into every id_token (``REMOVE`` deletes one), and
      ``id_token_signer`` picks the signature: ``"current"`` (default), ``"foreign"`` (unpublished key,
      unknown kid), ``"foreign_same_kid"`` (unpublished key, the published kid: bad signature),
      ``"none"`` (``alg: none``), ``"hs256_secret"`` / ``"hs256_pubkey"`` (HMAC with the client secret /
      the public key PEM), ``"hs256_pubkey_raw"`` (HMAC with the bare public key bytes),
      ``"no_kid"`` (current key, no kid header), ``"random_kid"`` (a fresh random kid each time — for
      unknown-kid floods), ``"tampered"`` (a valid token with one signature bit flipped),
      ``"wrong_key_type"`` (the header says the current alg and kid, the signature is by a fresh key
      of another type: RSA for EC/OKP, P-256 for RSA). ``id_token_claims(user, …)`` gives the claims
      unsigned, and ``JwsKey.sign(claims, kid=…, header_alg=…)`` signs with any label.
    * ``rotate_keys(keep_old=False, alg=None)`` makes a new signing key (new kid; same alg unless
      ``alg``); the JWKS publishes it (and the old one with ``keep_old``). ``published`` is the list
      of published keys, ``jwks_extra`` adds raw JWK dicts after them (e.g. an unparseable one).
    * ``/userinfo``: ``Authorization: Bearer`` with an unexpired access token ⇒ the user's claims.

FakeGitHub (GitHub's OAuth App web flow, as it really behaves)
    ``/login/oauth/authorize``, ``/login/oauth/access_token``, ``/user``, ``/login``.

    * ``access_token`` answers **form-encoded unless** ``Accept: application/json`` (or always
      form-encoded with ``ignore_accept=True``); errors are **HTTP 200** with ``error=…`` in the body
      (``bad_verification_code``, ``incorrect_client_credentials``, ``redirect_uri_mismatch``);
      ``token_type=bearer``; **no refresh token, no expires_in**. Client auth: form (what GitHub
      documents) or Basic. PKCE S256 is checked when the authorize request carried a challenge
      (``require_pkce=True`` makes it mandatory).
    * ``/user`` accepts ``Authorization: Bearer X`` or ``token X`` and answers
      ``{"id": 12345, "login": …, "name": …, "email": null}``; 401 ``{"message": "Bad credentials"}``.

Failure knobs (both fakes, token endpoint)
    ``token_failure`` = one of :data:`TOKEN_FAILURES` (``None`` = behave), applied to the next
    ``token_failure_times`` calls (``None`` = every call) of the grants in ``token_failure_grants``
    (default both), or randomly with probability ``token_failure_rate`` (seeded by ``seed``). The code
    or refresh token is consumed first, as a real provider would. ``"timeout"`` sleeps ``slow_seconds``
    (released early by ``stop()``) and then answers normally. ``discovery_failure`` /
    ``jwks_failure`` = ``"500"`` / ``"html"`` / ``"garbage"`` / ``"timeout"`` break those documents.

Counters (thread-safe ints): ``authorize_calls``, ``token_calls`` (every POST to the token endpoint),
``code_exchanges`` (authorization_code grant requests), ``refresh_calls`` (refresh_token grant
requests), ``userinfo_calls``, ``jwks_calls``, ``discovery_calls``; ``reset_counters()``.

``upstream_entry(name, client_secret=..., **overrides)`` returns a dict ready for
``MCP_AUTH_UPSTREAMS``. ``allow_redirect(uri)`` restricts redirect URIs (by default any absolute URL
is accepted, since the AS's port is often unknown when the fake is built).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import random
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask import Flask, Response, redirect, request

from tests.support.servers import ServerThread

__all__ = ["REMOVE", "SIGNING_ALGS", "TOKEN_FAILURES", "FakeGitHub", "FakeOIDC", "JwsKey", "RsaKey"]

#: Values of ``token_failure``.
TOKEN_FAILURES = (
    "http_500_html",       # 500 with an HTML error page
    "http_503",            # 503, empty body
    "http_200_html",       # 200 with an HTML page (a login wall)
    "http_200_error",      # 200 with {"error": "bad_verification_code"} (GitHub style) and no token
    "http_400_invalid_grant",  # 400 {"error": "invalid_grant"}
    "garbage",             # 200, application/json, not JSON
    "huge",                # 200, a valid token response padded to ~5 MB
    "token_type_mac",      # token_type "mac"
    "expires_in_negative",  # expires_in -5
    "expires_in_string",   # expires_in "abc"
    "no_access_token",     # 200 JSON without access_token
    "timeout",             # sleep slow_seconds, then answer normally
)

#: Put as a value in ``id_token_overrides`` to delete that claim.
REMOVE = object()

_ids = itertools.count(1)
_HTML_ERROR = "<!DOCTYPE html><html><head><title>Error</title></head><body><h1>Something went wrong" \
              "</h1><p>Our engineers have been notified.</p></body></html>"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


#: JWS algorithms the fake can sign id_tokens with (RFC 7518 §3.1, RFC 8037 §3.1).
SIGNING_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_EC_CURVES: Mapping[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1,
}


def _kty(alg: str) -> str:
    if alg in _EC_CURVES:
        return "EC"
    if alg == "EdDSA":
        return "OKP"
    if alg in SIGNING_ALGS:
        return "RSA"
    raise ValueError(f"unsupported signing alg {alg!r}")


class JwsKey:
    """A signing key for one JWS ``alg`` (RSA 2048 for RS*/PS*, P-256/384/521 for ES*, Ed25519 for
    EdDSA) with a kid, its public JWK and public key bytes."""

    def __init__(self, alg: str = "RS256", kid: str | None = None) -> None:
        self.alg = alg
        self.kty = _kty(alg)
        self.kid = kid or f"k-{secrets.token_hex(6)}"
        self.private: Any
        if self.kty == "RSA":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif self.kty == "EC":
            self.private = ec.generate_private_key(_EC_CURVES[alg]())
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
        public = self.private.public_key()
        self.public_pem: bytes = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        #: the bare public key bytes (EC: the uncompressed point, OKP: the 32 raw bytes, RSA: DER)
        self.public_raw: bytes
        if self.kty == "EC":
            self.public_raw = public.public_bytes(serialization.Encoding.X962,
                                                  serialization.PublicFormat.UncompressedPoint)
        elif self.kty == "OKP":
            self.public_raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            self.public_raw = public.public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)

    def jwk(self, *, with_alg: bool = True) -> dict[str, Any]:
        """The public JWK (``kty``, ``crv`` for EC/OKP, ``kid``, ``use``; ``alg`` unless ``with_alg=False``)."""
        data: dict[str, Any] = dict(jwt.get_algorithm_by_name(self.alg).to_jwk(self.private.public_key(),
                                                                                as_dict=True))
        data.update(kid=self.kid, use="sig")
        if with_alg:
            data["alg"] = self.alg
        return data

    def sign(self, claims: Mapping[str, Any], *, kid: str | bool | None = True,
             header_alg: str | None = None) -> str:
        """A JWS signed by this key with its own ``alg``; ``header_alg`` puts another ``alg`` in the header
        (the signature stays this key's: a key-type/alg confusion token)."""
        headers: dict[str, Any] = {}
        if kid is True:
            headers["kid"] = self.kid
        elif isinstance(kid, str):
            headers["kid"] = kid
        if header_alg is None or header_alg == self.alg:
            return jwt.encode(dict(claims), self.private, algorithm=self.alg, headers=headers)
        # hand-made: PyJWT signs with whatever the header's alg says, and this must not match the key
        header = {"alg": header_alg, "typ": "JWT", **headers}
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(dict(claims)).encode())
        algorithm = jwt.get_algorithm_by_name(self.alg)
        sig = algorithm.sign(signing_input.encode(), algorithm.prepare_key(self.private))
        return signing_input + "." + _b64url(sig)


class RsaKey(JwsKey):
    """An RSA signing key (RS256 unless ``alg`` says another RS*/PS*): the original fake key."""

    def __init__(self, kid: str | None = None, alg: str = "RS256") -> None:
        if _kty(alg) != "RSA":
            raise ValueError(f"RsaKey cannot sign {alg}")
        super().__init__(alg, kid)


def _hs256(claims: Mapping[str, Any], secret: bytes, kid: str | None) -> str:
    # hand-made: PyJWT refuses HMAC keys that look like PEM, and this test needs exactly that (ID-03)
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(dict(claims)).encode())
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64url(sig)


def _at_hash(access_token: str, alg: str = "RS256") -> str:
    # OIDC Core §3.1.3.6: the hash of the alg's JWS hash size; EdDSA (Ed25519) uses SHA-512
    hasher = hashlib.sha512 if alg == "EdDSA" else getattr(hashlib, f"sha{alg[-3:]}")
    digest = hasher(access_token.encode()).digest()
    return _b64url(digest[: len(digest) // 2])


class _Counters:
    NAMES = ("authorize_calls", "token_calls", "code_exchanges", "refresh_calls", "userinfo_calls",
             "jwks_calls", "discovery_calls")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def incr(self, name: str) -> None:
        with self._lock:
            self._values[name] += 1

    def get(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def reset(self) -> None:
        with self._lock:
            self._values = dict.fromkeys(self.NAMES, 0)


class _FakeBase:
    """Shared machinery: server thread, login cookie, codes, failure knobs, counters."""

    kind = "idp"

    def __init__(self, users: Iterable[str] | Mapping[str, Mapping[str, Any]], *, client_id: str,
                 client_secret: str | None, slow_seconds: float, seed: int | None) -> None:
        self.id = next(_ids)
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris: set[str] | None = None
        self.users: dict[str, dict[str, Any]] = {}
        names = list(users)
        for name in names:
            given = dict(users[name]) if isinstance(users, Mapping) else {}
            self.users[name] = {**self._default_claims(name), **given}
        self.current_user: str | None = names[0] if names else None
        self.cookie_name = f"fake_{self.kind}_{self.id}_user"
        self.error_on_authorize: str | None = None
        self.token_failure: str | None = None
        self.token_failure_times: int | None = None
        self.token_failure_rate: float = 0.0
        self.token_failure_grants: set[str] = {"authorization_code", "refresh_token"}
        self.slow_seconds = slow_seconds
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._counters = _Counters()
        self._codes: dict[str, dict[str, Any]] = {}
        self._access: dict[str, dict[str, Any]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.app = Flask(f"fake-{self.kind}-{self.id}")
        self.app.add_url_rule("/login", "login", self._login_view)
        self._routes()
        self._server = ServerThread(self.app)
        self.url = self._server.url
        self.port = self._server.port

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> _FakeBase:
        self._server.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop serving (releases sleeping "timeout" handlers); also closes a never-started fake."""
        self._stopping.set()
        if getattr(self, "_started", False):
            self._started = False
            self._server.stop()
        else:
            self._server.server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls ----------------------------------------------------------------------
    def login_as(self, user: str | None) -> None:
        """Default user for browsers without a login cookie (``None``: authorize answers 401)."""
        if user is not None and user not in self.users:
            raise KeyError(user)
        self.current_user = user

    def login(self, session: requests.Session, user: str) -> None:
        """Log ``session`` (a browser) in as ``user`` at this fake (sets its login cookie)."""
        resp = session.get(f"{self.url}/login", params={"user": user}, timeout=10)
        resp.raise_for_status()

    def allow_redirect(self, *uris: str) -> None:
        self.redirect_uris = set(self.redirect_uris or ()) | set(uris)

    def reset_counters(self) -> None:
        self._counters.reset()
        with self._lock:
            self.token_requests.clear()

    def __getattr__(self, name: str) -> int:
        if name in _Counters.NAMES:
            return self._counters.get(name)
        raise AttributeError(name)

    # -- shared views -----------------------------------------------------------------------
    def _routes(self) -> None:
        raise NotImplementedError

    def _default_claims(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def _login_view(self) -> Response:
        user = request.args.get("user", "")
        if user not in self.users:
            return Response("no such user", status=404, mimetype="text/plain")
        resp = Response(f"logged in as {user}", mimetype="text/plain")
        resp.set_cookie(self.cookie_name, user, httponly=True, samesite="Lax")
        return resp

    def _user_for_request(self) -> str | None:
        cookie = request.cookies.get(self.cookie_name)
        if cookie in self.users:
            return cookie
        return self.current_user

    def _redirect_ok(self, uri: str) -> bool:
        if self.redirect_uris is not None:
            return uri in self.redirect_uris
        parts = urlsplit(uri)
        return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.fragment

    def _html_error(self, message: str, status: int = 400) -> Response:
        return Response(f"<html><body><h1>Error</h1><p>{message}</p></body></html>", status=status,
                        mimetype="text/html")

    def _redirect_back(self, redirect_uri: str, params: Mapping[str, str]) -> Response:
        sep = "&" if urlsplit(redirect_uri).query else "?"
        return redirect(redirect_uri + sep + urlencode(params), code=302)  # type: ignore[return-value]

    def _new_code(self, record: dict[str, Any]) -> str:
        code = secrets.token_urlsafe(24)
        record["expires"] = time.time() + 600
        with self._lock:
            self._codes[code] = record
        return code

    def _take_code(self, code: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._codes.pop(code, None)
        if record is None or record["expires"] < time.time():
            return None
        return record

    def _pkce_ok(self, record: Mapping[str, Any], verifier: str | None) -> bool:
        challenge = record.get("code_challenge")
        if not challenge:
            return True
        return bool(verifier) and hmac.compare_digest(create_s256_code_challenge(verifier), challenge)

    def _client_credentials(self) -> tuple[str | None, str | None, str]:
        """(client_id, secret, method) from Basic auth or the form."""
        auth = request.authorization
        if auth is not None and auth.type == "basic":
            from urllib.parse import unquote_plus

            return (unquote_plus(auth.username or ""), unquote_plus(auth.password or ""),
                    "client_secret_basic")
        form = request.form
        if "client_secret" in form:
            return form.get("client_id"), form.get("client_secret"), "client_secret_post"
        return form.get("client_id"), None, "none"

    def _record_token_request(self) -> None:
        entry = {k: str(v) for k, v in request.form.items()}
        entry["_auth"] = self._client_credentials()[2]
        with self._lock:
            self.token_requests.append(entry)

    def _should_fail(self, grant: str) -> str | None:
        if self.token_failure is None or grant not in self.token_failure_grants:
            return None
        with self._lock:
            if self.token_failure_rate:
                return self.token_failure if self._random.random() < self.token_failure_rate else None
            if self.token_failure_times is not None:
                if self.token_failure_times <= 0:
                    return None
                self.token_failure_times -= 1
            return self.token_failure

    def _failure_response(self, mode: str, good: Mapping[str, Any]) -> Response | None:
        """The rude answer for ``mode``; ``None`` for "timeout" (after sleeping)."""
        def as_json(body: Any, status: int = 200) -> Response:
            return Response(json.dumps(body), status=status, mimetype="application/json")

        if mode == "http_500_html":
            return Response(_HTML_ERROR, status=500, mimetype="text/html")
        if mode == "http_503":
            return Response("", status=503)
        if mode == "http_200_html":
            return Response(_HTML_ERROR, status=200, mimetype="text/html")
        if mode == "http_200_error":
            return as_json({"error": "bad_verification_code",
                            "error_description": "The code passed is incorrect or expired.",
                            "error_uri": "https://docs.github.com/apps/troubleshooting"})
        if mode == "http_400_invalid_grant":
            return as_json({"error": "invalid_grant"}, 400)
        if mode == "garbage":
            return Response('{"access_token": "at-garbage", "token_ty', status=200,
                            mimetype="application/json")
        if mode == "huge":
            return as_json({**good, "padding": "x" * (5 * 1024 * 1024)})
        if mode == "token_type_mac":
            return as_json({**good, "token_type": "mac"})
        if mode == "expires_in_negative":
            return as_json({**good, "expires_in": -5})
        if mode == "expires_in_string":
            return as_json({**good, "expires_in": "abc"})
        if mode == "no_access_token":
            return as_json({k: v for k, v in good.items() if k != "access_token"})
        if mode == "timeout":
            self._stopping.wait(self.slow_seconds)
            return None
        raise ValueError(f"unknown token_failure {mode!r}")

    def _token_error(self, error: str, status: int = 400) -> Response:
        return Response(json.dumps({"error": error}), status=status, mimetype="application/json",
                        headers={"Cache-Control": "no-store"})

    def _doc_failure(self, mode: str | None) -> Response | None:
        if mode is None:
            return None
        if mode == "500":
            return Response(_HTML_ERROR, status=500, mimetype="text/html")
        if mode == "html":
            return Response(_HTML_ERROR, status=200, mimetype="text/html")
        if mode == "garbage":
            return Response("{nope", status=200, mimetype="application/json")
        if mode == "timeout":
            self._stopping.wait(self.slow_seconds)
            return None
        raise ValueError(f"unknown document failure {mode!r}")


class FakeOIDC(_FakeBase):
    """An OpenID Connect provider. See the module docstring for endpoints and knobs."""

    kind = "oidc"

    def __init__(self, users: Iterable[str] | Mapping[str, Mapping[str, Any]] = ("alice",), *,
                 client_id: str = "mcp-client", client_secret: str | None = "oidc-secret",
                 access_token_ttl: int = 3600, id_token_ttl: int = 300,
                 auth_methods: Iterable[str] = ("client_secret_basic", "client_secret_post"),
                 key: JwsKey | None = None, signing_alg: str | None = None, slow_seconds: float = 3.0,
                 seed: int | None = 0) -> None:
        if key is not None and signing_alg is not None and key.alg != signing_alg:
            raise ValueError(f"key signs {key.alg}, not {signing_alg}")
        self.access_token_ttl = access_token_ttl
        self.id_token_ttl = id_token_ttl
        self.auth_methods = set(auth_methods)
        self.keys: list[JwsKey] = [key or JwsKey(signing_alg or "RS256")]
        self.published: list[JwsKey] = list(self.keys)
        self.jwks_extra: list[dict[str, Any]] = []
        self.jwks_with_alg = True
        self.advertised_algs: list[str] | None = None
        self.id_token_overrides: dict[str, Any] = {}
        self.id_token_signer = "current"
        self.id_token_on_refresh = True
        self.rotate_refresh = True
        self.send_iss = True
        self.issuer_override: str | None = None
        self.discovery_failure: str | None = None
        self.jwks_failure: str | None = None
        self._refresh: dict[str, dict[str, Any]] = {}
        super().__init__(users, client_id=client_id, client_secret=client_secret,
                         slow_seconds=slow_seconds, seed=seed)

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def key(self) -> JwsKey:
        """The current signing key."""
        return self.keys[-1]

    @property
    def signing_alg(self) -> str:
        """The ``alg`` id_tokens are signed with (the current key's)."""
        return self.key.alg

    def rotate_keys(self, *, keep_old: bool = False, alg: str | None = None) -> JwsKey:
        """Sign with a new key (of ``alg``, default the current one's) from now on; publish it (and the old
        ones with ``keep_old``)."""
        new = JwsKey(alg or self.key.alg)
        with self._lock:
            self.keys.append(new)
            self.published = [*self.published, new] if keep_old else [new]
        return new

    def upstream_entry(self, name: str = "default", *, client_secret: str | None = None,
                       offline: bool = False, **overrides: Any) -> dict[str, Any]:
        """An ``MCP_AUTH_UPSTREAMS`` entry; ``offline=True`` asks for refresh tokens."""
        scopes = ["openid", "profile", "email"] + (["offline_access"] if offline else [])
        entry: dict[str, Any] = {
            "name": name,
            "type": "oidc",
            "issuer": self.issuer,
            "client_id": self.client_id,
            "client_secret": client_secret if client_secret is not None else self.client_secret,
            "scopes": scopes,
        }
        if offline:
            entry["authorize_params"] = {"prompt": "consent"}
        entry.update(overrides)
        return entry

    def _default_claims(self, name: str) -> dict[str, Any]:
        return {"sub": f"sub-{name}-{self.id}", "name": name.title(), "email": f"{name}@example.com",
                "preferred_username": name}

    def _routes(self) -> None:
        add = self.app.add_url_rule
        add("/.well-known/openid-configuration", "discovery", self._discovery)
        add("/jwks", "jwks", self._jwks)
        add("/authorize", "authorize", self._authorize)
        add("/token", "token", self._token, methods=["POST"])
        add("/userinfo", "userinfo", self._userinfo, methods=["GET", "POST"])

    # -- documents --------------------------------------------------------------------------
    def _discovery(self) -> Response:
        self._counters.incr("discovery_calls")
        failed = self._doc_failure(self.discovery_failure)
        if failed is not None:
            return failed
        doc = {
            "issuer": self.issuer_override or self.issuer,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "userinfo_endpoint": f"{self.url}/userinfo",
            "jwks_uri": f"{self.url}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": self._advertised_algs(),
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "token_endpoint_auth_methods_supported": sorted(self.auth_methods),
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "authorization_response_iss_parameter_supported": self.send_iss,
        }
        return Response(json.dumps(doc), mimetype="application/json")

    def _advertised_algs(self) -> list[str]:
        if self.advertised_algs is not None:
            return list(self.advertised_algs)
        with self._lock:
            algs = [self.key.alg] + [k.alg for k in self.published]
        return list(dict.fromkeys(algs))

    def _jwks(self) -> Response:
        self._counters.incr("jwks_calls")
        failed = self._doc_failure(self.jwks_failure)
        if failed is not None:
            return failed
        with self._lock:
            keys = [k.jwk(with_alg=self.jwks_with_alg) for k in self.published] + list(self.jwks_extra)
        return Response(json.dumps({"keys": keys}), mimetype="application/json")

    # -- authorize --------------------------------------------------------------------------
    def _authorize(self) -> Response:
        self._counters.incr("authorize_calls")
        args = request.args
        if args.get("client_id") != self.client_id:
            return self._html_error("unknown client")
        redirect_uri = args.get("redirect_uri", "")
        if not self._redirect_ok(redirect_uri):
            return self._html_error("redirect_uri not registered")
        state = args.get("state")
        back: dict[str, str] = {"state": state} if state is not None else {}
        if self.send_iss:
            back["iss"] = self.issuer

        def error(code: str) -> Response:
            return self._redirect_back(redirect_uri, {"error": code, **back})

        if args.get("response_type") != "code":
            return error("unsupported_response_type")
        if not args.get("code_challenge") or args.get("code_challenge_method") != "S256":
            return error("invalid_request")
        if self.error_on_authorize:
            return error(self.error_on_authorize)
        user = self._user_for_request()
        if user is None:
            return self._html_error("login required", 401)
        scopes = args.get("scope", "").split()
        prompts = args.get("prompt", "").split()
        code = self._new_code({
            "user": user,
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "code_challenge": args["code_challenge"],
            "nonce": args.get("nonce"),
            "scope": " ".join(scopes),
            "offline": "offline_access" in scopes and "consent" in prompts,
        })
        return self._redirect_back(redirect_uri, {"code": code, **back})

    # -- token ------------------------------------------------------------------------------
    def _authenticate_client(self) -> bool:
        client_id, secret, method = self._client_credentials()
        if client_id != self.client_id:
            return False
        if self.client_secret is None:
            return method == "none"
        return (method in self.auth_methods and secret is not None
                and hmac.compare_digest(secret.encode(), self.client_secret.encode()))

    def _token(self) -> Response:
        self._counters.incr("token_calls")
        self._record_token_request()
        grant = request.form.get("grant_type")
        if grant == "authorization_code":
            self._counters.incr("code_exchanges")
        elif grant == "refresh_token":
            self._counters.incr("refresh_calls")
        else:
            return self._token_error("unsupported_grant_type")
        if not self._authenticate_client():
            return self._token_error("invalid_client", 401)
        if grant == "authorization_code":
            record = self._take_code(request.form.get("code", ""))
            if (record is None or record["redirect_uri"] != request.form.get("redirect_uri")
                    or not self._pkce_ok(record, request.form.get("code_verifier"))):
                return self._token_error("invalid_grant")
            user, scope, nonce, offline = record["user"], record["scope"], record["nonce"], record["offline"]
        else:
            with self._lock:
                family = self._refresh.get(request.form.get("refresh_token", ""))
                if family is None or family["used"]:
                    return self._token_error("invalid_grant")
                if self.rotate_refresh:
                    family["used"] = True
            requested = request.form.get("scope")
            if requested and not set(requested.split()) <= set(family["scope"].split()):
                return self._token_error("invalid_scope")
            user, scope, nonce, offline = family["user"], requested or family["scope"], None, True
        body = self._issue(user, scope, nonce, offline and (grant == "authorization_code"
                                                            or self.rotate_refresh),
                           with_id_token="openid" in scope.split()
                           and (grant == "authorization_code" or self.id_token_on_refresh))
        mode = self._should_fail(grant)
        if mode is not None:
            failed = self._failure_response(mode, body)
            if failed is not None:
                return failed
        return Response(json.dumps(body), mimetype="application/json",
                        headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _issue(self, user: str, scope: str, nonce: str | None, refresh: bool, *,
               with_id_token: bool) -> dict[str, Any]:
        access = f"at-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._access[access] = {"user": user, "exp": time.time() + self.access_token_ttl}
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": self.access_token_ttl, "scope": scope}
        if refresh:
            rt = f"rt-{secrets.token_urlsafe(24)}"
            with self._lock:
                self._refresh[rt] = {"user": user, "scope": scope, "used": False}
            body["refresh_token"] = rt
        if with_id_token:
            body["id_token"] = self.make_id_token(user, nonce=nonce, access_token=access)
        return body

    def make_id_token(self, user: str, *, nonce: str | None = None, access_token: str | None = None,
                      overrides: Mapping[str, Any] | None = None, signer: str | None = None) -> str:
        """An id_token for ``user`` as ``/token`` would make it (knobs applied; handy in unit tests)."""
        claims = self.id_token_claims(user, nonce=nonce, access_token=access_token, overrides=overrides)
        signer = signer or self.id_token_signer
        key = self.key
        if signer == "current":
            return key.sign(claims)
        if signer == "no_kid":
            return key.sign(claims, kid=False)
        if signer == "random_kid":
            return key.sign(claims, kid=f"k-{secrets.token_hex(6)}")
        if signer == "foreign":
            return JwsKey(key.alg).sign(claims)
        if signer == "foreign_same_kid":
            return JwsKey(key.alg, kid=key.kid).sign(claims)
        if signer == "tampered":
            head, body, sig = key.sign(claims).split(".")
            raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
            raw[len(raw) // 3] ^= 0x01  # one bit, inside ECDSA's r / the RSA or Ed25519 signature
            return f"{head}.{body}.{_b64url(bytes(raw))}"
        if signer == "wrong_key_type":
            other = JwsKey("ES256" if key.kty == "RSA" else "RS256")
            return other.sign(claims, kid=key.kid, header_alg=key.alg)
        if signer == "none":
            return jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
        if signer == "hs256_secret":
            return _hs256(claims, (self.client_secret or "").encode(), key.kid)
        if signer == "hs256_pubkey":
            return _hs256(claims, key.public_pem, key.kid)
        if signer == "hs256_pubkey_raw":
            return _hs256(claims, key.public_raw, key.kid)
        raise ValueError(f"unknown id_token_signer {signer!r}")

    def id_token_claims(self, user: str, *, nonce: str | None = None, access_token: str | None = None,
                        overrides: Mapping[str, Any] | None = None, alg: str | None = None) -> dict[str, Any]:
        """The claims :meth:`make_id_token` signs (``at_hash`` hashed for ``alg``, default the current)."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": self.client_id, "iat": now,
                                  "exp": now + self.id_token_ttl, "auth_time": now}
        claims.update({k: v for k, v in self.users[user].items()})
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["at_hash"] = _at_hash(access_token, alg or self.key.alg)
        for name, value in {**self.id_token_overrides, **(overrides or {})}.items():
            if value is REMOVE:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    # -- userinfo ---------------------------------------------------------------------------
    def _userinfo(self) -> Response:
        self._counters.incr("userinfo_calls")
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        with self._lock:
            record = self._access.get(token) if scheme.lower() == "bearer" else None
        if record is None or record["exp"] < time.time():
            return Response("", status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return Response(json.dumps(self.users[record["user"]]), mimetype="application/json")


class FakeGitHub(_FakeBase):
    """GitHub's OAuth App flow, rude parts included. See the module docstring."""

    kind = "github"

    def __init__(self, users: Iterable[str] | Mapping[str, Mapping[str, Any]] = ("octocat",), *,
                 client_id: str = "gh-client", client_secret: str | None = "gh-secret",
                 require_pkce: bool = False, slow_seconds: float = 3.0, seed: int | None = 0) -> None:
        self.require_pkce = require_pkce
        self.ignore_accept = False
        self._next_user_id = itertools.count(12345)
        super().__init__(users, client_id=client_id, client_secret=client_secret,
                         slow_seconds=slow_seconds, seed=seed)

    @property
    def issuer(self) -> str:
        return self.url

    def upstream_entry(self, name: str = "github", *, client_secret: str | None = None,
                       **overrides: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": name,
            "type": "oauth2",
            "client_id": self.client_id,
            "client_secret": client_secret if client_secret is not None else self.client_secret,
            "token_endpoint_auth_method": "client_secret_post",
            "scopes": ["read:user"],
            "authorization_endpoint": f"{self.url}/login/oauth/authorize",
            "token_endpoint": f"{self.url}/login/oauth/access_token",
            "userinfo_endpoint": f"{self.url}/user",
            "userinfo_fields": {"subject": ["id"], "name": ["name", "login"], "email": ["email"]},
        }
        entry.update(overrides)
        return entry

    def _default_claims(self, name: str) -> dict[str, Any]:
        return {"id": next(self._next_user_id), "login": name, "name": name.title(), "email": None,
                "type": "User"}

    def _routes(self) -> None:
        add = self.app.add_url_rule
        add("/login/oauth/authorize", "authorize", self._authorize)
        add("/login/oauth/access_token", "token", self._token, methods=["POST"])
        add("/user", "user", self._user)

    def _authorize(self) -> Response:
        self._counters.incr("authorize_calls")
        args = request.args
        if args.get("client_id") != self.client_id:
            return self._html_error("Not Found", 404)
        redirect_uri = args.get("redirect_uri", "")
        if not self._redirect_ok(redirect_uri):
            return self._html_error("The redirect_uri MUST match the registered callback URL")
        back = {"state": args["state"]} if "state" in args else {}
        challenge = args.get("code_challenge")
        if (challenge and args.get("code_challenge_method", "plain") != "S256") or (
                self.require_pkce and not challenge):
            return self._redirect_back(redirect_uri, {"error": "invalid_request", **back})
        if self.error_on_authorize:
            return self._redirect_back(redirect_uri, {
                "error": self.error_on_authorize,
                "error_description": "The user has denied your application access.", **back})
        user = self._user_for_request()
        if user is None:
            return self._html_error("Sign in to GitHub", 401)
        code = self._new_code({"user": user, "redirect_uri": redirect_uri, "code_challenge": challenge,
                               "scope": args.get("scope", "")})
        return self._redirect_back(redirect_uri, {"code": code, **back})

    def _reply(self, body: Mapping[str, Any]) -> Response:
        wants_json = "application/json" in request.headers.get("Accept", "") and not self.ignore_accept
        if wants_json:
            return Response(json.dumps(body), mimetype="application/json")
        return Response(urlencode({k: v for k, v in body.items() if v is not None}),
                        content_type="application/x-www-form-urlencoded; charset=utf-8")

    def _token(self) -> Response:
        self._counters.incr("token_calls")
        self._record_token_request()
        form = request.form
        grant = form.get("grant_type", "authorization_code")
        if grant != "authorization_code":
            return self._reply({"error": "unsupported_grant_type"})
        self._counters.incr("code_exchanges")
        client_id, secret, _method = self._client_credentials()
        if client_id != self.client_id or (self.client_secret is not None and not (
                secret and hmac.compare_digest(secret.encode(), self.client_secret.encode()))):
            return self._reply({"error": "incorrect_client_credentials",
                                "error_description": "The client_id and/or client_secret passed are "
                                                     "incorrect."})
        record = self._take_code(form.get("code", ""))
        if record is None or not self._pkce_ok(record, form.get("code_verifier")):
            return self._reply({"error": "bad_verification_code",
                                "error_description": "The code passed is incorrect or expired."})
        if form.get("redirect_uri") and form["redirect_uri"] != record["redirect_uri"]:
            return self._reply({"error": "redirect_uri_mismatch"})
        access = f"gho_{secrets.token_urlsafe(27)}"
        with self._lock:
            self._access[access] = {"user": record["user"]}
        body = {"access_token": access, "scope": record["scope"].replace(" ", ","), "token_type": "bearer"}
        mode = self._should_fail("authorization_code")
        if mode is not None:
            failed = self._failure_response(mode, body)
            if failed is not None:
                return failed
        return self._reply(body)

    def _user(self) -> Response:
        self._counters.incr("userinfo_calls")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        with self._lock:
            record = self._access.get(token) if scheme.lower() in ("bearer", "token") else None
        if record is None:
            return Response(json.dumps({"message": "Bad credentials",
                                        "documentation_url": "https://docs.github.com/rest"}),
                            status=401, mimetype="application/json")
        return Response(json.dumps(self.users[record["user"]]), mimetype="application/json")
