"""OAuth clients: pre-registered and dynamically registered (RFC 7591), redirect-URI matching
(RFC 8252 §7.3) and client authentication at the token and revocation endpoints (RFC 6749 §2.3.1).

Pre-registered clients come from ``MCP_AUTH_CLIENTS``; dynamic ones are stored as ``("client", id)``
records with a 30-day sliding TTL and a cap (``MCP_AUTH_MAX_CLIENTS``) that evicts the oldest
never-used registrations first (SPEC §3.5). Client secrets are kept only as SHA-256 digests and
compared digest-to-digest with :func:`hmac.compare_digest`.

No Flask here: callers pass the parsed JSON body, the remote address and the credentials.

Why not Authlib's RFC 7591 ``ClientRegistrationEndpoint``: it validates with its own claims classes and
persists through a ``save_client`` hook, but we need the stricter rules of SPEC §3.5 and TESTPLAN 1.2
(private-use schemes, no private JWK members, UTF-8 and type checks on every field), a per-address rate
limit and a capped, evicting store with hashed secrets — so registration is written here, on Storage.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from ..config import Settings, is_loopback_host
from ..errors import (
    InvalidClient,
    InvalidClientMetadata,
    InvalidRedirectURI,
    InvalidRequest,
    OAuthError,
    TooManyRequests,
)
from ..storage import Storage
from . import digest, random_token

__all__ = [
    "CLIENT_TTL",
    "Client",
    "ClientRegistry",
    "client_credentials",
    "is_loopback_redirect",
]

#: Unused dynamic registrations expire after 30 days; every use slides the window (SPEC §3.5).
CLIENT_TTL = 30 * 86400
MAX_REDIRECT_URIS = 10
_MAX_URI_LENGTH = 2000
_MAX_TEXT_LENGTH = 500
_MAX_CLIENT_ID_LENGTH = 200
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})
_SECRET_METHODS = ("client_secret_basic", "client_secret_post")
_AUTH_METHODS = frozenset({"none", *_SECRET_METHODS})
# RFC 8252 §7.1: private-use schemes are reverse domain names (com.example.app); requiring a dot
# also rules out javascript:, data:, file:, vbscript:, about: and the like.
_PRIVATE_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+\-]*(\.[a-z0-9+\-]+)+$")
_CONTROL_RE = re.compile(r"[\x00-\x20\x7f\\]")
_PORT_RE = re.compile(r":[0-9]*$")
_URI_FIELDS = ("client_uri", "logo_uri", "policy_uri", "tos_uri", "jwks_uri")
_TEXT_FIELDS = ("client_name", "software_id", "software_version")
# JWK members that only private or symmetric keys have (RFC 7518 §6.2.2, §6.3.2, §6.4.1; RFC 8037).
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# Registered JWK members and their types (RFC 7517 §4, RFC 7518 §6.2.1/§6.3.1, RFC 8037 §2).
_JWK_ARRAY_MEMBERS = frozenset({"key_ops", "x5c"})
_JWK_STRING_MEMBERS = frozenset({"kty", "use", "alg", "kid", "x5u", "x5t", "x5t#S256", "n", "e", "crv",
                                 "x", "y"})
_MAX_JWKS_KEYS = 10


@dataclass(frozen=True)
class Client:
    """One OAuth client as the authorization server sees it.

    >>> client = registry.get("abc")
    >>> client.match_redirect_uri("http://127.0.0.1:53682/callback")
    True
    """

    client_id: str
    redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]
    client_name: str | None = None
    first_party: bool = False
    is_public: bool = True
    token_endpoint_auth_method: str = "none"
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    secret_hash: str | None = field(default=None, repr=False)
    dynamic: bool = False

    def match_redirect_uri(self, uri: str) -> bool:
        """Exact string match; loopback http redirect URIs match on any port (RFC 8252 §7.3)."""
        if uri in self.redirect_uris:
            return True
        candidate = _without_loopback_port(uri)
        if candidate is None:
            return False
        return any(_without_loopback_port(r) == candidate for r in self.redirect_uris)


def _without_loopback_port(uri: str) -> str | None:
    """``uri`` with its port removed when it is a loopback http URI, else ``None``.

    Only the port is dropped; scheme, host spelling, path and query are compared as written.
    """
    if not uri.startswith("http://") or "#" in uri:
        return None
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.hostname not in _LOOPBACK_HOSTS or "@" in parts.netloc:
        return None
    rest = uri[len("http://") + len(parts.netloc):]
    return "http://" + _PORT_RE.sub("", parts.netloc) + rest


def is_loopback_redirect(uri: str) -> bool:
    """``http`` redirect URI on a loopback host (RFC 8252 §7.3)."""
    return _without_loopback_port(uri) is not None


def _redirect_uri_problem(uri: Any, *, confidential: bool) -> str | None:
    """Why ``uri`` may not be registered, or ``None`` (SPEC §3.5; RFC 7591 §2; RFC 8252 §7)."""
    if not isinstance(uri, str) or not uri:
        return "not a string"
    if len(uri) > _MAX_URI_LENGTH:
        return "too long"
    if _CONTROL_RE.search(uri):
        return "contains spaces or control characters"
    if "#" in uri:
        return "has a fragment"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "is malformed"
    scheme = parts.scheme
    if scheme == "https":
        if not parts.hostname:
            return "has no host"
        if parts.username is not None or parts.password is not None:
            return "has user info"
        if confidential and is_loopback_host(parts.hostname):
            return "is loopback (confidential clients need a public https redirect URI)"
        return None
    if confidential:
        return "is not https (confidential clients need a public https redirect URI)"
    if scheme == "http":
        if parts.hostname not in _LOOPBACK_HOSTS or parts.username is not None or parts.password:
            return "is cleartext http on a non-loopback host"
        return None
    if uri[: len(scheme)] != scheme.lower() or not _PRIVATE_SCHEME_RE.match(scheme):
        return "uses a scheme that is neither https, loopback http nor a reverse-DNS private scheme"
    if not parts.path and not parts.netloc:
        return "has no path"
    return None


def _https_url_problem(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > _MAX_URI_LENGTH or _CONTROL_RE.search(value):
        return "must be an https URL"
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or "#" in value:
        return "must be an https URL"
    return None


def _check_jwks(jwks: Any) -> None:
    """Public keys only (RG-08): no private members, no symmetric ``oct`` keys. The registered JWK
    members have their RFC 7517 §4 / RFC 7518 §6 types (strings; ``key_ops`` and ``x5c`` arrays of
    strings); other members are kept as given (e.g. WebCrypto's boolean ``ext``)."""
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise InvalidClientMetadata("jwks must be a JWK Set object with a keys array.")
    if len(jwks["keys"]) > _MAX_JWKS_KEYS:
        raise InvalidClientMetadata(f"jwks may hold at most {_MAX_JWKS_KEYS} keys.")
    for key in jwks["keys"]:
        if not isinstance(key, Mapping) or key.get("kty") not in ("RSA", "EC", "OKP"):
            raise InvalidClientMetadata("jwks may only hold RSA, EC or OKP public keys.")
        if _PRIVATE_JWK_MEMBERS & set(key):
            raise InvalidClientMetadata("jwks must not contain private key material.")
        for name in _JWK_STRING_MEMBERS & set(key):
            if not isinstance(key[name], str):
                raise InvalidClientMetadata(f"jwks key member {name} must be a string.")
        for name in _JWK_ARRAY_MEMBERS & set(key):
            value = key[name]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidClientMetadata(f"jwks key member {name} must be an array of strings.")


def _not_utf8(value: Any) -> bool:
    """Whether any string in ``value`` (nested lists/objects, keys included) cannot be encoded as
    UTF-8 — a lone surrogate such as ``"\\udcff"``, which JSON escapes allow. Such a string would
    break every later render (the consent page) or storage write. Iterative: ``value`` may be deep.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _str_list(value: Any, name: str, error: type[OAuthError] = InvalidClientMetadata) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise error(f"{name} must be an array of strings.")
    return list(value)


def client_credentials(
    form: Mapping[str, str], authorization: str | None
) -> tuple[str, str | None, str]:
    """Read client credentials from a token/revocation request (RFC 6749 §2.3.1).

    Returns ``(client_id, secret, method)`` with method ``client_secret_basic``,
    ``client_secret_post`` or ``none``. Using two mechanisms at once is ``invalid_request``
    (RFC 6749 §2.3); a malformed or missing identification is ``invalid_client``.
    """
    basic: tuple[str, str] | None = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise InvalidClient("Unsupported client authentication scheme.")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise InvalidClient("Malformed Basic credentials.") from None
        if ":" not in decoded:
            raise InvalidClient("Malformed Basic credentials.")
        raw_id, _, raw_secret = decoded.partition(":")
        # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
        basic = (unquote_plus(raw_id), unquote_plus(raw_secret))
    body_id = form.get("client_id")
    body_secret = form.get("client_secret")
    if basic is not None:
        if body_secret is not None:
            raise InvalidRequest("Use one client authentication method, not several.")
        if body_id is not None and body_id != basic[0]:
            raise InvalidRequest("client_id does not match the authenticated client.")
        return basic[0], basic[1], "client_secret_basic"
    if not body_id:
        raise InvalidClient("Client identification is missing.")
    if body_secret is not None:
        return body_id, body_secret, "client_secret_post"
    return body_id, None, "none"


class ClientRegistry:
    """Look up, register and authenticate clients.

    >>> registry = ClientRegistry(storage, settings)
    >>> client, body = registry.register({"redirect_uris": ["http://127.0.0.1/cb"]}, "203.0.113.9")
    >>> registry.get(client.client_id) == client
    True
    """

    def __init__(self, storage: Storage, settings: Settings) -> None:
        self.storage = storage
        self.settings = settings
        self._static: dict[str, Client] = {}
        for cfg in settings.clients:
            secret_hash = digest(cfg.client_secret) if cfg.client_secret else None
            self._static[cfg.client_id] = Client(
                client_id=cfg.client_id,
                redirect_uris=tuple(cfg.redirect_uris),
                scopes=tuple(cfg.scopes) or tuple(settings.scopes_supported),
                client_name=cfg.client_name,
                first_party=cfg.first_party,
                is_public=secret_hash is None,
                token_endpoint_auth_method="client_secret_basic" if secret_hash else "none",
                secret_hash=secret_hash,
            )

    @property
    def has_confidential_clients(self) -> bool:
        """Whether secret-based client authentication can ever succeed (for metadata)."""
        return self.settings.confidential_registration or any(
            not c.is_public for c in self._static.values()
        )

    # -- lookup -----------------------------------------------------------------------------------
    def get(self, client_id: str) -> Client | None:
        """The client, pre-registered first, then dynamic; ``None`` when unknown or expired."""
        if not isinstance(client_id, str) or not client_id:
            return None
        static = self._static.get(client_id)
        if static is not None:
            return static
        if len(client_id) > _MAX_CLIENT_ID_LENGTH or not self.settings.dynamic_registration:
            return None
        record = self.storage.get("client", client_id)
        return _client_from_record(record) if record else None

    def touch(self, client: Client) -> None:
        """Mark a dynamic client used: no longer evictable, and its 30-day TTL starts again."""
        if client.dynamic:
            self.storage.touch_client(client.client_id, CLIENT_TTL)

    # -- authentication -----------------------------------------------------------------------------
    def authenticate(self, client_id: str, secret: str | None) -> Client:
        """The client if ``secret`` is right (public clients: no secret); else :class:`InvalidClient`.

        Secrets are compared as SHA-256 digests with :func:`hmac.compare_digest`, so neither the
        stored value nor the comparison time reveals the secret (SH-06).
        """
        client = self.get(client_id)
        if client is None:
            raise InvalidClient("Unknown client.")
        if client.is_public:
            if secret:
                raise InvalidClient("This client is public and has no secret.")
            return client
        if secret is None or client.secret_hash is None:
            raise InvalidClient("Client authentication is required.")
        if not hmac.compare_digest(digest(secret).encode(), client.secret_hash.encode()):
            raise InvalidClient("Client authentication failed.")
        return client

    def authenticate_request(self, form: Mapping[str, str], authorization: str | None) -> Client:
        """Authenticate the client of a token or revocation request."""
        client_id, secret, method = client_credentials(form, authorization)
        client = self.authenticate(client_id, secret)
        if not client.is_public and method == "none":
            raise InvalidClient("Client authentication is required.")
        return client

    # -- registration (RFC 7591) ----------------------------------------------------------------------
    def register(self, metadata: Mapping[str, Any], remote_addr: str) -> tuple[Client, dict[str, Any]]:
        """Validate ``metadata``, store a new client and return it with the RFC 7591 §3.2.1 body.

        Nothing is stored when validation fails. Raises :class:`InvalidRedirectURI`,
        :class:`InvalidClientMetadata` or :class:`TooManyRequests`.
        """
        limit = self.settings.registration_rate_limit
        if limit > 0 and self.storage.incr("register_rate", remote_addr or "-", 60) > limit:
            raise TooManyRequests("Too many registrations from this address; try again later.",
                                  retry_after=60)
        record = self._validate(metadata)
        secret: str | None = None
        if record["token_endpoint_auth_method"] != "none":
            secret = random_token(32)
            record["secret_hash"] = digest(secret)
        client_id = random_token(24)
        record["client_id"] = client_id
        record["client_id_issued_at"] = int(time.time())
        self.storage.add_client(client_id, record, CLIENT_TTL, self.settings.max_clients)
        client = _client_from_record(record)
        body = {k: v for k, v in record.items() if k != "secret_hash"}
        if secret is not None:
            body["client_secret"] = secret  # returned once, stored only as a digest
            body["client_secret_expires_at"] = 0
        return client, body

    def _validate(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(metadata, Mapping):
            raise InvalidClientMetadata("The registration body must be a JSON object.")
        # Every field is type-checked before use: a list or object where a string belongs must be
        # invalid_client_metadata, never a TypeError (unhashable in a set lookup) and a 500.
        method = metadata.get("token_endpoint_auth_method", "none")
        if not isinstance(method, str) or method not in _AUTH_METHODS:
            raise InvalidClientMetadata("Unsupported token_endpoint_auth_method.")
        if method != "none" and not self.settings.confidential_registration:
            raise InvalidClientMetadata("Only public clients (token_endpoint_auth_method none) "
                                        "may register.")
        confidential = method != "none"

        uris = metadata.get("redirect_uris")
        if not uris:
            raise InvalidRedirectURI("redirect_uris is required.")
        uris = _str_list(uris, "redirect_uris", InvalidRedirectURI)
        if len(uris) > MAX_REDIRECT_URIS:
            raise InvalidRedirectURI(f"At most {MAX_REDIRECT_URIS} redirect_uris are allowed.")
        for uri in uris:
            problem = _redirect_uri_problem(uri, confidential=confidential)
            if problem:
                raise InvalidRedirectURI(f"A redirect URI {problem}.")

        grant_types = _str_list(metadata.get("grant_types", ["authorization_code"]), "grant_types")
        if not grant_types or not set(grant_types) <= _GRANT_TYPES:
            raise InvalidClientMetadata("Only authorization_code and refresh_token grants are allowed.")
        if "authorization_code" not in grant_types:
            raise InvalidClientMetadata("grant_types must include authorization_code.")
        response_types = _str_list(metadata.get("response_types", ["code"]), "response_types")
        if set(response_types) != {"code"}:
            raise InvalidClientMetadata("Only the code response type is allowed.")

        supported = tuple(self.settings.scopes_supported)
        scope = metadata.get("scope")
        if scope is None:
            scopes = list(supported)
        elif isinstance(scope, str):
            scopes = list(dict.fromkeys(scope.split()))
            if not set(scopes) <= set(supported):
                raise InvalidClientMetadata("scope contains an unsupported scope.")
        else:
            raise InvalidClientMetadata("scope must be a space-separated string.")

        record: dict[str, Any] = {
            "redirect_uris": uris,
            "grant_types": list(dict.fromkeys(grant_types)),
            "response_types": ["code"],
            "token_endpoint_auth_method": method,
            "scope": " ".join(scopes),
        }
        for name in _TEXT_FIELDS:
            value = metadata.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or len(value) > _MAX_TEXT_LENGTH:
                raise InvalidClientMetadata(f"{name} must be a short string.")
            record[name] = value
        # Stored and echoed only; never fetched server-side (no SSRF surface, RG-06).
        for name in _URI_FIELDS:
            value = metadata.get(name)
            if value is None:
                continue
            problem = _https_url_problem(value)
            if problem:
                raise InvalidClientMetadata(f"{name} {problem}.")
            record[name] = value
        if "contacts" in metadata:
            contacts = _str_list(metadata["contacts"], "contacts")
            if len(contacts) > 10 or any(len(c) > _MAX_TEXT_LENGTH for c in contacts):
                raise InvalidClientMetadata("contacts is too long.")
            record["contacts"] = contacts
        if "jwks" in metadata:
            if "jwks_uri" in metadata:
                raise InvalidClientMetadata("Use jwks or jwks_uri, not both.")
            _check_jwks(metadata["jwks"])
            record["jwks"] = {"keys": metadata["jwks"]["keys"]}  # other set members: not ours to keep
        for name, value in record.items():
            if _not_utf8(value):
                raise InvalidClientMetadata(f"{name} contains text that is not valid Unicode.")
        return record


def _client_from_record(record: Mapping[str, Any]) -> Client:
    method = str(record.get("token_endpoint_auth_method", "none"))
    return Client(
        client_id=str(record["client_id"]),
        redirect_uris=tuple(record.get("redirect_uris") or ()),
        scopes=tuple(str(record.get("scope") or "").split()),
        client_name=record.get("client_name"),
        first_party=False,
        is_public=method == "none",
        token_endpoint_auth_method=method,
        grant_types=tuple(record.get("grant_types") or ("authorization_code",)),
        secret_hash=record.get("secret_hash"),
        dynamic=True,
    )

