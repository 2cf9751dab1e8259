"""Configuration: defaults for every ``MCP_AUTH_*`` key, parsing into frozen settings, rules V-01…V-08.

``parse_settings(config)`` reads a mapping (normally ``app.config``), resolves secrets (file wins over
env, env over inline), runs every validation rule of SPEC §2.1 and either returns ``(Settings,
warnings)`` or raises one :class:`~flask_mcp_auth.errors.ConfigError` listing every problem found.
Request-time code reads :class:`Settings`, never ``app.config``.

Every problem is a ``(rule_id, config_key, message)`` tuple. A message names the bad value and the fix,
but never a secret: client secrets, header values, encryption and signing key material are not echoed,
and URLs are shown with their password and query values masked.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, urlsplit

from ._encoding import b64url_decode
from .errors import ConfigError, Problem

__all__ = [
    "DEFAULTS",
    "BackendConfig",
    "ClientConfig",
    "Settings",
    "UpstreamConfig",
    "apply_defaults",
    "is_loopback_host",
    "parse_settings",
]

PROVIDER_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
#: RFC 9110 §5.6.2 ``token``: the characters a header field name may use.
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

#: Authorize parameters an upstream entry may not override (they are ours to set per leg).
RESERVED_AUTHORIZE_PARAMS = frozenset(
    {
        "response_type",
        "client_id",
        "client_secret",
        "redirect_uri",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "code_verifier",
        "scope",
        "request",
        "request_uri",
        "response_mode",
    }
)

STRATEGIES = ("upstream_inject", "token_exchange", "header_injection", "unauthenticated")
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"

TTL_BOUNDS: Mapping[str, tuple[int, int]] = {
    "MCP_AUTH_ACCESS_TOKEN_TTL": (60, 86400),
    "MCP_AUTH_REFRESH_TOKEN_TTL": (3600, 2592000),
    "MCP_AUTH_CODE_TTL": (30, 600),
    "MCP_AUTH_PENDING_TTL": (60, 1800),
}

#: Every key with its default. ``None`` means "computed" (see ``docs/configuration.md``);
#: :func:`apply_defaults` fills the computed ones it can derive so ``app.config`` shows them.
DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "MCP_AUTH_ISSUER": None,
        "MCP_AUTH_RESOURCE": None,
        "MCP_AUTH_AUDIENCE": None,
        "MCP_AUTH_ALLOWED_AUDIENCES": None,
        "MCP_AUTH_JWKS_URI": None,
        "MCP_AUTH_UPSTREAMS": [],
        "MCP_AUTH_BACKENDS": {},
        "MCP_AUTH_PROTECTED_PATHS": [],
        "MCP_AUTH_SCOPES_SUPPORTED": ["openid", "profile", "email", "offline_access"],
        "MCP_AUTH_SIGNING_KEYS": [],
        "MCP_AUTH_ENCRYPTION_KEYS": [],
        "MCP_AUTH_STORAGE": "memory://",
        "MCP_AUTH_STORAGE_PREFIX": None,
        "MCP_AUTH_ACCESS_TOKEN_TTL": 3600,
        "MCP_AUTH_REFRESH_TOKEN_TTL": 604800,
        "MCP_AUTH_CODE_TTL": 600,
        "MCP_AUTH_PENDING_TTL": 600,
        "MCP_AUTH_CONSENT": "once",
        "MCP_AUTH_CLIENTS": [],
        "MCP_AUTH_DYNAMIC_REGISTRATION": True,
        "MCP_AUTH_CONFIDENTIAL_REGISTRATION": False,
        "MCP_AUTH_UPSTREAM_TIMEOUT": 10,
        # Not in SPEC §2: TLS verification for every outgoing call (True, False or a CA bundle path).
        # Passed explicitly as ``verify=`` because REQUESTS_CA_BUNDLE would otherwise override it.
        "MCP_AUTH_TLS_VERIFY": True,
        # Not in SPEC §2: DCR abuse limits (SPEC §3.5 "rate-limited and capped").
        "MCP_AUTH_REGISTRATION_RATE_LIMIT": 20,  # registrations per remote address per minute
        "MCP_AUTH_MAX_CLIENTS": 10000,
    }
)

_SECRET_KEYS = ("client_secret", "client_secret_env", "client_secret_file")
_UPSTREAM_KEYS = frozenset(
    {
        "name",
        "type",
        "client_id",
        *_SECRET_KEYS,
        "scopes",
        "authorize_params",
        "token_endpoint_auth_method",
        "issuer",
        "subject_claim",
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "userinfo_fields",
        "jwks_uri",
    }
)
_BACKEND_KEYS: Mapping[str, frozenset[str]] = {
    "upstream_inject": frozenset({"provider"}),
    "token_exchange": frozenset(
        {
            "token_url",
            "client_id",
            *_SECRET_KEYS,
            "audience",
            "resource",
            "scopes",
            "subject_provider",
            "subject_token_type",
            "requested_token_type",
        }
    ),
    "header_injection": frozenset({"header", "value", "value_env"}),
    "unauthenticated": frozenset(),
}
_CLIENT_KEYS = frozenset(
    {"client_id", "redirect_uris", *_SECRET_KEYS, "scopes", "first_party", "client_name"}
)
_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
#: What each credential-carrying strategy puts on the outgoing request (for the plain-http warning).
_CREDENTIAL_NOUN: Mapping[str, str] = {
    "upstream_inject": "upstream access token",
    "token_exchange": "exchanged access token",
    "header_injection": "header value",
}
#: Redirect URI schemes that can run code or read local files in a browser: never a redirect target.
_BAD_REDIRECT_SCHEMES = frozenset({"javascript", "data", "file", "vbscript", "about", "blob"})


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream identity provider (SPEC §4.1)."""

    name: str
    type: Literal["oidc", "oauth2"]
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ()
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    #: ``none`` when no secret is configured and no method was given (a public client with PKCE)
    token_endpoint_auth_method: str = "client_secret_basic"
    # OIDC (``issuer`` is also an optional field of plain OAuth2 entries: the RFC 9207 ``iss``)
    issuer: str | None = None
    subject_claim: str = "sub"
    # OAuth2 (for OIDC filled from discovery at startup)
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    userinfo_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    jwks_uri: str | None = None


