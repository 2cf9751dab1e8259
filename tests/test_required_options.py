"""OPTIONS never runs a protected view (SPEC §5): ``required()`` and ``MCP_AUTH_PROTECTED_PATHS``
answer a preflight with Flask's default OPTIONS response, even on a route that lists OPTIONS itself,
so the view body never runs with ``g.identity = None``; CORS headers added in ``after_request`` (as
CORS extensions do) still reach the preflight answer."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, g, jsonify

from flask_mcp_auth import MCPAuth
from flask_mcp_auth.testing import issue_token
from tests.test_identity import bearer, make_app

ORIGIN = "https://client.example"


def _app(**config: Any) -> tuple[Flask, list[Any]]:
    app = make_app(**config)
    auth = MCPAuth.runtime(app)
    assert auth is not None
    from flask_mcp_auth.identity import required

    actions: list[Any] = []

    @app.route("/admin/purge", methods=["POST", "OPTIONS"])  # OPTIONS listed, e.g. for a hand-written reply
    @required(scopes=["admin"])
    def purge() -> Any:
        actions.append(("purge", g.identity))
        return jsonify(purged=True)

    @app.route("/area/purge", methods=["POST", "OPTIONS"])  # no decorator: only a protected path
    def area_purge() -> Any:
        actions.append(("area", g.identity))
        return jsonify(purged=True)

    @app.route("/area/async", methods=["GET", "OPTIONS"])
    @required()
    async def area_async() -> Any:
        actions.append(("async", g.identity))
        return jsonify(ran=True)

    @app.after_request
    def cors(resp: Response) -> Response:  # what a CORS extension does for every response
        resp.headers["Access-Control-Allow-Origin"] = ORIGIN
        return resp

    return app, actions


def _assert_default_options(resp: Any, *methods: str) -> None:
    assert resp.status_code == 200
    assert resp.get_data() == b""
    assert set(methods) <= set(resp.headers["Allow"].split(", "))
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_required_view_listing_options_is_not_run_on_options() -> None:
    app, actions = _app()
    client = app.test_client()
    _assert_default_options(client.options("/admin/purge", headers={"Origin": ORIGIN}), "POST", "OPTIONS")
    assert actions == []
    assert client.post("/admin/purge").status_code == 401
    assert actions == []
    token = issue_token(app, "alice", {"github": "gho_x"}, scopes=["admin"])
    assert client.post("/admin/purge", headers=bearer(token)).get_json() == {"purged": True}
    assert [name for name, _ in actions] == ["purge"]


def test_options_with_a_token_still_does_not_run_the_view() -> None:
    app, actions = _app()
    token = issue_token(app, "alice", {"github": "gho_x"}, scopes=["admin"])
    _assert_default_options(app.test_client().options("/admin/purge", headers=bearer(token)), "POST")
    assert actions == []


def test_async_required_view_is_not_run_on_options() -> None:
    app, actions = _app()
    _assert_default_options(app.test_client().options("/area/async"), "GET", "OPTIONS")
    assert actions == []


def test_protected_path_view_listing_options_is_not_run_on_options() -> None:
    app, actions = _app(MCP_AUTH_PROTECTED_PATHS=["/area"])
    client = app.test_client()
    _assert_default_options(client.options("/area/purge"), "POST", "OPTIONS")
    assert actions == []
    assert client.post("/area/purge").status_code == 401
    assert actions == []
    # an unknown path under a protected prefix is still a routing 404 for OPTIONS, not a blank 200
    assert client.options("/area/nothing-here").status_code == 404
    token = issue_token(app, "alice", {"github": "gho_x"})
    assert client.post("/area/purge", headers=bearer(token)).status_code == 200
    assert [name for name, _ in actions] == ["area"]
