"""Redis storage: the :class:`~flask_mcp_auth.storage.Storage` protocol on redis-py (SPEC §7).

Any number of app processes and hosts share one Redis. The key catalogue is the one drawn in
:mod:`flask_mcp_auth.storage` (plus ``{prefix}counter:{kind}:{key}`` for :meth:`RedisStorage.incr`);
``docs/storage.md`` describes it with the TTLs.

* Every key is written with a TTL (``SET … PX`` or ``PEXPIRE`` in the same atomic step); no key is left
  without one.
* Every multi-key or read-then-write operation is one Lua script (registered once with
  ``register_script``; redis-py sends ``EVALSHA`` and loads the script again after a restart), so it
  is atomic across processes. Single-use items are consumed with ``GETDEL`` (a Lua script on Redis
  older than 6.2).
* :meth:`RedisStorage.load_session` is ONE round trip: a single script reads the session metadata and
  its ``PTTL``, the revocation marker, the index and every token blob.
* Every redis-py error becomes :class:`~flask_mcp_auth.storage.StorageUnavailable` (callers fail
  closed, 503), except a value of the wrong shape, which is
  :class:`~flask_mcp_auth.storage.CorruptRecord`. Values are JSON text, never pickle.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

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

__all__ = ["RedisStorage"]

_T = TypeVar("_T")

# Replies that mean "the stored value has the wrong shape", not "Redis is unwell".
_CORRUPT_MARKERS = ("WRONGTYPE", "not an integer", "out of range")

_TAKE = """
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
return v
"""

# KEYS: record; ARGV: expected JSON, new JSON, ttl ms
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

# KEYS: counter; ARGV: ttl ms. The PTTL check also repairs a counter that somehow lost its TTL.
_INCR = """
local v = redis.call('INCR', KEYS[1])
if v == 1 or redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return v
"""

# KEYS: lock; ARGV: owner token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: client record, clients:all, clients:unused
# ARGV: value, ttl ms, cap, client id, client key prefix, now ms
# clients:all is scored by expiry time, so clients whose records expired are found with one range
# query (a TTL slid by someone else is re-read); clients:unused is scored by creation time, so the
# oldest never-used registrations come first.
_ADD_CLIENT = """
local ttl = tonumber(ARGV[2])
local now = tonumber(ARGV[6])
local cid = ARGV[4]
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, old in ipairs(gone) do
  local left = redis.call('PTTL', ARGV[5] .. old)
  if left > 0 then
    redis.call('ZADD', KEYS[2], now + left, old)
  else
    redis.call('ZREM', KEYS[2], old)
    redis.call('ZREM', KEYS[3], old)
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, cid)
-- strictly increasing creation scores: two registrations in one millisecond keep their order
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
local created = now
if last[2] and tonumber(last[2]) >= created then created = tonumber(last[2]) + 1 end
redis.call('ZADD', KEYS[3], created, cid)
local evicted = {}
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if excess > 0 then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, excess)
  for _, old in ipairs(oldest) do
    if excess <= 0 then break end
    if old ~= cid then
      if redis.call('DEL', ARGV[5] .. old) == 1 then evicted[#evicted + 1] = old end
      redis.call('ZREM', KEYS[2], old)
      redis.call('ZREM', KEYS[3], old)
      excess = excess - 1
    end
  end
end
for i = 2, 3 do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return evicted
"""

# KEYS: client record, clients:all, clients:unused; ARGV: ttl ms, client id, now ms
_TOUCH_CLIENT = """
local ttl = tonumber(ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2])
if redis.call('PEXPIRE', KEYS[1], ttl) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 0
end
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + ttl, ARGV[2])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

# KEYS: client record, clients:all, clients:unused; ARGV: client id
_DELETE_CLIENT = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('DEL', KEYS[1])
"""

# KEYS: token row, index; ARGV: blob, provider, ttl ms
_PUT_UPSTREAM = """
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('SADD', KEYS[2], ARGV[2])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

