"""Discovery documents, built from configuration only (never from the request's Host header):

* RFC 8414 authorization-server metadata and the OpenID Connect Discovery 1.0 §3 variant,
* the JWKS of our signing keys (RFC 7517; ``kid`` = RFC 7638 thumbprint),
* RFC 9728 protected-resource metadata (both modes; Mode A names the external issuer),
* the well-known paths each document is served at (RFC 8414 §3.1 path insertion, OIDC §4 appending).

Pure functions of :class:`~flask_mcp_auth.config.Settings` and :class:`~flask_mcp_auth.keys.KeySet`.

Why not Authlib's ``AuthorizationServerMetadata``: it validates a document someone else publishes; ours
is a handful of fields derived from Settings, and RFC 9728 protected-resource metadata has no Authlib
counterpart.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..config import Settings
from ..keys import KeySet

__all__ = [
    "AS_METADATA_PATH",
    "JWKS_PATH",
    "OIDC_METADATA_PATH",
    "PRM_PATH",
    "authorization_server_metadata",
    "endpoint_url",
    "jwks",
    "metadata_paths",
    "openid_configuration",
    "protected_resource_metadata",
    "protected_resource_paths",
]

AS_METADATA_PATH = "/.well-known/oauth-authorization-server"
OIDC_METADATA_PATH = "/.well-known/openid-configuration"
PRM_PATH = "/.well-known/oauth-protected-resource"
JWKS_PATH = "/.well-known/jwks.json"

#: Endpoint paths relative to the issuer (the upstream redirect URI is ``{issuer}/oauth/callback``).
ENDPOINTS = {
    "authorization_endpoint": "/oauth/authorize",
    "token_endpoint": "/oauth/token",
    "registration_endpoint": "/oauth/register",
    "revocation_endpoint": "/oauth/revoke",
    "jwks_uri": JWKS_PATH,
}


def endpoint_url(settings: Settings, name: str) -> str:
    """Absolute URL of one endpoint of this AS (``name`` is a metadata field name)."""
    return settings.issuer + ENDPOINTS[name]


def _issuer_path(settings: Settings) -> str:
    return urlsplit(settings.issuer).path.rstrip("/")


def metadata_paths(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Paths (relative to this app) at which the two AS metadata documents are served.

    Root forms always; when the issuer has a path, also the RFC 8414 §3.1 path-inserted form
    (``/.well-known/oauth-authorization-server/<path>``, and the same for OIDC as MCP clients try it)
    and the OIDC Discovery §4 appended form (``/<path>/.well-known/openid-configuration``).
    """
    path = _issuer_path(settings)
    oauth = [AS_METADATA_PATH]
    oidc = [OIDC_METADATA_PATH]
    if path:
        oauth.append(AS_METADATA_PATH + path)
        oidc += [OIDC_METADATA_PATH + path, path + OIDC_METADATA_PATH]
    return {"oauth": tuple(oauth), "oidc": tuple(oidc)}


def protected_resource_paths(settings: Settings) -> tuple[str, ...]:
    """The root PRM path and the RFC 9728 §3.1 path-suffixed one for ``resource``."""
    return tuple(dict.fromkeys((PRM_PATH, settings.resource_metadata_path)))


def authorization_server_metadata(
    settings: Settings, *, confidential_clients: bool
) -> dict[str, Any]:
    """RFC 8414 §2 metadata. ``confidential_clients``: whether secret-based auth can succeed."""
    auth_methods = ["none"]
    if confidential_clients:
        auth_methods += ["client_secret_basic", "client_secret_post"]
    doc: dict[str, Any] = {
        "issuer": settings.issuer,  # byte-identical to MCP_AUTH_ISSUER (RFC 8414 §3.3)
        "authorization_endpoint": endpoint_url(settings, "authorization_endpoint"),
        "token_endpoint": endpoint_url(settings, "token_endpoint"),
        "jwks_uri": endpoint_url(settings, "jwks_uri"),
        "revocation_endpoint": endpoint_url(settings, "revocation_endpoint"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": list(auth_methods),
        "scopes_supported": list(settings.scopes_supported),
        "authorization_response_iss_parameter_supported": True,
    }
    if settings.dynamic_registration:
        doc["registration_endpoint"] = endpoint_url(settings, "registration_endpoint")
    return doc


def openid_configuration(
    settings: Settings, keys: KeySet, *, confidential_clients: bool
) -> dict[str, Any]:
    """The RFC 8414 document plus the fields OpenID Connect Discovery 1.0 §3 requires."""
    doc = authorization_server_metadata(settings, confidential_clients=confidential_clients)
    doc.update(
        subject_types_supported=["public"],
        id_token_signing_alg_values_supported=list(keys.algorithms),
        claims_supported=["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "name", "email"],
    )
    return doc


def jwks(keys: KeySet) -> dict[str, Any]:
    """Every public signing key (current first), each with ``kid``, ``alg`` and ``use: sig``."""
    return keys.jwks()


def protected_resource_metadata(settings: Settings) -> dict[str, Any]:
    """RFC 9728 §2 metadata for ``MCP_AUTH_RESOURCE``. ``offline_access`` is a grant property, not
    a permission on the resource, so it is not advertised here."""
    return {
        "resource": settings.resource,
        "authorization_servers": [settings.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": [s for s in settings.scopes_supported if s != "offline_access"],
    }
