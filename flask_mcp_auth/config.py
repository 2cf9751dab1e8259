"""Configuration: defaults for every ``MCP_AUTH_*`` key, parsing into frozen settings, rules V-01…V-08.

``parse_settings(config)`` reads a mapping (normally ``app.config``), resolves secrets (file wins over
env, env over inline), runs every validation rule of SPEC §2.1 and either returns ``(Settings,
warnings)`` or raises one :class:`~flask_mcp_auth.errors.ConfigError` listing every problem found.
Request-time code reads :class:`Settings`, never ``app.config``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

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

#: Authorize parameters an upstream entry may not override (they are ours to set per leg).
RESERVED_AUTHORIZE_PARAMS = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
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

#: Every key with its default. ``None`` means "computed" (see ``docs/configuration.md``).
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


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream identity provider (SPEC §4.1)."""

    name: str
    type: Literal["oidc", "oauth2"]
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ()
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    token_endpoint_auth_method: str = "client_secret_basic"
    # OIDC
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
    signing_keys: tuple[str, ...] = field(repr=False)  # PEM texts; empty = generate one
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

    def upstream(self, name: str) -> UpstreamConfig:
        for up in self.upstreams:
            if up.name == name:
                return up
        raise KeyError(name)


def apply_defaults(config: MutableMapping[str, Any]) -> None:
    """``setdefault`` every key so the effective configuration is visible in ``app.config``."""
    for key, value in DEFAULTS.items():
        if isinstance(value, (list, dict)):
            value = type(value)(value)
        config.setdefault(key, value)


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
# parsing


class _Collector:
    def __init__(self) -> None:
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, rule: str, key: str, message: str) -> None:
        self.errors.append((rule, key, message))

    def warn(self, rule: str, key: str, message: str) -> None:
        self.warnings.append((rule, key, message))


def _resolve_secret(entry: Mapping[str, Any], key: str, out: _Collector, rule: str) -> str | None:
    """File wins over env, env over inline. A named env var that is unset is an error."""
    path = entry.get("client_secret_file")
    env = entry.get("client_secret_env")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            out.error(rule, key, f"client_secret_file {path!r} is unreadable ({exc.strerror}); "
                      "fix the path or its permissions")
            return None
    if env:
        value = os.environ.get(str(env))
        if value is None:
            out.error(rule, key, f"client_secret_env names {env!r}, which is not set; "
                      "export it or give client_secret_file")
            return None
        return value
    secret = entry.get("client_secret")
    return str(secret) if secret else None


def _str_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    return tuple(str(v) for v in value)


def _url_problem(url: Any, *, allow_http_loopback: bool = True) -> str | None:
    """Why ``url`` is not a canonical absolute URL, or ``None``."""
    if not isinstance(url, str) or not url:
        return "must be a non-empty URL string"
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        return "must be an absolute http(s) URL"
    if parts.scheme == "http" and not (allow_http_loopback and is_loopback_host(parts.hostname)):
        return "must use https (http is allowed only for loopback hosts)"
    if parts.username or parts.password:
        return "must not contain userinfo"
    if parts.query or url.endswith("?"):
        return "must not contain a query"
    if parts.fragment or "#" in url:
        return "must not contain a fragment"
    return None


def _canonical_issuer_problem(url: Any) -> str | None:
    problem = _url_problem(url)
    if problem:
        return problem
    if str(url).endswith("/"):
        return "must not end with a slash"
    return None


def _parse_int(config: Mapping[str, Any], key: str, out: _Collector) -> int:
    raw = config.get(key, DEFAULTS[key])
    low, high = TTL_BOUNDS[key]
    try:
        value = int(raw)
        if isinstance(raw, bool) or (value != raw and not isinstance(raw, str)):
            raise ValueError
    except (TypeError, ValueError):
        out.error("V-05", key, f"{raw!r} is not a whole number of seconds; use {low}..{high}")
        return int(DEFAULTS[key])
    if not low <= value <= high:
        out.error("V-05", key, f"{value} is out of bounds; use {low}..{high} seconds")
    return value


