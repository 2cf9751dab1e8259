"""``flask mcp-auth check|keygen|jwks``: operator commands (SPEC §1).

* ``keygen`` writes a new private signing key (PKCS#8 PEM; RS256, ES256 or EdDSA) to a 0600 file, or
  prints it. Its ``kid`` is the RFC 7638 thumbprint the AS will publish.
* ``jwks`` prints the public JWKS (RFC 7517) of the configured signing keys.
* ``check`` prints one status row per component — configuration, storage, the external issuer's JWKS
  (Mode A), each upstream, each ``token_exchange`` STS — and exits non-zero when any row fails.

The command group is module-level and stateless (commands read ``current_app``), so registering it on
several apps is safe. Output never contains a secret: failures show exception class names and the
short reason codes of our own errors, and URLs with their credentials masked.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flask import Flask, current_app
from flask.cli import AppGroup

from ._http import HTTPFailure, fetch
from .config import parse_settings
from .errors import ConfigError, StorageError, UpstreamError
from .keys import generate_rsa_pem, load_signing_key
from .runtime import Runtime

__all__ = ["mcp_auth", "register"]

EXTENSION_KEY = "mcp_auth"
OK, WARN, FAIL = "OK", "WARN", "FAIL"
ALGORITHMS = ("RS256", "ES256", "EdDSA")
#: Largest discovery/JWKS document `check` reads.
_MAX_DOCUMENT = 1024 * 1024

mcp_auth = AppGroup("mcp-auth", help="flask_mcp_auth: check the setup, create keys, print the JWKS.")


def register(app: Flask) -> None:
    """Add the ``mcp-auth`` command group to ``app.cli`` (safe to call for several apps)."""
    app.cli.add_command(mcp_auth)


def _runtime() -> Runtime:
    state = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, Runtime):
        raise click.ClickException("MCPAuth is not initialised on this app; call MCPAuth(app)")
    return state


# ---------------------------------------------------------------------------------------------
# keygen


def _generate_pem(alg: str) -> str:
    if alg == "RS256":
        return generate_rsa_pem(2048)
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    key = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _write_private(path: Path, data: bytes, force: bool) -> None:
    """Write ``data`` to ``path`` readable by the owner only (0600), never through a world-readable
    intermediate. Without ``force`` an existing file is left alone (``O_EXCL``)."""
    if not force:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(data)
        return
    # --force: a temp file in the same directory (mkstemp creates it 0600), then an atomic rename, so
    # readers never see a half-written key and a symlink at ``path`` is replaced, not followed.
    fd, tmp = tempfile.mkstemp(prefix=".mcp-auth-key-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@mcp_auth.command("keygen", with_appcontext=False)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the PEM to this file (mode 0600) instead of printing it.")
@click.option("--alg", type=click.Choice(ALGORITHMS), default="RS256", show_default=True,
              help="RS256 (RSA-2048), ES256 (P-256) or EdDSA (Ed25519).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
def keygen(out: Path | None, alg: str, force: bool) -> None:
    """Create a new private signing key for MCP_AUTH_SIGNING_KEYS."""
    pem = _generate_pem(alg)
    kid = load_signing_key(pem).kid
    if out is None:
        click.echo(pem, nl=False)
        click.echo(f"# {alg} key, kid {kid}: keep it secret", err=True)
        return
    try:
        _write_private(out, pem.encode(), force)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from None
    click.echo(f"wrote {alg} signing key {kid} to {out} (mode 0600); list it in "
               "MCP_AUTH_SIGNING_KEYS (the first key signs, all are published)")


# ---------------------------------------------------------------------------------------------
# jwks


@mcp_auth.command("jwks")
def jwks() -> None:
    """Print the public JWKS of the configured signing keys."""
    runtime = _runtime()
    if runtime.keys is None:
        click.echo("Mode A (no MCP_AUTH_UPSTREAMS): this app signs no tokens, so it has no JWKS; "
                   "the external issuer publishes its own.", err=True)
        raise click.exceptions.Exit(1)
    if not runtime.settings.signing_keys:
        # The key init_app generated lives in this CLI process only: publishing it would mislead.
        click.echo("MCP_AUTH_SIGNING_KEYS is empty: each process generates its own ephemeral key, so "
                   "there is no JWKS to print. Run `flask mcp-auth keygen --out signing-key.pem` and "
                   "configure it.", err=True)
        raise click.exceptions.Exit(1)
    click.echo(json.dumps(runtime.keys.jwks(), indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# check

_CREDENTIALS_RE = re.compile(r"(://[^/\s:@]*):[^/\s@]*@")


def _safe(text: str, limit: int = 160) -> str:
    """One line, URL passwords masked, bounded length."""
    text = _CREDENTIALS_RE.sub(r"\1:***@", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_config(runtime: Runtime) -> list[tuple[str, str, str]]:
    settings = runtime.settings
    try:
        # Re-parse the live config: it may have been edited after init_app, and warnings are wanted.
        _, warnings = parse_settings(current_app.config)
    except ConfigError as exc:
        return [("config", FAIL, _safe(f"[{r}] {k}: {m}", 300)) for r, k, m in exc.problems]
    rows = [("config", OK, f"Mode {settings.mode}, issuer {settings.issuer}, "
             f"{len(settings.upstreams)} upstream(s), {len(settings.backends)} backend(s)")]
    rows += [("config", WARN, _safe(f"[{r}] {k}: {m}", 300)) for r, k, m in warnings]
    if settings.mode == "B" and not settings.signing_keys:
        rows.append(("config", WARN, "MCP_AUTH_SIGNING_KEYS is empty: every process generates its "
                     "own key; run `flask mcp-auth keygen`"))
    if settings.mode == "B" and settings.storage == "memory://":
        rows.append(("config", WARN, "memory:// storage is per-process; use redis:// with several "
                     "workers"))
    return rows


def _check_storage(runtime: Runtime) -> tuple[str, str, str]:
    name = type(runtime.storage).__name__
    if isinstance(runtime.settings.storage, str):
        name = _safe(f"{name} {runtime.settings.storage}")
    try:
        runtime.storage.ping()
    except StorageError as exc:
        return ("storage", FAIL, _safe(f"{name}: {type(exc).__name__}: {exc}"))
    except Exception as exc:  # a broken custom storage is a FAIL row, not a crash
        return ("storage", FAIL, f"{name}: {type(exc).__name__}")
    return ("storage", OK, name)


def _get_json(runtime: Runtime, url: str) -> Any:
    reply = fetch(runtime.http, "GET", url, headers={"Accept": "application/json"},
                  verify=runtime.verify, timeout=runtime.timeout, max_body=_MAX_DOCUMENT)
    if reply.status != 200:
        raise ValueError(f"HTTP {reply.status} from {url}")
    try:
        return json.loads(reply.body)
    except RecursionError:
        raise ValueError(f"deeply nested JSON from {url}") from None


def _check_external_issuer(runtime: Runtime) -> tuple[str, str, str]:
    """Mode A: the issuer's JWKS must be reachable for tokens to verify (it is fetched lazily)."""
    settings = runtime.settings
    try:
        url = settings.jwks_uri
        if not url:
            discovery = _get_json(runtime, f"{settings.issuer}/.well-known/openid-configuration")
            url = discovery.get("jwks_uri") if isinstance(discovery, dict) else None
            if not isinstance(url, str):
                return ("issuer jwks", FAIL, "the issuer's discovery document has no jwks_uri")
        document = _get_json(runtime, url)
    except ValueError as exc:  # HTTP status, or a body that is not JSON
        return ("issuer jwks", FAIL, _safe(str(exc) if "HTTP" in str(exc) else "answer is not JSON"))
    except HTTPFailure as exc:  # timeout (in total, not per read), connection error, oversize
        where = settings.jwks_uri or f"{settings.issuer}/.well-known/openid-configuration"
        return ("issuer jwks", FAIL, _safe(f"{where} unreachable ({exc.reason})"))
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        return ("issuer jwks", FAIL, _safe(f"{url} holds no keys"))
    return ("issuer jwks", OK, _safe(f"{len(keys)} key(s) at {url}"))


