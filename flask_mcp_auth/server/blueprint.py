"""Routes of the authorization server (SPEC §3.1) and the RFC 9728 protected-resource metadata.

Thin: each view parses the request, calls a protocol module (``metadata``, ``clients``, ``authorize``,
``consent``, ``chain``, ``token``, ``revoke``) with explicit arguments, and renders the result.
Only the explicit paths of SPEC §3.1 are registered (no ``/.well-known/`` catch-all).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from .. import signals
from ..errors import InvalidClientMetadata, InvalidRequest, OAuthError, StorageError
from . import metadata
from .clients import ClientRegistry
from .revoke import RevocationEndpoint
from .token import TokenEndpoint

if TYPE_CHECKING:
    from flask import Flask

    from ..runtime import Runtime

__all__ = ["register"]


def register(app: Flask, runtime: Runtime) -> None:
    """Mount the AS blueprint (Mode B) and the RFC 9728 route (both modes)."""
    bp = Blueprint("mcp_auth", __name__, template_folder="templates")
    _add_metadata_routes(bp, runtime)  # both modes: protected-resource metadata
    if runtime.settings.mode == "B":
        _add_endpoint_routes(bp, runtime)
        _add_chain_routes(bp, runtime)
    app.register_blueprint(bp)


# --- metadata / JWKS / registration / token / revoke routes (owner: AS-endpoints helper) -------------
#: SPEC §3.1: request bodies over 64 KiB get 413 on every AS route (the host app's limits are its own).
MAX_BODY = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_METADATA_CACHE = "public, max-age=300"
_CORS_ATTR = "_mcp_auth_cors"


def client_registry(runtime: Runtime) -> ClientRegistry:
    """The app's :class:`ClientRegistry` (``runtime.parts["clients"]``), built on first use."""
    registry = runtime.parts.get("clients")
    if registry is None:
        registry = runtime.parts.setdefault("clients", ClientRegistry(runtime.storage, runtime.settings))
    assert isinstance(registry, ClientRegistry)
    return registry