def _parse_upstreams(raw: Any, out: _Collector) -> list[UpstreamConfig]:
    key = "MCP_AUTH_UPSTREAMS"
    if raw is None:
        return []
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        out.error("V-05", key, "must be a list of upstream dicts")
        return []
    result: list[UpstreamConfig] = []
    seen: set[str] = set()
    several = len(raw) > 1
    for index, entry in enumerate(raw):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping):
            out.error("V-05", where, "must be a dict")
            continue
        name = entry.get("name")
        if name is None:
            if several:
                out.error("V-05", where, "is unnamed; with several upstreams every entry needs a "
                          "'name'")
                continue
            name = "default"
        elif not isinstance(name, str) or not PROVIDER_NAME_RE.match(name):
            out.error("V-05", where, f"name {name!r} is invalid; use lowercase letters, digits and "
                      "inner hyphens")
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
        utype = entry.get("type")
        if utype not in ("oidc", "oauth2"):
            out.error("V-05", where, f"unknown type {utype!r}; use 'oidc' or 'oauth2'")
            continue
        client_id = entry.get("client_id")
        if not client_id or not isinstance(client_id, str):
            out.error("V-05", where, "client_id is missing")
        auth_method = entry.get("token_endpoint_auth_method", "client_secret_basic")
        if auth_method not in ("client_secret_basic", "client_secret_post", "none"):
            out.error("V-05", where, f"token_endpoint_auth_method {auth_method!r} is unsupported; "
                      "use client_secret_basic, client_secret_post or none")
        secret = _resolve_secret(entry, where, out, "V-05")
        params = entry.get("authorize_params") or {}
        if not isinstance(params, Mapping):
            out.error("V-05", where, "authorize_params must be a dict")
            params = {}
        reserved = sorted(set(params) & RESERVED_AUTHORIZE_PARAMS)
        if reserved:
            out.error("V-05", where, f"authorize_params sets reserved parameter(s) {reserved}; "
                      "remove them (scopes go in 'scopes')")
        fields: dict[str, tuple[str, ...]] = {}
        for fname, names in dict(entry.get("userinfo_fields") or {}).items():
            if fname not in ("subject", "name", "email"):
                out.error("V-05", where, f"userinfo_fields has unknown field {fname!r}; use "
                          "subject, name or email")
                continue
            fields[fname] = _str_tuple([names] if isinstance(names, str) else names)
        common: dict[str, Any] = dict(
            name=name,
            type=utype,
            client_id=str(client_id or ""),
            client_secret=secret,
            scopes=_str_tuple(entry.get("scopes")),
            authorize_params={str(k): str(v) for k, v in params.items()},
            token_endpoint_auth_method=str(auth_method),
            userinfo_fields=fields,
        )
        if utype == "oidc":
            issuer = entry.get("issuer")
            problem = _canonical_issuer_problem(issuer) if issuer else "is missing"
            if problem:
                out.error("V-05", where, f"issuer {issuer!r} {problem}")
            common.update(
                issuer=issuer,
                subject_claim=str(entry.get("subject_claim", "sub")),
                authorization_endpoint=entry.get("authorization_endpoint"),
                token_endpoint=entry.get("token_endpoint"),
                userinfo_endpoint=entry.get("userinfo_endpoint"),
                jwks_uri=entry.get("jwks_uri"),
            )
        else:
            for ep in ("authorization_endpoint", "token_endpoint"):
                url = entry.get(ep)
                problem = _url_problem(url) if url else "is missing"
                if problem:
                    out.error("V-05", where, f"{ep} {url!r} {problem}")
            userinfo = entry.get("userinfo_endpoint")
            if userinfo and _url_problem(userinfo):
                out.error("V-05", where, f"userinfo_endpoint {userinfo!r} {_url_problem(userinfo)}")
            common.update(
                authorization_endpoint=entry.get("authorization_endpoint"),
                token_endpoint=entry.get("token_endpoint"),
                userinfo_endpoint=userinfo,
            )
        result.append(UpstreamConfig(**common))
    return result