def _check_upstreams(runtime: Runtime) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for up in runtime.settings.upstreams:
        label = f"upstream {up.name}"
        client = runtime.upstreams.get(up.name)
        if client is None:
            rows.append((label, FAIL, "no client was built for this upstream"))
            continue
        try:
            client.check()
        except UpstreamError as exc:  # our messages carry the provider and a short reason only
            rows.append((label, FAIL, _safe(str(exc))))
        except Exception as exc:  # report, never crash the table
            rows.append((label, FAIL, type(exc).__name__))
        else:
            rows.append((label, OK, up.issuer or up.authorization_endpoint or up.type))
    return rows


def _check_backends(runtime: Runtime) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for backend in runtime.settings.token_exchange_backends:
        label = f"backend {backend.name}"
        url = str(backend.token_url)
        try:
            # Reachability only: any HTTP answer (405 to HEAD included) means the STS is there.
            reply = fetch(runtime.http, "HEAD", url, verify=runtime.verify, timeout=runtime.timeout,
                          max_body=_MAX_DOCUMENT)
        except HTTPFailure as exc:
            rows.append((label, FAIL, f"STS {url} unreachable ({exc.reason})"))
        else:
            rows.append((label, OK, f"STS {url} answered HTTP {reply.status}"))
    return rows


def _table(rows: list[tuple[str, str, str]]) -> str:
    header = ("COMPONENT", "STATUS", "DETAIL")
    width0 = max(len(r[0]) for r in [header, *rows])
    width1 = max(len(r[1]) for r in [header, *rows])
    return "\n".join(f"{a:<{width0}}  {b:<{width1}}  {c}" for a, b, c in [header, *rows])


@mcp_auth.command("check")
def check() -> None:
    """Validate the configuration, reach the storage, upstreams and STSs; exit 1 on any failure."""
    runtime = _runtime()
    rows = _check_config(runtime)
    rows.append(_check_storage(runtime))
    if runtime.settings.mode == "A":
        rows.append(_check_external_issuer(runtime))
    rows += _check_upstreams(runtime)
    rows += _check_backends(runtime)
    click.echo(_table(rows))
    failed = sum(1 for r in rows if r[1] == FAIL)
    if failed:
        click.echo(f"{failed} check(s) failed")
        raise click.exceptions.Exit(1)
    click.echo("all checks passed")
