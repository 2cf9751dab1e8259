"""Races on the storage primitives (SPEC §7, SPEC §8 single-use states and codes, TESTPLAN CC-05):
threads on both backends, and separate OS processes on Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from flask_mcp_auth.storage.redis import RedisStorage

PREFIX = "test:{h1c}:"
THREADS = 16


def _race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(i)`` in ``n`` threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


@pytest.mark.parametrize("kind", ["pending", "code"])
def test_threads_racing_take_have_exactly_one_winner(store: Any, kind: str) -> None:
    for round_ in range(10):
        key = f"item-{round_}"
        store.put(kind, key, {"round": round_}, ttl=60)
        results = _race(THREADS, lambda _i, key=key: store.take(kind, key))
        winners = [r for r in results if r is not None]
        assert winners == [{"round": round_}]
        assert store.get(kind, key) is None


def test_cc05_concurrent_add_client_keeps_every_registration(store: Any) -> None:
    ids = [f"client-{i:02d}" for i in range(50)]
    evicted = _race(50, lambda i: store.add_client(ids[i], {"client_id": ids[i]}, ttl=600, cap=50))
    assert evicted == [[]] * 50
    stored = {cid: store.get("client", cid) for cid in ids}
    assert stored == {cid: {"client_id": cid} for cid in ids}
    # and the cap still holds exactly afterwards: one more evicts exactly one never-used client
    assert len(store.add_client("client-50", {}, ttl=600, cap=50)) == 1


def test_concurrent_writers_to_one_session_all_land_in_the_index(store: Any) -> None:
    _race(THREADS, lambda i: store.put_upstream_token("sid", f"p{i}", f"blob{i}", ttl=60))
    assert dict(store.load_session("sid").tokens) == {f"p{i}": f"blob{i}" for i in range(THREADS)}


def test_concurrent_lock_and_counter(store: Any) -> None:
    tokens = _race(THREADS, lambda _i: store.acquire_lock("refresh:sid:github", ttl=30))
    assert len([t for t in tokens if t]) == 1
    counts = _race(THREADS, lambda _i: store.incr("rate", "ip", ttl=60))
    assert sorted(counts) == list(range(1, THREADS + 1))


_WORKER = """
import json, sys, time
import redis
from flask_mcp_auth.storage.redis import RedisStorage
url, prefix, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
raw = redis.Redis.from_url(url)
store = RedisStorage.from_url(url, prefix=prefix)
wins = []
for r in range(rounds):
    raw.incr(prefix + "ready:" + str(r))
    while not raw.exists(prefix + "go:" + str(r)):
        time.sleep(0.0005)
    wins.append(store.take("code", "c" + str(r)) is not None)
print(json.dumps(wins))
"""


def test_processes_racing_take_on_redis_have_exactly_one_winner(redis_url: str) -> None:
    procs, rounds = 4, 5
    store = RedisStorage.from_url(redis_url, prefix=PREFIX)
    raw = redis.Redis.from_url(redis_url)
    for r in range(rounds):
        store.put("code", f"c{r}", {"round": r}, ttl=60)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_url, PREFIX, str(rounds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    try:
        for r in range(rounds):
            deadline = time.monotonic() + 60
            while int(raw.get(f"{PREFIX}ready:{r}") or 0) < procs and time.monotonic() < deadline:
                time.sleep(0.005)
            raw.set(f"{PREFIX}go:{r}", 1, ex=60)  # release every process at once
        outputs = [json.loads(child.communicate(timeout=60)[0]) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        store.close()
        raw.close()
    assert [child.returncode for child in children] == [0] * procs
    for r in range(rounds):
        assert sum(out[r] for out in outputs) == 1, f"round {r}: {outputs}"