def _closest(name: str, names: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(names), n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def _parse_backends(raw: Any, upstream_names: Sequence[str], out: _Collector) -> dict[str, BackendConfig]:
    key = "MCP_AUTH_BACKENDS"
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        out.error("V-08", key, "must be a dict of backend name -> backend dict")
        return {}
    result: dict[str, BackendConfig] = {}
    mode_b = bool(upstream_names)
    for name, entry in raw.items():
        where = f"{key}[{name}]"
        if not isinstance(entry, Mapping):
            out.error("V-08", where, "must be a dict")
            continue
        strategy = entry.get("strategy")
        if strategy not in STRATEGIES:
            out.error("V-08", where, f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
            continue
        url = entry.get("url")
        if url is not None:
            parts = urlsplit(str(url))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                out.error("V-08", where, f"url {url!r} is not an absolute http(s) URL")
        fields: dict[str, Any] = dict(name=str(name), strategy=strategy, url=url)
        if strategy == "upstream_inject":
            provider = entry.get("provider")
            if not provider:
                out.error("V-06", where, "upstream_inject needs a non-empty 'provider' (an upstream name)")
            elif not mode_b:
                out.error("V-01", where, f"upstream_inject of provider {provider!r} needs upstreams, "
                          "but MCP_AUTH_UPSTREAMS is empty (Mode A); configure the upstream or "
                          "change the strategy")
            elif provider not in upstream_names:
                out.error("V-02", where, f"provider {provider!r} is not an upstream name"
                          f"{_closest(str(provider), upstream_names)}")
            fields["provider"] = provider
        elif strategy == "token_exchange":
            token_url = entry.get("token_url")
            if not token_url:
                out.error("V-08", where, "token_exchange needs 'token_url' (the STS token endpoint)")
            elif _url_problem(token_url):
                out.error("V-08", where, f"token_url {token_url!r} {_url_problem(token_url)}")
            subject_provider = entry.get("subject_provider")
            if subject_provider:
                if not mode_b:
                    out.error("V-01", where, f"subject_provider {subject_provider!r} needs upstreams, "
                              "but MCP_AUTH_UPSTREAMS is empty (Mode A); remove subject_provider to "
                              "exchange the incoming token, or configure the upstream")
                elif subject_provider not in upstream_names:
                    out.error("V-02", where, f"subject_provider {subject_provider!r} is not an upstream "
                              f"name{_closest(str(subject_provider), upstream_names)}")
            elif mode_b:
                out.warn("V-03", where, "token_exchange without subject_provider sends this AS's own "
                         "JWT as subject_token; the STS must trust this issuer")
            fields.update(
                token_url=token_url,
                client_id=entry.get("client_id"),
                client_secret=_resolve_secret(entry, where, out, "V-08"),
                audience=entry.get("audience"),
                resource=entry.get("resource"),
                scopes=_str_tuple(entry.get("scopes")),
                subject_provider=subject_provider or None,
                subject_token_type=entry.get("subject_token_type"),
                requested_token_type=entry.get("requested_token_type", TOKEN_TYPE_ACCESS),
            )
        elif strategy == "header_injection":
            header = entry.get("header")
            value = entry.get("value")
            value_env = entry.get("value_env")
            if value_env:
                value = os.environ.get(str(value_env))
                if value is None:
                    out.error("V-08", where, f"value_env names {value_env!r}, which is not set")
            if (not header or value is None or value == "") and not (value_env and value is None):
                out.error("V-08", where, "header_injection needs 'header' and 'value' (or value_env)")
            fields.update(header=header, value=value)
        result[str(name)] = BackendConfig(**fields)
    return result


def _parse_clients(raw: Any, out: _Collector) -> list[ClientConfig]:
    key = "MCP_AUTH_CLIENTS"
    result: list[ClientConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw or []):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping) or not entry.get("client_id"):
            out.error("V-05", where, "each client needs a 'client_id'")
            continue
        cid = str(entry["client_id"])
        if cid in seen:
            out.error("V-05", where, f"duplicate client_id {cid!r}")
            continue
        seen.add(cid)
        uris = _str_tuple(entry.get("redirect_uris"))
        if not uris:
            out.error("V-05", where, "redirect_uris is empty")
        for uri in uris:
            parts = urlsplit(uri)
            if "#" in uri or not parts.scheme:
                out.error("V-05", where, f"redirect URI {uri!r} must be absolute and have no fragment")
        result.append(
            ClientConfig(
                client_id=cid,
                redirect_uris=uris,
                client_secret=_resolve_secret(entry, where, out, "V-05"),
                scopes=_str_tuple(entry.get("scopes")),
                first_party=bool(entry.get("first_party", False)),
                client_name=entry.get("client_name"),
            )
        )
    return result


def _load_pem(value: Any, key: str, out: _Collector) -> str | None:
    text = value.decode() if isinstance(value, bytes) else str(value)
    if "-----BEGIN" in text:
        return text
    try:
        with open(text, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        out.error("V-05", key, f"signing key file {text!r} is unreadable ({exc.strerror})")
        return None


def _encryption_keys(config: Mapping[str, Any], out: _Collector) -> tuple[bytes, ...]:
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = "MCP_AUTH_ENCRYPTION_KEYS"
    keys: list[bytes] = []
    for index, raw in enumerate(config.get(key) or []):
        value: bytes | None
        if isinstance(raw, bytes) and len(raw) == 32:
            value = raw
        else:
            try:
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                value = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            except (ValueError, UnicodeDecodeError):
                value = None
        if value is None or len(value) != 32:
            out.error("V-05", f"{key}[{index}]", "must be 32 bytes, or their base64url text "
                      "(generate with: python -c 'import secrets;print(secrets.token_urlsafe(32))')")
            continue
        keys.append(value)
    if keys:
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


def parse_settings(config: Mapping[str, Any]) -> tuple[Settings, list[Problem]]:
    """Parse and validate; return ``(settings, warnings)`` or raise ``ConfigError`` with all errors."""
    out = _Collector()
    get = config.get

    issuer = get("MCP_AUTH_ISSUER")
    if not issuer:
        out.error("V-04", "MCP_AUTH_ISSUER", "is required; set the issuer URL, e.g. https://mcp.example.com")
    else:
        problem = _canonical_issuer_problem(issuer)
        if problem:
            fix = str(issuer).rstrip("/").split("?")[0].split("#")[0]
            out.error("V-04", "MCP_AUTH_ISSUER", f"{issuer!r} is not canonical: it {problem} "
                      f"(e.g. {fix!r})")
    resource = get("MCP_AUTH_RESOURCE")
    if not resource:
        out.error("V-04", "MCP_AUTH_RESOURCE", "is required; set the canonical URL of the MCP endpoint")
    else:
        problem = _url_problem(resource)
        if problem:
            out.error("V-04", "MCP_AUTH_RESOURCE", f"{resource!r} {problem}")

    upstreams = _parse_upstreams(get("MCP_AUTH_UPSTREAMS"), out)
    raw_up = get("MCP_AUTH_UPSTREAMS") or []
    mode_b = bool(raw_up)
    names = [u.name for u in upstreams]
    backends = _parse_backends(get("MCP_AUTH_BACKENDS"), names if mode_b else [], out)
    if mode_b and not upstreams:
        names = []

    audience = get("MCP_AUTH_AUDIENCE") or resource or ""
    allowed = _str_tuple(get("MCP_AUTH_ALLOWED_AUDIENCES")) or ((str(resource),) if resource else ())
    if mode_b and audience and audience not in allowed:
        out.error("V-07", "MCP_AUTH_AUDIENCE", f"{audience!r} is not in MCP_AUTH_ALLOWED_AUDIENCES "
                  f"{list(allowed)}: the AS could never mint a token the RS accepts; add it")

    jwks_uri = get("MCP_AUTH_JWKS_URI")
    if jwks_uri and mode_b and issuer:
        own = f"{str(issuer).rstrip('/')}/.well-known/jwks.json"
        if jwks_uri != own:
            out.error("V-04", "MCP_AUTH_JWKS_URI", f"{jwks_uri!r} points away from this AS in Mode B; "
                      f"remove it (the RS uses the local keys published at {own})")
    elif jwks_uri and _url_problem(jwks_uri):
        out.error("V-04", "MCP_AUTH_JWKS_URI", f"{jwks_uri!r} {_url_problem(jwks_uri)}")

    ttls = {k: _parse_int(config, k, out) for k in TTL_BOUNDS}

    consent = get("MCP_AUTH_CONSENT", "once")
    if consent not in ("always", "once", "never"):
        out.error("V-05", "MCP_AUTH_CONSENT", f"{consent!r} is invalid; use 'always', 'once' or 'never'")
        consent = "once"

    signing: list[str] = []
    raw_keys = get("MCP_AUTH_SIGNING_KEYS") or []
    if isinstance(raw_keys, (str, bytes)):
        raw_keys = [raw_keys]
    for index, raw in enumerate(raw_keys):
        pem = _load_pem(raw, f"MCP_AUTH_SIGNING_KEYS[{index}]", out)
        if pem is not None:
            signing.append(pem)

    enc_keys = _encryption_keys(config, out) if mode_b else ()
    clients = _parse_clients(get("MCP_AUTH_CLIENTS"), out)

    storage = get("MCP_AUTH_STORAGE") or "memory://"
    if isinstance(storage, str) and not storage.startswith(("memory://", "redis://", "rediss://")):
        out.error("V-05", "MCP_AUTH_STORAGE", f"{storage!r} is not supported; use memory://, "
                  "redis://host:port/db, rediss://… or a Storage instance")
    host = urlsplit(str(issuer or "")).hostname or "default"
    prefix = get("MCP_AUTH_STORAGE_PREFIX") or f"mcp-auth:{{{host}}}:"

    timeout_raw = get("MCP_AUTH_UPSTREAM_TIMEOUT", 10)
    try:
        timeout = float(timeout_raw)
        if not 0 < timeout <= 120:
            raise ValueError
    except (TypeError, ValueError):
        out.error("V-05", "MCP_AUTH_UPSTREAM_TIMEOUT", f"{timeout_raw!r} must be seconds in (0, 120]")
        timeout = 10.0

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
        protected_paths=_str_tuple(get("MCP_AUTH_PROTECTED_PATHS")),
        scopes_supported=_str_tuple(
            get("MCP_AUTH_SCOPES_SUPPORTED") or DEFAULTS["MCP_AUTH_SCOPES_SUPPORTED"]
        ),
        signing_keys=tuple(signing),
        encryption_keys=enc_keys,
        storage=storage,
        storage_prefix=str(prefix),
        access_token_ttl=ttls["MCP_AUTH_ACCESS_TOKEN_TTL"],
        refresh_token_ttl=ttls["MCP_AUTH_REFRESH_TOKEN_TTL"],
        code_ttl=ttls["MCP_AUTH_CODE_TTL"],
        pending_ttl=ttls["MCP_AUTH_PENDING_TTL"],
        consent=consent,
        clients=tuple(clients),
        dynamic_registration=bool(get("MCP_AUTH_DYNAMIC_REGISTRATION", True)),
        confidential_registration=bool(get("MCP_AUTH_CONFIDENTIAL_REGISTRATION", False)),
        upstream_timeout=timeout,
        tls_verify=get("MCP_AUTH_TLS_VERIFY", True),
        registration_rate_limit=int(get("MCP_AUTH_REGISTRATION_RATE_LIMIT", 20)),
        max_clients=int(get("MCP_AUTH_MAX_CLIENTS", 10000)),
    )
    return settings, out.warnings