def _cors(view: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a view as answering cross-origin requests (any origin, no credentials)."""
    setattr(view, _CORS_ATTR, True)
    return view


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = current_app.response_class(json.dumps(body), status=status, mimetype="application/json")
    resp.headers.update(headers or {})
    return resp


def _form() -> dict[str, str]:
    """The form body of a token/revocation request: form-encoded only, no repeated parameters
    (RFC 6749 §3.2). The query string is ignored: credentials never travel in URLs."""
    if request.mimetype != "application/x-www-form-urlencoded":
        raise InvalidRequest("The body must be application/x-www-form-urlencoded.")
    form: dict[str, str] = {}
    for key, values in request.form.lists():
        if len(values) != 1:
            raise InvalidRequest("A parameter was repeated.")
        form[key] = values[0]
    return form


def _install_endpoint_support(bp: Blueprint, runtime: Runtime) -> None:
    """Body limit, CORS and the RFC 6749 §5.2 JSON error rendering for the AS blueprint."""

    @bp.before_request
    def _limit_body() -> None:
        # Checked before anything reads the body. A streamed (chunked) body has no length, and
        # werkzeug silently truncates one at max_content_length, so read one byte past the limit
        # here (cached for the form parser) to tell "exactly 64 KiB" from "more".
        request.max_content_length = MAX_BODY + 1
        if request.content_length is not None:
            if request.content_length > MAX_BODY:
                raise RequestEntityTooLarge()
        elif request.method not in ("GET", "HEAD", "OPTIONS") and len(request.get_data()) > MAX_BODY:
            raise RequestEntityTooLarge()

    @bp.after_request
    def _add_cors(response: Response) -> Response:
        view = current_app.view_functions.get(request.endpoint or "")
        if view is not None and getattr(view, _CORS_ATTR, False):
            response.headers["Access-Control-Allow-Origin"] = "*"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = ", ".join(
                    sorted(request.url_rule.methods or ()) if request.url_rule else ()
                )
                response.headers["Access-Control-Allow-Headers"] = (
                    "Authorization, Content-Type, MCP-Protocol-Version"
                )
                response.headers["Access-Control-Max-Age"] = "600"
            else:
                response.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate, Retry-After"
        return response

    @bp.errorhandler(OAuthError)
    def _oauth_error(exc: OAuthError) -> Response:
        headers = dict(_NO_STORE)
        if exc.status_code == 401 and exc.error == "invalid_client":
            headers["WWW-Authenticate"] = 'Basic realm="oauth"'
        if exc.retry_after:
            headers["Retry-After"] = str(exc.retry_after)
        runtime.logger.debug("AS %s: %s", request.endpoint, exc.error)
        return _json(exc.to_dict(), exc.status_code, headers)

    @bp.errorhandler(StorageError)
    def _storage_error(exc: StorageError) -> Response:
        runtime.logger.warning("AS %s: storage unavailable (%s)", request.endpoint, type(exc).__name__)
        body = {"error": "temporarily_unavailable",
                "error_description": "The service is temporarily unavailable; try again shortly."}
        return _json(body, 503, {**_NO_STORE, "Retry-After": "5"})

    @bp.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        body = {"error": "invalid_request", "error_description": "The request body is too large."}
        return _json(body, 413, dict(_NO_STORE))


def _add_metadata_routes(bp: Blueprint, runtime: Runtime) -> None:
    """RFC 9728 PRM (both modes); in Mode B also RFC 8414 / OIDC discovery and JWKS.

    Documents are computed once here from configuration — never from the request's Host header."""
    settings = runtime.settings
    _install_endpoint_support(bp, runtime)

    def static_json(body: dict[str, Any]) -> Callable[[], Response]:
        text = json.dumps(body)

        @_cors
        def view() -> Response:
            resp = current_app.response_class(text, mimetype="application/json")
            resp.headers["Cache-Control"] = _METADATA_CACHE
            return resp

        return view

    prm = static_json(metadata.protected_resource_metadata(settings))
    for index, path in enumerate(metadata.protected_resource_paths(settings)):
        bp.add_url_rule(path, f"protected_resource_metadata_{index}", prm, methods=["GET"])
    if settings.mode != "B" or runtime.keys is None:
        return

    confidential = client_registry(runtime).has_confidential_clients
    paths = metadata.metadata_paths(settings)
    oauth = static_json(metadata.authorization_server_metadata(settings, confidential_clients=confidential))
    oidc = static_json(metadata.openid_configuration(settings, runtime.keys,
                                                     confidential_clients=confidential))
    for index, path in enumerate(paths["oauth"]):
        bp.add_url_rule(path, f"authorization_server_metadata_{index}", oauth, methods=["GET"])
    for index, path in enumerate(paths["oidc"]):
        bp.add_url_rule(path, f"openid_configuration_{index}", oidc, methods=["GET"])
    bp.add_url_rule(metadata.JWKS_PATH, "jwks", static_json(metadata.jwks(runtime.keys)),
                    methods=["GET"])


def _add_endpoint_routes(bp: Blueprint, runtime: Runtime) -> None:
    """/oauth/register, /oauth/token, /oauth/revoke."""
    settings = runtime.settings
    registry = client_registry(runtime)
    token_endpoint = TokenEndpoint(settings=settings, storage=runtime.storage, registry=registry,
                                   tokens=runtime.tokens)
    revocation = RevocationEndpoint(settings=settings, storage=runtime.storage, registry=registry,
                                    tokens=runtime.tokens)
    runtime.parts["token_endpoint"] = token_endpoint
    runtime.parts["revocation_endpoint"] = revocation

    def on_revoke(client_id: str, session_id: str, reason: str) -> None:
        runtime.logger.info("AS grant revoked: client=%s reason=%s", client_id, reason)
        signals.token_revoked.send(current_app._get_current_object(),  # type: ignore[attr-defined]
                                   client_id=client_id, session_id=session_id,
                                   token_type_hint=None, reason=reason)

    token_endpoint.on_revoke = on_revoke

    @_cors
    def token() -> Response:
        result = token_endpoint.handle(_form(), request.headers.get("Authorization"))
        signals.token_issued.send(current_app._get_current_object(),  # type: ignore[attr-defined]
                                  client_id=result.client_id, subject=result.subject,
                                  session_id=result.session_id, grant_type=result.grant_type,
                                  scopes=result.scopes, jti=result.jti)
        return _json(result.body, 200, dict(_NO_STORE))

    @_cors
    def revoke() -> Response:
        form = _form()
        done = revocation.handle(form, request.headers.get("Authorization"))
        if done is not None:
            runtime.logger.info("AS token revoked: client=%s type=%s", done.client_id, done.token_type)
            signals.token_revoked.send(current_app._get_current_object(),  # type: ignore[attr-defined]
                                       client_id=done.client_id, session_id=done.session_id,
                                       token_type_hint=done.token_type, reason="revoked")
        resp = current_app.response_class(b"", status=200)
        resp.headers.update(_NO_STORE)
        return resp

    @_cors
    def register_client() -> Response:
        if request.mimetype != "application/json":
            raise InvalidClientMetadata("The body must be application/json.")
        try:
            body = json.loads(request.get_data(cache=False))
        except (ValueError, RecursionError):
            raise InvalidClientMetadata("The body is not valid JSON.") from None
        client, response = registry.register(body, request.remote_addr or "")
        runtime.logger.info("AS client registered: client=%s", client.client_id)
        return _json(response, 201, dict(_NO_STORE))

    bp.add_url_rule("/oauth/token", "token", token, methods=["POST"])
    bp.add_url_rule("/oauth/revoke", "revoke", revoke, methods=["POST"])
    if settings.dynamic_registration:
        bp.add_url_rule("/oauth/register", "register", register_client, methods=["POST"])


# --- authorize / consent / callback routes (owner: AS-chain helper) ---------------------------------
def _add_chain_routes(bp: Blueprint, runtime: Runtime) -> None:
    """/oauth/authorize, /oauth/consent, /oauth/callback (views in ``server/authorize``).

    No CORS on any of them (MD-06): they are browser navigations, never cross-origin XHR."""
    from .authorize import ChainViews

    views = ChainViews.build(runtime)
    bp.add_url_rule("/oauth/authorize", "authorize", views.authorize, methods=["GET"])
    bp.add_url_rule("/oauth/consent", "consent", views.consent_view, methods=["GET", "POST"])
    bp.add_url_rule("/oauth/callback", "callback", views.callback, methods=["GET"])
