"""Consent (SPEC §3.4): before the first leg the user sees which client (name, redirect host) and which
upstreams will be visited, and approves or denies.

* The validated authorization request waits server-side as an ``("authreq", <random id>)`` record
  (pending TTL); the consent form carries only that id and a CSRF token.
* The CSRF token is random per request and the record is bound to the browser id in Flask's
  ``session``: a form posted from another browser, or without the token, is refused (AZ-17).
* ``MCP_AUTH_CONSENT``: ``always`` asks every time; ``once`` remembers an approval server-side
  (``("consent", digest(browser id) + client id)``) for the scopes, resource and upstreams approved;
  ``never`` skips the page only for pre-registered first-party clients — every other client is
  treated as under ``once``. The approval record is written in every mode: it is also what lets
  authorize errors be redirected to a dynamically registered client (:meth:`ConsentStore.approved`).
* Pages carry ``X-Frame-Options: DENY`` and ``Content-Security-Policy: frame-ancestors 'none'``
  (RFC 9700 §4.16 clickjacking). The template ``flask_mcp_auth/consent.html`` can be overridden by
  the app (app templates take precedence over the blueprint's).
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlsplit

from flask import Response, render_template

from ..config import Settings
from ..storage import Storage
from . import digest, random_token
from .chain import ClientRequest
from .clients import Client

__all__ = ["CONSENT_TTL", "ConsentStore", "consent_headers", "render_consent"]

#: how long a remembered approval lasts (``MCP_AUTH_CONSENT="once"``)
CONSENT_TTL = 30 * 86400


def consent_headers() -> dict[str, str]:
    """Anti-framing and no-leak headers for every HTML page of the chain."""
    return {
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": "frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


class ConsentStore:
    """Storage side of consent: waiting requests and remembered approvals.

    >>> store = ConsentStore(settings, storage)
    >>> if store.required(client, browser_id, request):
    ...     request_id = store.create(request, client, browser_id)   # put it in the form
    """

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage

    def _approval_key(self, browser: str, client_id: str) -> str:
        # The browser id is a cookie value: only its digest is used as a storage key.
        return f"{digest(browser)}:{client_id}"

    def _approval(self, browser: str, client_id: str) -> dict[str, Any] | None:
        return self.storage.get("consent", self._approval_key(browser, client_id))

    def approved(self, browser: str, client_id: str) -> bool:
        """Whether this browser ever approved ``client_id`` (any scope, in any consent mode).

        Decides whether authorize errors may be redirected to a dynamically registered client."""
        return self._approval(browser, client_id) is not None

    def required(self, client: Client, browser: str, request: ClientRequest) -> bool:
        mode = self.settings.consent
        if mode == "never" and client.first_party:
            return False
        if mode == "always":
            return True
        approved = self._approval(browser, client.client_id)
        if approved is None:
            return True
        return not (
            set(request.scopes) <= set(approved.get("scopes") or ())
            and request.resource in (approved.get("resources") or ())
            and list(self.settings.provider_names) == approved.get("providers")
        )

    def remember(self, browser: str, request: ClientRequest) -> None:
        """Record an approval; widens a previous one for the client. Written in every mode: under
        ``always`` it never skips the page, but it still marks the client as approved by this
        browser (:meth:`approved`)."""
        key = self._approval_key(browser, request.client_id)
        previous = self.storage.get("consent", key) or {}
        same_chain = previous.get("providers") == list(self.settings.provider_names)
        scopes = set(request.scopes) | (set(previous.get("scopes") or ()) if same_chain else set())
        resources = {request.resource} | (set(previous.get("resources") or ()) if same_chain else set())
        self.storage.put(
            "consent",
            key,
            {
                "scopes": sorted(scopes),
                "resources": sorted(resources),
                "providers": list(self.settings.provider_names),
            },
            ttl=CONSENT_TTL,
        )

    def create(self, request: ClientRequest, client: Client, browser: str) -> str:
        """Store the request awaiting consent; return its id (random, single use)."""
        request_id = random_token()
        self.storage.put(
            "authreq",
            request_id,
            {
                "request": request.to_dict(),
                "client_name": client.client_name,
                "browser": digest(browser),
                "csrf": random_token(),
            },
            ttl=self.settings.pending_ttl,
        )
        return request_id

    def load(self, request_id: str) -> dict[str, Any] | None:
        if not request_id or len(request_id) > 128:
            return None
        return self.storage.get("authreq", request_id)

    def take(self, request_id: str) -> dict[str, Any] | None:
        return self.storage.take("authreq", request_id)

    @staticmethod
    def same_browser(record: dict[str, Any], browser: Any) -> bool:
        if not isinstance(browser, str) or not browser:
            return False
        return hmac.compare_digest(digest(browser).encode(), str(record.get("browser", "")).encode())

    @staticmethod
    def csrf_ok(record: dict[str, Any], token: str | None) -> bool:
        expected = str(record.get("csrf") or "")
        return bool(token) and bool(expected) and hmac.compare_digest(
            str(token).encode(), expected.encode()
        )


def _redirect_host(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.hostname:
        return parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return f"{parts.scheme}:"  # private-use scheme of a native app (RFC 8252 §7.1)


def render_consent(record: dict[str, Any], settings: Settings, request_id: str) -> Response:
    """The consent page (HTML-escaped by Jinja autoescaping) with its security headers."""
    req = ClientRequest.from_dict(record["request"])
    html = render_template(
        "flask_mcp_auth/consent.html",
        client_id=req.client_id,
        client_name=record.get("client_name") or req.client_id,
        redirect_host=_redirect_host(req.redirect_uri),
        providers=list(settings.provider_names),
        scopes=list(req.scopes),
        request_id=request_id,
        csrf_token=record.get("csrf", ""),
    )
    resp = Response(html, status=200, mimetype="text/html")
    for name, value in consent_headers().items():
        resp.headers[name] = value
    return resp
