from __future__ import annotations

import pytest
from flask import Flask

from flask_mcp_auth import ConfigError, MCPAuth


def test_init_app_registers_runtime() -> None:
    app = Flask(__name__)
    app.config.update(MCP_AUTH_ISSUER="https://mcp.example.com", MCP_AUTH_RESOURCE="https://mcp.example.com/mcp")
    MCPAuth(app)
    assert "mcp_auth" in app.extensions
    with pytest.raises(RuntimeError):
        MCPAuth(app)


def test_missing_issuer_is_config_error() -> None:
    app = Flask(__name__)
    with pytest.raises(ConfigError) as info:
        MCPAuth(app)
    assert {p[1] for p in info.value.problems} >= {"MCP_AUTH_ISSUER", "MCP_AUTH_RESOURCE"}
