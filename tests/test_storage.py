"""Storage contract (SPEC §7): one suite run on MemoryStorage and RedisStorage, then Redis specifics
(key catalogue, TTL on every key, one round trip per session load, corrupt values) and storage faults
(TESTPLAN 1.9: ST-05, ST-06, ST-09)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from flask_mcp_auth.storage import (
    AlreadyExists,
    CorruptRecord,
    Storage,
    StorageUnavailable,
    storage_from_url,
)
from flask_mcp_auth.storage.memory import MemoryStorage
from flask_mcp_auth.storage.redis import RedisStorage
from tests.support.redis_server import free_port, start_redis

PREFIX = "test:{h1}:"


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    name: str
    store: Any  # MemoryStorage | RedisStorage
    advance: Callable[[float], None]
    raw: redis.Redis | None = None
    clock: FakeClock | None = field(default=None)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()

        def advance(seconds: float) -> None:
            clock.now += seconds

        yield Backend("memory", MemoryStorage(clock=clock, sweep_interval=5), advance, clock=clock)
        return
    url = request.getfixturevalue("redis_url")
    store = RedisStorage.from_url(url, prefix=PREFIX)
    raw = redis.Redis.from_url(url)
    yield Backend("redis", store, time.sleep, raw=raw)
    store.close()
    raw.close()


@pytest.fixture()
def rstore(redis_url: str) -> Iterator[tuple[RedisStorage, redis.Redis]]:
    store = RedisStorage.from_url(redis_url, prefix=PREFIX)
    raw = redis.Redis.from_url(redis_url)
    yield store, raw
    store.close()
    raw.close()


# -- generic records ------------------------------------------------------------------------------
def test_satisfies_protocol(backend: Backend) -> None:
    assert isinstance(backend.store, Storage)


def test_put_get_roundtrip_returns_copies(backend: Backend) -> None:
    s = backend.store
    assert s.get("pending", "st") is None
    s.put("pending", "st", {"b": [1, 2], "a": "x"}, ttl=60)
    got = s.get("pending", "st")
    assert got == {"a": "x", "b": [1, 2]}
    got["a"] = "mutated"
    assert s.get("pending", "st") == {"a": "x", "b": [1, 2]}


def test_put_nx_already_exists_until_expired(backend: Backend) -> None:
    s = backend.store
    s.put("code", "h", {"v": 1}, ttl=1, nx=True)
    with pytest.raises(AlreadyExists):
        s.put("code", "h", {"v": 2}, ttl=60, nx=True)
    assert s.get("code", "h") == {"v": 1}
    backend.advance(1.2)
    assert s.get("code", "h") is None
    s.put("code", "h", {"v": 3}, ttl=60, nx=True)
    assert s.get("code", "h") == {"v": 3}


def test_ttl_expiry_and_expire(backend: Backend) -> None:
    s = backend.store
    s.put("pending", "short", {"v": 1}, ttl=1)
    s.put("pending", "slid", {"v": 2}, ttl=1)
    assert s.expire("pending", "slid", 100) is True
    assert s.expire("pending", "absent", 100) is False
    backend.advance(1.2)
    assert s.get("pending", "short") is None
    assert s.take("pending", "short") is None
    assert s.get("pending", "slid") == {"v": 2}
    assert s.expire("pending", "short", 100) is False


def test_every_record_needs_positive_ttl(backend: Backend) -> None:
    with pytest.raises(ValueError):
        backend.store.put("pending", "x", {}, ttl=0)
    with pytest.raises(ValueError):
        backend.store.put_upstream_token("sid", "github", "blob", ttl=-1)


def test_take_is_single_use(backend: Backend) -> None:
    s = backend.store
    s.put("pending", "state", {"sid": "s1"}, ttl=60)
    assert s.take("pending", "state") == {"sid": "s1"}
    assert s.take("pending", "state") is None
    assert s.get("pending", "state") is None
    assert s.take("pending", "never") is None


def test_delete(backend: Backend) -> None:
    s = backend.store
    s.put("consent", "k", {"ok": True}, ttl=60)
    assert s.delete("consent", "k") is True
    assert s.delete("consent", "k") is False
    assert s.get("consent", "k") is None


def test_kinds_are_separate_namespaces(backend: Backend) -> None:
    s = backend.store
    s.put("pending", "same", {"kind": "pending"}, ttl=60)
    s.put("code", "same", {"kind": "code"}, ttl=60)
    assert s.take("code", "same") == {"kind": "code"}
    assert s.get("pending", "same") == {"kind": "pending"}


def test_swap_compare_and_set(backend: Backend) -> None:
    s = backend.store
    assert s.swap("refresh", "fam", {"gen": 1}, {"gen": 2}, ttl=60) is False
    assert s.get("refresh", "fam") is None
    s.put("refresh", "fam", {"gen": 1, "sub": "u"}, ttl=60)
    assert s.swap("refresh", "fam", {"gen": 0, "sub": "u"}, {"gen": 2, "sub": "u"}, ttl=60) is False
    assert s.get("refresh", "fam") == {"gen": 1, "sub": "u"}
    # key order does not matter: comparison is on canonical JSON
    assert s.swap("refresh", "fam", {"sub": "u", "gen": 1}, {"gen": 2, "sub": "u"}, ttl=1) is True
    assert s.get("refresh", "fam") == {"gen": 2, "sub": "u"}
    backend.advance(1.2)  # the swap set the new TTL
    assert s.get("refresh", "fam") is None


def test_incr_fixed_window(backend: Backend) -> None:
    s = backend.store
    assert s.incr("rate", "1.2.3.4", ttl=1) == 1
    assert s.incr("rate", "1.2.3.4", ttl=100) == 2  # a later TTL does not extend the window
    assert s.incr("rate", "5.6.7.8", ttl=100) == 1
    if backend.raw is not None:
        assert 0 < backend.raw.pttl(f"{PREFIX}counter:rate:1.2.3.4") <= 1000
    backend.advance(1.2)
    assert s.incr("rate", "1.2.3.4", ttl=1) == 1
    assert s.incr("rate", "5.6.7.8", ttl=1) == 2


# -- clients --------------------------------------------------------------------------------------
def test_client_cap_evicts_oldest_never_used(backend: Backend) -> None:
    s = backend.store
    for cid in ("c1", "c2", "c3"):
        assert s.add_client(cid, {"client_id": cid}, ttl=600, cap=3) == []
        backend.advance(0.01)  # distinct creation times
    s.touch_client("c1", ttl=600)
    assert s.add_client("c4", {"client_id": "c4"}, ttl=600, cap=3) == ["c2"]
    backend.advance(0.01)
    assert s.add_client("c5", {"client_id": "c5"}, ttl=600, cap=3) == ["c3"]
    assert s.get("client", "c2") is None and s.get("client", "c3") is None
    assert s.get("client", "c1") == {"client_id": "c1"}
    assert s.get("client", "c4") == {"client_id": "c4"}
    assert s.get("client", "c5") == {"client_id": "c5"}


def test_client_cap_never_evicts_used_or_the_new_one(backend: Backend) -> None:
    s = backend.store
    for cid in ("a", "b"):
        s.add_client(cid, {"client_id": cid}, ttl=600, cap=2)
        s.touch_client(cid, ttl=600)
    assert s.add_client("c", {"client_id": "c"}, ttl=600, cap=2) == []
    assert all(s.get("client", cid) is not None for cid in ("a", "b", "c"))
    # now over the cap with one never-used client: the next one evicts "c", never itself
    assert s.add_client("d", {"client_id": "d"}, ttl=600, cap=2) == ["c"]
    assert s.get("client", "d") == {"client_id": "d"}


def test_client_cap_ignores_expired_and_deleted_clients(backend: Backend) -> None:
    s = backend.store
    s.add_client("old", {"client_id": "old"}, ttl=1, cap=2)
    s.add_client("gone", {"client_id": "gone"}, ttl=600, cap=2)
    assert s.delete("client", "gone") is True
    backend.advance(1.2)
    assert s.add_client("a", {"client_id": "a"}, ttl=600, cap=2) == []
    assert s.add_client("b", {"client_id": "b"}, ttl=600, cap=2) == []
    assert s.get("client", "a") is not None and s.get("client", "b") is not None


def test_touch_client_slides_ttl(backend: Backend) -> None:
    s = backend.store
    s.add_client("c", {"client_id": "c"}, ttl=1, cap=10)
    s.touch_client("c", ttl=100)
    s.touch_client("absent", ttl=100)
    backend.advance(1.2)
    assert s.get("client", "c") == {"client_id": "c"}
    assert s.get("client", "absent") is None


# -- sessions and upstream tokens ---------------------------------------------------------------------
def test_session_roundtrip(backend: Backend) -> None:
    s = backend.store
    empty = s.load_session("nosuch")
    assert (empty.owner, empty.complete, empty.revoked, dict(empty.tokens)) == (None, False, False, {})
    s.put_upstream_token("sid1", "google", "blob-g", ttl=60)
    s.put_upstream_token("sid1", "github", "blob-h", ttl=60)
    data = s.load_session("sid1")
    assert data.owner is None and data.complete is False and data.revoked is False
    assert list(data.tokens.items()) == [("github", "blob-h"), ("google", "blob-g")]
    s.put_upstream_token("sid1", "github", "blob-h2", ttl=60)  # overwrite one provider
    s.set_session("sid1", "user-1", ttl=60, complete=True)
    data = s.load_session("sid1")
    assert data.owner == "user-1" and data.complete is True
    assert dict(data.tokens) == {"github": "blob-h2", "google": "blob-g"}
    assert s.load_session("sid2").tokens == {}


def test_set_session_promotes_ttl_of_every_row(backend: Backend) -> None:
    s = backend.store
    s.put_upstream_token("sid", "a", "A", ttl=1)
    s.put_upstream_token("sid", "b", "B", ttl=1)
    s.set_session("sid", "u", ttl=1, complete=False)
    s.set_session("sid", "u", ttl=100, complete=True)
    backend.advance(1.2)
    data = s.load_session("sid")
    assert data.owner == "u" and data.complete is True
    assert dict(data.tokens) == {"a": "A", "b": "B"}


def test_index_outlives_its_members(backend: Backend) -> None:
    s = backend.store
    s.put_upstream_token("sid", "long", "L", ttl=100)
    s.put_upstream_token("sid", "short", "S", ttl=1)
    if backend.raw is not None:
        idx = backend.raw.pttl(f"{PREFIX}upstream:idx:sid")
        assert idx >= backend.raw.pttl(f"{PREFIX}upstream:sid:long") > 1000
    backend.advance(1.2)
    assert dict(s.load_session("sid").tokens) == {"long": "L"}


def test_delete_session_partial_and_all(backend: Backend) -> None:
    s = backend.store
    for provider in ("a", "b", "c"):
        s.put_upstream_token("sid", provider, provider.upper(), ttl=60)
    s.set_session("sid", "u", ttl=60, complete=True)
    s.delete_session("sid", ["a", "missing", "bad:name"])
    data = s.load_session("sid")
    assert dict(data.tokens) == {"b": "B", "c": "C"} and data.owner == "u"
    s.delete_session("sid", ["b", "c"])
    data = s.load_session("sid")
    assert dict(data.tokens) == {} and data.owner == "u"
    if backend.raw is not None:
        assert backend.raw.exists(f"{PREFIX}upstream:idx:sid") == 0
    s.put_upstream_token("sid", "a", "A", ttl=60)
    s.delete_session("sid")
    data = s.load_session("sid")
    assert (data.owner, dict(data.tokens)) == (None, {})
    s.delete_session("never-existed")


def test_revoke_session(backend: Backend) -> None:
    s = backend.store
    s.put_upstream_token("sid", "a", "A", ttl=60)
    s.set_session("sid", "u", ttl=60, complete=True)
    s.revoke_session("sid", ttl=1)
    data = s.load_session("sid")
    assert data.revoked is True and dict(data.tokens) == {} and data.owner is None
    assert s.load_session("other").revoked is False
    backend.advance(1.2)
    assert s.load_session("sid").revoked is False


def test_load_session_reports_remaining_ttl(backend: Backend) -> None:
    s = backend.store
    assert s.load_session("sid").ttl is None
    s.put_upstream_token("sid", "a", "A", ttl=60)
    assert s.load_session("sid").ttl is None  # rows without metadata: no session TTL to report
    s.set_session("sid", "u", ttl=100, complete=True)
    left = s.load_session("sid").ttl
    assert left is not None and 0 < left <= 100
    if backend.clock is not None:  # injected clock: exact
        backend.advance(40)
        assert s.load_session("sid").ttl == pytest.approx(60)
    s.revoke_session("sid", ttl=60)
    assert s.load_session("sid").ttl is None


def test_put_refreshed_token_never_outlives_its_session(backend: Backend) -> None:
    s = backend.store
    s.put_upstream_token("short", "a", "A", ttl=600)
    s.set_session("short", "u", ttl=1, complete=True)  # a session shorter than the refresh TTL
    assert s.put_refreshed_token("short", "a", "A2", ttl=600) is True
    assert s.put_refreshed_token("short", "b", "B", ttl=600) is True
    assert dict(s.load_session("short").tokens) == {"a": "A2", "b": "B"}
    if backend.raw is not None:
        session_left = backend.raw.pttl(f"{PREFIX}session:short")  # read first: both only shrink
        for provider in ("a", "b"):
            assert 0 < backend.raw.pttl(f"{PREFIX}upstream:short:{provider}") <= session_left
        assert backend.raw.pttl(f"{PREFIX}upstream:idx:short") > 0
    s.set_session("long", "u", ttl=600, complete=True)
    assert s.put_refreshed_token("long", "a", "L", ttl=1) is True  # ttl still bounds the row
    assert s.put_refreshed_token("nometa", "a", "N", ttl=600) is False  # no metadata: not live
    assert dict(s.load_session("nometa").tokens) == {}
    s.put_upstream_token("ended", "a", "E", ttl=600)  # a row left over, metadata gone
    assert s.put_refreshed_token("ended", "a", "E2", ttl=600) is False
    assert dict(s.load_session("ended").tokens) == {"a": "E"}  # untouched, not rewritten
    s.revoke_session("gone", ttl=600)
    assert s.put_refreshed_token("gone", "a", "G", ttl=600) is False  # revoked: nothing comes back
    assert dict(s.load_session("gone").tokens) == {}
    backend.advance(1.2)
    short = s.load_session("short")
    assert (short.owner, dict(short.tokens)) == (None, {})
    assert dict(s.load_session("long").tokens) == {}
    assert dict(s.load_session("nometa").tokens) == {}
    if backend.raw is not None:
        assert backend.raw.exists(f"{PREFIX}upstream:idx:short", f"{PREFIX}upstream:gone:a",
                                  f"{PREFIX}upstream:nometa:a", f"{PREFIX}upstream:idx:nometa") == 0
    with pytest.raises(ValueError):
        s.put_refreshed_token("a:b", "a", "x", ttl=60)
    with pytest.raises(ValueError):
        s.put_refreshed_token("sid", "b:c", "x", ttl=60)
    with pytest.raises(ValueError):
        s.put_refreshed_token("sid", "a", "x", ttl=0)


def test_sid_and_provider_cannot_alias_slots(backend: Backend) -> None:
    with pytest.raises(ValueError):
        backend.store.put_upstream_token("a:b", "c", "x", ttl=60)
    with pytest.raises(ValueError):
        backend.store.put_upstream_token("a", "b:c", "x", ttl=60)
    with pytest.raises(ValueError):
        backend.store.set_session("a:b", "u", ttl=60, complete=True)
    for impossible in ("", "a:b"):  # reads of a sid that cannot exist find nothing
        data = backend.store.load_session(impossible)
        assert (data.owner, data.revoked, dict(data.tokens)) == (None, False, {})
        backend.store.delete_session(impossible)


# -- locks ------------------------------------------------------------------------------------------
def test_locks(backend: Backend) -> None:
    s = backend.store
    token = s.acquire_lock("refresh:sid:github", ttl=30)
    assert token
    assert s.acquire_lock("refresh:sid:github", ttl=30) is None
    other = s.acquire_lock("refresh:sid:google", ttl=30)
    assert other and other != token
    s.release_lock("refresh:sid:github", "not-the-owner")
    assert s.acquire_lock("refresh:sid:github", ttl=30) is None
    s.release_lock("refresh:sid:github", token)
    again = s.acquire_lock("refresh:sid:github", ttl=0.5)
    assert again and again != token
    backend.advance(0.7)  # an abandoned lock expires
    assert s.acquire_lock("refresh:sid:github", ttl=30) is not None
    s.release_lock("refresh:sid:github", again)  # stale owner: no effect
    assert s.acquire_lock("refresh:sid:github", ttl=30) is None


# -- lifecycle --------------------------------------------------------------------------------------
def test_ping_and_close(backend: Backend) -> None:
    s = backend.store
    s.ping()
    s.close()
    with pytest.raises(StorageUnavailable):
        s.ping()
    with pytest.raises(StorageUnavailable):
        s.get("pending", "x")


# -- storage_from_url ---------------------------------------------------------------------------------
def test_storage_from_url(redis_url: str) -> None:
    mem = storage_from_url("memory://", PREFIX)
    assert isinstance(mem, MemoryStorage)
    red = storage_from_url(redis_url, PREFIX, timeout=1.5)
    assert isinstance(red, RedisStorage) and red.prefix == PREFIX
    kwargs = red.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 1.5 and kwargs["socket_connect_timeout"] == 1.5
    red.put("pending", "x", {"v": 1}, ttl=60)
    assert redis.Redis.from_url(redis_url).get(f"{PREFIX}pending:x") == b'{"v":1}'
    red.close()
    tls = storage_from_url("rediss://127.0.0.1:1/0", PREFIX)
    assert isinstance(tls, RedisStorage)
    assert issubclass(tls.client.connection_pool.connection_class, redis.SSLConnection)
    assert storage_from_url(mem, PREFIX) is mem
    with pytest.raises(ValueError):
        storage_from_url("postgres://db/x", PREFIX)


# -- memory specifics --------------------------------------------------------------------------------
def test_memory_is_bounded_and_sweeps() -> None:
    clock = FakeClock()
    s = MemoryStorage(max_entries=3, sweep_interval=10, clock=clock)
    for i in range(3):
        s.put("pending", str(i), {"i": i}, ttl=5)
    s.put("pending", "0", {"i": "rewrite"}, ttl=5)  # overwriting needs no room
    with pytest.raises(StorageUnavailable):
        s.put("pending", "3", {"i": 3}, ttl=5)
    with pytest.raises(StorageUnavailable):
        s.put_upstream_token("sid", "a", "A", ttl=5)
    clock.now += 6
    s.put("pending", "3", {"i": 3}, ttl=5)  # a full store sweeps expired entries first
    assert len(s) == 1


def test_memory_sweeps_expired_entries_periodically() -> None:
    clock = FakeClock()
    s = MemoryStorage(sweep_interval=10, clock=clock)
    for i in range(200):
        s.put("pending", str(i), {"i": i}, ttl=5)
        s.put_upstream_token(f"sid{i}", "a", "A", ttl=5)
        s.set_session(f"sid{i}", "u", ttl=5, complete=True)  # rewrites never leak memory
    s.put("pending", "keep", {}, ttl=60)
    clock.now += 11
    s.ping()  # any call past the interval sweeps
    assert list(s._data) == [("pending", "keep")]
    assert len(s._expiries) <= 2


def test_memory_internal_entries_are_not_records() -> None:
    s = MemoryStorage()
    s.incr("rate", "ip", ttl=60)
    s.put_upstream_token("sid", "a", "A", ttl=60)
    with pytest.raises(CorruptRecord):
        s.get("counter:rate", "ip")
    with pytest.raises(CorruptRecord):
        s.get("upstream:idx", "sid")


# -- Redis specifics --------------------------------------------------------------------------------
def _workload(s: RedisStorage) -> None:
    s.put("pending", "p", {"v": 1}, ttl=600)
    s.put("code", "c", {"v": 1}, ttl=60, nx=True)
    s.put("identity", "i", {"v": 1}, ttl=600)
    s.swap("identity", "i", {"v": 1}, {"v": 2}, ttl=600)
    s.incr("rate", "ip", ttl=60)
    s.incr("rate", "ip", ttl=60)
    for cid in ("c1", "c2", "c3"):
        s.add_client(cid, {"client_id": cid}, ttl=3600, cap=2)
    s.touch_client("c3", ttl=7200)
    for provider in ("a", "b", "c"):
        s.put_upstream_token("sid", provider, "blob", ttl=600)
    s.set_session("sid", "u", ttl=3600, complete=True)
    s.delete_session("sid", ["b"])
    s.put_upstream_token("sid2", "a", "blob", ttl=600)
    s.revoke_session("sid2", ttl=3600)
    s.acquire_lock("l", ttl=5)
    s.expire("pending", "p", 900)


def test_redis_key_catalogue_and_every_key_has_ttl(rstore: tuple[RedisStorage, redis.Redis]) -> None:
    store, raw = rstore
    _workload(store)
    keys = sorted(k.decode() for k in raw.scan_iter(match="*"))
    assert keys == sorted(
        PREFIX + k
        for k in [
            "pending:p", "code:c", "identity:i", "counter:rate:ip", "client:c2", "client:c3",
            "clients:all", "clients:unused", "upstream:sid:a", "upstream:sid:c", "upstream:idx:sid",
            "session:sid", "revoked:sid2", "lock:l",
        ]
    )
    for key in keys:
        assert raw.ttl(key) > 0, key
    assert raw.smembers(f"{PREFIX}upstream:idx:sid") == {b"a", b"c"}
    assert raw.get(f"{PREFIX}session:sid") == b'{"complete":true,"owner":"u"}'


class _CountingConnection(redis.Connection):
    sent: list[bytes] = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks = command if isinstance(command, list) else [command]
        type(self).sent.append(b"".join(bytes(c) for c in chunks))
        super().send_packed_command(command, check_health)


@pytest.mark.parametrize("providers", [1, 3, 10])
def test_redis_load_session_is_one_round_trip(redis_url: str, providers: int) -> None:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=_CountingConnection)
    store = RedisStorage(redis.Redis(connection_pool=pool), PREFIX)
    for i in range(providers):
        store.put_upstream_token("sid", f"p{i}", f"blob{i}", ttl=60)
    store.set_session("sid", "u", ttl=60, complete=True)
    store.revoke_session("other", ttl=60)
    store.load_session("warm-up")  # first use loads the script (EVALSHA → NOSCRIPT → SCRIPT LOAD)
    _CountingConnection.sent.clear()
    data = store.load_session("sid")
    assert len(_CountingConnection.sent) == 1
    assert b"EVALSHA" in _CountingConnection.sent[0]
    assert len(data.tokens) == providers and data.owner == "u" and data.revoked is False
    _CountingConnection.sent.clear()
    assert store.load_session("other").revoked is True
    assert len(_CountingConnection.sent) == 1
    pool.disconnect()


def test_redis_take_falls_back_to_lua_without_getdel(redis_url: str) -> None:
    class OldRedis(redis.Redis):
        def getdel(self, name: Any) -> Any:
            raise redis.ResponseError("unknown command 'GETDEL', with args beginning with: ")

    store = RedisStorage(OldRedis.from_url(redis_url), PREFIX)
    store.put("pending", "s", {"v": 1}, ttl=60)
    assert store.take("pending", "s") == {"v": 1}
    assert store._getdel is False
    assert store.take("pending", "s") is None
    store.client.close()


def test_redis_works_with_decode_responses(redis_url: str) -> None:
    store = RedisStorage(redis.Redis.from_url(redis_url, decode_responses=True), PREFIX)
    store.put_upstream_token("sid", "a", "A", ttl=60)
    store.set_session("sid", "u", ttl=60, complete=True)
    assert dict(store.load_session("sid").tokens) == {"a": "A"}
    store.add_client("c1", {}, ttl=60, cap=1)
    assert store.add_client("c2", {}, ttl=60, cap=1) == ["c1"]
    store.put("pending", "s", {"v": 1}, ttl=60)
    assert store.take("pending", "s") == {"v": 1}
    store.client.close()


def test_redis_corrupt_values_raise_corrupt_record(rstore: tuple[RedisStorage, redis.Redis]) -> None:
    store, raw = rstore
    raw.set(f"{PREFIX}pending:garbage", b"\xff\x00\x80not json", ex=60)
    raw.set(f"{PREFIX}pending:list", b"[1,2]", ex=60)
    raw.rpush(f"{PREFIX}pending:wrongtype", b"x")
    raw.set(f"{PREFIX}counter:rate:ip", b"abc", ex=60)
    with pytest.raises(CorruptRecord):
        store.get("pending", "garbage")
    with pytest.raises(CorruptRecord):
        store.take("pending", "list")
    with pytest.raises(CorruptRecord):
        store.get("pending", "wrongtype")
    with pytest.raises(CorruptRecord):
        store.swap("pending", "wrongtype", {}, {}, ttl=60)
    with pytest.raises(CorruptRecord):
        store.incr("rate", "ip", ttl=60)
    raw.set(f"{PREFIX}session:s1", b"<html>", ex=60)
    with pytest.raises(CorruptRecord):
        store.load_session("s1")
    raw.set(f"{PREFIX}session:s2", b'{"complete":true}', ex=60)
    with pytest.raises(CorruptRecord):
        store.load_session("s2")
    store.put_upstream_token("s3", "a", "blob", ttl=60)
    raw.set(f"{PREFIX}upstream:s3:a", b"\xff\xfe", ex=60)
    with pytest.raises(CorruptRecord):
        store.load_session("s3")
    raw.set(f"{PREFIX}upstream:idx:s4", b"not a set", ex=60)
    with pytest.raises(CorruptRecord):
        store.put_upstream_token("s4", "a", "blob", ttl=60)


# -- storage faults (TESTPLAN 1.9) --------------------------------------------------------------------
def test_st06_redis_that_never_answers_raises_unavailable() -> None:
    # A listening socket that never accepts: connects complete in the kernel, nothing is ever read.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    store = RedisStorage.from_url(f"redis://127.0.0.1:{port}/0", prefix=PREFIX, timeout=0.3)
    try:
        with pytest.raises(StorageUnavailable):
            store.get("pending", "x")
        with pytest.raises(StorageUnavailable):
            store.load_session("sid")
        with pytest.raises(StorageUnavailable):
            store.ping()
    finally:
        store.close()
        listener.close()


def test_st06_redis_stopped_raises_unavailable() -> None:
    server = start_redis()
    store = RedisStorage.from_url(server.url, prefix=PREFIX, timeout=0.5)
    try:
        store.put("pending", "s", {"v": 1}, ttl=60)
        server.stop()
        with pytest.raises(StorageUnavailable):
            store.take("pending", "s")
        with pytest.raises(StorageUnavailable):
            store.add_client("c", {}, ttl=60, cap=10)
    finally:
        store.close()
        server.stop()
    nobody = RedisStorage.from_url(f"redis://127.0.0.1:{free_port()}/0", prefix=PREFIX, timeout=0.5)
    with pytest.raises(StorageUnavailable):
        nobody.ping()
    nobody.close()


def test_st05_restart_without_persistence_loses_pending_and_recovers() -> None:
    server = start_redis()
    store = RedisStorage.from_url(server.url, prefix=PREFIX, timeout=1.0)
    try:
        store.put("pending", "leg1", {"sid": "s"}, ttl=600)
        store.put_upstream_token("sid", "a", "A", ttl=600)
        server.stop()
        server = start_redis(server.port)
        # the pooled connection is dead; it is replaced once, transparently
        assert store.take("pending", "leg1") is None
        assert dict(store.load_session("sid").tokens) == {}
        store.put("pending", "fresh", {"sid": "t"}, ttl=600)
        assert store.take("pending", "fresh") == {"sid": "t"}
    finally:
        store.close()
        server.stop()


def test_st09_prefixes_isolate_apps(redis_url: str) -> None:
    one = RedisStorage.from_url(redis_url, prefix="app1:{a}:")
    two = RedisStorage.from_url(redis_url, prefix="app2:{b}:")
    try:
        one.put("code", "h", {"app": 1}, ttl=60)
        assert two.get("code", "h") is None and two.take("code", "h") is None
        assert one.take("code", "h") == {"app": 1}
        one.put_upstream_token("sid", "a", "A", ttl=60)
        one.set_session("sid", "u", ttl=60, complete=True)
        one.revoke_session("gone", ttl=60)
        data = two.load_session("sid")
        assert (data.owner, dict(data.tokens)) == (None, {})
        assert two.load_session("gone").revoked is False
        two.add_client("b1", {}, ttl=60, cap=1)
        one.add_client("a1", {}, ttl=60, cap=1)
        assert one.add_client("a2", {}, ttl=60, cap=1) == ["a1"]
        assert two.get("client", "b1") == {}
        assert one.incr("rate", "ip", ttl=60) == 1 and two.incr("rate", "ip", ttl=60) == 1
        assert one.acquire_lock("l", ttl=5) and two.acquire_lock("l", ttl=5)
        two.delete_session("sid")
        assert one.load_session("sid").owner == "u"
    finally:
        one.close()
        two.close()


def test_add_client_same_millisecond_keeps_creation_order(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations within one millisecond are still evicted oldest-first (no tie on the score)."""
    import time as time_module

    from flask_mcp_auth.storage.redis import RedisStorage

    store = RedisStorage.from_url(redis_url, prefix="test:{tie}:")
    frozen = time_module.time()
    monkeypatch.setattr("flask_mcp_auth.storage.redis.time.time", lambda: frozen)
    ids = [f"client-{n}" for n in ("z", "a", "m")]  # member order differs from creation order
    for cid in ids:
        assert store.add_client(cid, {"client_id": cid}, ttl=3600, cap=10) == []
    evicted = store.add_client("client-new", {"client_id": "client-new"}, ttl=3600, cap=3)
    assert evicted == ["client-z"]
    store.close()