# KEYS: token row, index, session, revoked; ARGV: blob, provider, ttl ms
# Reading the session's PTTL and writing the row in one script means no set_session, revocation or
# expiry can slip in between: the row never outlives its session, and a revoked session, or one
# without metadata (ended or expired: not a live session), gets no row (reply 0).
_PUT_REFRESHED = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local ttl = tonumber(ARGV[3])
local left = redis.call('PTTL', KEYS[3])
if left == -2 then return 0 end
if left > 0 and left < ttl then ttl = left end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('SADD', KEYS[2], ARGV[2])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

# KEYS: session, index; ARGV: metadata JSON, ttl ms, token row prefix
_SET_SESSION = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local providers = redis.call('SMEMBERS', KEYS[2])
if #providers > 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  for _, p in ipairs(providers) do redis.call('PEXPIRE', ARGV[3] .. p, ARGV[2]) end
end
return #providers
"""

# KEYS: session, revoked, index; ARGV: token row prefix
# Reply: {metadata or nil, revoked 0/1, metadata PTTL ms, provider, blob, provider, blob, …}
_LOAD_SESSION = """
local out = {redis.call('GET', KEYS[1]), redis.call('EXISTS', KEYS[2]), redis.call('PTTL', KEYS[1])}
local providers = redis.call('SMEMBERS', KEYS[3])
for _, p in ipairs(providers) do
  local blob = redis.call('GET', ARGV[1] .. p)
  if blob then
    out[#out + 1] = p
    out[#out + 1] = blob
  end
end
return out
"""

# KEYS: session, index, revoked; ARGV: token row prefix, mode ('all'|'some'|'revoke'),
# marker JSON, marker ttl ms, providers… ('some' only). Redis drops a set when its last member goes.
_DELETE_SESSION = """
if ARGV[2] == 'revoke' then redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4]) end
if ARGV[2] == 'some' then
  for i = 5, #ARGV do
    redis.call('DEL', ARGV[1] .. ARGV[i])
    redis.call('SREM', KEYS[2], ARGV[i])
  end
  return 0
