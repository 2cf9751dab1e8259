"""Fault benchmark (TESTPLAN LD-02, LD-03): concurrent complete logins through the example app under
gunicorn (4 sync workers, non-sticky) on Redis, with a fault injected part-way.

* **LD-02 — Redis restart.** ``LD02_USERS`` users log in back to back for ``LD02_WINDOW_S``; at
  ``LD02_STOP_AT_S`` the redis-server (no persistence) is stopped by PID and started again on the same
  port ``LD02_DOWN_S`` later. Everything in Redis is gone, the dynamically registered client too: like
  a real MCP client, the bench registers again (once) when ``/oauth/authorize`` says the client is
  unknown. Reported: chains completed and failed (clean 4xx / 503 / OAuth error redirect vs 5xx-other
  and transport errors), every 5xx response of the app (must be 0; the gunicorn log is searched for
  the raising frame), tokens issued from lost state (a completed chain that started before the stop
  and ended after Redis was back: its pending state cannot have survived; must be 0), and the time
  from Redis answering again to the first successful login that started after it.
* **LD-03 — flaky IdP.** ``LD03_USERS`` concurrent logins while the demo GitHub answers HTTP 500 on
  ``LD03_FAILURE_RATE`` of its token calls (the opt-in knob of :class:`example_app.demo.GitHubLike`;
  its last leg, so two legs' upstream tokens are already stored when it fails). Reported: failed
  chains vs chains whose code got an injected 500 (must be the same users), orphaned upstream-token
  rows left in Redis (a row whose session metadata is missing or not complete; must be 0), and token
  calls per leg at each IdP (counted per authorization code at the IdP; ≤ 1 means no retry).

Both scenarios reuse ``bench/_loadkit.py`` (the stack and the recorded login of ``bench/load.py``).
Everything binds 127.0.0.1; every process started is stopped by PID. Runtime is about 20-25 s (each
scenario waits at most ``DEADLINE_S`` for its users). The last line is ``faults-bench: ld02_5xx=<n>
ld02_tokens_from_lost_state=<n> ld02_recovery_s=<x> ld03_failed_equals_affected=<true|false>
ld03_orphans=<n> ld03_token_calls_per_leg_max=<x>``; exit status 1 when a criterion fails.

    python bench/faults.py
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
import requests

from bench._loadkit import BenchStack, ChainRun, TokenCallCounter, count_token_calls, run_login
from example_app.client import FlowError, MCPSession
from example_app.stack import DemoServices
from tests.support.redis_server import start_redis

LD02_USERS = 40
LD02_STOP_AT_S = 3.0
LD02_DOWN_S = 1.0
LD02_WINDOW_S = 10.0  # no chain starts after this
LD02_PAUSE_S = 0.3  # a failed user waits this long before trying again (a polite client)
LD03_USERS = 40
LD03_FAILURE_RATE = 0.2
LD03_SEED = 20
DEADLINE_S = 30.0


# -- classifying what the client saw -----------------------------------------------------------------
def _failure_kind(run: ChainRun, app_url: str) -> str:
    """How a failed chain ended, from its last response: ``4xx``, ``503``, ``redirect:<error>`` (an
    OAuth error sent to the client's redirect URI), ``5xx`` (anything else ≥ 500), ``transport``."""
    if run.error and not run.error.startswith(("FlowError", "MCPError")):
        return "transport"  # a connection error or timeout, or an undecodable answer
    last = run.hops[-1] if run.hops else None
    if last is None:
        return "transport"
    if not last.where.startswith(app_url):
        return f"upstream-{last.status}"
    if last.error:
        return f"redirect:{last.error}"
    if last.status == 503:
        return "503"
    if last.status >= 500:
        return "5xx"
    if 400 <= last.status < 500:
        return "4xx"
    return f"other-{last.status}"


def _clean(kind: str) -> bool:
    return kind in ("4xx", "503") or kind.startswith("redirect:")


def _server_errors(runs: list[ChainRun], app_url: str) -> Counter[str]:
    """Every app response ≥ 500 other than 503, by ``METHOD path status``."""
    seen: Counter[str] = Counter()
    for run in runs:
        for hop in run.app_hops(app_url):
            if hop.status >= 500 and hop.status != 503:
                seen[f"{hop.method} {hop.where[len(app_url):]} {hop.status}"] += 1
    return seen


_EXCEPTION_ON = re.compile(r"Exception on (\S+) \[(\w+)\]")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_RAISED = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def _log_exceptions(log: Path) -> Counter[str]:
    """Unhandled exceptions Flask logged (``Exception on <path> [<method>]``), by path, exception
    type, the last frame outside redis-py and the deepest frame of this project (messages are not
    kept)."""
    found: Counter[str] = Counter()
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    i = 0
    while i < len(lines):
        match = _EXCEPTION_ON.search(lines[i])
        i += 1
        if not match:
            continue
        frames: list[tuple[str, str, str]] = []
        raised = "?"
        while i < len(lines) and not lines[i].startswith("["):
            line = lines[i]
            frame = _FRAME.search(line)
            if frame:
                frames.append((frame.group(1), frame.group(2), frame.group(3)))
            elif not line.startswith((" ", "Traceback", "During handling", "The above")) and _RAISED.match(line):
                raised = _RAISED.match(line).group(1)  # type: ignore[union-attr]
            i += 1

        def short(path: str) -> str:
            for marker in ("site-packages/", "/work/main/"):
                if marker in path:
                    return path.split(marker, 1)[1]
            return path

        # The frame that called into redis-py (or the last one): who made the failing call.
        callers = [f for f in frames if "site-packages/redis/" not in f[0]]
        where = f"{short(callers[-1][0])}:{callers[-1][1]} {callers[-1][2]}" if callers else "?"
        ours = [f for f in frames if "site-packages" not in f[0]]
        deepest = f"{short(ours[-1][0])}:{ours[-1][1]} {ours[-1][2]}" if ours else "none"
        found[f"{match.group(2)} {match.group(1)}: {raised} from {where} (deepest project frame: "
              f"{deepest})"] += 1
    return found


# -- LD-02 ---------------------------------------------------------------------------------------------
class _Registration:
    """The one client registration all users share; registered again (once) when it is lost."""

    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self.client_id = stack.register_client()
        self.previous = [self.client_id]  # every client id used, the first one first
        self.renewed: list[float] = []
        self._lock = threading.Lock()

    def renew(self, stale: str) -> None:
        with self._lock:
            if self.client_id != stale:
                return  # someone else already did
            try:
                self.client_id = self.stack.register_client()
                self.previous.append(self.client_id)
                self.renewed.append(time.monotonic())
            except (FlowError, requests.RequestException, KeyError, ValueError):
                pass  # still down: the next failure tries again


@dataclass
class _Schedule:
    t0: float = 0.0
    stop_sent: float = 0.0
    stopped: float = 0.0
    back: float = 0.0
    window_end: float = float("inf")  # set by the main thread as the users start


def _ld02_user(stack: BenchStack, registration: _Registration, index: int, start: threading.Barrier,
               sched: _Schedule, runs: list[ChainRun]) -> None:
    start.wait()
    while time.monotonic() < sched.window_end:
        client_id = registration.client_id
        run = run_login(stack.mcp_url, client_id, f"user-{index}")
        runs.append(run)
        if not run.ok:
            last = run.last_app_hop(stack.url)
            if last is not None and last.where.endswith("/oauth/authorize") and last.status == 400:
                registration.renew(client_id)  # "This application is not registered"
            time.sleep(LD02_PAUSE_S)


def _token_accepted(stack: BenchStack, token: str) -> int:
    """Status of an MCP ``initialize`` with ``token`` (200: accepted, 401: refused)."""
    try:
        response = MCPSession(stack.mcp_url, token).post(
            {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": {"name": "faults-bench", "version": "0"}}})
    except requests.RequestException:
        return 0
    return response.status_code


@dataclass
class LD02Result:
    five_xx: int = 0
    lost_state_tokens: int = 0
    recovery_s: float | None = None
    ok: bool = False
    lines: list[str] = field(default_factory=list)


def run_ld02() -> LD02Result:
    out = LD02Result()
    say = out.lines.append
    stack = BenchStack.start(name="faults-ld02")
    pool = ThreadPoolExecutor(max_workers=LD02_USERS)
    try:
        registration = _Registration(stack)
        runs: list[ChainRun] = []
        start = threading.Barrier(LD02_USERS + 1)
        sched = _Schedule()
        futures = [pool.submit(_ld02_user, stack, registration, i, start, sched, runs)
                   for i in range(LD02_USERS)]
        start.wait()
        sched.t0 = time.monotonic()
        sched.window_end = sched.t0 + LD02_WINDOW_S
        time.sleep(max(0.0, sched.t0 + LD02_STOP_AT_S - time.monotonic()))
        port = stack.redis.port
        sched.stop_sent = time.monotonic()
        stack.redis.stop()
        sched.stopped = time.monotonic()
        time.sleep(LD02_DOWN_S)
        stack.redis = start_redis(port)
        sched.back = time.monotonic()
        done, pending = wait(futures, timeout=DEADLINE_S)
        for future in done:
            future.result()

        app = stack.url
        completed = [r for r in runs if r.ok]
        failed = [r for r in runs if not r.ok]
        kinds = Counter(_failure_kind(r, app) for r in failed)
        clean = sum(n for kind, n in kinds.items() if _clean(kind))

        def started(run: ChainRun) -> float:
            return run.authorize_sent(app) or run.started

        def rel(t: float) -> str:
            return f"t+{t - sched.t0:.2f} s"

        lost = [r for r in completed if started(r) < sched.stop_sent and r.ended > sched.back]
        before = [r for r in completed if r.ended <= sched.stop_sent]
        after = [r for r in completed if started(r) >= sched.back]
        first = min((r.ended for r in after), default=None)
        # Tokens issued before the stop point at sessions Redis no longer has; those after must work.
        probes = Counter(_token_accepted(stack, r.access_token or "") for r in before[:10])
        probes_after = Counter(_token_accepted(stack, r.access_token or "") for r in after[:10])
        five = _server_errors(runs, app)
        five_total = sum(five.values()) + sum(n for s, n in (probes + probes_after).items()
                                              if s >= 500 and s != 503)
        out.five_xx = five_total
        out.lost_state_tokens = len(lost)
        out.recovery_s = None if first is None else first - sched.back

        say(f"LD-02 setup: gunicorn -w {stack.workers}, Redis storage (no persistence), {LD02_USERS} users "
            f"logging in back to back for {LD02_WINDOW_S:.0f} s, 3 upstream legs per login")
        say(f"  fault schedule: redis stop (SIGTERM by PID) sent {rel(sched.stop_sent)}, gone "
            f"{rel(sched.stopped)}; restarted on port {port} and answering {rel(sched.back)}")
        if registration.renewed:
            say(f"  client registration lost with Redis; registered again {rel(registration.renewed[0])}")
        say(f"  chains: {len(runs)} started, {len(completed)} completed ({len(before)} before the stop, "
            f"{len(after)} started after Redis was back), {len(failed)} failed")
        say(f"  failed chains: {clean} clean (4xx / 503 / OAuth error redirect), "
            f"{len(failed) - clean} 5xx-other or transport: {dict(sorted(kinds.items()))}")
        phases = {
            "in flight at the stop": [r for r in failed if started(r) < sched.stop_sent],
            "started while Redis was down": [r for r in failed if sched.stop_sent <= started(r) < sched.back],
            "started after Redis was back": [r for r in failed if started(r) >= sched.back],
        }
        for phase, members in phases.items():
            say(f"    {phase}: {len(members)} {dict(Counter(_failure_kind(r, app) for r in members))}")
        stale = [r for r in phases["started after Redis was back"] if r.client_id == registration.previous[0]]
        say(f"    (of those after: {len(stale)} with the registration Redis lost, before the client "
            f"registered again)")
        say(f"  app 5xx responses (not 503): {five_total} {dict(five) if five else ''}".rstrip())
        when = [h.received for r in runs for h in r.app_hops(app) if h.status >= 500 and h.status != 503]
        if when:
            say(f"    answered between {rel(min(when))} and {rel(max(when))}; gunicorn log {stack.log_path}")
        for text, n in _log_exceptions(stack.log_path).most_common(6):
            say(f"    gunicorn log: {n} x {text}")
        say(f"  tokens issued from lost state (chain started before the stop, ended after Redis was "
            f"back): {len(lost)}")
        say(f"  JWTs from before the stop, presented after the restart: {dict(probes)} (HTTP status: count)")
        say(f"  JWTs from after the restart: {dict(probes_after)}")
        recovery = "none" if out.recovery_s is None else f"{out.recovery_s:.2f} s"
        say(f"  Redis back -> first successful new login: {recovery}")
        if pending:
            say(f"  {len(pending)} users still running at the deadline")
        out.ok = (five_total == 0 and not lost and out.recovery_s is not None and not pending
                  and len(failed) == clean)
        return out
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        stack.stop()


# -- LD-03 ---------------------------------------------------------------------------------------------
def _orphans(url: str) -> tuple[int, int, int]:
    """``(rows, rows of complete sessions, orphans)`` among the upstream-token rows in Redis.

    A row is ``<prefix>upstream:<sid>:<provider>`` (the index is ``<prefix>upstream:idx:<sid>``); its
    session metadata ``<prefix>session:<sid>`` must exist and say ``complete``.
    """
    client = redis.Redis.from_url(url)
    try:
        rows = complete = 0
        for raw in client.scan_iter(match="*upstream:*", count=1000):
            key = raw.decode()
            match = re.match(r"^(.*)upstream:([^:]+):([^:]+)$", key)
            if not match or match.group(2) == "idx":
                continue
            rows += 1
            meta = client.get(f"{match.group(1)}session:{match.group(2)}")
            if meta is not None and json.loads(meta).get("complete") is True:
                complete += 1
        return rows, complete, rows - complete
    finally:
        client.close()


@dataclass
class LD03Result:
    equal: bool = False
    orphans: int = 0
    calls_per_leg_max: float = 0.0
    ok: bool = False
    lines: list[str] = field(default_factory=list)


def run_ld03() -> LD03Result:
    out = LD03Result()
    say = out.lines.append
    counters: dict[str, TokenCallCounter] = {}

    def prepare(services: DemoServices) -> None:
        services.github.inject_token_failures(LD03_FAILURE_RATE, seed=LD03_SEED)
        counters.update(count_token_calls(services))

    stack = BenchStack.start(name="faults-ld03", prepare=prepare)
    pool = ThreadPoolExecutor(max_workers=LD03_USERS)
    try:
        client_id = stack.register_client()
        start = threading.Barrier(LD03_USERS + 1)

        def one(index: int) -> ChainRun:
            start.wait()
            return run_login(stack.mcp_url, client_id, f"user-{index}")

        futures = [pool.submit(one, i) for i in range(LD03_USERS)]
        start.wait()
        done, pending = wait(futures, timeout=DEADLINE_S)
        runs = [f.result() for f in done]
        app = stack.url
        completed = [r for r in runs if r.ok]
        failed = [r for r in runs if not r.ok]
        injected = list(stack.services.github.injected_failures)
        affected = {u for u in injected if u}
        failed_users = {r.username for r in failed} | ({"<timed out>"} if pending else set())
        out.equal = failed_users == affected
        kinds = Counter(_failure_kind(r, app) for r in failed)
        works = Counter(_token_accepted(stack, r.access_token or "") for r in completed)
        rows, complete_rows, out.orphans = _orphans(stack.redis.url)
        five = _server_errors(runs, app)

        say(f"LD-03 setup: gunicorn -w {stack.workers}, Redis storage, {LD03_USERS} concurrent logins, "
            f"3 upstream legs; demo GitHub (leg 3) answers 500 on {LD03_FAILURE_RATE:.0%} of token calls "
            f"(seed {LD03_SEED})")
        say(f"  fault schedule: {len(injected)} injected 500s at the GitHub token endpoint")
        say(f"  chains: {len(completed)} completed, {len(failed)} failed "
            f"{dict(sorted(kinds.items()))}; {len(pending)} timed out")
        say(f"  chains that hit an injected 500: {len(affected)}; failed chains are exactly those: "
            f"{str(out.equal).lower()}")
        if not out.equal:
            say(f"    failed but not hit: {sorted(failed_users - affected)}; hit but not failed: "
                f"{sorted(affected - failed_users)}")
        say(f"  completed chains' JWTs accepted by /mcp: {dict(works)} (HTTP status: count)")
        say(f"  app 5xx responses (not 503): {sum(five.values())} {dict(five) if five else ''}".rstrip())
        say(f"  upstream-token rows in Redis after the run: {rows} ({complete_rows} in complete "
            f"sessions = 3 x {len(completed)} expected), orphaned: {out.orphans}")
        worst = 0
        for name, counter in counters.items():
            legs, calls, most = counter.summary()
            worst = max(worst, most)
            say(f"  token calls at {name}: {calls} for {legs} legs (max {most} for one leg)")
        out.calls_per_leg_max = float(worst)
        out.ok = (out.equal and out.orphans == 0 and worst <= 1 and not five
                  and complete_rows == 3 * len(completed) and all(_clean(k) for k in kinds))
        return out
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        stack.stop()


def main() -> int:
    ld02 = run_ld02()
    print("\n".join(ld02.lines))
    ld03 = run_ld03()
    print("\n".join(ld03.lines))
    recovery = "nan" if ld02.recovery_s is None else f"{ld02.recovery_s:.2f}"
    print(f"faults-bench: ld02_5xx={ld02.five_xx} ld02_tokens_from_lost_state={ld02.lost_state_tokens} "
          f"ld02_recovery_s={recovery} ld03_failed_equals_affected={str(ld03.equal).lower()} "
          f"ld03_orphans={ld03.orphans} ld03_token_calls_per_leg_max={ld03.calls_per_leg_max:.2f}")
    return 0 if ld02.ok and ld03.ok else 1


if __name__ == "__main__":
    sys.exit(main())
