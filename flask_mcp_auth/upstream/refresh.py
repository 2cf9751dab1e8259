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

Back-off after a transient failure: the leader records a short failure marker for ``(sid, provider)``
(``failure_backoff`` seconds) in process memory and in storage (generic record
``("refresh_fail", "{sid}:{provider}")``), written before the lock is released. Until it lapses, callers
in this process fail at once without any I/O, and callers in other processes — including those that
were waiting on the lock — read it on the refresh path and reuse the leader's verdict instead of
calling the upstream themselves (SPEC §4.2: "the others wait and reuse the result"). A hanging or
failing IdP therefore costs at most one upstream call per ``(sid, provider)`` per window.

When a token is due: ``min(30 s, lifetime / 2)`` before it expires when its lifetime is known
(``issued_at`` is recorded at login and at every refresh), else 30 s — a 20-second token is not
"expired" on arrival.

No Flask here: callers pass storage, vault and clients explicitly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping

from ..storage import CorruptRecord, Storage, StorageError, StorageUnavailable, UpstreamToken
from ..storage.vault import TokenVault
from .base import UpstreamClient, UpstreamRejected, UpstreamUnavailable

__all__ = ["FAILURE_KIND", "MAX_SKEW", "Refresher", "refresh_due", "refresh_skew"]

logger = logging.getLogger("flask_mcp_auth.refresh")

#: An upstream token is refreshed at most this many seconds before it expires.
MAX_SKEW = 30.0
#: Generic storage record kind of the cross-process failure marker (key ``"{sid}:{provider}"``).
FAILURE_KIND = "refresh_fail"
#: Bound on in-process failure markers (expired ones are pruned first, then the map is emptied).
_MAX_FAILURES = 10_000
#: Cap on the growing poll interval while another process holds the refresh lock.
_MAX_POLL = 0.25


def refresh_skew(token: UpstreamToken) -> float:
    """Seconds before ``expires_at`` at which ``token`` is due: ``min(30, lifetime / 2)`` when its
    lifetime is known, so a short-lived token is not refreshed on every request, else 30."""
    if token.issued_at is not None and token.expires_at is not None:
        lifetime = token.expires_at - token.issued_at
        if lifetime > 0:
            return min(MAX_SKEW, lifetime / 2)
    return MAX_SKEW


