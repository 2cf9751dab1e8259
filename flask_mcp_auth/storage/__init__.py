"""Storage: the narrow protocol every backend implements, its records and sentinel exceptions (SPEC §7).

Two implementations: :class:`~flask_mcp_auth.storage.memory.MemoryStorage` (single process, the
default) and :class:`~flask_mcp_auth.storage.redis.RedisStorage` (any number of processes and hosts).

Model
-----
* Generic JSON records live under ``(kind, key)`` — e.g. ``("pending", state)``, ``("code", sha256)``,
  ``("client", client_id)`` — and every one carries a TTL. Values are JSON objects, never pickle.
  Keys never contain secrets: callers hash codes and refresh tokens before using them as keys.
* Single-use items are consumed with :meth:`Storage.take` (atomic read-and-delete: Redis ``GETDEL``).
* Upstream tokens are stored per ``(session id, provider)`` as opaque, already-encrypted strings (see
  :mod:`flask_mcp_auth.storage.vault`), with a per-session index and session metadata, so that
  :meth:`Storage.load_session` returns everything for one session in **one** round trip.
* Redis key catalogue (``{prefix}`` ends with ``:`` and carries a Cluster hash tag)::

      {prefix}{kind}:{key}                 generic records (pending, code, client, identity, …)
      {prefix}upstream:{sid}:{provider}    encrypted upstream token blob
      {prefix}upstream:idx:{sid}           set of providers stored for sid (TTL ≥ its members')
      {prefix}session:{sid}                session metadata JSON (owner, complete)
      {prefix}revoked:{sid}                revocation marker
      {prefix}lock:{name}                  short mutual-exclusion locks
      {prefix}counter:{kind}:{key}         fixed-window counters (:meth:`Storage.incr`)
      {prefix}clients:unused               sorted set of never-used dynamic clients (score = created)
      {prefix}clients:all                  sorted set of every stored client (score = expiry, ms)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from ..errors import StorageError

__all__ = [
    "AlreadyExists",
    "CorruptRecord",
    "NotFound",
    "SessionData",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "UpstreamToken",
    "dumps",
    "loads",
]


class NotFound(StorageError):
    """The record does not exist (or has expired)."""


class AlreadyExists(StorageError):
    """``put(..., nx=True)`` found the key taken."""


class StorageUnavailable(StorageError):
    """The backend could not be reached or timed out. Callers fail closed (503)."""


class CorruptRecord(StorageError):
    """A stored value is not the JSON object it should be; it is reported, never half-read."""


def dumps(value: Mapping[str, Any]) -> str:
    """Canonical JSON (sorted keys, no spaces): equal records have equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def loads(text: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRecord("stored value is not valid JSON") from exc
    if not isinstance(value, dict):
        raise CorruptRecord("stored value is not a JSON object")
    return value


@dataclass(frozen=True)
class UpstreamToken:
    """One upstream provider's tokens for one session. ``repr`` never shows a token."""

    provider: str
    access_token: str = field(repr=False)
    token_type: str = "Bearer"
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # unix time; None = unknown / does not expire
    scope: str | None = None
    subject: str | None = None  # the upstream subject this token belongs to
    issued_at: float | None = None  # unix time the token was obtained (None = unknown); gives its lifetime

    def is_expired(self, now: float, skew: float = 30.0) -> bool:
        return self.expires_at is not None and now >= self.expires_at - skew

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpstreamToken:
        try:
            return cls(
                provider=str(data["provider"]),
                access_token=str(data["access_token"]),
                token_type=str(data.get("token_type") or "Bearer"),
                refresh_token=data.get("refresh_token"),
                id_token=data.get("id_token"),
                expires_at=float(data["expires_at"]) if data.get("expires_at") is not None else None,
                scope=data.get("scope"),
                subject=data.get("subject"),
                issued_at=float(data["issued_at"]) if data.get("issued_at") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecord("upstream token record is malformed") from exc


@dataclass(frozen=True)
class SessionData:
    """Everything stored for one session id, as read by :meth:`Storage.load_session`."""

    owner: str | None  # internal user id the session belongs to (None: no metadata stored)
    complete: bool  # False while the chain is still running (tokens are provisional)
    revoked: bool
    tokens: Mapping[str, str]  # provider -> encrypted blob
    ttl: float | None = None  # seconds the session metadata has left (None: no metadata stored)


#: ``load_session``'s answer for a session id nothing is stored under (both backends).
_NO_SESSION = SessionData(owner=None, complete=False, revoked=False, tokens=MappingProxyType({}))


def _slot_part(name: str, value: str) -> str:
    """``value`` as a session id or provider part of an upstream-token slot, or ``ValueError``.

    Redis joins key parts with ``:``, so a part containing one could alias another slot; memory applies
    the same rule so both backends accept exactly the same names."""
    if not _valid_slot_part(value):
        raise ValueError(f"{name} must be non-empty and contain no ':'")
    return value


def _valid_slot_part(value: str) -> bool:
    return bool(value) and ":" not in value


@runtime_checkable
class Storage(Protocol):
    """What the rest of the package needs from a store. Every method may raise
    :class:`StorageUnavailable`; every record has a TTL in seconds (``ttl > 0``)."""

    # -- generic JSON records ---------------------------------------------------------------
    def put(self, kind: str, key: str, value: Mapping[str, Any], ttl: int, *, nx: bool = False) -> None:
        """Store ``value``. With ``nx=True`` raise :class:`AlreadyExists` if the key is taken."""

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """The record, or ``None`` when absent/expired. Corrupt values raise :class:`CorruptRecord`."""

    def take(self, kind: str, key: str) -> dict[str, Any] | None:
        """Atomically read and delete (single use): of concurrent callers exactly one gets the value."""

    def delete(self, kind: str, key: str) -> bool:
        """Delete; ``True`` when something was deleted."""

    def expire(self, kind: str, key: str, ttl: int) -> bool:
        """Reset the TTL of an existing record; ``False`` when absent."""

    def swap(
        self, kind: str, key: str, expected: Mapping[str, Any], new: Mapping[str, Any], ttl: int
    ) -> bool:
        """Compare-and-set: replace only if the stored value equals ``expected`` (canonical JSON)."""

    def incr(self, kind: str, key: str, ttl: int) -> int:
        """Increment a counter; the TTL is set when the counter is created (fixed window)."""

    # -- clients with a cap (SPEC §3.5) --------------------------------------------------------
    def add_client(self, client_id: str, value: Mapping[str, Any], ttl: int, cap: int) -> list[str]:
        """Store a client (``kind="client"``); when more than ``cap`` clients are stored, evict the
        oldest never-used ones and return their ids."""

    def touch_client(self, client_id: str, ttl: int) -> None:
        """Mark a client used (no longer evictable) and slide its TTL."""

    # -- sessions and upstream tokens ------------------------------------------------------------
    def put_upstream_token(self, sid: str, provider: str, blob: str, ttl: int) -> None:
        """Store one encrypted upstream token blob and index it under ``sid``. The index's TTL is
        raised to at least ``ttl`` (it always outlives its members)."""

    def put_refreshed_token(self, sid: str, provider: str, blob: str, ttl: int) -> bool:
        """Like :meth:`put_upstream_token`, for a row rewritten after its session completed (an
        upstream refresh): in ONE atomic step the row gets the session metadata's remaining TTL when
        that is shorter than ``ttl`` (a row never outlives its session); nothing is written and
        ``False`` returned when ``sid`` is revoked or has no metadata (not a live session)."""

    def set_session(self, sid: str, owner: str, ttl: int, *, complete: bool) -> None:
        """Write session metadata and set ``ttl`` on the metadata, the index and every token row of
        ``sid`` (used when a chain completes to turn provisional rows into session rows)."""

    def load_session(self, sid: str) -> SessionData:
        """Metadata (with its remaining TTL), revocation marker and every token blob of ``sid`` in ONE
        round trip."""

    def delete_session(self, sid: str, providers: list[str] | None = None) -> None:
        """Delete the named providers' rows (all rows, index and metadata when ``None``)."""

    def revoke_session(self, sid: str, ttl: int) -> None:
        """Set the revocation marker for ``sid`` (kept ``ttl`` seconds) and delete its tokens."""

    # -- locks ---------------------------------------------------------------------------------
    def acquire_lock(self, name: str, ttl: float) -> str | None:
        """Try once to take a lock; return an owner token, or ``None`` when held by someone else."""

    def release_lock(self, name: str, token: str) -> None:
        """Release only if still owned by ``token``."""

    # -- lifecycle -------------------------------------------------------------------------------
    def ping(self) -> None:
        """Raise :class:`StorageUnavailable` when the backend cannot be reached."""

    def close(self) -> None:
        """Release connections/threads."""


def storage_from_url(url: str | Storage, prefix: str, *, timeout: float = 3.0) -> Storage:
    """Build a storage from ``MCP_AUTH_STORAGE`` (``memory://``, ``redis://…``, ``rediss://…``)."""
    if not isinstance(url, str):
        return url
    if url.startswith("memory://"):
        from .memory import MemoryStorage

        return MemoryStorage()
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisStorage

        store: Storage = RedisStorage.from_url(url, prefix=prefix, timeout=timeout)
        return store
    raise ValueError(f"unsupported storage URL scheme in {url.split('://')[0]!r}")
