"""Configuration of the example app: environment variables and the demo services' client credentials.

Deployment knobs (all optional for the demo):

=========================  ===============================================================
``EXAMPLE_HOST`` / ``EXAMPLE_PORT``  where ``python -m example_app`` listens (127.0.0.1:8765)
``MCP_AUTH_ISSUER``        public base URL of the server (default ``http://EXAMPLE_HOST:EXAMPLE_PORT``);
                           never derived from the ``Host`` header
``MCP_AUTH_RESOURCE``      the MCP endpoint URL (default ``<issuer>/mcp``)
``MCP_AUTH_STORAGE``       ``memory://`` (default) or ``redis://host:port/db``
``MCP_AUTH_SIGNING_KEYS``  comma-separated PEM file paths; the first signs (share them across workers)
``MCP_AUTH_ENCRYPTION_KEYS``  comma-separated base64url 32-byte keys; the first encrypts
``SECRET_KEY``             Flask secret (shared by every worker); random per process when unset
``EXAMPLE_CORP_ISSUER`` ``EXAMPLE_CLOUD_ISSUER`` ``EXAMPLE_GITHUB_URL`` ``EXAMPLE_STS_URL``
``EXAMPLE_DOCS_URL``       where the demo services run (default: the ports after EXAMPLE_PORT)
``EXAMPLE_ALLOWED_ORIGINS``  comma-separated browser origins allowed to call ``/mcp`` besides the
                           server's own (any loopback origin is allowed when the server is on loopback)
``EXAMPLE_WORKER_HEADER``  ``1`` adds ``X-Example-Worker: <pid>`` to responses (tests, benchmark)
=========================  ===============================================================
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CLIENT_ID",
    "DEFAULT_PORT",
    "SECRETS",
    "SERVICE_KEYS",
    "backends",
    "from_env",
    "upstreams",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

#: The client id the MCP server's authorization server uses at every demo provider and at the STS.
CLIENT_ID = "mcp-example"
#: Demo-only client secrets, known to both sides. A real deployment uses ``client_secret_env`` or
#: ``client_secret_file`` in ``MCP_AUTH_UPSTREAMS`` instead of inline secrets.
SECRETS: Mapping[str, str] = {
    "corp": "corp-demo-secret",
    "cloud": "cloud-demo-secret",
    "github": "github-demo-secret",
    "sts": "sts-demo-secret",
}

#: Config key of each demo service's URL, and its offset from EXAMPLE_PORT for the defaults.
SERVICE_KEYS: Mapping[str, tuple[str, int]] = {
    "corp": ("EXAMPLE_CORP_ISSUER", 1),
    "cloud": ("EXAMPLE_CLOUD_ISSUER", 2),
    "github": ("EXAMPLE_GITHUB_URL", 3),
    "sts": ("EXAMPLE_STS_URL", 4),
    "docs": ("EXAMPLE_DOCS_URL", 5),
}


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The app config the environment asks for (``create_app`` applies overrides on top)."""
    host = environ.get("EXAMPLE_HOST", DEFAULT_HOST)
    port = int(environ.get("EXAMPLE_PORT", DEFAULT_PORT))
    issuer = environ.get("MCP_AUTH_ISSUER", f"http://{host}:{port}")
    config: dict[str, Any] = {
        "MCP_AUTH_ISSUER": issuer,
        "MCP_AUTH_RESOURCE": environ.get("MCP_AUTH_RESOURCE", f"{issuer}/mcp"),
        "MCP_AUTH_STORAGE": environ.get("MCP_AUTH_STORAGE", "memory://"),
        "EXAMPLE_WORKER_HEADER": environ.get("EXAMPLE_WORKER_HEADER", "") in ("1", "true", "yes"),
    }
    if environ.get("SECRET_KEY"):
        config["SECRET_KEY"] = environ["SECRET_KEY"]
    else:
        # Fine for one process; several workers must share SECRET_KEY (docs/deployment.md).
        config["SECRET_KEY"] = secrets.token_urlsafe(32)
        config["EXAMPLE_EPHEMERAL_SECRET"] = True
    if environ.get("EXAMPLE_ALLOWED_ORIGINS"):
        config["EXAMPLE_ALLOWED_ORIGINS"] = _split(environ["EXAMPLE_ALLOWED_ORIGINS"])
    if environ.get("MCP_AUTH_SIGNING_KEYS"):
        config["MCP_AUTH_SIGNING_KEYS"] = _split(environ["MCP_AUTH_SIGNING_KEYS"])
    if environ.get("MCP_AUTH_ENCRYPTION_KEYS"):
        config["MCP_AUTH_ENCRYPTION_KEYS"] = _split(environ["MCP_AUTH_ENCRYPTION_KEYS"])
    for _name, (key, offset) in SERVICE_KEYS.items():
        config[key] = environ.get(key, f"http://{DEFAULT_HOST}:{port + offset}")
    return config


def upstreams(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The three demo upstreams, in chain order: two OIDC providers, then the GitHub-like one."""
    github = str(config["EXAMPLE_GITHUB_URL"]).rstrip("/")
    return [
        {
            "name": "corp", "type": "oidc", "issuer": config["EXAMPLE_CORP_ISSUER"],
            "client_id": CLIENT_ID, "client_secret": SECRETS["corp"],
            # offline_access + prompt=consent: the corp IdP only then issues a refresh token.
            "scopes": ["openid", "profile", "email", "offline_access"],
            "authorize_params": {"prompt": "consent"},
        },
        {
            "name": "cloud", "type": "oidc", "issuer": config["EXAMPLE_CLOUD_ISSUER"],
            "client_id": CLIENT_ID, "client_secret": SECRETS["cloud"],
            "scopes": ["openid", "profile"],
        },
        {
            "name": "github", "type": "oauth2",
            "authorization_endpoint": f"{github}/login/oauth/authorize",
            "token_endpoint": f"{github}/login/oauth/access_token",
            "userinfo_endpoint": f"{github}/user",
            "userinfo_fields": {"subject": ["id"], "name": ["name", "login"], "email": ["email"]},
            "client_id": CLIENT_ID, "client_secret": SECRETS["github"],
            "token_endpoint_auth_method": "client_secret_post",
            "scopes": ["repo"],
        },
    ]


def backends(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Outgoing backends: GitHub with the user's own GitHub token; docs via RFC 8693 exchange of the
    user's corp token at the STS."""
    return {
        "github": {"strategy": "upstream_inject", "provider": "github",
                   "url": str(config["EXAMPLE_GITHUB_URL"]).rstrip("/") + "/"},
        "docs": {"strategy": "token_exchange",
                 "token_url": str(config["EXAMPLE_STS_URL"]).rstrip("/") + "/token",
                 "client_id": CLIENT_ID, "client_secret": SECRETS["sts"],
                 "audience": "docs-api", "subject_provider": "corp",
                 "url": str(config["EXAMPLE_DOCS_URL"]).rstrip("/") + "/"},
    }
