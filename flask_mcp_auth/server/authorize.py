"""``GET /oauth/authorize`` (SPEC §3.2), ``/oauth/consent`` (SPEC §3.4) and ``GET /oauth/callback``
(SPEC §3.3): request validation and the Flask glue around :mod:`.chain` and :mod:`.consent`.

Validation follows OAuth 2.1 §4.1.1 / RFC 6749 §4.1.2.1 and runs before anything is stored or any
upstream is contacted:

* ``client_id`` and ``redirect_uri`` first — if either is wrong there is no trustworthy place to send
  an error, so the browser gets a 400 page and is never redirected (AZ-01, AZ-02, AZ-05);
* then every other problem is a **303** to the client's redirect URI with ``error``, ``state`` and
  ``iss`` (RFC 9207), each exactly once (AZ-07…AZ-14, AZ-20) — but only for a pre-registered client or
  a dynamically registered one this browser already approved at consent. Anyone can register a
  client whose redirect URI is a phishing page, so for any other dynamic client the error is a 400
  page instead: no automatic redirect to an address nobody vouched for (RFC 9700 §4.11.2, SPEC §8).

Parameters are read from the raw query string so that ``state`` can be echoed byte-for-byte (AZ-13),
and so a parameter given twice is an error (RFC 6749 §3.1). Empty parameters count as absent.

Browser state lives in Flask's ``session`` as two random ids only: the browser id (consent approvals
and the consent form's CSRF binding) and the chain-binding id (checked at every callback). The
records themselves are in Storage.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote_from_bytes, unquote_to_bytes, urlsplit

from flask import Response, current_app, render_template, request, session, url_for
from flask.sessions import NullSession

from .. import signals
from ..config import Settings
from ..storage import StorageError
from . import random_token
from .chain import ChainService, ClientRequest, Outcome, client_redirect_url
from .clients import Client, ClientRegistry
from .consent import ConsentStore, consent_headers, render_consent

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["AuthorizeRejected", "ChainViews", "parse_query", "validate_authorize"]

logger = logging.getLogger("flask_mcp_auth.authorize")

#: Flask ``session`` keys (values are random ids, nothing else)
BROWSER_KEY = "mcp_auth_browser"
BINDING_KEY = "mcp_auth_binding"
#: RFC 7636 §4.2: BASE64URL(SHA256(verifier)); 43-128 characters of the base64url alphabet
_CHALLENGE_RE = re.compile(r"^[A-Za-z0-9_-]{43,128}$")
#: longest ``state`` echoed (decoded bytes); longer is ``invalid_request`` without echo
MAX_STATE_BYTES = 8192
#: longest client ``nonce`` carried into our id_token
MAX_NONCE_LENGTH = 512

_MESSAGES = {
    "missing_client_id": "The request has no client_id.",
    "duplicate_parameter": "A parameter was given more than once.",
    "bad_encoding": "A parameter is not valid UTF-8.",
    "unknown_client": "This application is not registered with this server.",
    "missing_redirect_uri": "The application has several redirect URIs and did not say which to use.",
    "redirect_uri_mismatch": "The redirect URI is not registered for this application.",
    "missing_state_or_code": "The sign-in response is incomplete.",
    "unknown_state": "This sign-in has expired or was already used. Start again from the application.",
    "malformed_pending": "This sign-in can no longer be completed. Start again from the application.",
    "browser_mismatch": "This sign-in was started in another browser. Start again from the application.",
    "unknown_request": "This consent request has expired or was already answered.",
    "csrf": "The consent form could not be verified. Start again from the application.",
    "bad_action": "Choose Allow or Deny.",
    "storage": "The service is temporarily unavailable. Try again shortly.",
    "no_secret_key": "The server is misconfigured (no session secret).",
    # authorization-request errors shown as a page (dynamic client this browser has not approved)
    "missing_response_type": "The application's sign-in request has no response_type.",
    "response_type": "The application asked for an unsupported response_type (only code).",
    "missing_or_oversized_state": "The application's sign-in request has no usable state.",
    "missing_code_challenge": "The application's sign-in request has no PKCE code_challenge.",
    "code_challenge_method": "The application's sign-in request must use code_challenge_method S256.",
    "malformed_code_challenge": "The application's PKCE code_challenge is malformed.",
    "nonce": "The application's nonce is too long.",
    "scope": "The application asked for a scope it is not registered for.",
    "several_resources": "The application asked for more than one resource.",
    "resource": "The application asked for a resource this server does not serve.",
}


class AuthorizeRejected(Exception):
    """A rejected authorization request. ``redirect_uri`` ``None`` ⇒ 400 page, else 303 to it
    (when ``client`` may receive error redirects, see :meth:`ChainViews.authorize`)."""

    def __init__(self, error: str, reason: str, *, redirect_uri: str | None = None,
                 state: str | None = None, client: Client | None = None) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.redirect_uri = redirect_uri
        self.state = state
        self.client = client


class _Duplicate(Exception):
    pass


class _BadEncoding(Exception):
    pass


def parse_query(raw: bytes) -> dict[str, list[bytes]]:
    """Parse a query string into raw byte values (``+`` is a space, RFC 1866 form encoding).

    Hand-written because werkzeug decodes values to ``str`` with replacement characters, which would
    break echoing a non-UTF-8 ``state`` byte-for-byte.
    """
    out: dict[str, list[bytes]] = {}
    for part in raw.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        key = unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8", "replace")
        out.setdefault(key, []).append(unquote_to_bytes(value.replace(b"+", b" ")))
    return out


def _single(params: Mapping[str, list[bytes]], name: str) -> str | None:
    """The one value of ``name`` as text; ``None`` when absent or empty (RFC 6749 §3.1)."""
    values = params.get(name, [])
    if len(values) > 1:
        raise _Duplicate(name)
    if not values or not values[0]:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _BadEncoding(name) from None


def _singles(params: Mapping[str, list[bytes]], names: Sequence[str],
             fail: Callable[[str, str], AuthorizeRejected]) -> list[str | None]:
    """:func:`_single` of each name in turn; a repeated or non-UTF-8 one raises ``fail(error, reason)``."""
    try:
        return [_single(params, name) for name in names]
    except _Duplicate:
        raise fail("invalid_request", "duplicate_parameter") from None
    except _BadEncoding:
        raise fail("invalid_request", "bad_encoding") from None


def validate_authorize(params: Mapping[str, list[bytes]], registry: ClientRegistry,
                       settings: Settings) -> tuple[Client, ClientRequest]:
    """Validate an authorization request (SPEC §3.2 step 1). Raises :class:`AuthorizeRejected`, or
    :class:`~flask_mcp_auth.storage.StorageError` when the client cannot be looked up."""
    # -- client and redirect URI: errors here are never redirected ----------------------------------
    client_id, redirect_uri = _singles(params, ("client_id", "redirect_uri"), AuthorizeRejected)
    if client_id is None:
        raise AuthorizeRejected("invalid_request", "missing_client_id")
    client = registry.get(client_id)
    if client is None:
        raise AuthorizeRejected("invalid_client", "unknown_client")
    provided = redirect_uri is not None
    if redirect_uri is None:
        if len(client.redirect_uris) != 1:
            raise AuthorizeRejected("invalid_request", "missing_redirect_uri")
        redirect_uri = client.redirect_uris[0]
    elif not client.match_redirect_uri(redirect_uri):
        raise AuthorizeRejected("invalid_request", "redirect_uri_mismatch")

    # -- from here on the redirect URI is trustworthy: errors go back to the client ----------------
    states = params.get("state", [])
    state: str | None = None
    if len(states) == 1 and 0 < len(states[0]) <= MAX_STATE_BYTES:
        state = quote_from_bytes(states[0], safe="")

    def reject(error: str, reason: str) -> AuthorizeRejected:
        return AuthorizeRejected(error, reason, redirect_uri=redirect_uri, state=state,
                                 client=client)

    if len(states) > 1:
        raise reject("invalid_request", "duplicate_parameter")
    response_type, challenge, method, scope, nonce = _singles(
        params, ("response_type", "code_challenge", "code_challenge_method", "scope", "nonce"), reject
    )
    if response_type is None:
        raise reject("invalid_request", "missing_response_type")
    if response_type != "code":
        raise reject("unsupported_response_type", "response_type")
    if state is None:
        raise reject("invalid_request", "missing_or_oversized_state")
    if challenge is None:
        raise reject("invalid_request", "missing_code_challenge")
    if method != "S256":
        raise reject("invalid_request", "code_challenge_method")
    if not _CHALLENGE_RE.match(challenge):
        raise reject("invalid_request", "malformed_code_challenge")
    if nonce is not None and len(nonce) > MAX_NONCE_LENGTH:
        raise reject("invalid_request", "nonce")

    if scope is None:
        scopes = tuple(client.scopes)  # OAuth 2.1 §3.2.2.1: a pre-defined default
    else:
        scopes = tuple(dict.fromkeys(scope.split()))
        if not scopes or not set(scopes) <= set(client.scopes):
            raise reject("invalid_scope", "scope")

    resources = [r for r in params.get("resource", []) if r]
    if len(resources) > 1:
        raise reject("invalid_target", "several_resources")  # one audience per token
    if resources:
        try:
            resource = resources[0].decode("utf-8")
        except UnicodeDecodeError:
            raise reject("invalid_target", "resource") from None
        parts = urlsplit(resource)
        if (
            not parts.scheme
            or not parts.netloc
            or "#" in resource
            or resource not in settings.allowed_audiences
        ):
            raise reject("invalid_target", "resource")  # RFC 8707 §2
    else:
        resource = settings.audience

    return client, ClientRequest(
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        state=state,
        scopes=scopes,
        resource=resource,
        code_challenge=challenge,
        redirect_uri_provided=provided,
        nonce=nonce,
    )


# ---------------------------------------------------------------------------------------------------
# Flask glue


def _no_store(resp: Response) -> Response:
    """SH-07: nothing on these routes may be cached or leak its URL through Referer."""
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def error_page(status: int, error: str, reason: str) -> Response:
    """The HTML error page (no redirect). Shows a fixed message for ``reason``, never input."""
    html = render_template(
        "flask_mcp_auth/error.html",
        status=status,
        error=error,
        message=_MESSAGES.get(reason, "The request could not be processed."),
    )
    resp = Response(html, status=status, mimetype="text/html")
    for name, value in consent_headers().items():
        resp.headers[name] = value
    if status == 503:
        resp.headers["Retry-After"] = "5"
    return _no_store(resp)


def redirect_to(location: str, status: int) -> Response:
    # Built by hand: the Location value is already fully percent-encoded (state byte-for-byte).
    resp = Response("", status=status)
    resp.headers["Location"] = location
    return _no_store(resp)


@dataclass
class ChainViews:
    """The three chain routes of one app (registered by ``server/blueprint``)."""

    runtime: Runtime
    clients: ClientRegistry
    chain: ChainService
    consent: ConsentStore

    @classmethod
    def build(cls, runtime: Runtime) -> ChainViews:
        settings = runtime.settings
        assert runtime.vault is not None  # Mode B
        clients = runtime.parts.get("clients")
        if not isinstance(clients, ClientRegistry):
            clients = ClientRegistry(runtime.storage, settings)
            runtime.parts["clients"] = clients
        chain = ChainService(settings, runtime.storage, runtime.vault, runtime.upstreams)
        runtime.parts["chain"] = chain
        return cls(runtime, clients, chain, ConsentStore(settings, runtime.storage))

    # -- helpers -----------------------------------------------------------------------------
    def _outcome(self, outcome: Outcome, *, after_post: bool = False) -> Response:
        if outcome.kind == "page":
            return error_page(outcome.status, outcome.error or "invalid_request", outcome.reason)
        assert outcome.location is not None
        # A form POST is answered with 303 so the browser GETs the next hop (never 307, AZ-19).
        return redirect_to(outcome.location, 303 if after_post else outcome.status)

    def _client_error(self, redirect_uri: str, state: str | None, error: str) -> Response:
        url = client_redirect_url(redirect_uri, [("error", error)], state,
                                  self.runtime.settings.issuer)
        return redirect_to(url, 303)

    def _may_redirect_errors(self, client: Client) -> bool:
        """Whether an authorize error may be sent to ``client``'s redirect URI without user action.

        Pre-registered clients: yes (the operator vouched for their URIs). Dynamically registered
        ones only once this browser approved them at consent: otherwise anyone could register
        ``https://evil.example/phish`` and use ``/oauth/authorize`` as an open redirector
        (RFC 9700 §4.11.2). The browser id is only read here, never created.
        """
        if not client.dynamic:
            return True
        browser = session.get(BROWSER_KEY)
        if not isinstance(browser, str) or len(browser) < 32:
            return False
        try:
            return self.consent.approved(browser, client.client_id)
        except StorageError:
            logger.warning("authorize: storage unavailable while checking approval of client %s",
                           client.client_id)
            return False  # fail closed: a page, not a redirect

    @staticmethod
    def _session_ready() -> bool:
        # Flask hands out a NullSession (which refuses writes) when the app has no SECRET_KEY.
        return not isinstance(session._get_current_object(), NullSession)  # type: ignore[attr-defined]

    @staticmethod
    def _browser_id() -> str:
        browser = session.get(BROWSER_KEY)
        if not isinstance(browser, str) or len(browser) < 32:
            browser = random_token()
            session[BROWSER_KEY] = browser
        return browser

    def _start(self, req: ClientRequest, *, after_post: bool = False) -> Response:
        binding = session.get(BINDING_KEY)
        fresh = not isinstance(binding, str) or len(binding) < 32
        if fresh:
            binding = random_token()
        assert isinstance(binding, str)
        outcome = self.chain.start(req, binding)
        if fresh and outcome.kind == "redirect" and outcome.status == 302:
            session[BINDING_KEY] = binding  # only once the chain really started
        return self._outcome(outcome, after_post=after_post)

    # -- GET /oauth/authorize --------------------------------------------------------------------
    def authorize(self) -> Response:
        settings = self.runtime.settings
        try:
            client, req = validate_authorize(parse_query(request.query_string), self.clients,
                                             settings)
        except AuthorizeRejected as rejected:
            logger.info("authorize rejected: %s", rejected.reason)
            if rejected.redirect_uri is None:
                return error_page(400, rejected.error, rejected.reason)
            if rejected.client is not None and not self._may_redirect_errors(rejected.client):
                logger.info("authorize: error for unapproved dynamic client %s shown as a page",
                            rejected.client.client_id)
                return error_page(400, rejected.error, rejected.reason)
            return self._client_error(rejected.redirect_uri, rejected.state, rejected.error)
        except StorageError:
            logger.warning("authorize: storage unavailable while looking up the client")
            return error_page(503, "temporarily_unavailable", "storage")
        if not self._session_ready():
            logger.error("authorize: the app has no SECRET_KEY, so browser state cannot be kept")
            return error_page(500, "server_error", "no_secret_key")

        browser = self._browser_id()
        try:
            if self.consent.required(client, browser, req):
                request_id = self.consent.create(req, client, browser)
                return redirect_to(url_for("mcp_auth.consent", request=request_id), 302)
        except StorageError:
            logger.warning("authorize: storage unavailable (client %s)", client.client_id)
            if not self._may_redirect_errors(client):
                return error_page(503, "temporarily_unavailable", "storage")
            return self._client_error(req.redirect_uri, req.state, "temporarily_unavailable")
        return self._start(req)

    # -- GET/POST /oauth/consent -----------------------------------------------------------------
    def consent_view(self) -> Response:
        source = request.form if request.method == "POST" else request.args
        request_id = source.get("request", "")
        try:
            record = self.consent.load(request_id)
        except StorageError:
            return error_page(503, "temporarily_unavailable", "storage")
        if record is None:
            return error_page(400, "invalid_request", "unknown_request")
        browser = session.get(BROWSER_KEY)
        if not self.consent.same_browser(record, browser):
            logger.warning("consent: request opened from another browser")
            return error_page(403, "access_denied", "csrf")
        assert isinstance(browser, str)

        if request.method == "GET":
            return _no_store(render_consent(record, self.runtime.settings, request_id))

        if not self.consent.csrf_ok(record, request.form.get("csrf")):
            logger.warning("consent: CSRF token missing or wrong")
            return error_page(403, "access_denied", "csrf")
        action = request.form.get("action")
        if action not in ("approve", "deny"):
            return error_page(400, "invalid_request", "bad_action")
        try:
            record = self.consent.take(request_id)
        except StorageError:
            return error_page(503, "temporarily_unavailable", "storage")
        if record is None:  # answered concurrently
            return error_page(400, "invalid_request", "unknown_request")
        req = ClientRequest.from_dict(record["request"])
        if action == "deny":
            logger.info("consent: denied for client %s", req.client_id)
            return self._client_error(req.redirect_uri, req.state, "access_denied")
        try:
            self.consent.remember(browser, req)
        except StorageError:
            return self._client_error(req.redirect_uri, req.state, "temporarily_unavailable")
        return self._start(req, after_post=True)

    # -- GET /oauth/callback ---------------------------------------------------------------------
    def callback(self) -> Response:
        args = request.args
        params: dict[str, str | None] = {}
        for name in ("state", "code", "error", "iss"):
            values = args.getlist(name)
            if len(values) > 1:
                return error_page(400, "invalid_request", "duplicate_parameter")
            params[name] = values[0] if values and values[0] else None
        binding = session.get(BINDING_KEY)
        outcome = self.chain.callback(params, binding if isinstance(binding, str) else None)
        done = outcome.completed
        if done is not None:
            signals.chain_completed.send(
                current_app._get_current_object(),  # type: ignore[attr-defined]
                client_id=done.client_id,
                subject=done.subject,
                session_id=done.session_id,
                providers=done.providers,
            )
        return self._outcome(outcome)
