"""In-process storage (the default): thread-safe, bounded, every record with a TTL, expired records swept.

Single process only: with several workers or hosts use :class:`~flask_mcp_auth.storage.redis.RedisStorage`.
Values are kept as canonical JSON text, exactly as Redis would hold them, so both backends behave alike
(and a caller can never mutate a stored record through a returned dict).
"""

from __future__ import annotations

import heapq
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import AlreadyExists, SessionData, StorageUnavailable, dumps, loads

__all__ = ["MemoryStorage"]

_Key = tuple[str, str]


class MemoryStorage:
    """Dict-backed :class:`~flask_mcp_auth.storage.Storage`.

    >>> store = MemoryStorage(max_entries=100_000)
    >>> store.put("pending", "state123", {"sid": "s"}, ttl=600)
    >>> store.take("pending", "state123"), store.take("pending", "state123")
    ({'sid': 's'}, None)
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
            if entry is not None and entry[0] <= now:
                del self._data[key]
        if len(heap) > 2 * len(self._data) + 1024:  # drop stale heap entries after many rewrites
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
        if key not in self._data and len(self._data) >= self._max_entries:
            self._sweep(now)
            if len(self._data) >= self._max_entries:
                raise StorageUnavailable("memory storage is full")
        expires = now + ttl
        self._data[key] = (expires, value)
        heapq.heappush(self._expiries, (expires, key))

    def _set_ttl(self, key: _Key, ttl: float, now: float) -> bool:
        value = self._live(key, now)
        if value is None:
            return False
        self._set(key, value, ttl, now)
        return True

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
        return None if text is None else loads(text)

    def take(self, kind: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            now = self._now()
            text = self._live((kind, key), now)
            if text is not None:
                del self._data[(kind, key)]
        return None if text is None else loads(text)

    def delete(self, kind: str, key: str) -> bool:
        with self._lock:
            now = self._now()
            found = self._live((kind, key), now) is not None
            self._data.pop((kind, key), None)
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
        with self._lock:
            now = self._now()
            current = self._live(("counter:" + kind, key), now)
            if current is None:
                self._set(("counter:" + kind, key), 1, ttl, now)
                return 1
            expires = self._data[("counter:" + kind, key)][0]
            self._data[("counter:" + kind, key)] = (expires, int(current) + 1)
            return int(current) + 1

    # -- clients --------------------------------------------------------------------------------
    def add_client(self, client_id: str, value: Mapping[str, Any], ttl: int, cap: int) -> list[str]:
        text = dumps(value)
        evicted: list[str] = []
        with self._lock:
            now = self._now()
            self._set(("client", client_id), text, ttl, now)
            unused: dict[str, float] = self._live(("clients", "unused"), now) or {}
            unused = dict(unused)
            unused[client_id] = now
            stored = [k for k in self._data if k[0] == "client" and self._live(k, now) is not None]
            excess = len(stored) - cap
            for cid, _ in sorted(unused.items(), key=lambda item: item[1]):
                if excess <= 0:
                    break
                if cid == client_id:
                    continue
                self._data.pop(("client", cid), None)
                unused.pop(cid)
                evicted.append(cid)
                excess -= 1
            unused = {cid: t for cid, t in unused.items() if ("client", cid) in self._data}
            self._set(("clients", "unused"), unused, 10 * 365 * 86400, now)
        return evicted

    def touch_client(self, client_id: str, ttl: int) -> None:
        with self._lock:
            now = self._now()
            self._set_ttl(("client", client_id), ttl, now)
            unused = self._live(("clients", "unused"), now)
            if unused and client_id in unused:
                unused = {cid: t for cid, t in unused.items() if cid != client_id}
                self._set(("clients", "unused"), unused, 10 * 365 * 86400, now)

    # -- sessions and upstream tokens -------------------------------------------------------------
    def put_upstream_token(self, sid: str, provider: str, blob: str, ttl: int) -> None:
        with self._lock:
            now = self._now()
            self._set(("upstream", f"{sid}:{provider}"), blob, ttl, now)
            index_key = ("upstream:idx", sid)
            index = set(self._live(index_key, now) or ())
            index.add(provider)
            old = self._data.get(index_key)
            keep = max(ttl, (old[0] - now) if old else 0)
            self._set(index_key, frozenset(index), keep, now)

    def set_session(self, sid: str, owner: str, ttl: int, *, complete: bool) -> None:
        with self._lock:
            now = self._now()
            self._set(("session", sid), {"owner": owner, "complete": complete}, ttl, now)
            index = self._live(("upstream:idx", sid), now)
            if index is not None:
                self._set(("upstream:idx", sid), index, ttl, now)
                for provider in index:
                    self._set_ttl(("upstream", f"{sid}:{provider}"), ttl, now)

    def load_session(self, sid: str) -> SessionData:
        with self._lock:
            now = self._now()
            meta = self._live(("session", sid), now)
            revoked = self._live(("revoked", sid), now) is not None
            index = self._live(("upstream:idx", sid), now) or ()
            tokens: dict[str, str] = {}
            for provider in sorted(index):
                blob = self._live(("upstream", f"{sid}:{provider}"), now)
                if blob is not None:
                    tokens[provider] = blob
        return SessionData(
            owner=meta["owner"] if meta else None,
            complete=bool(meta and meta["complete"]),
            revoked=revoked,
            tokens=tokens,
        )

    def delete_session(self, sid: str, providers: list[str] | None = None) -> None:
        with self._lock:
            now = self._now()
            index_key = ("upstream:idx", sid)
            index = set(self._live(index_key, now) or ())
            targets = set(index) if providers is None else set(providers)
            for provider in targets:
                self._data.pop(("upstream", f"{sid}:{provider}"), None)
            remaining = index - targets
            if providers is None:
                self._data.pop(index_key, None)
                self._data.pop(("session", sid), None)
            elif remaining:
                self._data[index_key] = (self._data[index_key][0], frozenset(remaining))
            else:
                self._data.pop(index_key, None)

    def revoke_session(self, sid: str, ttl: int) -> None:
        with self._lock:
            self._set(("revoked", sid), True, ttl, self._now())
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

    def __len__(self) -> int:
        with self._lock:
            now = self._now()
            return sum(1 for key in list(self._data) if self._live(key, now) is not None)