@dataclass(frozen=True)
class BackendConfig:
    """One outgoing backend (SPEC §6). Fields unused by the strategy stay ``None``/empty."""

    name: str
    strategy: str
    url: str | None = None
    provider: str | None = None
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    audience: str | None = None
    resource: str | None = None
    scopes: tuple[str, ...] = ()
    subject_provider: str | None = None
    subject_token_type: str | None = None
    requested_token_type: str = TOKEN_TYPE_ACCESS
    header: str | None = None
    value: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ClientConfig:
    """A pre-registered client (``MCP_AUTH_CLIENTS``)."""

    client_id: str
    redirect_uris: tuple[str, ...]
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ()
    first_party: bool = False
    client_name: str | None = None


@dataclass(frozen=True)
class Settings:
    """Everything request-time code needs, parsed and validated once by ``init_app``."""

    issuer: str
    resource: str
    audience: str
    allowed_audiences: tuple[str, ...]
    jwks_uri: str | None
    upstreams: tuple[UpstreamConfig, ...]
    backends: Mapping[str, BackendConfig]
    protected_paths: tuple[str, ...]
    scopes_supported: tuple[str, ...]
    signing_keys: tuple[str, ...] = field(repr=False)  # PEM texts (validated); empty = generate one
    encryption_keys: tuple[bytes, ...] = field(repr=False)  # 32-byte AES keys, first encrypts
    storage: Any  # URL string or a Storage instance
    storage_prefix: str
    access_token_ttl: int
    refresh_token_ttl: int
    code_ttl: int
    pending_ttl: int
    consent: Literal["always", "once", "never"]
    clients: tuple[ClientConfig, ...]
    dynamic_registration: bool
    confidential_registration: bool
    upstream_timeout: float
    tls_verify: bool | str
    registration_rate_limit: int
    max_clients: int

    @property
    def mode(self) -> Literal["A", "B"]:
        return "B" if self.upstreams else "A"

    @property
    def provider_names(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.upstreams)

    @property
    def resource_metadata_path(self) -> str:
        """RFC 9728 §3.1 path-suffixed metadata path for ``resource`` (served by this app)."""
        path = urlsplit(self.resource).path.rstrip("/")
        return "/.well-known/oauth-protected-resource" + path

    @property
    def resource_metadata_url(self) -> str:
        """The absolute URL put in ``resource_metadata`` of every 401 challenge (SPEC §5.4)."""
        parts = urlsplit(self.resource)
        return f"{parts.scheme}://{parts.netloc}{self.resource_metadata_path}"

    @property
    def token_exchange_backends(self) -> tuple[BackendConfig, ...]:
        """Backends with ``strategy: token_exchange``, in configuration order."""
        return tuple(b for b in self.backends.values() if b.strategy == "token_exchange")

    def upstream(self, name: str) -> UpstreamConfig:
        for up in self.upstreams:
            if up.name == name:
                return up
        raise KeyError(name)


def _default_storage_prefix(issuer: Any) -> str:
    """SPEC §2's ``mcp-auth:{<issuer host>}:`` for an issuer on its scheme's default port with no path;
    otherwise ``mcp-auth:{<host>:<port>:<8 hex of sha256(issuer)>}:``.

    For example ``https://mcp.example.com`` gives ``mcp-auth:{mcp.example.com}:`` and
    ``https://mcp.example.com:8443`` gives ``mcp-auth:{mcp.example.com:8443:af2dd403}:``.

    Host and port keep it readable; the hash of the full issuer keeps two issuers on one host (other
    port or path) apart, so two authorization servers on one Redis never share clients, codes, consent
    or the registration cap. The braces make the whole tag a Redis Cluster hash tag: every key of one
    app hashes to one slot, which the multi-key Lua scripts need.
    """
    try:
        parts = urlsplit(str(issuer or ""))
        host = parts.hostname
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme.lower())
    except ValueError:
        host = None
    if not host:
        return "mcp-auth:{default}:"
    if parts.port is None and not parts.path:
        return f"mcp-auth:{{{host}}}:"  # the canonical case keeps SPEC's documented default
    digest = hashlib.sha256(str(issuer).encode("utf-8")).hexdigest()[:8]
    return f"mcp-auth:{{{host}:{port}:{digest}}}:"


def _hash_tag(prefix: str) -> str | None:
    """The Redis Cluster hash tag of keys under ``prefix``, or ``None`` when there is none.

    Redis hashes only the part between the first ``{`` and the first ``}`` after it, and only when
    that part is non-empty (Redis Cluster spec, "Hash tags"); hand-written because redis-py exposes
    no helper for it.
    """
    start = prefix.find("{")
    if start < 0:
        return None
    end = prefix.find("}", start + 1)
    if end <= start + 1:
        return None
    return prefix[start + 1:end]


def apply_defaults(config: MutableMapping[str, Any]) -> None:
    """``setdefault`` every key so the effective configuration is visible in ``app.config``.

    Computed defaults that follow from other keys (audience, allowed audiences, storage prefix) are
    filled too when those keys are set; the rest stay ``None`` ("computed at startup").
    """
    for key, value in DEFAULTS.items():
        if isinstance(value, (list, dict)):
            value = type(value)(value)
        config.setdefault(key, value)
    resource = config.get("MCP_AUTH_RESOURCE")
    if isinstance(resource, str) and resource:
        if config.get("MCP_AUTH_AUDIENCE") is None:
            config["MCP_AUTH_AUDIENCE"] = resource
        if config.get("MCP_AUTH_ALLOWED_AUDIENCES") is None:
            config["MCP_AUTH_ALLOWED_AUDIENCES"] = [resource]
    issuer = config.get("MCP_AUTH_ISSUER")
    if isinstance(issuer, str) and issuer and config.get("MCP_AUTH_STORAGE_PREFIX") is None:
        config["MCP_AUTH_STORAGE_PREFIX"] = _default_storage_prefix(issuer)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# helpers


class _Collector:
    def __init__(self) -> None:
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, rule: str, key: str, message: str) -> None:
        self.errors.append((rule, key, message))

    def warn(self, rule: str, key: str, message: str) -> None:
        self.warnings.append((rule, key, message))


def _safe_url(url: Any) -> str:
    """``url`` for a message: password and query values masked (they may be credentials)."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    if parts.query and not query:
        query = "***"
    out = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else f"{netloc}{parts.path}"
    if query or text.endswith("?"):
        out += "?" + query
    if parts.fragment or "#" in text:
        out += "#" + ("***" if parts.fragment else "")
    return out


def _show(value: Any) -> str:
    """A short, non-secret rendering of a (non-secret) config value for a message."""
    if isinstance(value, str) and ("://" in value or "@" in value):
        value = _safe_url(value)
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _closest(name: str, names: Sequence[str], cutoff: float = 0.0) -> str:
    match = difflib.get_close_matches(name, list(names), n=1, cutoff=cutoff)
    return f"; did you mean {match[0]!r}?" if match else ""


def _str_tuple(value: Any, key: str | None = None, out: _Collector | None = None,
               rule: str = "V-05") -> tuple[str, ...]:
    """A list of strings, or a space-separated string (OAuth ``scope`` style)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if out is not None and key is not None:
        out.error(rule, key, f"{_show(value)} must be a list of strings (or one space-separated "
                  "string)")
    return ()


