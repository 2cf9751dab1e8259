"""The multi-upstream login chain (SPEC §3.2 step 3, §3.3): one client authorization walks the browser
through every configured upstream in order, then answers the client with an authorization code.

Protocol only — no Flask. The thin views (:mod:`flask_mcp_auth.server.authorize`) hand in the validated
client request, the callback parameters and the browser-binding id, and turn the returned
:class:`Outcome` into a response.

Records written (all with a TTL, see :mod:`flask_mcp_auth.storage`):

* ``("pending", <leg state>)`` — one per leg, consumed atomically with :meth:`Storage.take` at the
  callback (RFC 6749 §10.12, single-use state). It carries the leg's PKCE verifier (RFC 7636) and OIDC
  nonce, the provider the leg was sent to (mix-up defence, RFC 9700 §4.4), the session id, the digest
  of the browser-binding id, the full chain description (ordered providers + the client's request) and,
  after the first leg, the internal user carried forward.
* ``("identity", "<provider>:<subject>")`` — find-or-create of the internal user on the first leg.
* upstream token rows ``(sid, provider)``, encrypted by :class:`~flask_mcp_auth.storage.vault.TokenVault`,
  provisional (pending TTL, session ``complete=False``) until the last leg promotes them.
* ``("code", digest(code))`` — the authorization code record the token endpoint redeems.

Any failure after a pending record was consumed deletes the whole chain's upstream tokens (SPEC §3.3
step 8) and, when the client's request is known, redirects the client with an OAuth error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from authlib.oauth2.rfc7636 import create_s256_code_challenge

from ..config import Settings
from ..storage import AlreadyExists, Storage, StorageError
from ..storage.vault import TokenVault
from ..upstream.base import LegResult, UpstreamClient, UpstreamRejected, UpstreamUnavailable
from . import digest, random_token

__all__ = [
    "ChainService",
    "ClientRequest",
    "Completion",
    "Outcome",
    "client_redirect_url",
]

logger = logging.getLogger("flask_mcp_auth.chain")

#: version of the pending-record layout; a record of another version fails closed (CB-14)
PENDING_VERSION = 1
#: provider identities live long and slide on every login (a user id must not change while in use)
IDENTITY_TTL = 400 * 86400
_UPSTREAM_ERROR_CODES = frozenset(
    {
        "access_denied",
        "invalid_request",
        "invalid_scope",
        "login_required",
        "consent_required",
        "interaction_required",
        "account_selection_required",
        "server_error",
        "temporarily_unavailable",
        "unauthorized_client",
        "unsupported_response_type",
    }
)


@dataclass(frozen=True)
class ClientRequest:
    """The validated authorization request of the MCP client, carried through the chain.

    ``state`` is kept percent-encoded exactly as it will be echoed (byte-for-byte, RFC 6749 §4.1.2).
    """

    client_id: str
    redirect_uri: str
    state: str
    scopes: tuple[str, ...]
    resource: str
    code_challenge: str
    code_challenge_method: str = "S256"
    redirect_uri_provided: bool = True
    nonce: str | None = None  # the client's OIDC nonce, echoed in our id_token

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scopes"] = list(self.scopes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientRequest:
        """Rebuild from a stored record; ``KeyError``/``TypeError``/``ValueError`` on a malformed one."""
        scopes = data["scopes"]
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError("scopes")
        values = {
            name: data[name]
            for name in ("client_id", "redirect_uri", "state", "resource", "code_challenge")
        }
        if not all(isinstance(v, str) and v for v in values.values()):
            raise ValueError("request field")
        if data.get("code_challenge_method", "S256") != "S256":
            raise ValueError("code_challenge_method")
        nonce = data.get("nonce")
        if nonce is not None and not isinstance(nonce, str):
            raise ValueError("nonce")
        return cls(
            scopes=tuple(scopes),
            redirect_uri_provided=bool(data.get("redirect_uri_provided", True)),
            nonce=nonce,
            **values,
        )


@dataclass(frozen=True)
class Completion:
    """Ids of a completed chain (for the ``chain_completed`` signal); no secrets."""

    client_id: str
    subject: str
    session_id: str
    providers: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """What the view should answer.

    ``kind`` is ``"redirect"`` (``location`` + ``status``: 302 to an upstream, 303 to the client) or
    ``"page"`` (an error page with ``status`` and ``error``; there is no trustworthy redirect URI).
    ``reason`` is a short code for logs and tests, never shown with secrets.
    """

    kind: str
    status: int
    location: str | None = None
    error: str | None = None
    reason: str = ""
    completed: Completion | None = field(default=None)

    @classmethod
    def redirect(cls, location: str, status: int, *, error: str | None = None, reason: str = "",
                 completed: Completion | None = None) -> Outcome:
        return cls("redirect", status, location=location, error=error, reason=reason,
                   completed=completed)

    @classmethod
    def page(cls, status: int, error: str, reason: str) -> Outcome:
        return cls("page", status, error=error, reason=reason)


def client_redirect_url(redirect_uri: str, params: Sequence[tuple[str, str]], state: str | None,
                        issuer: str) -> str:
    """The client's redirect URI plus response parameters (RFC 6749 §4.1.2 / §4.1.2.1) and ``iss``
    (RFC 9207), each exactly once, appended to any query the registered URI already has.

    ``state`` is already percent-encoded (echoed byte-for-byte); everything else is encoded here.
    Hand-written rather than ``urlencode`` so the stored, pre-encoded state is not encoded twice.
    """
    parts = [f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in params]
    if state is not None:
        parts.append(f"state={state}")
    parts.append(f"iss={quote(issuer, safe='')}")
    query = "&".join(parts)
    if "?" not in redirect_uri:
        return f"{redirect_uri}?{query}"
    if redirect_uri.endswith(("?", "&")):
        return redirect_uri + query
    return f"{redirect_uri}&{query}"


class _ChainFailure(Exception):
    """Abort the chain: clean up and tell the client ``error`` (``reason`` goes to the log)."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


