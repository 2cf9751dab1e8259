"""Configuration parsing and the startup rules V-01…V-08 (SPEC §2, §2.1)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask

from flask_mcp_auth import ConfigError, MCPAuth
from flask_mcp_auth.config import DEFAULTS, Settings, apply_defaults, parse_settings
from flask_mcp_auth.keys import generate_rsa_pem, load_signing_key

ISSUER = "https://mcp.example.com"
RESOURCE = "https://mcp.example.com/mcp"
MODE_A: dict[str, Any] = {"MCP_AUTH_ISSUER": ISSUER, "MCP_AUTH_RESOURCE": RESOURCE}
SECRET_KEY = "3c1d5f9e0b7a4e2f8d6c1b0a9e8f7d6c"


def corp(**extra: Any) -> dict[str, Any]:
    return {"name": "corp", "type": "oidc", "issuer": "https://login.corp.example",
            "client_id": "mcp", "client_secret": "corp-inline-secret", **extra}


def github(**extra: Any) -> dict[str, Any]:
    return {
        "name": "github",
        "type": "oauth2",
        "authorization_endpoint": "https://github.com/login/oauth/authorize",
        "token_endpoint": "https://github.com/login/oauth/access_token",
        "userinfo_endpoint": "https://api.github.com/user",
        "userinfo_fields": {"subject": ["id", "login"], "name": ["name", "login"], "email": ["email"]},
        "client_id": "Iv1.8a61f9b3a7aba766",
        "client_secret": "gh-inline-secret",
        "token_endpoint_auth_method": "client_secret_post",
        "scopes": ["repo"],
        **extra,
    }


def mode_b(*upstreams: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**MODE_A, "SECRET_KEY": SECRET_KEY,
            "MCP_AUTH_UPSTREAMS": list(upstreams) or [corp(), github()], **extra}


def _issuer_hash(issuer: str) -> str:
    return hashlib.sha256(issuer.encode()).hexdigest()[:8]


def problems(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_settings(config)
    return info.value.problems


def rules(config: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(rule, key) for rule, key, _ in problems(config)}


def only(config: Mapping[str, Any], rule: str) -> str:
    """The single problem's message, asserting it is the one expected rule."""
    found = problems(config)
    assert [p[0] for p in found] == [rule], found
    return found[0][2]


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    return generate_rsa_pem(2048)


