"""RFC 8693 client and exchange cache (flask_mcp_auth.outgoing.exchange), against a loopback STS.

TESTPLAN 1.8: OB-03 (request shape), OB-04 (fail closed on non-access-token answers), OB-05 (STS errors
carried as codes only, no retry).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import jwt
import pytest
import requests

from flask_mcp_auth.errors import TokenExchangeError
from flask_mcp_auth.outgoing.exchange import (
    EXPIRY_MARGIN,
    ExchangeCache,
    ExchangeRequest,
    ExchangeResult,
    TokenExchangeClient,
    basic_auth,
    jwt_expiry,
    subject_digest,
)
from tests.support.servers import ServerThread
from tests.support.sts import ACCESS, GRANT, JWT, FakeSTS, running_sts

SUBJECT = "upstream-subject-token-abc"


@pytest.fixture()
def sts() -> Iterator[FakeSTS]:
    with running_sts() as server:
        yield server


def _client(http: requests.Session, timeout: float = 5) -> TokenExchangeClient:
    return TokenExchangeClient(http, verify=True, timeout=timeout)


def _req(sts: FakeSTS, **kw: object) -> ExchangeRequest:
    fields: dict[str, object] = dict(
        backend="docs", token_url=sts.token_url, subject_token=SUBJECT, subject_token_type=ACCESS,
        client_id=sts.client_id, client_secret=sts.client_secret,
    )
    fields.update(kw)
    return ExchangeRequest(**fields)  # type: ignore[arg-type]


# --- OB-03: the request -------------------------------------------------------------------------
def test_ob03_exchange_request_is_rfc8693_form_with_basic_client_auth(sts: FakeSTS, http: requests.Session) -> None:
    result = _client(http).exchange(
        _req(sts, audience="docs-api", resource="https://docs.example/", scopes=("read", "write"))
    )
    assert sts.call_count == 1
    call = sts.calls[0]
    assert call.content_type.startswith("application/x-www-form-urlencoded")
    assert call.client_id == "mcp"  # Basic auth with form-urlencoded id/secret (secret has ':', '&', '+', '=')
    assert call.form == {
        "grant_type": GRANT,
        "subject_token": SUBJECT,
        "subject_token_type": ACCESS,
        "requested_token_type": ACCESS,
        "audience": "docs-api",
        "resource": "https://docs.example/",
        "scope": "read write",
    }
    assert result.access_token == FakeSTS.token_for(SUBJECT, 1, "docs-api")
    assert result.issued_token_type == ACCESS
    assert result.expires_in == 300


def test_ob03_basic_auth_form_encodes_before_base64() -> None:
    import base64

    header = basic_auth("my client", "p:w&d")
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == "my+client:p%3Aw%26d"


def test_ob03_wrong_client_secret_is_invalid_client(sts: FakeSTS, http: requests.Session) -> None:
    with pytest.raises(TokenExchangeError) as info:
        _client(http).exchange(_req(sts, client_secret="wrong"))
    assert info.value.error == "invalid_client"
    assert info.value.status_code == 502


def test_repr_of_request_and_result_hide_tokens(sts: FakeSTS) -> None:
    assert SUBJECT not in repr(_req(sts))
    assert "secret-value-xyz" not in repr(ExchangeResult("secret-value-xyz", ACCESS, 10))


# --- OB-04: fail closed ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["no_issued_type", "n_a"])
def test_ob04_non_access_token_answers_fail_closed(sts: FakeSTS, http: requests.Session, mode: str) -> None:
    sts.mode = mode
    with pytest.raises(TokenExchangeError) as info:
        _client(http).exchange(_req(sts))
    assert info.value.error == "server_error"
    assert info.value.status_code == 502


def test_ob04_jwt_issued_type_only_when_requested(sts: FakeSTS, http: requests.Session) -> None:
    result = _client(http).exchange(_req(sts, requested_token_type=JWT))
    assert result.issued_token_type == JWT
    # the STS answers issued_token_type=jwt although an access token was asked for: refused
    with pytest.raises(TokenExchangeError):
        TokenExchangeClient._parse(
            _req(sts), 200,
            b'{"access_token":"t","issued_token_type":"' + JWT.encode() + b'","token_type":"Bearer"}',
        )


@pytest.mark.parametrize(
    "body",
    [
        b'{"issued_token_type":"%s","token_type":"Bearer"}',  # no access_token
        b'{"access_token":"","issued_token_type":"%s","token_type":"Bearer"}',
        b'{"access_token":"t","issued_token_type":"%s","token_type":"mac"}',
        b'{"access_token":"t","issued_token_type":"%s"}',  # no token_type
        b'{"access_token":"t","issued_token_type":"%s","token_type":"Bearer","expires_in":-5}',
        b'{"access_token":"t","issued_token_type":"%s","token_type":"Bearer","expires_in":"abc"}',
        b'{"access_token":"t","issued_token_type":"%s","token_type":"Bearer","expires_in":true}',
        b'["not", "an", "object"]',
    ],
)
def test_ob04_malformed_success_bodies_fail_closed(sts: FakeSTS, body: bytes) -> None:
    raw = body.replace(b"%s", ACCESS.encode()) if b"%s" in body else body
    with pytest.raises(TokenExchangeError) as info:
        TokenExchangeClient._parse(_req(sts), 200, raw)
    assert info.value.error == "server_error"


def test_token_type_is_case_insensitive(sts: FakeSTS) -> None:
    body = b'{"access_token":"t","issued_token_type":"%s","token_type":"bEaReR","expires_in":"60"}'
    result = TokenExchangeClient._parse(_req(sts), 200, body.replace(b"%s", ACCESS.encode()))
    assert (result.access_token, result.expires_in) == ("t", 60)


# --- OB-05: STS errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "status"),
    [("invalid_target", 403), ("access_denied", 403), ("invalid_request", 502), ("invalid_grant", 502)],
)
def test_ob05_sts_error_carries_code_only_and_no_retry(
    sts: FakeSTS, http: requests.Session, code: str, status: int
) -> None:
    sts.mode = f"error:{code}"
    with pytest.raises(TokenExchangeError) as info:
        _client(http).exchange(_req(sts))
    assert (info.value.error, info.value.status_code, info.value.backend) == (code, status, "docs")
    assert "STS-SECRET-DETAIL" not in str(info.value)
    assert SUBJECT not in str(info.value)
    assert sts.call_count == 1


def test_ob05_odd_error_code_is_not_passed_on(sts: FakeSTS, http: requests.Session) -> None:
    sts.mode = "error:<script>alert(1)</script>"
    with pytest.raises(TokenExchangeError) as info:
        _client(http).exchange(_req(sts))
    assert info.value.error == "server_error"


@pytest.mark.parametrize(("mode", "code"), [("html", "temporarily_unavailable"), ("garbage", "server_error")])
def test_html_or_garbage_is_server_side_failure(sts: FakeSTS, http: requests.Session, mode: str, code: str) -> None:
    sts.mode = mode
    with pytest.raises(TokenExchangeError) as info:
        _client(http).exchange(_req(sts))
    assert info.value.error == code
    assert "STS-SECRET-DETAIL" not in str(info.value)


def test_timeout_is_temporarily_unavailable(sts: FakeSTS, http: requests.Session) -> None:
    sts.mode, sts.slow_seconds = "slow", 2.0
    with pytest.raises(TokenExchangeError) as info:
        _client(http, timeout=0.3).exchange(_req(sts))
    assert info.value.error == "temporarily_unavailable"


def test_connection_refused_is_temporarily_unavailable(http: requests.Session) -> None:
    server = ServerThread(lambda env, start: []).start()
    url = f"{server.url}/token"
    server.stop()  # nothing listens on that port any more
    with pytest.raises(TokenExchangeError) as info:
        TokenExchangeClient(http, verify=True, timeout=2).exchange(
            ExchangeRequest(backend="docs", token_url=url, subject_token="s", subject_token_type=ACCESS)
        )
    assert info.value.error == "temporarily_unavailable"


def test_oversized_answer_is_refused(sts: FakeSTS, http: requests.Session) -> None:
    sts.expires_in = "9" * 100_000  # a 100 KB JSON body
    with pytest.raises(TokenExchangeError) as info:
        _client(http).exchange(_req(sts))
    assert info.value.error == "server_error"


# --- subject expiry --------------------------------------------------------------------------------
def test_jwt_expiry_reads_exp_of_jwt_and_ignores_opaque_tokens() -> None:
    token = jwt.encode({"sub": "u", "exp": 2_000_000_000}, "k" * 32, algorithm="HS256")
    assert jwt_expiry(token) == 2_000_000_000
    assert jwt_expiry("gho_opaque") is None
    assert jwt_expiry("a.b.c") is None
    assert jwt_expiry(jwt.encode({"sub": "u"}, "k" * 32, algorithm="HS256")) is None


# --- cache ---------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    def __init__(self, expires_in: float | None = 300, not_after: float | None = None) -> None:
        self.calls = 0
        self.expires_in = expires_in
        self.not_after = not_after

    def __call__(self) -> tuple[ExchangeResult, float | None]:
        self.calls += 1
        return ExchangeResult(f"tok-{self.calls}", ACCESS, self.expires_in), self.not_after


KEY = ("docs", "alice", subject_digest("subject-a"))


def test_cache_hit_until_margin_before_expires_in() -> None:
    clock = Clock()
    cache = ExchangeCache(clock=clock)
    fetch = Fetcher(expires_in=300)
    assert cache.get_or_fetch(KEY, fetch) == ("tok-1", False)
    assert cache.get_or_fetch(KEY, fetch) == ("tok-1", True)
    clock.now += 300 - EXPIRY_MARGIN - 1
    assert cache.get_or_fetch(KEY, fetch) == ("tok-1", True)
    clock.now += 1
    assert cache.get_or_fetch(KEY, fetch) == ("tok-2", False)
    assert fetch.calls == 2


def test_cache_never_outlives_the_subject_token() -> None:
    clock = Clock()
    cache = ExchangeCache(clock=clock)
    fetch = Fetcher(expires_in=3600, not_after=clock.now + 60)
    cache.get_or_fetch(KEY, fetch)
    clock.now += 59
    assert cache.get_or_fetch(KEY, fetch)[1] is True
    clock.now += 1
    assert cache.get_or_fetch(KEY, fetch) == ("tok-2", False)


@pytest.mark.parametrize("expires_in", [None, EXPIRY_MARGIN, 10])
def test_cache_does_not_keep_tokens_without_a_usable_lifetime(expires_in: float | None) -> None:
    cache = ExchangeCache(clock=Clock())
    fetch = Fetcher(expires_in=expires_in)
    assert cache.get_or_fetch(KEY, fetch) == ("tok-1", False)
    assert cache.get_or_fetch(KEY, fetch) == ("tok-2", False)
    assert len(cache) == 0


def test_cache_keys_isolate_users_and_backends() -> None:
    cache = ExchangeCache(clock=Clock())
    fetch = Fetcher()
    alice = ("docs", "alice", subject_digest("subject-a"))
    bob = ("docs", "bob", subject_digest("subject-b"))
    bob_same_subject = ("docs", "bob", subject_digest("subject-a"))
    other_backend = ("wiki", "alice", subject_digest("subject-a"))
    tokens = [cache.get_or_fetch(k, fetch) for k in (alice, bob, bob_same_subject, other_backend, alice)]
    assert tokens == [("tok-1", False), ("tok-2", False), ("tok-3", False), ("tok-4", False), ("tok-1", True)]


def test_cache_is_bounded_lru() -> None:
    cache = ExchangeCache(max_entries=3, clock=Clock())
    fetch = Fetcher()
    keys = [("docs", f"user{i}", subject_digest(str(i))) for i in range(4)]
    for key in keys[:3]:
        cache.get_or_fetch(key, fetch)
    cache.get_or_fetch(keys[0], fetch)  # touch: keys[1] is now the least recently used
    cache.get_or_fetch(keys[3], fetch)
    assert len(cache) == 3
    assert cache.get_or_fetch(keys[0], fetch)[1] is True
    assert cache.get_or_fetch(keys[1], fetch)[1] is False


def test_concurrent_misses_make_one_fetch() -> None:
    cache = ExchangeCache(clock=Clock())
    release = threading.Event()
    calls: list[int] = []

    def fetch() -> tuple[ExchangeResult, float | None]:
        calls.append(1)
        release.wait(5)
        return ExchangeResult("shared", ACCESS, 300), None

    results: list[tuple[str, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_fetch(KEY, fetch))) for _ in range(8)]
    for t in threads:
        t.start()
    while len(calls) == 0:
        threading.Event().wait(0.01)
    threading.Event().wait(0.1)  # let the followers reach the in-flight wait
    release.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 1
    assert sorted(results) == [("shared", False)] + [("shared", True)] * 7


def test_concurrent_followers_share_the_leaders_failure() -> None:
    cache = ExchangeCache(clock=Clock())
    release = threading.Event()
    calls: list[int] = []

    def fetch() -> tuple[ExchangeResult, float | None]:
        calls.append(1)
        release.wait(5)
        raise TokenExchangeError("invalid_target", "docs", 403)

    errors: list[str] = []

    def worker() -> None:
        try:
            cache.get_or_fetch(KEY, fetch)
        except TokenExchangeError as exc:
            errors.append(exc.error)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    while len(calls) == 0:
        threading.Event().wait(0.01)
    threading.Event().wait(0.1)
    release.set()
    for t in threads:
        t.join(5)
    assert calls == [1]
    assert errors == ["invalid_target"] * 5
    assert len(cache) == 0
