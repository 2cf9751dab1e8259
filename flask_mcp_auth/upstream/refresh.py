"""Refresh of expired upstream tokens with single-flight de-duplication (SPEC §4.2; RFC 6749 §6).

Concurrent refreshes of the same ``(session id, provider)`` make exactly one upstream call:

* within a process, the first caller leads and the others wait on its result (an event per key);
* across processes, the leader also takes a short storage lock (Redis ``SET NX PX``); a process that
  finds the lock held polls the stored row until it changes (someone refreshed it), disappears
  (someone was refused) or the wait bound passes.

Before calling the upstream the leader re-reads the stored row, so a caller holding a stale copy never
replays a refresh token that was already rotated. Outcomes:

* success — the new token is encrypted and stored for no longer than its session has left (SPEC §7:
  a row never outlives its session); a missing new refresh token keeps the old one, and the upstream
  client refuses a new id_token for another subject. A session revoked meanwhile gets no row back;
* :class:`UpstreamRejected` (``invalid_grant``, no refresh token, …) — that provider's row is deleted;
* :class:`UpstreamUnavailable` (timeout, 5xx, lock wait exceeded) — the row is kept (transient).

No Flask here: callers pass storage, vault and clients explicitly.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping

from ..storage import Storage, StorageError, StorageUnavailable, UpstreamToken
from ..storage.vault import TokenVault
from .base import UpstreamClient, UpstreamRejected, UpstreamUnavailable

__all__ = ["Refresher"]

logger = logging.getLogger("flask_mcp_auth.refresh")


class _Flight:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: UpstreamToken | None = None
        self.error: BaseException | None = None


class Refresher:
    """Refresh one session's expired upstream token, once, however many callers ask at the same time.

    >>> refresher = Refresher(storage, vault, {"corp": corp_client}, ttl=604800)
    >>> fresh = refresher.refresh(sid, expired_token)      # UpstreamRejected / UpstreamUnavailable
    """

    def __init__(
        self,
        storage: Storage,
        vault: TokenVault,
        upstreams: Mapping[str, UpstreamClient],
        *,
        ttl: int = 604800,
        lock_ttl: float = 30.0,
        wait_timeout: float | None = None,
        poll_interval: float = 0.05,
        on_refreshed: Callable[[str, str, str | None], None] | None = None,
    ) -> None:
        self.storage = storage
        self.vault = vault
        self.upstreams = upstreams
        self.ttl = ttl  # upper bound on a refreshed row's lifetime; storage caps it at the session's
        self.lock_ttl = lock_ttl
        self.wait_timeout = lock_ttl if wait_timeout is None else wait_timeout
        self.poll_interval = poll_interval
        self.on_refreshed = on_refreshed
        self._guard = threading.Lock()
        self._flights: dict[tuple[str, str], _Flight] = {}

    # ------------------------------------------------------------------------------------------
    def refresh(self, sid: str, token: UpstreamToken, subject: str | None = None) -> UpstreamToken:
        """A live token for ``(sid, token.provider)``: the stored one if someone already refreshed it,
        else the result of exactly one upstream refresh call."""
        key = (sid, token.provider)
        with self._guard:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            return self._follow(flight, token.provider)
        try:
            flight.result = self._lead(sid, token, subject)
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._guard:
                self._flights.pop(key, None)
            flight.done.set()

    def _follow(self, flight: _Flight, provider: str) -> UpstreamToken:
        # Bounded: the leader's own work is bounded by wait_timeout plus one upstream call.
        if not flight.done.wait(self.wait_timeout + self.lock_ttl):
            raise UpstreamUnavailable(provider, "refresh_wait_timeout")
        error = flight.error
        if error is None and flight.result is not None:
            return flight.result
        # Fresh exception objects per waiter: one instance re-raised in many threads shares a traceback.
        if isinstance(error, UpstreamRejected):
            raise UpstreamRejected(provider, error.reason)
        if isinstance(error, StorageUnavailable):
            raise StorageUnavailable("storage unavailable during refresh")
        reason = error.reason if isinstance(error, UpstreamUnavailable) else "refresh_failed"
        raise UpstreamUnavailable(provider, reason)

    # ------------------------------------------------------------------------------------------
    def _read(self, sid: str, provider: str) -> UpstreamToken | None:
        blob = self.storage.load_session(sid).tokens.get(provider)
        if blob is None:
            return None
        try:
            return self.vault.decode(sid, provider, blob)
        except StorageError:
            return None

    def _lead(self, sid: str, token: UpstreamToken, subject: str | None) -> UpstreamToken:
        provider = token.provider
        lock_name = f"refresh:{sid}:{provider}"
        deadline = time.monotonic() + self.wait_timeout
        while True:
            owner = self.storage.acquire_lock(lock_name, self.lock_ttl)
            try:
                current = self._read(sid, provider)
                if current is None:
                    raise UpstreamRejected(provider, "token_removed")
                if current.access_token != token.access_token and not current.is_expired(time.time()):
                    return current  # refreshed meanwhile (another thread or process)
                if owner is not None:
                    return self._call_upstream(sid, current, subject)
            finally:
                if owner is not None:
                    self.storage.release_lock(lock_name, owner)
            if time.monotonic() >= deadline:
                raise UpstreamUnavailable(provider, "refresh_lock_timeout")
            time.sleep(self.poll_interval)

    def _call_upstream(self, sid: str, current: UpstreamToken, subject: str | None) -> UpstreamToken:
        provider = current.provider
        client = self.upstreams.get(provider)
        if client is None or not current.refresh_token:
            self.storage.delete_session(sid, [provider])
            reason = "unknown_provider" if client is None else "no_refresh_token"
            logger.info("upstream token of %s for session %s dropped: %s", provider, sid[:8], reason)
            raise UpstreamRejected(provider, reason)
        try:
            fresh = client.refresh(current)
        except UpstreamRejected as exc:
            self.storage.delete_session(sid, [provider])
            logger.info("upstream refresh of %s refused (%s); token dropped", provider, exc.reason)
            raise
        except UpstreamUnavailable as exc:
            logger.warning("upstream refresh of %s failed transiently (%s)", provider, exc.reason)
            raise
        # The client keeps the old refresh token and subject; enforce it here too (SPEC §4.2).
        fresh = dataclasses.replace(
            fresh,
            provider=provider,
            refresh_token=fresh.refresh_token or current.refresh_token,
            subject=fresh.subject or current.subject,
            scope=fresh.scope or current.scope,
        )
        if current.subject is not None and fresh.subject != current.subject:
            self.storage.delete_session(sid, [provider])
            raise UpstreamRejected(provider, "subject_changed")
        # The session's remaining TTL is read and applied by storage in the same atomic step: a TTL
        # read here before the upstream call would be stale by that call's duration and could race
        # set_session or a revocation (a revoked session's token must not come back, RFC 7009 §2.1).
        blob = self.vault.encode(sid, fresh)
        if not self.storage.put_refreshed_token(sid, provider, blob, self.ttl):
            logger.info("session %s revoked during the refresh of %s; token discarded", sid[:8], provider)
            raise UpstreamRejected(provider, "session_revoked")
        logger.debug("upstream token of %s refreshed for session %s", provider, sid[:8])
        if self.on_refreshed is not None:
            self.on_refreshed(sid, provider, subject)
        return fresh