def _warn_unknown_keys(entry: Mapping[str, Any], known: frozenset[str], rule: str, where: str,
                       out: _Collector, context: str) -> None:
    # Typos (``subject_provder``) would otherwise be ignored silently and change behaviour.
    for name in sorted(str(k) for k in entry if k not in known):
        out.warn(rule, where, f"unknown key {name!r} is ignored {context}"
                 f"{_closest(name, sorted(known), cutoff=0.6)}")


def _resolve_secret(entry: Mapping[str, Any], key: str, out: _Collector, rule: str) -> str | None:
    """File wins over env, env over inline. A named env var that is unset is an error."""
    path = entry.get("client_secret_file")
    env = entry.get("client_secret_env")
    if path:
        try:
            with open(os.path.expanduser(str(path)), encoding="utf-8") as fh:
                value = fh.read().strip()
        except (OSError, TypeError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or "cannot be read"
            out.error(rule, key, f"client_secret_file {_show(path)} is unreadable ({reason}); "
                      "fix the path or its permissions")
            return None
        if not value:
            out.error(rule, key, f"client_secret_file {_show(path)} is empty; write the secret "
                      "into it")
            return None
        return value
    if env:
        env_value = os.environ.get(str(env))
        if env_value is None:
            out.error(rule, key, f"client_secret_env names {_show(env)}, which is not set; "
                      "export it or give client_secret_file")
            return None
        if not env_value.strip():
            out.error(rule, key, f"client_secret_env names {_show(env)}, which is empty; "
                      "export the secret in it")
            return None
        return env_value.strip()
    secret = entry.get("client_secret")
    if secret is None or secret == "":
        return None
    if not isinstance(secret, str):
        out.error(rule, key, "client_secret must be a string (value not shown)")
        return None
    return secret


def _url_problem(url: Any, *, allow_http_loopback: bool = True) -> str | None:
    """Why ``url`` is not an absolute https URL fit for configuration, or ``None``."""
    if not isinstance(url, str) or not url:
        return "must be a non-empty URL string"
    if url != url.strip() or any(ch.isspace() for ch in url):
        return "must not contain whitespace"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "is not a valid URL (bad host or port)"
    if parts.scheme.lower() not in ("https", "http") or not parts.hostname:
        return "must be an absolute http(s) URL"
    if parts.scheme.lower() == "http" and not (allow_http_loopback and is_loopback_host(parts.hostname)):
        return "must use https (http is allowed only for loopback hosts)"
    if parts.username is not None or parts.password is not None:
        return "must not contain userinfo (user:password@)"
    if parts.query or url.endswith("?"):
        return "must not contain a query"
    if parts.fragment or "#" in url:
        return "must not contain a fragment"
    return None


def _canonical_issuer_problem(url: Any) -> str | None:
    problem = _url_problem(url)
    if problem:
        return problem
    text = str(url)
    parts = urlsplit(text)
    if text.endswith("/"):
        return "must not end with a slash"
    scheme_host = text.split("://", 1)[0] + "://" + (parts.netloc.rsplit("@", 1)[-1])
    if scheme_host != scheme_host.lower():
        return "must have a lowercase scheme and host"
    if (parts.scheme, parts.port) in (("https", 443), ("http", 80)):
        return "must not spell out the default port"
    return None


def _canonical_suggestion(url: str) -> str:
    """Best guess at the canonical form of a rejected issuer, for the fix hint."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return "https://mcp.example.com"
    host = (parts.hostname or "mcp.example.com").lower()
    scheme = "http" if parts.scheme.lower() == "http" and is_loopback_host(host) else "https"
    if ":" in host:
        host = f"[{host}]"
    if port and (scheme, port) not in (("https", 443), ("http", 80)):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path.rstrip('/')}"


def _parse_ttl(config: Mapping[str, Any], key: str, out: _Collector) -> int:
    raw = config.get(key)
    if raw is None:
        raw = DEFAULTS[key]
    low, high = TTL_BOUNDS[key]
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = int(raw)
        if not isinstance(raw, str) and value != raw:
            raise ValueError
    except (TypeError, ValueError):
        out.error("V-05", key, f"{_show(raw)} is not a whole number of seconds; use {low}..{high}")
        return int(DEFAULTS[key])
    if not low <= value <= high:
        out.error("V-05", key, f"{value} is out of bounds; use {low}..{high} seconds")
    return value


def _parse_positive_int(config: Mapping[str, Any], key: str, out: _Collector) -> int:
    raw = config.get(key)
    if raw is None:
        raw = DEFAULTS[key]
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        out.error("V-05", key, f"{_show(raw)} must be a positive whole number (default "
                  f"{DEFAULTS[key]})")
        return int(DEFAULTS[key])
    return raw


def _parse_bool(config: Mapping[str, Any], key: str, out: _Collector) -> bool:
    raw = config.get(key)
    if raw is None:
        return bool(DEFAULTS[key])
    if not isinstance(raw, bool):
        # bool("false") is True: refuse strings so an env-sourced "false" cannot enable a feature.
        out.error("V-05", key, f"{_show(raw)} must be True or False")
        return bool(DEFAULTS[key])
    return raw


# ---------------------------------------------------------------------------------------------
# sections


def _declared_upstream_names(raw: Any) -> list[str]:
    """Names the upstream list declares, even for entries with other errors (so V-02 can match)."""
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        return []
    if len(raw) == 1 and isinstance(raw[0], Mapping) and raw[0].get("name") is None:
        return ["default"]
    return [e["name"] for e in raw if isinstance(e, Mapping) and isinstance(e.get("name"), str)]


def _parse_upstreams(raw: Any, out: _Collector) -> list[UpstreamConfig]:
    key = "MCP_AUTH_UPSTREAMS"
    if raw is None:
        return []
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        out.error("V-05", key, f"must be a list of upstream dicts, got {type(raw).__name__}")
        return []
    result: list[UpstreamConfig] = []
    seen: set[str] = set()
    several = len(raw) > 1
    for index, entry in enumerate(raw):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping):
            out.error("V-05", where, f"must be a dict, got {type(entry).__name__}")
            continue
        name = entry.get("name")
        if name is None:
            if several:
                out.error("V-05", where, "is unnamed; with several upstreams every entry needs a "
                          "'name' (lowercase letters, digits, inner hyphens)")
                continue
            name = "default"
        elif not isinstance(name, str) or not PROVIDER_NAME_RE.match(name):
            out.error("V-05", where, f"name {_show(name)} is invalid; use lowercase letters, digits "
                      "and inner hyphens, e.g. 'corp' or 'github-enterprise'")
            continue
        elif name == "default" and several:
            out.error("V-05", where, "name 'default' is reserved for a single unnamed upstream; "
                      "choose another name")
            continue
        if name in seen:
            out.error("V-05", where, f"duplicate upstream name {name!r}; names must be unique")
            continue
        seen.add(name)
        where = f"{key}[{name}]"
        _warn_unknown_keys(entry, _UPSTREAM_KEYS, "V-05", where, out, "in an upstream entry")
        utype = entry.get("type")
        if utype not in ("oidc", "oauth2"):
            what = "type is missing" if utype is None else f"unknown type {_show(utype)}"
            out.error("V-05", where, f"{what}; use 'oidc' (with discovery) or 'oauth2' (explicit "
                      "endpoints)")
            continue
        client_id = entry.get("client_id")
        if not client_id or not isinstance(client_id, str):
            out.error("V-05", where, "client_id is missing; set the client id registered at "
                      "the provider")
        secret = _resolve_secret(entry, where, out, "V-05")
        has_secret_source = any(entry.get(k) for k in _SECRET_KEYS)
        auth_method = entry.get("token_endpoint_auth_method")
        if auth_method is None:
            # No secret and no method: a public client with PKCE (SPEC §4.1), not Basic with "".
            auth_method = "client_secret_basic" if has_secret_source else "none"
        elif auth_method not in _AUTH_METHODS:
            out.error("V-05", where, f"token_endpoint_auth_method {_show(auth_method)} is "
                      f"unsupported; use {', '.join(_AUTH_METHODS)}")
        elif auth_method != "none" and not has_secret_source:
            out.error("V-05", where, f"token_endpoint_auth_method {auth_method!r} needs a secret; "
                      "give client_secret_file/client_secret_env/client_secret, or use 'none' "
                      "for a public client")
        params = entry.get("authorize_params") or {}
        if not isinstance(params, Mapping):
            out.error("V-05", where, f"authorize_params {_show(params)} must be a dict")
            params = {}
        reserved = sorted(str(p) for p in set(params) & RESERVED_AUTHORIZE_PARAMS)
        if reserved:
            out.error("V-05", where, f"authorize_params sets reserved parameter(s) {reserved}; "
                      "remove them (they are set per leg; scopes go in 'scopes')")
        fields: dict[str, tuple[str, ...]] = {}
        raw_fields = entry.get("userinfo_fields") or {}
        if not isinstance(raw_fields, Mapping):
            out.error("V-05", where, f"userinfo_fields {_show(raw_fields)} must be a dict like "
                      "{'subject': ['id'], 'name': ['name', 'login'], 'email': ['email']}")
            raw_fields = {}
        for fname, names in raw_fields.items():
            if fname not in ("subject", "name", "email"):
                out.error("V-05", where, f"userinfo_fields has unknown field {_show(fname)}; use "
                          "subject, name or email")
                continue
            fields[fname] = _str_tuple(names, f"{where}.userinfo_fields.{fname}", out)
        subject_claim = entry.get("subject_claim", "sub")
        if not isinstance(subject_claim, str) or not subject_claim:
            out.error("V-05", where, f"subject_claim {_show(subject_claim)} must be a claim name")
            subject_claim = "sub"
        common: dict[str, Any] = dict(
            name=name,
            type=utype,
            client_id=str(client_id or ""),
            client_secret=secret,
            scopes=_str_tuple(entry.get("scopes"), f"{where}.scopes", out),
            authorize_params=MappingProxyType({str(k): str(v) for k, v in params.items()}),
            token_endpoint_auth_method=str(auth_method),
            userinfo_fields=MappingProxyType(fields),
            subject_claim=subject_claim,
        )
        if utype == "oidc":
            issuer = entry.get("issuer")
            problem = _canonical_issuer_problem(issuer) if issuer else "is missing"
            if problem:
                out.error("V-05", where, f"issuer {_show(issuer)} {problem}; use the provider's "
                          "issuer exactly as its discovery document states it")
        else:
            # Optional for plain OAuth2: when set, a callback ``iss`` (RFC 9207) must equal it exactly.
            issuer = entry.get("issuer")
            if issuer is not None and _url_problem(issuer):
                out.error("V-05", where, f"issuer {_show(issuer)} {_url_problem(issuer)}; give the "
                          "issuer the provider sends as 'iss' in authorization responses, or remove it")
                issuer = None
            for ep in ("authorization_endpoint", "token_endpoint"):
                url = entry.get(ep)
                problem = _url_problem(url) if url else "is missing"
                if problem:
                    out.error("V-05", where, f"{ep} {_show(url)} {problem}; a plain OAuth2 upstream "
                              "needs authorization_endpoint and token_endpoint")
        for ep in ("userinfo_endpoint", "jwks_uri") + (
            ("authorization_endpoint", "token_endpoint") if utype == "oidc" else ()
        ):
            url = entry.get(ep)
            if url is not None and _url_problem(url):
                out.error("V-05", where, f"{ep} {_show(url)} {_url_problem(url)}")
        if fields and not entry.get("userinfo_endpoint") and utype == "oauth2":
            out.error("V-05", where, "userinfo_fields is set but userinfo_endpoint is missing; add "
                      "the endpoint or remove the fields")
        common.update(
            issuer=issuer,
            authorization_endpoint=entry.get("authorization_endpoint"),
            token_endpoint=entry.get("token_endpoint"),
            userinfo_endpoint=entry.get("userinfo_endpoint"),
            jwks_uri=entry.get("jwks_uri"),
        )
        result.append(UpstreamConfig(**common))
    return result


def _parse_backends(raw: Any, upstream_names: Sequence[str], mode_b: bool,
                    out: _Collector) -> dict[str, BackendConfig]:
    key = "MCP_AUTH_BACKENDS"
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        out.error("V-08", key, f"must be a dict of backend name -> backend dict, got "
                  f"{type(raw).__name__}")
        return {}
    result: dict[str, BackendConfig] = {}
    v03: list[str] = []
    for name, entry in raw.items():
        where = f"{key}[{name}]"
        if not isinstance(name, str) or not name.strip():
            out.error("V-08", where, f"backend name {_show(name)} must be a non-empty string")
            continue
        if not isinstance(entry, Mapping):
            out.error("V-08", where, f"must be a dict, got {type(entry).__name__}")
            continue
        strategy = entry.get("strategy")
        if strategy not in STRATEGIES:
            out.error("V-08", where, f"unknown strategy {_show(strategy)}; use one of "
                      f"{', '.join(STRATEGIES)}{_closest(str(strategy), STRATEGIES, cutoff=0.5)}")
            continue
        known = _BACKEND_KEYS[strategy] | {"strategy", "url"}
        _warn_unknown_keys(entry, known, "V-08", where, out, f"by strategy {strategy!r}")
        url = entry.get("url")
        if url is not None:
            try:
                parts = urlsplit(str(url))
                ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            except ValueError:
                ok, parts = False, urlsplit("")
            if not ok:
                out.error("V-08", where, f"url {_show(url)} is not an absolute http(s) URL; give the "
                          "base URL the adapter is mounted on, e.g. 'https://api.example.com/'")
            elif parts.username is not None or parts.password is not None:
                out.error("V-08", where, f"url {_show(url)} must not contain userinfo; credentials "
                          "come from the strategy")
            elif (parts.scheme == "http" and strategy in _CREDENTIAL_NOUN
                  and not is_loopback_host(parts.hostname)):
                # A warning, not an error: a plain-http backend on a trusted private network is a
                # deliberate (if unwise) choice, but it must never be silent.
                out.warn("V-08", where, f"url {_show(url)} uses http on a non-loopback host: the "
                         f"{_CREDENTIAL_NOUN[strategy]} that strategy {strategy!r} adds to every "
                         "call would go out in cleartext; use https (warning: startup continues)")
        fields: dict[str, Any] = dict(name=name, strategy=strategy, url=url)
        if strategy == "upstream_inject":
            provider = entry.get("provider")
            if not provider:
                out.error("V-06", where, "upstream_inject needs a non-empty 'provider' (the name of "
                          "the upstream whose token is injected)")
            elif not mode_b:
                out.error("V-01", where, f"upstream_inject of provider {_show(provider)} needs "
                          "upstreams, but MCP_AUTH_UPSTREAMS is empty (Mode A); configure the "
                          "upstream or change the strategy")
            elif provider not in upstream_names:
                out.error("V-02", where, f"provider {_show(provider)} is not an upstream name"
                          f"{_closest(str(provider), upstream_names)}")
            fields["provider"] = provider or None
        elif strategy == "token_exchange":
            token_url = entry.get("token_url")
            if not token_url:
                out.error("V-08", where, "token_exchange needs 'token_url' (the STS token endpoint, "
                          "e.g. 'https://sts.example.com/token')")
            elif _url_problem(token_url):
                out.error("V-08", where, f"token_url {_show(token_url)} {_url_problem(token_url)}")
            subject_provider = entry.get("subject_provider")
            if subject_provider:
                if not mode_b:
                    out.error("V-01", where, f"subject_provider {_show(subject_provider)} needs "
                              "upstreams, but MCP_AUTH_UPSTREAMS is empty (Mode A); remove "
                              "subject_provider to exchange the incoming token, or configure the "
                              "upstream")
                elif subject_provider not in upstream_names:
                    out.error("V-02", where, f"subject_provider {_show(subject_provider)} is not an "
                              f"upstream name{_closest(str(subject_provider), upstream_names)}")
            elif mode_b:
                v03.append(name)
            client_id = entry.get("client_id")
            secret = _resolve_secret(entry, where, out, "V-08")
            if client_id is not None and not isinstance(client_id, str):
                out.error("V-08", where, f"client_id {_show(client_id)} must be a string")
            if any(entry.get(k) for k in _SECRET_KEYS) and not client_id:
                out.error("V-08", where, "a client secret is configured but client_id is missing; "
                          "set the client id the STS knows this app by")
            subject_type = entry.get("subject_token_type")
            if subject_type is not None and (not isinstance(subject_type, str)
                                             or not subject_type.startswith("urn:")):
                out.error("V-08", where, f"subject_token_type {_show(subject_type)} must be a token "
                          f"type URN, e.g. {TOKEN_TYPE_ACCESS!r}")
            requested = entry.get("requested_token_type")
            if requested is not None and requested not in (TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT):
                # The result is sent as a Bearer token: only access-token types make sense.
                out.error("V-08", where, f"requested_token_type {_show(requested)} cannot be sent "
                          f"as a Bearer token; use {TOKEN_TYPE_ACCESS!r} or {TOKEN_TYPE_JWT!r}")
            fields.update(
                token_url=token_url,
                client_id=client_id,
                client_secret=secret,
                audience=entry.get("audience"),
                resource=entry.get("resource"),
                scopes=_str_tuple(entry.get("scopes"), f"{where}.scopes", out, "V-08"),
                subject_provider=subject_provider or None,
                subject_token_type=entry.get("subject_token_type"),
                requested_token_type=entry.get("requested_token_type") or TOKEN_TYPE_ACCESS,
            )
        elif strategy == "header_injection":
            header = entry.get("header")
            value = entry.get("value")
            value_env = entry.get("value_env")
            value_ok = True
            if value_env:
                value = os.environ.get(str(value_env))
                if value is None:
                    out.error("V-08", where, f"value_env names {_show(value_env)}, which is not "
                              "set; export it or give 'value'")
                    value_ok = False
            if not header or not isinstance(header, str) or not _HEADER_NAME_RE.match(header):
                out.error("V-08", where, f"header_injection needs 'header', a valid header name "
                          f"(got {_show(header)}), e.g. 'X-API-Key'")
            if value_ok and (not isinstance(value, str) or value == ""):
                out.error("V-08", where, "header_injection needs a non-empty string 'value' (or "
                          "'value_env' naming an environment variable)")
            elif value_ok and any(c in str(value) for c in "\r\n\0"):
                out.error("V-08", where, "the header value contains CR, LF or NUL (value not "
                          "shown); remove it")
            fields.update(header=header, value=value)
        result[name] = BackendConfig(**fields)
    if v03:
        names = ", ".join(repr(n) for n in v03)
        out.warn("V-03", key, f"token_exchange backend(s) {names} have no subject_provider: the "
                 "subject_token will be this AS's own JWT, so the STS must trust this issuer "
                 "(set subject_provider to exchange an upstream token instead)")
    return result


def _redirect_uri_problem(uri: str) -> str | None:
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "is not a valid URI"
    if not parts.scheme or "#" in uri:
        return "must be absolute and have no fragment"
    scheme = parts.scheme.lower()
    if scheme in _BAD_REDIRECT_SCHEMES:
        return f"uses the {scheme!r} scheme, which is never a redirect target"
    if scheme == "http" and not is_loopback_host(parts.hostname):
        return "uses http on a non-loopback host; use https (http only for 127.0.0.1/[::1]/localhost)"
    if scheme == "https" and not parts.hostname:
        return "has no host"
    return None


def _parse_clients(raw: Any, scopes_supported: tuple[str, ...], out: _Collector) -> list[ClientConfig]:
    key = "MCP_AUTH_CLIENTS"
    if raw is None:
        return []
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        out.error("V-05", key, f"must be a list of client dicts, got {type(raw).__name__}")
        return []
    result: list[ClientConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping) or not entry.get("client_id"):
            out.error("V-05", where, "each client needs a 'client_id'")
            continue
        cid = str(entry["client_id"])
        if cid in seen:
            out.error("V-05", where, f"duplicate client_id {cid!r}; client ids must be unique")
            continue
        seen.add(cid)
        where = f"{key}[{cid}]"
        _warn_unknown_keys(entry, _CLIENT_KEYS, "V-05", where, out, "in a client entry")
        uris = _str_tuple(entry.get("redirect_uris"), f"{where}.redirect_uris", out)
        if not uris:
            out.error("V-05", where, "redirect_uris is empty; list the exact redirect URIs")
        for uri in uris:
            problem = _redirect_uri_problem(uri)
            if problem:
                out.error("V-05", where, f"redirect URI {_show(uri)} {problem}")
        scopes = _str_tuple(entry.get("scopes"), f"{where}.scopes", out)
        unknown = [s for s in scopes if s not in scopes_supported]
        if unknown:
            out.error("V-05", where, f"scopes {unknown} are not in MCP_AUTH_SCOPES_SUPPORTED; add "
                      "them there or remove them")
        first_party = entry.get("first_party", False)
        if not isinstance(first_party, bool):
            out.error("V-05", where, f"first_party {_show(first_party)} must be True or False")
            first_party = False
        name = entry.get("client_name")
        result.append(
            ClientConfig(
                client_id=cid,
                redirect_uris=uris,
                client_secret=_resolve_secret(entry, where, out, "V-05"),
                scopes=scopes,
                first_party=first_party,
                client_name=str(name) if name is not None else None,
            )
        )
    return result


def _looks_like_path(text: str) -> bool:
    # Base64/hex key material never contains '.', and DER in base64 starts with 'M': a value that
    # is not a file is echoed only when it is shaped like a path, so key material stays unshown.
    return len(text) <= 512 and not any(c.isspace() for c in text) and (
        "." in text or text.startswith(("/", "~")))


def _signing_keys(raw: Any, out: _Collector) -> list[str]:
    """PEM strings or paths to PEM files; each is loaded once here to refuse bad keys at startup."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from .keys import load_signing_key  # validation only: Settings keeps the PEM text

    key = "MCP_AUTH_SIGNING_KEYS"
    if raw is None:
        return []
    if isinstance(raw, (str, bytes, os.PathLike)):
        raw = [raw]
    if not isinstance(raw, Sequence):
        out.error("V-05", key, f"must be a list of PEM strings or paths, got {type(raw).__name__}")
        return []
    pems: list[str] = []
    for index, item in enumerate(raw):
        where = f"{key}[{index}]"
        if isinstance(item, os.PathLike):
            item = os.fspath(item)
        if not isinstance(item, (str, bytes)):
            out.error("V-05", where, f"must be a PEM string or a path, got {type(item).__name__}")
            continue
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
        if "-----BEGIN" in text:
            pem, source = text, "the inline PEM"
        elif "\n" in text or len(text) > 1024:
            # Looks like key material without PEM armour: never echo it.
            out.error("V-05", where, "is neither PEM text (-----BEGIN …) nor a file path (value not "
                      "shown); give a PEM private key or the path of one")
            continue
        else:
            try:
                with open(os.path.expanduser(text), encoding="utf-8") as fh:
                    pem = fh.read()
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or "cannot be read"
                if _looks_like_path(text):
                    out.error("V-05", where, f"signing key file {text!r} is unreadable ({reason}); "
                              "fix the path or its permissions, or create one with `flask mcp-auth "
                              f"keygen --out {text}`")
                else:
                    out.error("V-05", where, "is neither PEM text (-----BEGIN …) nor a readable file "
                              "(value not shown: it may be key material); give a PEM private key or "
                              "the path of one")
                continue
            source = f"signing key file {text!r}"
        try:
            load_pem_private_key(pem.encode(), password=None)
        except TypeError:
            out.error("V-05", where, f"{source} is encrypted with a passphrase; store it "
                      "unencrypted (PKCS#8) in a file only the app can read (mode 0600)")
            continue
        except (ValueError, UnsupportedAlgorithm):
            out.error("V-05", where, f"{source} is not a PEM private key (public keys and "
                      "certificates cannot sign); generate one with `flask mcp-auth keygen`")
            continue
        try:
            load_signing_key(pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # load_signing_key's messages name sizes/curves only, never key material.
            out.error("V-05", where, f"{source} is unsupported: {exc}")
            continue
        pems.append(pem)
    return pems


def _encryption_keys(config: Mapping[str, Any], mode_b: bool, out: _Collector) -> tuple[bytes, ...]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = "MCP_AUTH_ENCRYPTION_KEYS"
    raw_list = config.get(key) or []
    if isinstance(raw_list, (str, bytes)):
        raw_list = [raw_list]
    if not isinstance(raw_list, Sequence):
        out.error("V-05", key, f"must be a list of keys, got {type(raw_list).__name__}")
        raw_list = []
    keys: list[bytes] = []
    for index, raw in enumerate(raw_list):
        value: bytes | None
        if isinstance(raw, bytes) and len(raw) == 32:
            value = raw
        elif isinstance(raw, (str, bytes)):
            try:
                text = raw.decode() if isinstance(raw, bytes) else raw
                value = b64url_decode(text)
            except (ValueError, UnicodeDecodeError):
                value = None
        else:
            value = None
        if value is None or len(value) != 32:
            out.error("V-05", f"{key}[{index}]", "must be 32 bytes, or their base64url text (value "
                      "not shown); generate one with: python -c 'import secrets;"
                      "print(secrets.token_urlsafe(32))'")
            continue
        keys.append(value)
    if keys or not mode_b:
        return tuple(keys)
    secret = config.get("SECRET_KEY")
    if not secret:
        out.error("V-05", key, "no encryption key available: set MCP_AUTH_ENCRYPTION_KEYS or "
                  "SECRET_KEY (the default key is derived from SECRET_KEY with HKDF)")
        return ()
    material = secret if isinstance(secret, bytes) else str(secret).encode()
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"flask_mcp_auth",
                   info=b"upstream-token-encryption-v1").derive(material)
    return (derived,)


def _storage(config: Mapping[str, Any], out: _Collector) -> Any:
    storage = config.get("MCP_AUTH_STORAGE")
    if storage is None or storage == "":  # not `or`: an empty MemoryStorage is falsy (__len__)
        storage = "memory://"
    if isinstance(storage, str):
        if not storage.startswith(("memory://", "redis://", "rediss://")):
            out.error("V-05", "MCP_AUTH_STORAGE", f"{_show(storage)} is not supported; use "
                      "memory://, redis://host:port/db, rediss://… or a Storage instance")
    elif not all(callable(getattr(storage, m, None)) for m in ("ping", "load_session", "take")):
        out.error("V-05", "MCP_AUTH_STORAGE", f"a {type(storage).__name__} is not a Storage; give a "
                  "URL string or an object implementing flask_mcp_auth.storage.Storage")
    return storage


def _tls_verify(config: Mapping[str, Any], mode_b: bool, out: _Collector) -> bool | str:
    raw = config.get("MCP_AUTH_TLS_VERIFY")
    if raw is None:
        return True
    if isinstance(raw, bool):
        if not raw:
            # Allowed (a test rig may need it) but never silently: it disarms every outgoing call.
            what = ("the upstream providers and STS, and read the codes, client secrets and tokens "
                    "sent to them" if mode_b else "the issuer's discovery and JWKS (the keys every "
                    "incoming token is verified with) and any STS, and so forge tokens this app "
                    "accepts")
            out.warn("V-05", "MCP_AUTH_TLS_VERIFY", f"is False: TLS certificates are not checked on "
                     f"any outgoing call, so a network attacker can impersonate {what}; use True or "
                     "the path of a CA bundle (warning: startup continues)")
        return raw
    if isinstance(raw, str) and raw and os.path.exists(raw):
        return raw
    out.error("V-05", "MCP_AUTH_TLS_VERIFY", f"{_show(raw)} must be True, False or the path of an "
              "existing CA bundle file or directory")
    return True


def _check_hash_tag(storage: Any, prefix: str, out: _Collector) -> None:
    """Warn when Redis keys would carry no Cluster hash tag (their slots would differ).

    Every multi-key Lua script needs all its keys in one slot, so on Redis Cluster an untagged
    prefix turns every storage call into a cross-slot error. Single-node Redis works either
    way, hence a warning, not an error.
    """
    if isinstance(storage, str):
        if not storage.startswith(("redis://", "rediss://")):
            return  # memory:// (or an unsupported URL, already an error)
        key, shown = "MCP_AUTH_STORAGE_PREFIX", prefix
    else:
        # A Storage instance was built with its own prefix (MCP_AUTH_STORAGE_PREFIX is not used).
        own = getattr(storage, "prefix", None)
        if not isinstance(own, str):
            return  # MemoryStorage, or a custom store whose key layout is unknown
        key, shown = "MCP_AUTH_STORAGE", own
    if _hash_tag(shown) is not None:
        return
    base = shown.replace("{", "").replace("}", "").rstrip(":")
    fix = f"{base}:{{mcp}}:" if base else "{mcp}:"
    where = "prefix" if key == "MCP_AUTH_STORAGE_PREFIX" else "the storage instance's prefix"
    out.warn("V-05", key, f"{where} {_show(shown)} has no Redis Cluster hash tag (a non-empty {{…}}): "
             "on Redis Cluster the keys of one session land in different slots and every storage "
             f"call fails (the multi-key scripts need one slot); use e.g. {fix!r} (warning: "
             "single-node Redis works)")


def _unknown_top_level(config: Mapping[str, Any], out: _Collector) -> None:
    try:
        names = [k for k in config if isinstance(k, str) and k.startswith("MCP_AUTH_")]
    except TypeError:  # a Mapping that cannot be iterated: nothing to check
        return
    for name in sorted(set(names) - set(DEFAULTS)):
        out.warn("V-05", name, f"unknown configuration key {name!r} is ignored"
                 f"{_closest(name, sorted(DEFAULTS), cutoff=0.6)}")


def _check_own_jwks_uri(issuer: str, jwks_uri: Any, out: _Collector) -> None:
    """Mode B: the RS verifies with local keys, so a JWKS URI may only name this AS's own JWKS."""
    own = f"{issuer}/.well-known/jwks.json"
    origin = urlsplit(issuer)
    try:
        parts = urlsplit(str(jwks_uri))
        same = (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc) and parts.path in (
            urlsplit(own).path, "/.well-known/jwks.json")
    except ValueError:
        same = False
    if not same:
        out.error("V-04", "MCP_AUTH_JWKS_URI", f"{_show(jwks_uri)} points away from this AS in "
                  f"Mode B; remove it (the RS verifies with the local keys published at {own})")


# ---------------------------------------------------------------------------------------------


def parse_settings(config: Mapping[str, Any]) -> tuple[Settings, list[Problem]]:
    """Parse and validate; return ``(settings, warnings)`` or raise ``ConfigError`` with all errors.

    >>> settings, warnings = parse_settings({"MCP_AUTH_ISSUER": "https://mcp.example.com",
    ...                                      "MCP_AUTH_RESOURCE": "https://mcp.example.com/mcp"})
    >>> settings.mode
    'A'
    """
    out = _Collector()
    get = config.get
    _unknown_top_level(config, out)

    issuer = get("MCP_AUTH_ISSUER")
    if not issuer:
        out.error("V-04", "MCP_AUTH_ISSUER", "is required; set the issuer URL, e.g. "
                  "'https://mcp.example.com'")
    else:
        problem = _canonical_issuer_problem(issuer)
        if problem:
            fix = _canonical_suggestion(issuer) if isinstance(issuer, str) else "https://mcp.example.com"
            out.error("V-04", "MCP_AUTH_ISSUER", f"{_show(issuer)} is not canonical: it {problem}; "
                      f"use e.g. {fix!r}")
    resource = get("MCP_AUTH_RESOURCE")
    if not resource:
        out.error("V-04", "MCP_AUTH_RESOURCE", "is required; set the canonical URL of the MCP "
                  "endpoint, e.g. 'https://mcp.example.com/mcp'")
    else:
        problem = _url_problem(resource)
        if problem:
            out.error("V-04", "MCP_AUTH_RESOURCE", f"{_show(resource)} {problem}; use the URL clients "
                      "call, e.g. 'https://mcp.example.com/mcp'")

    raw_up = get("MCP_AUTH_UPSTREAMS")
    upstreams = _parse_upstreams(raw_up, out)
    # Mode follows what was configured, not what parsed: one bad upstream must not turn V-02 into V-01.
    mode_b = bool(raw_up)
    declared = _declared_upstream_names(raw_up)
    backends = _parse_backends(get("MCP_AUTH_BACKENDS"), declared, mode_b, out)

    audience = get("MCP_AUTH_AUDIENCE") or resource or ""
    if not isinstance(audience, str):
        out.error("V-05", "MCP_AUTH_AUDIENCE", f"{_show(audience)} must be a string")
        audience = str(resource or "")
    allowed = _str_tuple(get("MCP_AUTH_ALLOWED_AUDIENCES"), "MCP_AUTH_ALLOWED_AUDIENCES", out)
    if not allowed and resource:
        allowed = (str(resource),)
    if mode_b and audience and audience not in allowed:
        out.error("V-07", "MCP_AUTH_AUDIENCE", f"{_show(audience)} is not in "
                  f"MCP_AUTH_ALLOWED_AUDIENCES {list(allowed)}: the AS could never mint a token the "
                  "RS accepts; add it to MCP_AUTH_ALLOWED_AUDIENCES or remove MCP_AUTH_AUDIENCE")

    jwks_uri = get("MCP_AUTH_JWKS_URI")
    if jwks_uri and mode_b:
        if not isinstance(issuer, str) or _canonical_issuer_problem(issuer):
            pass  # the issuer is already reported; "this AS" is unknown
        else:
            _check_own_jwks_uri(issuer, jwks_uri, out)
    elif jwks_uri and _url_problem(jwks_uri):
        out.error("V-04", "MCP_AUTH_JWKS_URI", f"{_show(jwks_uri)} {_url_problem(jwks_uri)}; give "
                  "the external issuer's JWKS URL or remove it to use discovery")

    ttls = {k: _parse_ttl(config, k, out) for k in TTL_BOUNDS}

    consent: Literal["always", "once", "never"] = "once"
    consent_raw = get("MCP_AUTH_CONSENT") or "once"
    if consent_raw in ("always", "once", "never"):
        consent = cast(Literal["always", "once", "never"], consent_raw)
    else:
        out.error("V-05", "MCP_AUTH_CONSENT", f"{_show(consent_raw)} is invalid; use 'always', "
                  "'once' or 'never'")

    signing = _signing_keys(get("MCP_AUTH_SIGNING_KEYS"), out)
    enc_keys = _encryption_keys(config, mode_b, out)

    scopes_raw = get("MCP_AUTH_SCOPES_SUPPORTED")
    scopes_supported = _str_tuple(scopes_raw, "MCP_AUTH_SCOPES_SUPPORTED", out)
    if scopes_raw is None:
        scopes_supported = tuple(DEFAULTS["MCP_AUTH_SCOPES_SUPPORTED"])
    clients = _parse_clients(get("MCP_AUTH_CLIENTS"), scopes_supported, out)

    protected = _str_tuple(get("MCP_AUTH_PROTECTED_PATHS"), "MCP_AUTH_PROTECTED_PATHS", out)
    for path in protected:
        if not path.startswith("/"):
            out.error("V-05", "MCP_AUTH_PROTECTED_PATHS", f"{path!r} must be a path prefix starting "
                      f"with '/', e.g. '/{path.lstrip('/')}'")

    storage = _storage(config, out)
    prefix = get("MCP_AUTH_STORAGE_PREFIX") or _default_storage_prefix(issuer)
    if not isinstance(prefix, str):
        out.error("V-05", "MCP_AUTH_STORAGE_PREFIX", f"{_show(prefix)} must be a string")
        prefix = _default_storage_prefix(issuer)
    _check_hash_tag(storage, prefix, out)

    timeout_raw = get("MCP_AUTH_UPSTREAM_TIMEOUT")
    if timeout_raw is None:
        timeout_raw = DEFAULTS["MCP_AUTH_UPSTREAM_TIMEOUT"]
    try:
        if isinstance(timeout_raw, bool):
            raise ValueError
        timeout = float(timeout_raw)
        if not 0 < timeout <= 120:
            raise ValueError
    except (TypeError, ValueError):
        out.error("V-05", "MCP_AUTH_UPSTREAM_TIMEOUT", f"{_show(timeout_raw)} must be seconds in "
                  "(0, 120], e.g. 10")
        timeout = 10.0

    dynamic = _parse_bool(config, "MCP_AUTH_DYNAMIC_REGISTRATION", out)
    confidential = _parse_bool(config, "MCP_AUTH_CONFIDENTIAL_REGISTRATION", out)
    tls_verify = _tls_verify(config, mode_b, out)
    rate_limit = _parse_positive_int(config, "MCP_AUTH_REGISTRATION_RATE_LIMIT", out)
    max_clients = _parse_positive_int(config, "MCP_AUTH_MAX_CLIENTS", out)

    if out.errors:
        raise ConfigError(out.errors)

    settings = Settings(
        issuer=str(issuer),
        resource=str(resource),
        audience=str(audience),
        allowed_audiences=allowed,
        jwks_uri=jwks_uri,
        upstreams=tuple(upstreams),
        backends=MappingProxyType(backends),
        protected_paths=protected,
        scopes_supported=scopes_supported,
        signing_keys=tuple(signing),
        encryption_keys=enc_keys,
        storage=storage,
        storage_prefix=prefix,
        access_token_ttl=ttls["MCP_AUTH_ACCESS_TOKEN_TTL"],
        refresh_token_ttl=ttls["MCP_AUTH_REFRESH_TOKEN_TTL"],
        code_ttl=ttls["MCP_AUTH_CODE_TTL"],
        pending_ttl=ttls["MCP_AUTH_PENDING_TTL"],
        consent=consent,
        clients=tuple(clients),
        dynamic_registration=dynamic,
        confidential_registration=confidential,
        upstream_timeout=timeout,
        tls_verify=tls_verify,
        registration_rate_limit=rate_limit,
        max_clients=max_clients,
    )
    return settings, out.warnings