def _chain_id(sid: str) -> str:
    """A log-safe handle for a session id (the id itself keys tokens, so it is not logged)."""
    return digest(sid)[:10]


class ChainService:
    """Runs chains for one app.

    >>> chain = ChainService(settings, storage, vault, upstreams)
    >>> outcome = chain.start(client_request, binding="<random id from the browser's session>")
    >>> outcome.status, outcome.location            # 302 to upstreams[0]
    >>> outcome = chain.callback({"state": "...", "code": "..."}, binding="<same id>")
    """

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        vault: TokenVault,
        upstreams: Mapping[str, UpstreamClient],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.vault = vault
        self.upstreams = upstreams
        self.clock = clock
        #: the upstream redirect URI is always ``{issuer}/oauth/callback`` (SPEC §4.1)
        self.callback_uri = f"{settings.issuer}/oauth/callback"

    # -- client answers ----------------------------------------------------------------------
    def client_error(self, request: ClientRequest, error: str, reason: str) -> Outcome:
        """303 to the client with ``error``, its ``state`` and our ``iss``."""
        url = client_redirect_url(request.redirect_uri, [("error", error)], request.state,
                                  self.settings.issuer)
        return Outcome.redirect(url, 303, error=error, reason=reason)

    # -- start -------------------------------------------------------------------------------
    def start(self, request: ClientRequest, binding: str) -> Outcome:
        """Mint the session id and send the browser to the first upstream (SPEC §3.2 step 3).

        The session id is minted here and only here (never read from client input). Nothing is
        stored unless the upstream URL could be built, and the browser is sent upstream only after
        the pending record is stored (ST-01).
        """
        providers = list(self.settings.provider_names)
        chain = {"providers": providers, "request": request.to_dict()}
        sid = random_token()
        try:
            location = self._send_leg(sid, chain, 0, digest(binding), user=None)
        except StorageError:
            logger.warning("chain %s: storage unavailable at start (client %s)", _chain_id(sid),
                           request.client_id)
            return self.client_error(request, "temporarily_unavailable", "storage")
        except UpstreamUnavailable as exc:
            logger.warning("chain %s: upstream %s unavailable at start: %s", _chain_id(sid),
                           exc.provider, exc.reason)
            return self.client_error(request, "temporarily_unavailable", "upstream_unavailable")
        except Exception as exc:  # any other failure must still answer the client
            logger.error("chain %s: cannot start (%s)", _chain_id(sid), type(exc).__name__)
            return self.client_error(request, "server_error", "start_failed")
        logger.info("chain %s: started for client %s via %s", _chain_id(sid), request.client_id,
                    ",".join(providers))
        return Outcome.redirect(location, 302, reason="upstream")

    def _send_leg(self, sid: str, chain: Mapping[str, Any], leg: int, binding_digest: str,
                  user: Mapping[str, Any] | None) -> str:
        """Store a fresh pending record for leg ``leg`` and return the upstream URL."""
        provider = chain["providers"][leg]
        client = self.upstreams[provider]
        state = random_token()
        verifier = random_token()  # 43 chars, RFC 7636 §4.1
        nonce = random_token() if client.config.type == "oidc" else None
        location = client.authorization_url(
            redirect_uri=self.callback_uri,
            state=state,
            code_challenge=create_s256_code_challenge(verifier),
            nonce=nonce,
        )
        record = {
            "v": PENDING_VERSION,
            "sid": sid,
            "leg": leg,
            "provider": provider,
            "verifier": verifier,
            "nonce": nonce,
            "binding": binding_digest,
            "chain": dict(chain),
            "user": dict(user) if user is not None else None,
        }
        self.storage.put("pending", state, record, ttl=self.settings.pending_ttl)
        return location

    # -- callback ----------------------------------------------------------------------------
    def callback(self, params: Mapping[str, str | None], binding: str | None) -> Outcome:
        """Handle one upstream redirect back to us (SPEC §3.3 steps 1-9)."""
        state = params.get("state")
        code = params.get("code")
        upstream_error = params.get("error")
        if not state or (not code and not upstream_error):
            return Outcome.page(400, "invalid_request", "missing_state_or_code")
        try:
            record = self.storage.take("pending", state)
        except StorageError:
            logger.warning("callback: storage unavailable while reading the pending record")
            return Outcome.page(503, "temporarily_unavailable", "storage")
        if record is None:
            logger.info("callback: unknown, expired or already used state")
            return Outcome.page(400, "invalid_request", "unknown_state")

        sid = record.get("sid")
        if not isinstance(sid, str) or not sid:
            return Outcome.page(400, "invalid_request", "malformed_pending")
        request: ClientRequest | None = None
        try:
            chain = record.get("chain")
            if not isinstance(chain, dict):
                raise ValueError("chain")
            request = ClientRequest.from_dict(chain["request"])
            providers = chain["providers"]
            leg = record["leg"]
            provider = record["provider"]
            if (
                record.get("v") != PENDING_VERSION
                or not isinstance(providers, list)
                or not isinstance(leg, int)
                or not 0 <= leg < len(providers)
                or providers[leg] != provider
                or list(self.settings.provider_names) != providers
            ):
                raise ValueError("chain")
        except (KeyError, TypeError, ValueError):
            # CB-14: never recompute the chain from request data — fail closed.
            logger.warning("chain %s: pending record lacks a usable chain description", _chain_id(sid))
            self._cleanup(sid)
            if request is None:
                return Outcome.page(400, "invalid_request", "malformed_pending")
            return self.client_error(request, "server_error", "malformed_pending")

        if not binding or digest(binding) != record.get("binding"):
            logger.warning("chain %s: callback from another browser; chain aborted", _chain_id(sid))
            self._cleanup(sid)
            return Outcome.page(400, "invalid_request", "browser_mismatch")

        assert request is not None
        try:
            return self._continue(sid, record, chain, request, leg, provider, params)
        except _ChainFailure as failure:
            self._cleanup(sid)
            return self.client_error(request, failure.error, failure.reason)

    def _continue(self, sid: str, record: Mapping[str, Any], chain: Mapping[str, Any],
                  request: ClientRequest, leg: int, provider: str,
                  params: Mapping[str, str | None]) -> Outcome:
        cid = _chain_id(sid)
        client = self.upstreams[provider]
        upstream_error = params.get("error")
        if upstream_error:
            code = upstream_error if upstream_error in _UPSTREAM_ERROR_CODES else "other"
            logger.info("chain %s: upstream %s returned error %s", cid, provider, code)
            raise _ChainFailure("access_denied", "upstream_error")

        expected_iss, iss_required = _upstream_issuer(client)
        iss = params.get("iss")
        # RFC 9207 §2.4: compare when present (and we know the issuer); require when advertised.
        if (iss is not None and expected_iss is not None and iss != expected_iss) or (
            iss is None and iss_required
        ):
            logger.warning("chain %s: upstream %s authorization response has a wrong or missing iss",
                           cid, provider)
            raise _ChainFailure("access_denied", "iss_mismatch")
        # A provider whose issuer we do not know (plain OAuth2 without ``issuer``) cannot have its
        # ``iss`` compared, but an ``iss`` naming ANOTHER upstream (or us) is a mix-up all the same:
        # the response came from, or was made to look like it came from, the wrong server
        # (RFC 9207 §2.4, RFC 9700 §4.4).
        if iss is not None and expected_iss is None and iss in self._foreign_issuers(provider):
            logger.warning("chain %s: upstream %s authorization response carries another server's iss",
                           cid, provider)
            raise _ChainFailure("access_denied", "iss_mismatch")

        code = params.get("code") or ""
        try:
            result = client.exchange_code(
                code=code,
                redirect_uri=self.callback_uri,
                code_verifier=record["verifier"],
                nonce=record.get("nonce"),
            )
        except UpstreamRejected as exc:
            logger.warning("chain %s: upstream %s rejected the code: %s", cid, provider, exc.reason)
            raise _ChainFailure("access_denied", "upstream_rejected") from None
        except UpstreamUnavailable as exc:
            logger.warning("chain %s: upstream %s unavailable: %s", cid, provider, exc.reason)
            raise _ChainFailure("server_error", "upstream_unavailable") from None
        except Exception as exc:  # whatever broke, the chain is cleaned up
            logger.error("chain %s: code exchange at %s failed (%s)", cid, provider,
                         type(exc).__name__)
            raise _ChainFailure("server_error", "exchange_failed") from None
        if not isinstance(result, LegResult) or result.token.provider != provider:
            logger.error("chain %s: upstream client %s returned an unusable result", cid, provider)
            raise _ChainFailure("server_error", "bad_leg_result")

        try:
            user = self._user_after_leg(record, provider, result)
            self.vault.save(sid, result.token, ttl=self.settings.pending_ttl)
            # Keeps every provisional row alive for a full pending TTL after each leg, and marks the
            # session incomplete so no access token can use it yet.
            self.storage.set_session(sid, owner=user["user_id"], ttl=self.settings.pending_ttl,
                                     complete=False)
            providers: list[str] = chain["providers"]
            if leg + 1 < len(providers):
                location = self._send_leg(sid, chain, leg + 1, record["binding"], user)
                logger.info("chain %s: leg %d (%s) done, on to %s", cid, leg + 1, provider,
                            providers[leg + 1])
                return Outcome.redirect(location, 302, reason="upstream")
            return self._finish(sid, request, providers, user)
        except _ChainFailure:
            raise
        except StorageError:
            logger.warning("chain %s: storage failed during leg %d (%s)", cid, leg + 1, provider)
            raise _ChainFailure("server_error", "storage") from None
        except UpstreamUnavailable as exc:
            logger.warning("chain %s: next upstream %s unavailable: %s", cid, exc.provider, exc.reason)
            raise _ChainFailure("server_error", "upstream_unavailable") from None
        except Exception as exc:  # no path may leave orphaned tokens
            logger.error("chain %s: leg %d (%s) failed (%s)", cid, leg + 1, provider,
                         type(exc).__name__)
            raise _ChainFailure("server_error", "leg_failed") from None

    def _foreign_issuers(self, provider: str) -> set[str]:
        """Issuers of every other configured upstream, and this AS's own."""
        found = {self.settings.issuer}
        for name, client in self.upstreams.items():
            if name != provider:
                issuer, _required = _upstream_issuer(client)
                if issuer is not None:
                    found.add(issuer)
        return found

    def _user_after_leg(self, record: Mapping[str, Any], provider: str,
                        result: LegResult) -> dict[str, Any]:
        """First leg: find-or-create the internal user by ``(provider, subject)``. Later legs: the
        user carried in the pending record (never re-resolved, SPEC §3.3 step 5)."""
        ident = result.identity
        if record["leg"] == 0:
            if not ident.subject:
                raise _ChainFailure("access_denied", "no_subject")
            return {
                "user_id": self._find_or_create_user(provider, ident.subject),
                "name": ident.name,
                "email": ident.email,
                "first": [provider, ident.subject],
            }
        carried = record.get("user")
        if not isinstance(carried, dict) or not isinstance(carried.get("user_id"), str):
            logger.warning("chain %s: later leg without a carried user", _chain_id(record["sid"]))
            raise _ChainFailure("server_error", "no_carried_user")
        user = dict(carried)
        user["name"] = user.get("name") or ident.name
        user["email"] = user.get("email") or ident.email
        return user

    def _find_or_create_user(self, provider: str, subject: str) -> str:
        key = f"{provider}:{subject}"
        for _attempt in range(3):
            user_id = random_token(16)
            try:
                self.storage.put("identity", key, {"user_id": user_id}, ttl=IDENTITY_TTL, nx=True)
                return user_id
            except AlreadyExists:
                existing = self.storage.get("identity", key)
                if existing is not None and isinstance(existing.get("user_id"), str):
                    self.storage.expire("identity", key, IDENTITY_TTL)  # sliding lifetime
                    return str(existing["user_id"])
                # expired between put and get: try again
        raise _ChainFailure("server_error", "identity_race")

    def _finish(self, sid: str, request: ClientRequest, providers: list[str],
                user: Mapping[str, Any]) -> Outcome:
        """Last leg done: cross-check, promote the session, mint the code, 303 to the client."""
        cid = _chain_id(sid)
        user_id = str(user["user_id"])
        first = user.get("first")
        if not isinstance(first, list) or len(first) != 2:
            raise _ChainFailure("server_error", "no_first_identity")
        stored = self.storage.get("identity", f"{first[0]}:{first[1]}")
        if stored is None or stored.get("user_id") != user_id:
            logger.warning("chain %s: first-leg identity no longer maps to the carried user", cid)
            raise _ChainFailure("server_error", "identity_mismatch")
        session = self.storage.load_session(sid)
        if session.owner != user_id or sorted(session.tokens) != sorted(providers):
            logger.warning("chain %s: stored upstream tokens do not match the chain", cid)
            raise _ChainFailure("server_error", "incomplete_tokens")

        settings = self.settings
        if "offline_access" in request.scopes:
            ttl = settings.refresh_token_ttl
        else:
            ttl = settings.access_token_ttl + settings.code_ttl
        self.storage.set_session(sid, owner=user_id, ttl=ttl, complete=True)
        code = random_token()
        self.storage.put(
            "code",
            digest(code),
            {
                "client_id": request.client_id,
                "redirect_uri": request.redirect_uri,
                "redirect_uri_provided": request.redirect_uri_provided,
                "code_challenge": request.code_challenge,
                "code_challenge_method": "S256",
                "scopes": list(request.scopes),
                "resource": request.resource,
                "user_id": user_id,
                "session_id": sid,
                "name": user.get("name"),
                "email": user.get("email"),
                "providers": list(providers),
                "auth_time": int(self.clock()),
                "nonce": request.nonce,
            },
            ttl=settings.code_ttl,
        )
        logger.info("chain %s: complete for client %s", cid, request.client_id)
        url = client_redirect_url(request.redirect_uri, [("code", code)], request.state,
                                  settings.issuer)
        return Outcome.redirect(
            url, 303, reason="code",
            completed=Completion(request.client_id, user_id, sid, tuple(providers)),
        )

    def _cleanup(self, sid: str) -> None:
        """Delete every upstream token (and the metadata) of an aborted chain."""
        try:
            self.storage.delete_session(sid)
        except StorageError:
            # Rows written so far are provisional: they expire with the pending TTL.
            logger.warning("chain %s: cleanup failed (storage); provisional rows expire on their own",
                           _chain_id(sid))


def _upstream_issuer(client: UpstreamClient) -> tuple[str | None, bool]:
    """(issuer to compare a callback ``iss`` with, whether ``iss`` is required — RFC 9207 §2.4).

    OIDC clients know their issuer from configuration, plain OAuth2 ones only when their entry sets
    the optional ``issuer`` (then an ``iss`` is compared when present, never required); whether the
    provider advertised
    ``authorization_response_iss_parameter_supported`` comes from its discovery document, which the
    upstream client exposes as ``metadata`` (a mapping) or ``iss_parameter_supported``.
    """
    issuer = client.config.issuer
    metadata = getattr(client, "metadata", None)
    supported = bool(getattr(client, "iss_parameter_supported", False))
    if isinstance(metadata, Mapping):
        supported = supported or metadata.get("authorization_response_iss_parameter_supported") is True
        issuer = issuer or metadata.get("issuer")
    return (issuer if isinstance(issuer, str) else None), (supported and isinstance(issuer, str))
