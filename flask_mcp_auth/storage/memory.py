"""In-process storage (the default): thread-safe, bounded, every record with a TTL, expired records swept.

Single process only: with several workers or hosts use :class:`~flask_mcp_auth.storage.redis.RedisStorage`.
Generic values are kept as canonical JSON text, exactly as Redis would hold them, so both backends
behave alike (and a caller can never mutate a stored record through a returned dict).

Memory layout (SPEC §9: 100 000 sessions with 3 providers under 300 MB; ``bench/memory.py`` measures
it): one entry per session holds its upstream token index *and* the blobs
(``provider -> (expires_at, blob)``), so a session costs two entries (index + metadata) whatever
the number of providers. Expiry is tracked in a min-heap with at most one pending item per key in the
common case (a TTL that only grows is re-queued lazily when the old deadline pops), and swept every
``sweep_interval`` seconds.
"""

from __future__ import annotations

import heapq
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import (
    _NO_SESSION,
    AlreadyExists,
    CorruptRecord,
    SessionData,
    StorageUnavailable,
    _slot_part,
    _valid_slot_part,
    dumps,
    loads,
)

__all__ = ["MemoryStorage"]

_Key = tuple[str, str]
_Rows = dict[str, tuple[float, str]]  # provider -> (expires_at, blob)

_INDEX = "upstream:idx"


def _json(value: Any) -> dict[str, Any]:
    # Internal entries (counters, session indexes, lock tokens) are not JSON records.
    if not isinstance(value, str):
        raise CorruptRecord("stored value is not a JSON record")
    return loads(value)