def refresh_due(token: UpstreamToken, now: float) -> bool:
    """Whether ``token`` needs a refresh at ``now`` (unix time)."""
    return token.is_expired(now, refresh_skew(token))


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
        failure_backoff: float = 10.0,
        clock: Callable[[], float] = time.time,
        on_refreshed: Callable[[str, str, str | None], None] | None = None,
    ) -> None:
        self.storage = storage
        self.vault = vault
        self.upstreams = upstreams
        self.ttl = ttl  # upper bound on a refreshed row's lifetime; storage caps it at the session's
        self.lock_ttl = lock_ttl
        self.wait_timeout = lock_ttl if wait_timeout is None else wait_timeout
        self.poll_interval = poll_interval
        #: seconds during which a transient failure is reused instead of calling the upstream again
        self.failure_backoff = failure_backoff
        #: wall clock of the failure markers (shared across processes through storage); tests may
        #: move it forward to end a back-off window
        self.clock = clock
        self.on_refreshed = on_refreshed
        self._guard = threading.Lock()
        self._flights: dict[tuple[str, str], _Flight] = {}
        # key -> (until on ``clock``, reason, monotonic cap): the cap bounds a marker to one window even
        # when the wall clock steps backwards (NTP), which would otherwise stretch ``until``
        self._failures: dict[tuple[str, str], tuple[float, str, float]] = {}

    # ------------------------------------------------------------------------------------------
    def refresh(self, sid: str, token: UpstreamToken, subject: str | None = None) -> UpstreamToken:
        """A live token for ``(sid, token.provider)``: the stored one if someone already refreshed it,
        else the result of exactly one upstream refresh call."""
        key = (sid, token.provider)
        failed = self._failures.get(key)  # a plain dict read: the back-off path does no I/O at all
        if failed is not None:
            if self.clock() < failed[0] and time.monotonic() < failed[2]:
                raise UpstreamUnavailable(token.provider, failed[1])
            with self._guard:
                if self._failures.get(key) is failed:
                    del self._failures[key]
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
        pause = self.poll_interval
        while True:
            owner = self.storage.acquire_lock(lock_name, self.lock_ttl)
            try:
                current = self._read(sid, provider)
                if current is None:
                    raise UpstreamRejected(provider, "token_removed")
                if current.access_token != token.access_token and not refresh_due(current, time.time()):
                    return current  # refreshed meanwhile (another thread or process)
                # A lock holder that failed transiently left a marker before releasing: reuse it.
                stale_marker = self._check_marker(sid, provider)
                if owner is not None:
                    return self._call_upstream(sid, current, subject, stale_marker)
            finally:
                if owner is not None:
                    self.storage.release_lock(lock_name, owner)
            if time.monotonic() >= deadline:
                raise UpstreamUnavailable(provider, "refresh_lock_timeout")
            time.sleep(pause)
            pause = min(pause * 1.5, max(self.poll_interval, _MAX_POLL))

    # --- failure markers ----------------------------------------------------------------------------
    def _check_marker(self, sid: str, provider: str) -> bool:
        """Raise :class:`UpstreamUnavailable` while a stored failure marker for ``(sid, provider)`` is
        live (and remember it in process); ``True`` when a lapsed marker is still stored."""
        try:
            record = self.storage.get(FAILURE_KIND, f"{sid}:{provider}")
        except CorruptRecord:
            return True  # unreadable: treat as lapsed, and let a success delete it
        if record is None:
            return False
        until, reason = record.get("until"), record.get("reason")
        if not isinstance(until, (int, float)) or isinstance(until, bool) or until <= self.clock():
            return True
        reason = reason if isinstance(reason, str) and reason else "refresh_backoff"
        # Another host's clock may run ahead: never hold a marker longer than one window from now.
        self._remember((sid, provider), min(float(until), self.clock() + self.failure_backoff), reason)
        raise UpstreamUnavailable(provider, reason)

    def _remember(self, key: tuple[str, str], until: float, reason: str) -> None:
        with self._guard:
            if len(self._failures) >= _MAX_FAILURES:
                now = self.clock()
                for stale in [k for k, (end, _, _) in self._failures.items() if end <= now]:
                    del self._failures[stale]
                if len(self._failures) >= _MAX_FAILURES:
                    self._failures.clear()
            self._failures[key] = (until, reason, time.monotonic() + self.failure_backoff)

    def _mark_failed(self, sid: str, provider: str, reason: str) -> None:
        until = self.clock() + self.failure_backoff
        self._remember((sid, provider), until, reason)
        try:
            # Written while the lock is still held, so a waiting process finds it on its next look.
            self.storage.put(FAILURE_KIND, f"{sid}:{provider}", {"until": until, "reason": reason},
                             ttl=max(1, math.ceil(self.failure_backoff)) + 1)
        except StorageError:
            logger.warning("failure marker for %s not stored (storage unavailable)", provider)

    def _call_upstream(
        self, sid: str, current: UpstreamToken, subject: str | None, stale_marker: bool = False
    ) -> UpstreamToken:
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
            logger.warning("upstream refresh of %s failed transiently (%s); retried after %.0f s",
                           provider, exc.reason, self.failure_backoff)
            self._mark_failed(sid, provider, exc.reason)
            raise
        issued_at = time.time()  # the clock expires_at was computed with; gives the lifetime
        # The client keeps the old refresh token and subject; enforce it here too (SPEC §4.2).
        fresh = dataclasses.replace(
            fresh,
            provider=provider,
            refresh_token=fresh.refresh_token or current.refresh_token,
            subject=fresh.subject or current.subject,
            scope=fresh.scope or current.scope,
            issued_at=fresh.issued_at if fresh.issued_at is not None else issued_at,
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
        if stale_marker:
            # Best effort: a lapsed marker is ignored anyway and its TTL removes it.
            with contextlib.suppress(StorageError):
                self.storage.delete(FAILURE_KIND, f"{sid}:{provider}")
        if self.on_refreshed is not None:
            self.on_refreshed(sid, provider, subject)
        return fresh