end
local providers = redis.call('SMEMBERS', KEYS[2])
for _, p in ipairs(providers) do redis.call('DEL', ARGV[1] .. p) end
redis.call('DEL', KEYS[1], KEYS[2])
return #providers
"""


def _ms(ttl: float) -> int:
    if ttl <= 0:
        raise ValueError("every record needs a positive TTL")
    return max(1, int(ttl * 1000))


def _text(value: bytes | str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise CorruptRecord("stored value is not UTF-8 text") from exc


class RedisStorage:
    """:class:`~flask_mcp_auth.storage.Storage` on Redis.

    >>> store = RedisStorage.from_url("redis://127.0.0.1:6379/0", prefix="mcp-auth:{app}:")
    >>> store.put("pending", "state123", {"sid": "s"}, ttl=600)
    >>> store.take("pending", "state123"), store.take("pending", "state123")
    ({'sid': 's'}, None)

    ``client`` may use ``decode_responses`` either way. A client passed in stays the caller's:
    :meth:`close` only closes clients built by :meth:`from_url`.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._owns_client = False
        self._closed = False
        self._getdel = True  # flipped off once if the server predates GETDEL (Redis < 6.2)
        register = client.register_script
        self._take_script = register(_TAKE)
        self._swap = register(_SWAP)
        self._incr = register(_INCR)
        self._release = register(_RELEASE)
        self._add_client = register(_ADD_CLIENT)
        self._touch_client = register(_TOUCH_CLIENT)
        self._delete_client = register(_DELETE_CLIENT)
        self._put_upstream = register(_PUT_UPSTREAM)
        self._put_refreshed = register(_PUT_REFRESHED)
        self._set_session = register(_SET_SESSION)
        self._load_session = register(_LOAD_SESSION)
        self._delete_session = register(_DELETE_SESSION)
        self._clients_all = f"{prefix}clients:all"
        self._clients_unused = f"{prefix}clients:unused"

    @classmethod
    def from_url(cls, url: str, *, prefix: str, timeout: float = 3.0) -> RedisStorage:
        """Connect lazily to ``redis://`` / ``rediss://`` (TLS) / ``unix://`` ``url``.

        Connect and read timeouts are ``timeout``; an idle pooled connection is health-checked
        before reuse; a broken connection is retried once at once (a restarted Redis), a timeout
        is not retried (the caller gets :class:`StorageUnavailable` within ``timeout``).
        """
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        store = cls(client, prefix)
        store._owns_client = True
        return store

    # -- internals --------------------------------------------------------------------------------
    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{key}"

    def _session_keys(self, sid: str) -> tuple[str, str, str, str]:
        """session, revoked, index, token row prefix."""
        p = self.prefix
        return f"{p}session:{sid}", f"{p}revoked:{sid}", f"{p}upstream:idx:{sid}", f"{p}upstream:{sid}:"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        if self._closed:
            raise StorageUnavailable("redis storage is closed")
        try:
            yield
        except redis.ResponseError as exc:
            if any(marker in str(exc) for marker in _CORRUPT_MARKERS):
                raise CorruptRecord("stored value has the wrong type") from exc
            raise StorageUnavailable(f"redis refused the command ({type(exc).__name__})") from exc
        except (redis.RedisError, RedisClusterException) as exc:
            # redis-py's cluster errors do not derive from RedisError; they are outages all the same
            raise StorageUnavailable(f"redis unavailable ({type(exc).__name__})") from exc

    def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        with self._errors():
            return fn(*args, **kwargs)

    # -- generic records --------------------------------------------------------------------------
    def put(self, kind: str, key: str, value: Mapping[str, Any], ttl: int, *, nx: bool = False) -> None:
        done = self._call(self.client.set, self._key(kind, key), dumps(value), px=_ms(ttl), nx=nx)
        if nx and not done:
            raise AlreadyExists(f"{kind} record exists")

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        raw = self._call(self.client.get, self._key(kind, key))
        return None if raw is None else loads(raw)

    def take(self, kind: str, key: str) -> dict[str, Any] | None:
        name = self._key(kind, key)
        with self._errors():
            raw: Any = None
            if self._getdel:
                try:
                    raw = self.client.getdel(name)
                except redis.ResponseError as exc:
                    if "unknown command" not in str(exc).lower():
                        raise
                    self._getdel = False
            if not self._getdel:
                raw = self._take_script(keys=[name])
        return None if raw is None else loads(raw)

    def delete(self, kind: str, key: str) -> bool:
        if kind == "client":  # keep the client cap bookkeeping exact
            keys = [self._key(kind, key), self._clients_all, self._clients_unused]
            return bool(self._call(self._delete_client, keys=keys, args=[key]))
        return bool(self._call(self.client.delete, self._key(kind, key)))

    def expire(self, kind: str, key: str, ttl: int) -> bool:
        return bool(self._call(self.client.pexpire, self._key(kind, key), _ms(ttl)))

    def swap(
        self, kind: str, key: str, expected: Mapping[str, Any], new: Mapping[str, Any], ttl: int
    ) -> bool:
        args = [dumps(expected), dumps(new), _ms(ttl)]
        return bool(self._call(self._swap, keys=[self._key(kind, key)], args=args))

    def incr(self, kind: str, key: str, ttl: int) -> int:
        return int(self._call(self._incr, keys=[self._key("counter:" + kind, key)], args=[_ms(ttl)]))

    # -- clients ----------------------------------------------------------------------------------
    def add_client(self, client_id: str, value: Mapping[str, Any], ttl: int, cap: int) -> list[str]:
        keys = [self._key("client", client_id), self._clients_all, self._clients_unused]
        args = [dumps(value), _ms(ttl), cap, client_id, self._key("client", ""), int(time.time() * 1000)]
        evicted = self._call(self._add_client, keys=keys, args=args)
        return [_text(cid) for cid in evicted]

    def touch_client(self, client_id: str, ttl: int) -> None:
        keys = [self._key("client", client_id), self._clients_all, self._clients_unused]
        self._call(self._touch_client, keys=keys, args=[_ms(ttl), client_id, int(time.time() * 1000)])

    # -- sessions and upstream tokens -------------------------------------------------------------
    def put_upstream_token(self, sid: str, provider: str, blob: str, ttl: int) -> None:
        _slot_part("sid", sid)
        _slot_part("provider", provider)
        _session, _revoked, index, rows = self._session_keys(sid)
        self._call(self._put_upstream, keys=[rows + provider, index], args=[blob, provider, _ms(ttl)])

    def put_refreshed_token(self, sid: str, provider: str, blob: str, ttl: int) -> bool:
        _slot_part("sid", sid)
        _slot_part("provider", provider)
        session, revoked, index, rows = self._session_keys(sid)
        keys = [rows + provider, index, session, revoked]
        return bool(self._call(self._put_refreshed, keys=keys, args=[blob, provider, _ms(ttl)]))

    def set_session(self, sid: str, owner: str, ttl: int, *, complete: bool) -> None:
        _slot_part("sid", sid)
        session, _revoked, index, rows = self._session_keys(sid)
        meta = dumps({"owner": owner, "complete": complete})
        self._call(self._set_session, keys=[session, index], args=[meta, _ms(ttl), rows])

    def load_session(self, sid: str) -> SessionData:
        if not _valid_slot_part(sid):  # no such session can have been stored
            return _NO_SESSION
        session, revoked, index, rows = self._session_keys(sid)
        reply = self._call(self._load_session, keys=[session, revoked, index], args=[rows])
        meta = loads(reply[0]) if reply[0] is not None else None
        tokens = {_text(reply[i]): _text(reply[i + 1]) for i in range(3, len(reply) - 1, 2)}
        left = int(reply[2])  # -2: no metadata; -1: no TTL (never written so): unknown
        if meta is not None and not isinstance(meta.get("owner"), str):
            raise CorruptRecord("session metadata has no owner")
        return SessionData(
            owner=meta["owner"] if meta else None,
            complete=bool(meta and meta.get("complete") is True),
            revoked=bool(reply[1]),
            tokens=dict(sorted(tokens.items())),
            ttl=left / 1000 if meta is not None and left > 0 else None,
        )

    def delete_session(self, sid: str, providers: list[str] | None = None) -> None:
        if not _valid_slot_part(sid):
            return
        session, revoked, index, rows = self._session_keys(sid)
        if providers is None:
            args: list[Any] = [rows, "all", "", 0]
        else:
            args = [rows, "some", "", 0, *(p for p in providers if _valid_slot_part(p))]
        self._call(self._delete_session, keys=[session, index, revoked], args=args)

    def revoke_session(self, sid: str, ttl: int) -> None:
        _slot_part("sid", sid)
        session, revoked, index, rows = self._session_keys(sid)
        marker = dumps({"revoked_at": int(time.time())})
        args = [rows, "revoke", marker, _ms(ttl)]
        self._call(self._delete_session, keys=[session, index, revoked], args=args)

    # -- locks ------------------------------------------------------------------------------------
    def acquire_lock(self, name: str, ttl: float) -> str | None:
        token = secrets.token_urlsafe(16)
        done = self._call(self.client.set, self._key("lock", name), token, px=_ms(ttl), nx=True)
        return token if done else None

    def release_lock(self, name: str, token: str) -> None:
        self._call(self._release, keys=[self._key("lock", name)], args=[token])

    # -- lifecycle --------------------------------------------------------------------------------
    def ping(self) -> None:
        self._call(self.client.ping)

    def close(self) -> None:
        self._closed = True
        if self._owns_client:
            self.client.close()