def _pem(key: Any) -> str:
    return str(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode())


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("CORP_SECRET", "GH_SECRET", "STS_SECRET", "DOCS_KEY", "UNSET_SECRET"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


# ---------------------------------------------------------------------------------------------
# valid configurations


def test_valid_mode_a_config() -> None:
    config = {
        **MODE_A,
        "MCP_AUTH_JWKS_URI": "https://login.corp.example/.well-known/jwks.json",
        "MCP_AUTH_PROTECTED_PATHS": ["/mcp"],
        "MCP_AUTH_STORAGE": "redis://cache.internal:6379/0",
        "MCP_AUTH_BACKENDS": {
            "docs": {"strategy": "token_exchange", "token_url": "https://sts.corp.example/token",
                     "client_id": "mcp", "client_secret": "sts-secret", "audience": "docs-api",
                     "url": "https://docs.corp.example/"},
            "weather": {"strategy": "unauthenticated", "url": "https://api.weather.example/"},
        },
    }
    settings, warnings = parse_settings(config)
    assert settings.mode == "A"
    assert warnings == []
    assert settings.issuer == ISSUER and settings.audience == RESOURCE
    assert settings.allowed_audiences == (RESOURCE,)
    assert settings.jwks_uri == "https://login.corp.example/.well-known/jwks.json"
    assert settings.protected_paths == ("/mcp",)
    assert settings.upstreams == () and settings.encryption_keys == ()
    docs = settings.backends["docs"]
    assert (docs.strategy, docs.client_secret, docs.subject_provider) == ("token_exchange", "sts-secret", None)
    assert settings.token_exchange_backends == (docs,)
    assert settings.storage_prefix == "mcp-auth:{mcp.example.com}:"  # SPEC §2 default
    assert settings.resource_metadata_url == "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"


def test_valid_mode_b_config(env: pytest.MonkeyPatch, tmp_path: Path, rsa_pem: str) -> None:
    env.setenv("CORP_SECRET", "corp-from-env")
    env.setenv("GH_SECRET", "gh-from-env")
    env.setenv("STS_SECRET", "sts-from-env")
    key_file = tmp_path / "signing.pem"
    key_file.write_text(rsa_pem)
    config = mode_b(
        corp(client_secret=None, client_secret_env="CORP_SECRET", scopes="openid email offline_access",
             authorize_params={"prompt": "consent"}),
        github(client_secret=None, client_secret_env="GH_SECRET"),
        MCP_AUTH_BACKENDS={
            "github": {"strategy": "upstream_inject", "provider": "github", "url": "https://api.github.com/"},
            "docs": {"strategy": "token_exchange", "token_url": "https://sts.corp.example/token",
                     "client_id": "mcp", "client_secret_env": "STS_SECRET", "audience": "docs-api",
                     "subject_provider": "corp", "url": "https://docs.corp.example/"},
        },
        MCP_AUTH_SIGNING_KEYS=[str(key_file)],
        MCP_AUTH_CLIENTS=[{"client_id": "desktop", "redirect_uris": ["http://127.0.0.1/cb"],
                           "first_party": True, "scopes": ["openid", "offline_access"]}],
        MCP_AUTH_STORAGE="redis://localhost:6379/0",
    )
    settings, warnings = parse_settings(config)
    assert settings.mode == "B" and warnings == []
    assert settings.provider_names == ("corp", "github")
    up = settings.upstream("corp")
    assert (up.client_secret, up.scopes, dict(up.authorize_params)) == (
        "corp-from-env", ("openid", "email", "offline_access"), {"prompt": "consent"})
    gh = settings.upstream("github")
    assert gh.client_secret == "gh-from-env" and gh.token_endpoint_auth_method == "client_secret_post"
    assert gh.userinfo_fields["subject"] == ("id", "login")
    assert settings.backends["docs"].client_secret == "sts-from-env"
    assert settings.backends["github"].provider == "github"
    assert load_signing_key(settings.signing_keys[0]).alg == "RS256"
    assert len(settings.encryption_keys) == 1 and len(settings.encryption_keys[0]) == 32
    assert settings.clients[0].first_party is True
    assert (settings.access_token_ttl, settings.refresh_token_ttl, settings.code_ttl,
            settings.pending_ttl) == (3600, 604800, 600, 600)


def test_mode_b_with_explicit_encryption_keys_needs_no_secret_key() -> None:
    key = "k" * 43  # base64url text of 32 bytes
    config = {**mode_b(), "MCP_AUTH_ENCRYPTION_KEYS": [key, os.urandom(32)]}
    del config["SECRET_KEY"]
    settings, _ = parse_settings(config)
    assert len(settings.encryption_keys) == 2
    assert all(len(k) == 32 for k in settings.encryption_keys)


def test_valid_mode_b_through_mcpauth() -> None:
    app = Flask(__name__)
    app.config.update(mode_b(github()))
    MCPAuth(app)
    runtime = app.extensions["mcp_auth"]
    assert runtime.settings.mode == "B"
    assert runtime.keys is not None


def test_settings_are_frozen() -> None:
    settings, _ = parse_settings(mode_b(github(), MCP_AUTH_BACKENDS={
        "gh": {"strategy": "upstream_inject", "provider": "github"}}))
    assert isinstance(settings, Settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.issuer = "https://evil.example"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.backends["x"] = settings.backends["gh"]  # type: ignore[index]
    with pytest.raises(TypeError):
        settings.upstreams[0].userinfo_fields["subject"] = ("x",)  # type: ignore[index]


def test_apply_defaults_makes_every_key_visible_without_overriding() -> None:
    app = Flask(__name__)
    app.config.update(MODE_A, MCP_AUTH_CODE_TTL=120)
    apply_defaults(app.config)
    assert set(DEFAULTS) <= set(app.config)
    assert app.config["MCP_AUTH_CODE_TTL"] == 120
    assert app.config["MCP_AUTH_STORAGE"] == "memory://"
    # computed defaults are filled in where they follow from other keys
    assert app.config["MCP_AUTH_AUDIENCE"] == RESOURCE
    assert app.config["MCP_AUTH_ALLOWED_AUDIENCES"] == [RESOURCE]
    assert app.config["MCP_AUTH_STORAGE_PREFIX"] == "mcp-auth:{mcp.example.com}:"
    # mutable defaults are copies
    app.config["MCP_AUTH_SCOPES_SUPPORTED"].append("x")
    assert "x" not in DEFAULTS["MCP_AUTH_SCOPES_SUPPORTED"]


def test_single_unnamed_upstream_is_named_default() -> None:
    entry = corp()
    del entry["name"]
    settings, _ = parse_settings(mode_b(entry, MCP_AUTH_BACKENDS={
        "api": {"strategy": "upstream_inject", "provider": "default"}}))
    assert settings.provider_names == ("default",)


def test_public_upstream_without_secret_uses_auth_method_none() -> None:
    settings, _ = parse_settings(mode_b(corp(client_secret=None)))
    assert settings.upstream("corp").token_endpoint_auth_method == "none"
    assert settings.upstream("corp").client_secret is None


# ---------------------------------------------------------------------------------------------
# secret resolution


def test_secret_file_wins_over_env_and_env_over_inline(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_file = tmp_path / "corp.secret"
    secret_file.write_text("from-file\n")
    env.setenv("CORP_SECRET", "from-env")
    both = corp(client_secret="inline", client_secret_env="CORP_SECRET",
                client_secret_file=str(secret_file))
    settings, _ = parse_settings(mode_b(both))
    assert settings.upstream("corp").client_secret == "from-file"
    env_inline = corp(client_secret="inline", client_secret_env="CORP_SECRET")
    settings, _ = parse_settings(mode_b(env_inline))
    assert settings.upstream("corp").client_secret == "from-env"
    settings, _ = parse_settings(mode_b(corp(client_secret="inline")))
    assert settings.upstream("corp").client_secret == "inline"


def test_v05_named_env_var_unset_is_an_error(env: pytest.MonkeyPatch) -> None:
    message = only(mode_b(corp(client_secret="inline", client_secret_env="UNSET_SECRET")), "V-05")
    assert "UNSET_SECRET" in message and "not set" in message


def test_v05_unreadable_or_empty_secret_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.secret"
    message = only(mode_b(corp(client_secret_file=str(missing))), "V-05")
    assert str(missing) in message and "unreadable" in message
    empty = tmp_path / "empty.secret"
    empty.write_text("\n")
    assert "empty" in only(mode_b(corp(client_secret_file=str(empty))), "V-05")


def test_v08_backend_secret_env_unset(env: pytest.MonkeyPatch) -> None:
    config = {**MODE_A, "MCP_AUTH_BACKENDS": {"docs": {
        "strategy": "token_exchange", "token_url": "https://sts.corp.example/token",
        "client_id": "mcp", "client_secret_env": "UNSET_SECRET"}}}
    assert "UNSET_SECRET" in only(config, "V-08")


# ---------------------------------------------------------------------------------------------
# V-01 … V-08, one rule at a time


def test_v01_upstream_inject_in_mode_a() -> None:
    config = {**MODE_A, "MCP_AUTH_BACKENDS": {"gh": {"strategy": "upstream_inject", "provider": "github"}}}
    message = only(config, "V-01")
    assert "'github'" in message and "Mode A" in message


def test_v01_token_exchange_with_subject_provider_in_mode_a() -> None:
    config = {**MODE_A, "MCP_AUTH_BACKENDS": {"docs": {
        "strategy": "token_exchange", "token_url": "https://sts.corp.example/token",
        "subject_provider": "corp"}}}
    assert rules(config) == {("V-01", "MCP_AUTH_BACKENDS[docs]")}


def test_v02_unknown_provider_suggests_closest_name() -> None:
    config = mode_b(MCP_AUTH_BACKENDS={"gh": {"strategy": "upstream_inject", "provider": "githib"}})
    message = only(config, "V-02")
    assert "'githib'" in message and "did you mean 'github'" in message


def test_v02_unknown_subject_provider_suggests_closest_name() -> None:
    config = mode_b(MCP_AUTH_BACKENDS={"docs": {
        "strategy": "token_exchange", "token_url": "https://sts.corp.example/token",
        "subject_provider": "crop"}})
    assert "did you mean 'corp'" in only(config, "V-02")


def test_v02_is_not_masked_as_v01_when_an_upstream_entry_is_invalid() -> None:
    # The only upstream has an error of its own; the backend still refers to it by a declared name.
    config = mode_b(github(client_id=None), MCP_AUTH_BACKENDS={
        "gh": {"strategy": "upstream_inject", "provider": "github"}})
    assert {r for r, _ in rules(config)} == {"V-05"}


def test_v03_warning_names_each_backend() -> None:
    config = mode_b(MCP_AUTH_BACKENDS={
        "docs": {"strategy": "token_exchange", "token_url": "https://sts.corp.example/token"},
        "wiki": {"strategy": "token_exchange", "token_url": "https://sts.corp.example/token"},
        "mail": {"strategy": "token_exchange", "token_url": "https://sts.corp.example/token",
                 "subject_provider": "corp"},
    })
    _, warnings = parse_settings(config)
    assert [w[0] for w in warnings] == ["V-03"]
    assert "'docs'" in warnings[0][2] and "'wiki'" in warnings[0][2] and "'mail'" not in warnings[0][2]


def test_v03_not_in_mode_a() -> None:
    config = {**MODE_A, "MCP_AUTH_BACKENDS": {
        "docs": {"strategy": "token_exchange", "token_url": "https://sts.corp.example/token"}}}
    assert parse_settings(config)[1] == []


def test_v03_logged_once_per_init_app(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flask_mcp_auth")
    backends = {
        "docs": {"strategy": "token_exchange", "token_url": "https://sts.corp.example/token"},
        "wiki": {"strategy": "token_exchange", "token_url": "https://sts.corp.example/token"},
    }
    for _ in range(2):  # two apps: one warning each, not one per backend or per request
        app = Flask(__name__)
        app.config.update(mode_b(github(), MCP_AUTH_BACKENDS=backends))
        MCPAuth(app)
        app.test_client().get("/")
    v03 = [r for r in caplog.records if "V-03" in r.getMessage()]
    assert len(v03) == 2
    assert all("'docs'" in r.getMessage() and "'wiki'" in r.getMessage() for r in v03)
    assert all(r.levelno == logging.WARNING for r in v03)


@pytest.mark.parametrize(
    ("issuer", "reason"),
    [
        ("https://mcp.example.com/", "slash"),
        ("https://mcp.example.com?tenant=a", "query"),
        ("https://mcp.example.com#top", "fragment"),
        ("https://admin@mcp.example.com", "userinfo"),
        ("http://mcp.example.com", "https"),
        ("https://MCP.example.com", "lowercase"),
        ("https://mcp.example.com:443", "default port"),
        ("mcp.example.com", "absolute"),
    ],
)
def test_v04_issuer_not_canonical(issuer: str, reason: str) -> None:
    message = only({**MODE_A, "MCP_AUTH_ISSUER": issuer}, "V-04")
    assert reason in message
    assert "use e.g." in message


def test_v04_fix_suggests_the_canonical_issuer() -> None:
    message = only({**MODE_A, "MCP_AUTH_ISSUER": "https://mcp.example.com/"}, "V-04")
    assert "'https://mcp.example.com'" in message


@pytest.mark.parametrize("issuer", ["http://127.0.0.1:5000", "http://localhost:8080", "http://[::1]:9000",
                                    "https://mcp.example.com/tenant-a"])
def test_v04_loopback_http_and_path_issuers_are_canonical(issuer: str) -> None:
    settings, _ = parse_settings({**MODE_A, "MCP_AUTH_ISSUER": issuer})
    assert settings.issuer == issuer


def test_v04_missing_issuer_and_resource() -> None:
    assert rules({}) == {("V-04", "MCP_AUTH_ISSUER"), ("V-04", "MCP_AUTH_RESOURCE")}


def test_v04_jwks_uri_elsewhere_in_mode_b() -> None:
    config = mode_b(MCP_AUTH_JWKS_URI="https://login.corp.example/jwks")
    message = only(config, "V-04")
    assert "https://login.corp.example/jwks" in message
    assert "https://mcp.example.com/.well-known/jwks.json" in message
    settings, _ = parse_settings(mode_b(MCP_AUTH_JWKS_URI=f"{ISSUER}/.well-known/jwks.json"))
    assert settings.jwks_uri == f"{ISSUER}/.well-known/jwks.json"


def test_v05_unknown_type() -> None:
    message = only(mode_b(github(type="saml")), "V-05")
    assert "'saml'" in message and "'oidc'" in message


def test_v05_missing_client_id() -> None:
    assert "client_id is missing" in only(mode_b(corp(client_id=None)), "V-05")


def test_v05_missing_oidc_issuer_and_oauth2_endpoints() -> None:
    found = problems(mode_b(corp(issuer=None), github(token_endpoint=None)))
    assert [p[0] for p in found] == ["V-05", "V-05"]
    assert "issuer" in found[0][2] and "token_endpoint" in found[1][2]


def test_v05_oidc_issuer_not_canonical() -> None:
    assert "slash" in only(mode_b(corp(issuer="https://login.corp.example/")), "V-05")


def test_v05_oauth2_issuer_optional_and_kept() -> None:
    settings, _ = parse_settings(mode_b(corp(), github()))
    assert settings.upstreams[1].issuer is None
    for issuer in ("https://github.com/login/oauth", "https://as.example/", "http://127.0.0.1:8080"):
        settings, _ = parse_settings(mode_b(corp(), github(issuer=issuer)))
        assert settings.upstreams[1].issuer == issuer  # kept exactly: compared as a string


@pytest.mark.parametrize("issuer", ["github.com", "http://github.com", "https://as.example/?x=1",
                                    "https://as.example/#f", "https://u:p@as.example", 5, ["https://a"],
                                    ""])
def test_v05_oauth2_issuer_must_be_a_url(issuer: Any) -> None:
    [(rule, key, message)] = problems(mode_b(corp(), github(issuer=issuer)))
    assert (rule, key) == ("V-05", "MCP_AUTH_UPSTREAMS[github]") and "issuer" in message


@pytest.mark.parametrize("name", ["Corp", "corp_1", "-corp", "corp-", "", 7])
def test_v05_bad_upstream_name(name: Any) -> None:
    assert "invalid" in only(mode_b(corp(name=name)), "V-05")


def test_v05_duplicate_upstream_name() -> None:
    assert "duplicate" in only(mode_b(corp(), corp()), "V-05")


def test_v05_several_upstreams_with_an_unnamed_one() -> None:
    unnamed = corp()
    del unnamed["name"]
    assert "unnamed" in only(mode_b(unnamed, github()), "V-05")


def test_v05_reserved_name_default_among_several() -> None:
    assert "reserved" in only(mode_b(corp(name="default"), github()), "V-05")


def test_v05_reserved_authorize_params() -> None:
    message = only(mode_b(corp(authorize_params={"prompt": "consent", "redirect_uri": "https://x",
                                                  "code_challenge_method": "plain"})), "V-05")
    assert "code_challenge_method" in message and "redirect_uri" in message and "prompt" not in message


def test_v05_unreadable_signing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.pem"
    message = only({**MODE_A, "MCP_AUTH_SIGNING_KEYS": [str(path)]}, "V-05")
    assert str(path) in message and "keygen" in message


def test_v05_rsa_signing_key_too_small() -> None:
    small = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    message = only(mode_b(MCP_AUTH_SIGNING_KEYS=[small]), "V-05")
    assert "1024" in message and "2048" in message


def test_v05_signing_key_wrong_curve(tmp_path: Path) -> None:
    path = tmp_path / "k1.pem"
    path.write_text(_pem(ec.generate_private_key(ec.SECP256K1())))
    message = only(mode_b(MCP_AUTH_SIGNING_KEYS=[str(path)]), "V-05")
    assert "secp256k1" in message and "P-256" in message


def test_v05_signing_key_public_or_encrypted(rsa_pem: str) -> None:
    key = serialization.load_pem_private_key(rsa_pem.encode(), None)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"pw")).decode()
    found = problems(mode_b(MCP_AUTH_SIGNING_KEYS=[rsa_pem, public, encrypted]))
    assert [(p[0], p[1]) for p in found] == [("V-05", "MCP_AUTH_SIGNING_KEYS[1]"),
                                            ("V-05", "MCP_AUTH_SIGNING_KEYS[2]")]
    assert "not a PEM private key" in found[0][2] and "passphrase" in found[1][2]


@pytest.mark.parametrize(
    ("key", "bad", "low", "high"),
    [
        ("MCP_AUTH_ACCESS_TOKEN_TTL", 59, 60, 86400),
        ("MCP_AUTH_ACCESS_TOKEN_TTL", 86401, 60, 86400),
        ("MCP_AUTH_REFRESH_TOKEN_TTL", 3599, 3600, 2592000),
        ("MCP_AUTH_REFRESH_TOKEN_TTL", 2592001, 3600, 2592000),
        ("MCP_AUTH_CODE_TTL", 29, 30, 600),
        ("MCP_AUTH_CODE_TTL", 601, 30, 600),
        ("MCP_AUTH_PENDING_TTL", 59, 60, 1800),
        ("MCP_AUTH_PENDING_TTL", 1801, 60, 1800),
    ],
)
def test_v05_ttl_out_of_bounds(key: str, bad: int, low: int, high: int) -> None:
    found = problems({**MODE_A, key: bad})
    assert found == [("V-05", key, f"{bad} is out of bounds; use {low}..{high} seconds")]
    settings, _ = parse_settings({**MODE_A, key: low})
    assert getattr(settings, key.removeprefix("MCP_AUTH_").lower()) == low


def test_v05_ttl_not_a_number() -> None:
    assert "whole number" in only({**MODE_A, "MCP_AUTH_CODE_TTL": "ten minutes"}, "V-05")


def test_v05_no_encryption_key_in_mode_b() -> None:
    config = mode_b()
    del config["SECRET_KEY"]
    found = problems(config)
    assert found[0][:2] == ("V-05", "MCP_AUTH_ENCRYPTION_KEYS") and len(found) == 1
    assert "SECRET_KEY" in found[0][2]


def test_v05_bad_encryption_key() -> None:
    assert rules(mode_b(MCP_AUTH_ENCRYPTION_KEYS=["too-short"])) == {
        ("V-05", "MCP_AUTH_ENCRYPTION_KEYS[0]")}


def test_v05_other_scalar_keys() -> None:
    config = {
        **MODE_A,
        "MCP_AUTH_CONSENT": "sometimes",
        "MCP_AUTH_STORAGE": "postgres://db/0",
        "MCP_AUTH_UPSTREAM_TIMEOUT": 0,
        "MCP_AUTH_DYNAMIC_REGISTRATION": "false",
        "MCP_AUTH_PROTECTED_PATHS": ["mcp"],
        "MCP_AUTH_MAX_CLIENTS": "many",
        "MCP_AUTH_TLS_VERIFY": "/nonexistent/ca.pem",
    }
    assert {k for _, k in rules(config)} == {
        "MCP_AUTH_CONSENT", "MCP_AUTH_STORAGE", "MCP_AUTH_UPSTREAM_TIMEOUT",
        "MCP_AUTH_DYNAMIC_REGISTRATION", "MCP_AUTH_PROTECTED_PATHS", "MCP_AUTH_MAX_CLIENTS",
        "MCP_AUTH_TLS_VERIFY"}


def test_v05_auth_method_needs_a_secret() -> None:
    assert "needs a secret" in only(mode_b(corp(client_secret=None,
                                                token_endpoint_auth_method="client_secret_basic")), "V-05")


def test_v05_pre_registered_clients() -> None:
    config = {**MODE_A, "MCP_AUTH_CLIENTS": [
        {"client_id": "web", "redirect_uris": ["http://app.example/cb"]},
        {"client_id": "cli", "redirect_uris": ["http://127.0.0.1/cb"], "scopes": ["admin"]},
        {"client_id": "js", "redirect_uris": ["javascript:alert(1)"]},
    ]}
    found = problems(config)
    assert [p[1] for p in found] == ["MCP_AUTH_CLIENTS[web]", "MCP_AUTH_CLIENTS[cli]",
                                    "MCP_AUTH_CLIENTS[js]"]
    assert "https" in found[0][2] and "admin" in found[1][2] and "javascript" in found[2][2]


@pytest.mark.parametrize("provider", ["", None])
def test_v06_upstream_inject_empty_provider(provider: str | None) -> None:
    config = mode_b(MCP_AUTH_BACKENDS={"gh": {"strategy": "upstream_inject", "provider": provider}})
    assert rules(config) == {("V-06", "MCP_AUTH_BACKENDS[gh]")}
    mode_a = {**MODE_A, "MCP_AUTH_BACKENDS": {"gh": {"strategy": "upstream_inject", "provider": provider}}}
    assert rules(mode_a) == {("V-06", "MCP_AUTH_BACKENDS[gh]")}


def test_v07_audience_not_in_allowed_audiences() -> None:
    config = mode_b(MCP_AUTH_AUDIENCE="https://api.example.com",
                    MCP_AUTH_ALLOWED_AUDIENCES=[RESOURCE])
    message = only(config, "V-07")
    assert "'https://api.example.com'" in message and RESOURCE in message
    # Mode A mints nothing, so the rule does not apply there
    settings, _ = parse_settings({**MODE_A, "MCP_AUTH_AUDIENCE": "https://api.example.com"})
    assert settings.audience == "https://api.example.com"


def test_v08_unknown_strategy() -> None:
    message = only({**MODE_A, "MCP_AUTH_BACKENDS": {"x": {"strategy": "token-exchange"}}}, "V-08")
    assert "'token-exchange'" in message and "did you mean 'token_exchange'" in message


def test_v08_token_exchange_without_token_url() -> None:
    assert "token_url" in only({**MODE_A, "MCP_AUTH_BACKENDS": {
        "docs": {"strategy": "token_exchange", "audience": "docs"}}}, "V-08")


def test_v08_header_injection_without_header_or_value(env: pytest.MonkeyPatch) -> None:
    config = {**MODE_A, "MCP_AUTH_BACKENDS": {
        "a": {"strategy": "header_injection", "value": "k"},
        "b": {"strategy": "header_injection", "header": "X-API-Key"},
        "c": {"strategy": "header_injection", "header": "X-API-Key", "value_env": "DOCS_KEY"},
    }}
    assert rules(config) == {("V-08", "MCP_AUTH_BACKENDS[a]"), ("V-08", "MCP_AUTH_BACKENDS[b]"),
                             ("V-08", "MCP_AUTH_BACKENDS[c]")}
    env.setenv("DOCS_KEY", "docs-api-key")
    settings, _ = parse_settings({**MODE_A, "MCP_AUTH_BACKENDS": {"c": config["MCP_AUTH_BACKENDS"]["c"]}})
    assert settings.backends["c"].value == "docs-api-key"


def test_v08_token_exchange_requested_type_must_be_bearer_usable() -> None:
    config = {**MODE_A, "MCP_AUTH_BACKENDS": {"docs": {
        "strategy": "token_exchange", "token_url": "https://sts.corp.example/token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}}}
    assert "refresh_token" in only(config, "V-08")


@pytest.mark.parametrize("url", ["/relative", "api.example.com", "ftp://files.example.com/"])
def test_v08_url_not_absolute(url: str) -> None:
    config = {**MODE_A, "MCP_AUTH_BACKENDS": {"w": {"strategy": "unauthenticated", "url": url}}}
    assert repr(url) in only(config, "V-08")


# ---------------------------------------------------------------------------------------------
# all together, and nothing secret in any message


def test_several_problems_reported_together() -> None:
    app = Flask(__name__)
    app.config.update(mode_b(
        corp(), github(type="saml"),
        MCP_AUTH_ISSUER="https://mcp.example.com/",
        MCP_AUTH_AUDIENCE="https://other.example.com",
        MCP_AUTH_CODE_TTL=5,
        MCP_AUTH_BACKENDS={
            "a": {"strategy": "upstream_inject", "provider": "crop"},
            "b": {"strategy": "upstream_inject"},
            "c": {"strategy": "magic"},
        },
    ))
    with pytest.raises(ConfigError) as info:
        MCPAuth(app)
    err = info.value
    assert isinstance(err, ValueError)
    assert sorted({p[0] for p in err.problems}) == ["V-02", "V-04", "V-05", "V-06", "V-07", "V-08"]
    assert len(err.problems) == 7
    text = str(err)
    assert "7 configuration problem(s)" in text
    for rule, key, _ in err.problems:
        assert f"[{rule}] {key}:" in text
    assert "mcp_auth" not in app.extensions


def test_secret_values_never_appear_in_messages(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secrets = {
        "inline": "S3cr3t-inline-Zq81",
        "env": "S3cr3t-env-Yw22",
        "file": "S3cr3t-file-Xv33",
        "header": "S3cr3t-header-Wu44",
        "redis": "S3cr3t-redis-Vt55",
        "userinfo": "S3cr3t-userinfo-Us66",
        "enc": "S3cr3t-enc-Tr77",
        "query": "S3cr3t-query-Sq88",
        "client": "S3cr3t-client-Rp99",
    }
    env.setenv("STS_SECRET", secrets["env"])
    env.setenv("DOCS_KEY", secrets["header"])
    secret_file = tmp_path / "s"
    secret_file.write_text(secrets["file"])
    rsa_text = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    raw_key = "".join(rsa_text.splitlines()[1:-1])  # key material without PEM armour
    config = mode_b(
        corp(client_secret=secrets["inline"], type="saml"),
        github(client_secret_file=str(secret_file), token_endpoint="ftp://github.com/token"),
        {"name": "x", "type": "oauth2", "client_secret": secrets["inline"],
         "authorization_endpoint": f"https://u:{secrets['userinfo']}@idp.example/auth"},
        MCP_AUTH_ISSUER=f"https://admin:{secrets['userinfo']}@mcp.example.com/",
        MCP_AUTH_JWKS_URI=f"https://mcp.example.com/jwks?key={secrets['query']}",
        MCP_AUTH_STORAGE=f"redis+sentinel://:{secrets['redis']}@cache:26379/0",
        MCP_AUTH_ENCRYPTION_KEYS=[secrets["enc"]],
        MCP_AUTH_SIGNING_KEYS=[rsa_text, raw_key],
        MCP_AUTH_CLIENTS=[{"client_id": "c", "client_secret": secrets["client"],
                           "redirect_uris": ["http://evil.example/cb"]}],
        MCP_AUTH_BACKENDS={
            "docs": {"strategy": "token_exchange", "token_url": "http://sts.example/token",
                     "client_secret_env": "STS_SECRET"},
            "hdr": {"strategy": "header_injection", "header": "bad header", "value_env": "DOCS_KEY"},
            "hdr2": {"strategy": "header_injection", "header": "X-K", "value": secrets["header"] + "\n"},
            "url": {"strategy": "unauthenticated", "url": f"https://u:{secrets['userinfo']}@api.example/"},
        },
    )
    with pytest.raises(ConfigError) as info:
        parse_settings(config)
    assert len(info.value.problems) >= 14
    texts = [str(info.value)] + [m for _, _, m in info.value.problems]
    for text in texts:
        for secret in [*secrets.values(), raw_key[:40], raw_key[-40:]]:
            assert secret not in text
    assert "***" in str(info.value)  # masked, not dropped
    # Mode A path of the JWKS rule: query values masked too
    message = only({**MODE_A, "MCP_AUTH_JWKS_URI": f"http://idp.example/jwks?key={secrets['query']}"}, "V-04")
    assert secrets["query"] not in message and "key=***" in message


# ---------------------------------------------------------------------------------------------
# typo warnings


def test_unknown_keys_are_warned_with_a_suggestion() -> None:
    config = mode_b(
        corp(subject_clam="email"),
        MCP_AUTH_UPSTREAM_TIMOUT=3,
        MCP_AUTH_BACKENDS={"docs": {"strategy": "token_exchange", "token_url": "https://sts.example/t",
                                    "subject_provder": "corp"}},
    )
    _, warnings = parse_settings(config)
    text = "\n".join(f"{r} {k} {m}" for r, k, m in warnings)
    assert "did you mean 'subject_claim'" in text
    assert "did you mean 'MCP_AUTH_UPSTREAM_TIMEOUT'" in text
    assert "did you mean 'subject_provider'" in text


# ---------------------------------------------------------------------------------------------
# storage prefix: default per issuer (F7) and the Redis Cluster hash tag (F6)


def test_st09_default_prefix_differs_for_two_issuers_on_one_host() -> None:
    issuers = ["https://mcp.example.com", "https://mcp.example.com:8443", "https://mcp.example.com/a",
               "https://mcp.example.com/b", "http://127.0.0.1:5000", "http://127.0.0.1:5001"]
    prefixes = {}
    for issuer in issuers:
        settings, warnings = parse_settings({**MODE_A, "MCP_AUTH_ISSUER": issuer,
                                             "MCP_AUTH_STORAGE": "redis://cache.internal:6379/0"})
        assert warnings == []  # the default carries a hash tag
        prefixes[issuer] = settings.storage_prefix
    assert len(set(prefixes.values())) == len(issuers)
    # readable: host and (default or explicit) port, then 8 hex of sha256 over the whole issuer
    assert prefixes["https://mcp.example.com:8443"] == (
        f"mcp-auth:{{mcp.example.com:8443:{_issuer_hash('https://mcp.example.com:8443')}}}:")
    assert prefixes["https://mcp.example.com/a"] == (
        f"mcp-auth:{{mcp.example.com:443:{_issuer_hash('https://mcp.example.com/a')}}}:")
    assert prefixes["http://127.0.0.1:5000"].startswith("mcp-auth:{127.0.0.1:5000:")
    assert prefixes["https://mcp.example.com"] == "mcp-auth:{mcp.example.com}:"  # SPEC §2 default


def test_st09_two_issuers_on_one_host_share_no_records_on_one_redis(redis_url: str) -> None:
    from flask_mcp_auth.storage import storage_from_url

    stores = []
    for issuer in ("https://mcp.example.com/a", "https://mcp.example.com/b"):
        settings, _ = parse_settings({**MODE_A, "MCP_AUTH_ISSUER": issuer, "MCP_AUTH_STORAGE": redis_url})
        stores.append(storage_from_url(settings.storage, settings.storage_prefix))
    try:
        stores[0].put("client", "c1", {"client_id": "c1"}, ttl=60)
        assert stores[0].get("client", "c1") == {"client_id": "c1"}
        assert stores[1].get("client", "c1") is None
        assert stores[0].incr("reg", "10.0.0.1", 60) == 1
        assert stores[1].incr("reg", "10.0.0.1", 60) == 1  # separate DCR rate/cap counters
    finally:
        for store in stores:
            store.close()


@pytest.mark.parametrize(("prefix", "suggested"), [
    ("myapp:", "myapp:{mcp}:"), ("myapp", "myapp:{mcp}:"), ("myapp:{}:", "myapp:{mcp}:"),
    ("myapp:}{mcp:", "myapp:mcp:{mcp}:"), ("{", "{mcp}:")])
def test_untagged_prefix_on_redis_is_a_warning_naming_the_fix(prefix: str, suggested: str) -> None:
    settings, warnings = parse_settings({**MODE_A, "MCP_AUTH_STORAGE": "redis://cache.internal:6379/0",
                                         "MCP_AUTH_STORAGE_PREFIX": prefix})
    assert settings.storage_prefix == prefix  # accepted: single-node Redis works with it
    assert [(r, k) for r, k, _ in warnings] == [("V-05", "MCP_AUTH_STORAGE_PREFIX")]
    message = warnings[0][2]
    assert "hash tag" in message and "Redis Cluster" in message and "warning" in message
    fix = message.split("use e.g. ")[1].split("'")[1]
    # the suggested prefix really is tagged: no second warning for it
    assert parse_settings({**MODE_A, "MCP_AUTH_STORAGE": "redis://cache.internal:6379/0",
                           "MCP_AUTH_STORAGE_PREFIX": fix})[1] == []
    assert fix == suggested


@pytest.mark.parametrize("prefix", ["myapp:{mcp}:", "{x}", "app:{tenant-1}:", "a{b}{}"])
def test_tagged_prefix_on_redis_is_not_warned(prefix: str) -> None:
    config = {**MODE_A, "MCP_AUTH_STORAGE": "rediss://cache.internal:6380/0", "MCP_AUTH_STORAGE_PREFIX": prefix}
    assert parse_settings(config)[1] == []


def test_untagged_prefix_on_memory_storage_is_not_warned() -> None:
    from flask_mcp_auth.storage.memory import MemoryStorage

    for storage in ("memory://", MemoryStorage()):
        config = {**MODE_A, "MCP_AUTH_STORAGE": storage, "MCP_AUTH_STORAGE_PREFIX": "myapp:"}
        assert parse_settings(config)[1] == []


def test_storage_instance_is_checked_by_its_own_prefix(redis_url: str) -> None:
    from flask_mcp_auth.storage.redis import RedisStorage

    untagged = RedisStorage.from_url(redis_url, prefix="own:")
    tagged = RedisStorage.from_url(redis_url, prefix="own:{mcp}:")
    try:
        # MCP_AUTH_STORAGE_PREFIX is not used by an instance: its own prefix is what counts
        _, warnings = parse_settings({**MODE_A, "MCP_AUTH_STORAGE": untagged,
                                      "MCP_AUTH_STORAGE_PREFIX": "cfg:{tag}:"})
        assert [(r, k) for r, k, _ in warnings] == [("V-05", "MCP_AUTH_STORAGE")]
        assert "'own:'" in warnings[0][2] and "'own:{mcp}:'" in warnings[0][2]
        assert parse_settings({**MODE_A, "MCP_AUTH_STORAGE": tagged,
                               "MCP_AUTH_STORAGE_PREFIX": "cfg:"})[1] == []
    finally:
        untagged.close()
        tagged.close()


@pytest.fixture()
def redis_cluster() -> Iterator[int]:
    """A real one-node Redis Cluster (all 16384 slots on one node): it still refuses cross-slot scripts."""
    import shutil
    import subprocess
    import tempfile
    import time

    import redis

    from tests.support.redis_server import RedisServer, free_port

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found; run `bash scripts/ensure-redis.sh`")
    workdir = tempfile.mkdtemp(prefix="mcp-auth-cluster-")
    server: RedisServer | None = None
    try:
        for _attempt in range(5):
            # The cluster bus port is given explicitly: the default (port + 10000) may be taken or
            # beyond 65535 for an ephemeral port, and redis-server would exit.
            port, bus = free_port(), free_port()
            proc = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(port), "--cluster-port", str(bus),
                 "--save", "", "--appendonly", "no", "--dir", workdir, "--cluster-enabled", "yes",
                 "--cluster-config-file", f"nodes-{port}.conf", "--daemonize", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            server = RedisServer(port=port, pid=proc.pid, workdir=workdir)
            client = redis.Redis(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 30  # readiness wait, not an assertion on timing
            last: Exception | None = None
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if cast(dict[str, str], client.cluster("INFO")).get("cluster_state") == "ok":
                        client.close()
                        yield port
                        return
                    if not client.cluster("SLOTS"):
                        client.cluster("ADDSLOTSRANGE", 0, 16383)
                except redis.RedisError as exc:  # not listening yet, or slots being assigned
                    last = exc
                time.sleep(0.05)
            client.close()
            server.stop()
            server = None
        pytest.fail(f"one-node Redis Cluster did not become ready ({type(last).__name__})")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_cluster_warning_matches_real_redis_cluster(redis_cluster: int) -> None:
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException

    from flask_mcp_auth.storage import StorageUnavailable
    from flask_mcp_auth.storage.redis import RedisStorage

    def session_roundtrip(prefix: str) -> None:
        store = RedisStorage(RedisCluster(host="127.0.0.1", port=redis_cluster), prefix)  # type: ignore[arg-type]
        try:
            store.put_upstream_token("sid1", "corp", "blob", 600)
            store.set_session("sid1", "alice", 600, complete=True)
            loaded = store.load_session("sid1")
            assert loaded is not None and loaded.owner == "alice" and dict(loaded.tokens) == {"corp": "blob"}
        finally:
            store.client.close()

    def warned(prefix: str) -> list[tuple[str, str, str]]:
        return parse_settings({**MODE_A, "MCP_AUTH_STORAGE": "redis://127.0.0.1:6379/0",
                               "MCP_AUTH_STORAGE_PREFIX": prefix})[1]

    default = parse_settings({**MODE_A, "MCP_AUTH_STORAGE": "redis://127.0.0.1:6379/0"})[0].storage_prefix
    assert warned(default) == []
    session_roundtrip(default)  # the default works on a cluster
    (warning,) = warned("myapp:")
    # the prefix that is warned about really fails there (redis-py refuses cross-slot EVALSHA)
    with pytest.raises((StorageUnavailable, RedisClusterException)):
        session_roundtrip("myapp:")
    fix = warning[2].split("use e.g. ")[1].split("'")[1]
    assert fix == "myapp:{mcp}:"
    session_roundtrip(fix)  # and the suggested fix works


# ---------------------------------------------------------------------------------------------
# insecure settings are warned about (F8)


def test_v05_tls_verify_false_is_a_warning() -> None:
    settings, warnings = parse_settings({**MODE_A, "MCP_AUTH_TLS_VERIFY": False})
    assert settings.tls_verify is False
    assert [(r, k) for r, k, _ in warnings] == [("V-05", "MCP_AUTH_TLS_VERIFY")]
    assert "JWKS" in warnings[0][2] and "warning" in warnings[0][2]
    _, warnings_b = parse_settings({**mode_b(), "MCP_AUTH_TLS_VERIFY": False})
    assert [(r, k) for r, k, _ in warnings_b] == [("V-05", "MCP_AUTH_TLS_VERIFY")]
    assert "upstream" in warnings_b[0][2]
    for ok in (True, None):
        assert parse_settings({**MODE_A, "MCP_AUTH_TLS_VERIFY": ok})[1] == []


def test_v08_http_backend_url_on_a_remote_host_is_a_warning() -> None:
    backends = {
        "inject": {"strategy": "upstream_inject", "provider": "github", "url": "http://api.github.internal/"},
        "sts": {"strategy": "token_exchange", "token_url": "https://sts.corp.example/token",
                "subject_provider": "corp", "url": "HTTP://Docs.Corp.Example:8080/v1"},
        "key": {"strategy": "header_injection", "header": "X-API-Key", "value": "k-1",
                "url": "http://10.0.0.7/"},
        # no warning: nothing secret is added, loopback never leaves the host, or https
        "open": {"strategy": "unauthenticated", "url": "http://weather.example/"},
        "local": {"strategy": "header_injection", "header": "X-API-Key", "value": "k-2",
                  "url": "http://127.0.0.1:8080/"},
        "local6": {"strategy": "upstream_inject", "provider": "github", "url": "http://[::1]:8080/"},
        "localname": {"strategy": "upstream_inject", "provider": "corp", "url": "http://localhost/"},
        "tls": {"strategy": "header_injection", "header": "X-API-Key", "value": "k-3",
                "url": "https://api.example/"},
    }
    settings, warnings = parse_settings(mode_b(MCP_AUTH_BACKENDS=backends))
    assert sorted((r, k) for r, k, _ in warnings) == [
        ("V-08", "MCP_AUTH_BACKENDS[inject]"), ("V-08", "MCP_AUTH_BACKENDS[key]"),
        ("V-08", "MCP_AUTH_BACKENDS[sts]")]
    assert settings.backends["key"].url == "http://10.0.0.7/"  # accepted, not refused
    text = "\n".join(m for _, _, m in warnings)
    assert "cleartext" in text and "warning" in text and "https" in text
    assert "k-1" not in text  # the header value is never echoed


def test_insecure_settings_logged_once_by_init_app(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flask_mcp_auth")
    app = Flask(__name__)
    app.config.update(MODE_A, MCP_AUTH_TLS_VERIFY=False, MCP_AUTH_BACKENDS={
        "key": {"strategy": "header_injection", "header": "X-API-Key", "value": "secret-v",
                "url": "http://api.corp.example/"}})
    MCPAuth(app)  # Mode A: no network at startup
    app.test_client().get("/.well-known/oauth-protected-resource/mcp")
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("flask_mcp_auth")]
    assert len([m for m in messages if m.startswith("[V-05] MCP_AUTH_TLS_VERIFY:")]) == 1
    assert len([m for m in messages if m.startswith("[V-08] MCP_AUTH_BACKENDS[key]:")]) == 1
    assert not any("secret-v" in m for m in messages)
