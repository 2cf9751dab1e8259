"""``flask mcp-auth keygen|jwks|check`` through Flask's CLI runner, against real loopback servers."""

from __future__ import annotations

import json
import re
import socket
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.wrappers import Request, Response

from flask_mcp_auth import MCPAuth
from flask_mcp_auth.cli import register
from flask_mcp_auth.config import parse_settings
from flask_mcp_auth.keys import load_signing_key, thumbprint
from tests.support.servers import serve

ISSUER = "https://mcp.example.com"
RESOURCE = "https://mcp.example.com/mcp"
SECRET_KEY = "9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(MCP_AUTH_ISSUER=ISSUER, MCP_AUTH_RESOURCE=RESOURCE, **config)
    MCPAuth(app)
    return app


def bare_app() -> Flask:
    """keygen needs no configuration: an app with only the command group."""
    app = Flask(__name__)
    register(app)
    return app


def run(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["mcp-auth", *args])


def rows(output: str) -> dict[str, list[str]]:
    """Component -> its statuses, from the check table."""
    table: dict[str, list[str]] = {}
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line.strip(), maxsplit=2)
        if len(cells) >= 2 and cells[1] in ("OK", "WARN", "FAIL"):
            table.setdefault(cells[0], []).append(cells[1])
    return table


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def json_app(routes: dict[str, Any]) -> WSGIApp:
    """A loopback server answering JSON at the given paths, 404 elsewhere."""

    @Request.application  # type: ignore[arg-type]
    def app(request: Request) -> Response:
        if request.path in routes:
            return Response(json.dumps(routes[request.path]), content_type="application/json")
        return Response("<html>not here</html>", status=404, content_type="text/html")

    return app  # type: ignore[return-value]


@Request.application  # type: ignore[arg-type]
def sts_app(request: Request) -> Response:
    """An STS that, like many, only speaks POST: HEAD gets 405, which still proves it is there."""
    if request.method != "POST":
        return Response("", status=405, headers={"Allow": "POST"})
    return Response(json.dumps({"error": "invalid_request"}), status=400, content_type="application/json")