class MemoryStorage:
    """Dict-backed :class:`~flask_mcp_auth.storage.Storage`.

    >>> store = MemoryStorage(max_entries=100_000)
    >>> store.put("pending", "state123", {"sid": "s"}, ttl=600)
    >>> store.take("pending", "state123"), store.take("pending", "state123")
    ({'sid': 's'}, None)

    ``max_entries`` bounds the number of entries (a session with its tokens counts two); when it is
    full of live entries a write raises :class:`StorageUnavailable`. ``clock`` (monotonic seconds) can
    be injected by tests.
    """

    def __init__(
        self,
        *,
        max_entries: int = 1_000_000,
        sweep_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.RLock()
        self._data: dict[_Key, tuple[float, Any]] = {}  # key -> (expires_at, value)
        self._expiries: list[tuple[float, _Key]] = []  # min-heap, lazily cleaned
        self._clients: dict[str, None] = {}  # client ids stored through add_client
        self._unused: dict[str, None] = {}  # never-used client ids, oldest first
        self._max_entries = max_entries
        self._sweep_interval = sweep_interval
        self._clock = clock
        self._next_sweep = clock() + sweep_interval
        self._closed = False

    # -- internals (caller holds the lock) --------------------------------------------------------
    def _now(self) -> float:
        if self._closed:
            raise StorageUnavailable("memory storage is closed")
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        return now

    def _sweep(self, now: float) -> None:
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _expires, key = heapq.heappop(heap)
            entry = self._data.get(key)
            if entry is None:
                continue
            if entry[0] <= now:
                del self._data[key]
            else:
                heapq.heappush(heap, (entry[0], key))  # its TTL grew since it was queued
        if len(heap) > 2 * len(self._data) + 1024:  # drop stale heap items after many deletes
            self._expiries = [(exp, key) for key, (exp, _) in self._data.items()]
            heapq.heapify(self._expiries)
        self._next_sweep = now + self._sweep_interval

    def _live(self, key: _Key, now: float) -> Any:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._data[key]
            return None
        return entry[1]

    def _set(self, key: _Key, value: Any, ttl: float, now: float) -> None:
        if ttl <= 0:
            raise ValueError("every record needs a positive TTL")
        self._set_until(key, value, now + ttl, now)

    def _set_until(self, key: _Key, value: Any, expires: float, now: float) -> None:
        old = self._data.get(key)
        if old is None and len(self._data) >= self._max_entries:
            self._sweep(now)
            if len(self._data) >= self._max_entries:
                raise StorageUnavailable("memory storage is full")
        self._data[key] = (expires, value)
        # A queued deadline at or before the new one still fires and re-queues (see _sweep).
        if old is None or expires < old[0]:
            heapq.heappush(self._expiries, (expires, key))

    def _set_ttl(self, key: _Key, ttl: int, now: float) -> bool:
        value = self._live(key, now)
        if value is None:
            return False
        self._set(key, value, ttl, now)
        return True

    def _rows(self, sid: str, now: float) -> _Rows | None:
        rows: _Rows | None = self._live((_INDEX, sid), now)
        return rows

    # -- generic records ------------------------------------------------------------------------
    def put(self, kind: str, key: str, value: Mapping[str, Any], ttl: int, *, nx: bool = False) -> None:
        text = dumps(value)
        with self._lock:
            now = self._now()
            if nx and self._live((kind, key), now) is not None:
                raise AlreadyExists(f"{kind} record exists")
            self._set((kind, key), text, ttl, now)

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            text = self._live((kind, key), self._now())
        return None if text is None else _json(text)

    def take(self, kind: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            now = self._now()
            text = self._live((kind, key), now)
            if text is not None:
                del self._data[(kind, key)]
        return None if text is None else _json(text)

    def delete(self, kind: str, key: str) -> bool:
        with self._lock:
            now = self._now()
            found = self._live((kind, key), now) is not None
            self._data.pop((kind, key), None)
            if kind == "client":
                self._forget_client(key)
            return found

    def expire(self, kind: str, key: str, ttl: int) -> bool:
        with self._lock:
            return self._set_ttl((kind, key), ttl, self._now())

    def swap(
        self, kind: str, key: str, expected: Mapping[str, Any], new: Mapping[str, Any], ttl: int
    ) -> bool:
        with self._lock:
            now = self._now()
            if self._live((kind, key), now) != dumps(expected):
                return False
            self._set((kind, key), dumps(new), ttl, now)
            return True

    def incr(self, kind: str, key: str, ttl: int) -> int:
        counter = ("counter:" + kind, key)
        with self._lock:
            now = self._now()
            current = self._live(counter, now)
            if current is None:
                self._set(counter, 1, ttl, now)
                return 1
            if not isinstance(current, int):
                raise CorruptRecord("counter is not an integer")
            self._data[counter] = (self._data[counter][0], current + 1)  # fixed window: TTL kept
            return current + 1

    # -- clients --------------------------------------------------------------------------------
    def _forget_client(self, client_id: str) -> None:
        self._clients.pop(client_id, None)
        self._unused.pop(client_id, None)

    def add_client(self, client_id: str, value: Mapping[str, Any], ttl: int, cap: int) -> list[str]:
        text = dumps(value)
        evicted: list[str] = []
        with self._lock:
            now = self._now()
            self._set(("client", client_id), text, ttl, now)
            self._clients[client_id] = None
            self._unused.pop(client_id, None)
            self._unused[client_id] = None  # (re)registered now: newest
            if len(self._clients) > cap:  # only then is it worth forgetting expired clients
                for cid in [c for c in self._clients if self._live(("client", c), now) is None]:
                    self._forget_client(cid)
            excess = len(self._clients) - cap
            for cid in list(self._unused):
                if excess <= 0:
                    break
                if cid == client_id:
                    continue
                self._data.pop(("client", cid), None)
                self._forget_client(cid)
                evicted.append(cid)
                excess -= 1
        return evicted

    def touch_client(self, client_id: str, ttl: int) -> None:
        with self._lock:
            now = self._now()
            self._unused.pop(client_id, None)
            if not self._set_ttl(("client", client_id), ttl, now):
                self._forget_client(client_id)

    # -- sessions and upstream tokens -------------------------------------------------------------
    def put_upstream_token(self, sid: str, provider: str, blob: str, ttl: int) -> None:
        _slot_part("sid", sid)
        _slot_part("provider", provider)
        if ttl <= 0:
            raise ValueError("every record needs a positive TTL")
        with self._lock:
            now = self._now()
            self._put_row(sid, provider, blob, now + ttl, now)

    def put_refreshed_token(self, sid: str, provider: str, blob: str, ttl: int) -> bool:
        _slot_part("sid", sid)
        _slot_part("provider", provider)
        if ttl <= 0:
            raise ValueError("every record needs a positive TTL")
        with self._lock:  # one critical section: the session cannot change between read and write
            now = self._now()
            if self._live(("revoked", sid), now) is not None:
                return False
            if self._live(("session", sid), now) is None:
                return False  # no metadata: not a live session (ended, expired or never completed)
            expires = min(now + ttl, self._data[("session", sid)][0])  # never outlive the session
            self._put_row(sid, provider, blob, expires, now)
            return True

    def _put_row(self, sid: str, provider: str, blob: str, expires: float, now: float) -> None:
        old = self._data.get((_INDEX, sid))
        rows = self._rows(sid, now)
        rows = {} if rows is None else rows
        rows[provider] = (expires, blob)
        # The index outlives every row it lists.
        self._set_until((_INDEX, sid), rows, max(expires, old[0]) if old else expires, now)

    def set_session(self, sid: str, owner: str, ttl: int, *, complete: bool) -> None:
        _slot_part("sid", sid)
        with self._lock:
            now = self._now()
            self._set(("session", sid), dumps({"owner": owner, "complete": complete}), ttl, now)
            rows = self._rows(sid, now)
            if rows is not None:
                expires = now + ttl
                live = {p: (expires, blob) for p, (exp, blob) in rows.items() if exp > now}
                if live:
                    self._set_until((_INDEX, sid), live, expires, now)
                else:
                    del self._data[(_INDEX, sid)]

    def load_session(self, sid: str) -> SessionData:
        if not _valid_slot_part(sid):  # no such session can have been stored
            return _NO_SESSION
        with self._lock:
            now = self._now()
            meta = self._live(("session", sid), now)
            left = self._data[("session", sid)][0] - now if meta is not None else None
            revoked = self._live(("revoked", sid), now) is not None
            rows = self._rows(sid, now) or {}
            tokens = {p: blob for p, (exp, blob) in sorted(rows.items()) if exp > now}
        record = _json(meta) if meta is not None else None
        if record is not None and not isinstance(record.get("owner"), str):
            raise CorruptRecord("session metadata has no owner")
        return SessionData(
            owner=record["owner"] if record else None,
            complete=bool(record and record.get("complete") is True),
            revoked=revoked,
            tokens=tokens,
            ttl=left,
        )

    def delete_session(self, sid: str, providers: list[str] | None = None) -> None:
        if not _valid_slot_part(sid):
            return
        with self._lock:
            now = self._now()
            if providers is None:
                self._data.pop((_INDEX, sid), None)
                self._data.pop(("session", sid), None)
                return
            rows = self._rows(sid, now)
            if rows is None:
                return
            for provider in providers:
                rows.pop(provider, None)
            if not rows:
                del self._data[(_INDEX, sid)]

    def revoke_session(self, sid: str, ttl: int) -> None:
        _slot_part("sid", sid)
        with self._lock:
            self._set(("revoked", sid), dumps({"revoked_at": int(time.time())}), ttl, self._now())
            self.delete_session(sid)

    # -- locks ------------------------------------------------------------------------------------
    def acquire_lock(self, name: str, ttl: float) -> str | None:
        token = secrets.token_urlsafe(16)
        with self._lock:
            now = self._now()
            if self._live(("lock", name), now) is not None:
                return None
            self._set(("lock", name), token, ttl, now)
        return token

    def release_lock(self, name: str, token: str) -> None:
        with self._lock:
            if self._live(("lock", name), self._now()) == token:
                del self._data[("lock", name)]

    # -- lifecycle --------------------------------------------------------------------------------
    def ping(self) -> None:
        with self._lock:
            self._now()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._data.clear()
            self._expiries.clear()
            self._clients.clear()
            self._unused.clear()

    def __len__(self) -> int:
        with self._lock:
            now = self._now()
            return sum(1 for key in list(self._data) if self._live(key, now) is not None)