def keygen_pem(tmp_path: Path, alg: str, name: str) -> str:
    out = tmp_path / name
    result = run(bare_app(), "keygen", "--alg", alg, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out.read_text()


# ---------------------------------------------------------------------------------------------
# registration


def test_register_on_two_apps_and_twice_on_one(tmp_path: Path) -> None:
    pem_a = keygen_pem(tmp_path, "ES256", "a.pem")
    pem_b = keygen_pem(tmp_path, "ES256", "b.pem")
    upstream = {"name": "gh", "type": "oauth2", "client_id": "c",
                "authorization_endpoint": "https://github.com/login/oauth/authorize",
                "token_endpoint": "https://github.com/login/oauth/access_token"}
    apps = [make_app(SECRET_KEY=SECRET_KEY, MCP_AUTH_UPSTREAMS=[upstream], MCP_AUTH_SIGNING_KEYS=[pem])
            for pem in (pem_a, pem_b)]
    register(apps[0])  # a second registration on the same app replaces the group with itself
    kids = []
    for app in apps:
        assert "mcp-auth" in app.cli.commands
        result = run(app, "jwks")
        assert result.exit_code == 0, result.output
        kids.append(json.loads(result.stdout)["keys"][0]["kid"])
    # each app's command reads its own extension state
    assert kids == [load_signing_key(pem_a).kid, load_signing_key(pem_b).kid]


# ---------------------------------------------------------------------------------------------
# keygen


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_keygen_writes_a_loadable_0600_key(tmp_path: Path, alg: str) -> None:
    out = tmp_path / "signing.pem"
    result = run(bare_app(), "keygen", "--alg", alg, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = load_signing_key(out.read_text())
    assert key.alg == alg
    assert key.kid in result.output
    # the file is accepted as configuration as-is
    settings, _ = parse_settings({"MCP_AUTH_ISSUER": ISSUER, "MCP_AUTH_RESOURCE": RESOURCE,
                                  "MCP_AUTH_SIGNING_KEYS": [str(out)]})
    assert load_signing_key(settings.signing_keys[0]).kid == key.kid


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "signing.pem"
    out.write_text("keep me")
    out.chmod(0o644)
    result = run(bare_app(), "keygen", "--out", str(out))
    assert result.exit_code != 0
    assert "--force" in result.output
    assert out.read_text() == "keep me"

    result = run(bare_app(), "keygen", "--out", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert load_signing_key(out.read_text()).alg == "RS256"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.pem"]  # no temp file left


def test_keygen_prints_pem_to_stdout_without_out() -> None:
    result = run(bare_app(), "keygen", "--alg", "EdDSA")
    assert result.exit_code == 0
    key = load_signing_key(result.stdout)
    assert key.alg == "EdDSA"
    assert key.kid in result.stderr and key.kid not in result.stdout


# ---------------------------------------------------------------------------------------------
# jwks


def test_jwks_prints_public_keys_with_thumbprint_kids(tmp_path: Path) -> None:
    pems = [keygen_pem(tmp_path, "RS256", "new.pem"), keygen_pem(tmp_path, "ES256", "old.pem")]
    upstream = {"name": "gh", "type": "oauth2", "client_id": "c",
                "authorization_endpoint": "https://github.com/login/oauth/authorize",
                "token_endpoint": "https://github.com/login/oauth/access_token"}
    app = make_app(SECRET_KEY=SECRET_KEY, MCP_AUTH_UPSTREAMS=[upstream],
                   MCP_AUTH_SIGNING_KEYS=[str(tmp_path / "new.pem"), pems[1]])
    result = run(app, "jwks")
    assert result.exit_code == 0, result.output
    keys = json.loads(result.stdout)["keys"]
    assert [k["kid"] for k in keys] == [load_signing_key(p).kid for p in pems]
    assert [k["alg"] for k in keys] == ["RS256", "ES256"]
    for jwk in keys:
        assert jwk["kid"] == thumbprint(jwk)  # RFC 7638 over the public members
        assert jwk["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)


def test_jwks_in_mode_a_says_there_are_none() -> None:
    result = run(make_app(), "jwks")
    assert result.exit_code == 1
    assert "Mode A" in result.output
    assert result.stdout == ""


def test_jwks_refuses_an_ephemeral_key() -> None:
    upstream = {"name": "gh", "type": "oauth2", "client_id": "c",
                "authorization_endpoint": "https://github.com/login/oauth/authorize",
                "token_endpoint": "https://github.com/login/oauth/access_token"}
    result = run(make_app(SECRET_KEY=SECRET_KEY, MCP_AUTH_UPSTREAMS=[upstream]), "jwks")
    assert result.exit_code == 1
    assert "keygen" in result.output and result.stdout == ""


# ---------------------------------------------------------------------------------------------
# check


def mode_a_config(jwks_url: str, sts_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "MCP_AUTH_JWKS_URI": jwks_url,
        "MCP_AUTH_BACKENDS": {"docs": {"strategy": "token_exchange", "token_url": f"{sts_url}/token",
                                       "client_id": "mcp", "client_secret": "sts-Secret-8812",
                                       "audience": "docs-api"}},
        **extra,
    }


@pytest.fixture()
def jwks_server(tmp_path: Path) -> Any:
    pem = keygen_pem(tmp_path, "ES256", "issuer.pem")
    with serve(json_app({"/jwks": {"keys": [dict(load_signing_key(pem).public_jwk)]}})) as srv:
        yield srv


def test_check_passes_against_a_healthy_setup(jwks_server: Any) -> None:
    with serve(sts_app) as sts:
        app = make_app(**mode_a_config(f"{jwks_server.url}/jwks", sts.url))
        result = run(app, "check")
    assert result.exit_code == 0, result.output
    assert rows(result.output) == {"config": ["OK"], "storage": ["OK"], "issuer jwks": ["OK"],
                                   "backend docs": ["OK"]}
    assert "HTTP 405" in result.output
    assert "all checks passed" in result.output


def test_check_passes_with_real_redis(jwks_server: Any, redis_url: str) -> None:
    with serve(sts_app) as sts:
        app = make_app(**mode_a_config(f"{jwks_server.url}/jwks", sts.url, MCP_AUTH_STORAGE=redis_url))
        result = run(app, "check")
    assert result.exit_code == 0, result.output
    assert "RedisStorage" in result.output and rows(result.output)["storage"] == ["OK"]


def test_check_fails_when_the_sts_is_down(jwks_server: Any) -> None:
    with serve(sts_app) as sts:
        url = sts.url
    app = make_app(**mode_a_config(f"{jwks_server.url}/jwks", url))
    result = run(app, "check")
    assert result.exit_code != 0
    table = rows(result.output)
    assert table["backend docs"] == ["FAIL"]
    assert table["storage"] == ["OK"]
    assert "1 check(s) failed" in result.output
    assert "sts-Secret-8812" not in result.output


def test_check_fails_when_redis_is_down(jwks_server: Any) -> None:
    password = "redis-Pw-5521"
    with serve(sts_app) as sts:
        app = make_app(**mode_a_config(
            f"{jwks_server.url}/jwks", sts.url,
            MCP_AUTH_STORAGE=f"redis://:{password}@127.0.0.1:{closed_port()}/0",
            MCP_AUTH_UPSTREAM_TIMEOUT=2,
        ))
        result = run(app, "check")
    assert result.exit_code != 0
    table = rows(result.output)
    assert table["storage"] == ["FAIL"] and table["backend docs"] == ["OK"]
    assert "StorageUnavailable" in result.output
    assert password not in result.output


def test_check_fails_when_the_issuer_jwks_is_unreachable_or_empty(jwks_server: Any) -> None:
    with serve(sts_app) as sts, serve(json_app({"/jwks": {"keys": []}})) as empty:
        for jwks_url in (f"http://127.0.0.1:{closed_port()}/jwks", f"{empty.url}/jwks",
                         f"{empty.url}/missing"):
            result = run(make_app(**mode_a_config(jwks_url, sts.url)), "check")
            assert result.exit_code != 0, jwks_url
            assert rows(result.output)["issuer jwks"] == ["FAIL"]


def test_check_mode_b_upstreams(tmp_path: Path) -> None:
    pem = keygen_pem(tmp_path, "ES256", "k.pem")
    with serve(json_app({"/authorize": {}, "/token": {}})) as idp:
        upstream = {"name": "github", "type": "oauth2", "client_id": "c", "client_secret": "gh-Secret-77",
                    "authorization_endpoint": f"{idp.url}/authorize", "token_endpoint": f"{idp.url}/token"}
        app = make_app(SECRET_KEY=SECRET_KEY, MCP_AUTH_UPSTREAMS=[upstream], MCP_AUTH_SIGNING_KEYS=[pem],
                       MCP_AUTH_BACKENDS={"wiki": {"strategy": "token_exchange",
                                                   "token_url": f"{idp.url}/token"}})
        healthy = run(app, "check")
    assert healthy.exit_code == 0, healthy.output
    table = rows(healthy.output)
    assert table["upstream github"] == ["OK"] and table["backend wiki"] == ["OK"]
    # V-03 (token_exchange without subject_provider in Mode B) and memory:// are shown, but only warn
    assert table["config"][0] == "OK" and set(table["config"][1:]) == {"WARN"}
    assert "V-03" in healthy.output

    down = run(app, "check")  # the IdP and STS have stopped since
    assert down.exit_code != 0
    table = rows(down.output)
    assert table["upstream github"] == ["FAIL"] and table["backend wiki"] == ["FAIL"]
    assert "2 check(s) failed" in down.output
    assert "gh-Secret-77" not in down.output


def test_check_reports_a_config_edited_after_init(jwks_server: Any) -> None:
    with serve(sts_app) as sts:
        app = make_app(**mode_a_config(f"{jwks_server.url}/jwks", sts.url))
        app.config["MCP_AUTH_CODE_TTL"] = 5
        result = run(app, "check")
    assert result.exit_code != 0
    assert rows(result.output)["config"] == ["FAIL"]
    assert "MCP_AUTH_CODE_TTL" in result.output
