"""Outgoing auth strategies (SPEC §6): how a request to one backend gets its credential.

Each strategy is a small class with two phases (STYLE habit 6):

* ``validate(settings)`` at ``init_app`` returns the configuration problems it sees, as
  ``(rule_id, config_key, message)`` tuples;
* ``apply(request, identity)`` on the hot path only sets headers on a ``requests.PreparedRequest``.

Every strategy sets ``Authorization`` itself and first removes whatever ``Authorization`` the
request already carries — and any header holding the caller's own access token — so the token this
app received is never passed through to a backend (MCP "token passthrough" rule; STYLE habit 12).
The only way our JWT reaches another party is as the ``subject_token`` of a ``token_exchange``
backend without ``subject_provider``, sent to its STS.

``check(identity)`` is the side-effect-free pre-flight used by ``with_backend`` to answer 401 before a
view runs. ``REGISTRY`` maps the config name of a strategy to its class. No Flask here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import requests

from ..config import TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT, BackendConfig, Settings
from ..errors import InvalidToken, Problem, UpstreamTokenNotFound
from .exchange import (
    ExchangeCache,
    ExchangeRequest,
    ExchangeResult,
    TokenExchangeClient,
    jwt_expiry,
    merge_not_after,
    subject_digest,
)

if TYPE_CHECKING:
    from ..identity import Identity

__all__ = [
    "REGISTRY",
    "HeaderInjection",
    "Strategy",
    "StrategyContext",
    "TokenExchange",
    "Unauthenticated",
    "UpstreamInject",
    "build_strategies",
    "strip_credentials",
]

_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2 token


@dataclass(frozen=True)
class StrategyContext:
    """What strategies may use besides their own config: the pooled HTTP session for STS calls,
    its ``verify``/``timeout``, and an audit callback (``notify(backend=…, cache_hit=…, subject=…)``)."""

    http: requests.Session
    verify: bool | str
    timeout: float
    notify: Callable[..., None] | None = None
    cache_size: int = 10_000


def strip_credentials(request: requests.PreparedRequest, identity: Identity | None) -> None:
    headers = request.headers
    headers.pop("Authorization", None)
    token = identity.token if identity is not None else ""
    if not token:
        return
    raw = token.encode()
    leaking = []
    for name, value in headers.items():
        value_any: Any = value  # requests accepts str or bytes header values
        if (isinstance(value_any, str) and token in value_any) or (
            isinstance(value_any, bytes) and raw in value_any
        ):
            leaking.append(name)
    for name in leaking:
        del headers[name]


class Strategy:
    """Base class: one instance per configured backend, built once at ``init_app``."""

    #: the config name (``strategy`` field); set by each subclass
    name: ClassVar[str] = ""

    def __init__(self, config: BackendConfig, context: StrategyContext) -> None:
        self.config = config
        self.backend = config.name
        self.context = context

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r})"

    def validate(self, settings: Settings) -> list[Problem]:
        """Configuration problems this strategy sees (beyond the V-rules of ``config``)."""
        return []

    def check(self, identity: Identity | None) -> None:
        """Raise what ``apply`` would raise for a missing credential, without doing any I/O."""

    def apply(self, request: requests.PreparedRequest, identity: Identity | None) -> None:
        raise NotImplementedError

    def _where(self) -> str:
        return f"MCP_AUTH_BACKENDS[{self.backend}]"


class UpstreamInject(Strategy):
    """``Authorization: Bearer <identity.upstream_tokens[provider]>``.

    >>> MCP_AUTH_BACKENDS = {"github": {"strategy": "upstream_inject", "provider": "github",
    ...                                 "url": "https://api.github.com/"}}
    """

    name = "upstream_inject"

    def __init__(self, config: BackendConfig, context: StrategyContext) -> None:
        super().__init__(config, context)
        self.provider = config.provider or ""

    def validate(self, settings: Settings) -> list[Problem]:
        if not self.provider:
            return [("V-06", self._where(), "upstream_inject needs a non-empty 'provider'")]
        if self.provider not in settings.provider_names:
            return [("V-02", self._where(), f"provider {self.provider!r} is not an upstream name")]
        return []

    def _token(self, identity: Identity | None) -> str:
        token = identity.upstream_tokens.get(self.provider) if identity is not None else None
        if not token:
            raise UpstreamTokenNotFound(self.provider)
        return token

    def check(self, identity: Identity | None) -> None:
        self._token(identity)

    def apply(self, request: requests.PreparedRequest, identity: Identity | None) -> None:
        strip_credentials(request, identity)
        request.headers["Authorization"] = "Bearer " + self._token(identity)


class TokenExchange(Strategy):
    """RFC 8693 exchange at ``token_url``; the issued access token is sent as Bearer.

    The subject token is the upstream token of ``subject_provider`` when set, else the caller's own
    access token (our JWT). ``subject_token_type`` defaults to ``…:token-type:access_token`` in both
    cases: our JWT is an RFC 9068 access token. Results are cached (see ``exchange``).

    >>> MCP_AUTH_BACKENDS = {"docs": {"strategy": "token_exchange", "token_url": "https://sts/token",
    ...     "client_id": "mcp", "client_secret_env": "STS_SECRET", "audience": "docs-api",
    ...     "subject_provider": "corp", "url": "https://docs.corp.example/"}}
    """

    name = "token_exchange"

    def __init__(self, config: BackendConfig, context: StrategyContext) -> None:
        super().__init__(config, context)
        self.subject_provider = config.subject_provider
        self.subject_token_type = config.subject_token_type or TOKEN_TYPE_ACCESS
        self.client = TokenExchangeClient(context.http, verify=context.verify, timeout=context.timeout)
        self.cache = ExchangeCache(context.cache_size, wait_timeout=context.timeout + 5)

    def validate(self, settings: Settings) -> list[Problem]:
        where = self._where()
        problems: list[Problem] = []
        if not self.config.token_url:
            problems.append(("V-08", where, "token_exchange needs 'token_url' (the STS token endpoint)"))
        if self.config.requested_token_type not in (TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT):
            problems.append(("V-08", where, f"requested_token_type {self.config.requested_token_type!r} "
                             "cannot be sent as a Bearer token; use "
                             f"{TOKEN_TYPE_ACCESS!r} or {TOKEN_TYPE_JWT!r}"))
        if self.config.client_secret and not self.config.client_id:
            problems.append(("V-08", where, "a client secret is configured without 'client_id'"))
        if self.subject_provider and self.subject_provider not in settings.provider_names:
            problems.append(("V-02", where,
                             f"subject_provider {self.subject_provider!r} is not an upstream name"))
        return problems

    def _subject(self, identity: Identity | None) -> str:
        if self.subject_provider:
            token = identity.upstream_tokens.get(self.subject_provider) if identity is not None else None
            if not token:
                raise UpstreamTokenNotFound(self.subject_provider)
            return token
        if identity is None or not identity.token:
            raise InvalidToken("An access token is required.")
        return identity.token

    def check(self, identity: Identity | None) -> None:
        self._subject(identity)

    def apply(self, request: requests.PreparedRequest, identity: Identity | None) -> None:
        strip_credentials(request, identity)
        subject_token = self._subject(identity)
        assert identity is not None  # _subject raised otherwise
        key = (self.backend, identity.subject, subject_digest(subject_token))

        def fetch() -> tuple[ExchangeResult, float | None]:
            exp = identity.claims.get("exp")
            own_exp = float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
            # never cache beyond the subject token (JWT exp), nor beyond the caller's own token
            return self.client.exchange(self._request(subject_token)), merge_not_after(
                jwt_expiry(subject_token), own_exp
            )

        token, hit = self.cache.get_or_fetch(key, fetch)
        if self.context.notify is not None:
            self.context.notify(backend=self.backend, cache_hit=hit, subject=identity.subject)
        request.headers["Authorization"] = "Bearer " + token

    def _request(self, subject_token: str) -> ExchangeRequest:
        cfg = self.config
        return ExchangeRequest(
            backend=self.backend,
            token_url=str(cfg.token_url),
            subject_token=subject_token,
            subject_token_type=self.subject_token_type,
            requested_token_type=cfg.requested_token_type,
            client_id=cfg.client_id,
            client_secret=cfg.client_secret,
            audience=cfg.audience,
            resource=cfg.resource,
            scopes=cfg.scopes,
        )


class HeaderInjection(Strategy):
    """A static header (``value``, or ``value_env`` resolved at startup), e.g. an API key.

    >>> MCP_AUTH_BACKENDS = {"search": {"strategy": "header_injection", "header": "X-Api-Key",
    ...                                 "value_env": "SEARCH_KEY", "url": "https://search.example/"}}
    """

    name = "header_injection"

    def validate(self, settings: Settings) -> list[Problem]:
        header, value = self.config.header or "", self.config.value or ""
        problems: list[Problem] = []
        if not _HEADER_NAME_RE.match(header):
            problems.append(("V-08", self._where(), f"header {header!r} is not a valid header name"))
        if not value or any(c in value for c in "\r\n\0"):
            problems.append(("V-08", self._where(), "value is empty or contains CR, LF or NUL"))
        return problems

    def apply(self, request: requests.PreparedRequest, identity: Identity | None) -> None:
        strip_credentials(request, identity)
        request.headers[str(self.config.header)] = str(self.config.value)


class Unauthenticated(Strategy):
    """No credential; still removes any ``Authorization`` the caller put on the request.

    >>> MCP_AUTH_BACKENDS = {"status": {"strategy": "unauthenticated", "url": "https://status.example/"}}
    """

    name = "unauthenticated"

    def apply(self, request: requests.PreparedRequest, identity: Identity | None) -> None:
        strip_credentials(request, identity)


#: config name -> strategy class
REGISTRY: Mapping[str, type[Strategy]] = {
    cls.name: cls for cls in (UpstreamInject, TokenExchange, HeaderInjection, Unauthenticated)
}


def build_strategies(
    settings: Settings, context: StrategyContext
) -> tuple[dict[str, Strategy], list[Problem]]:
    """One strategy per configured backend, plus every problem their ``validate`` found."""
    strategies: dict[str, Strategy] = {}
    problems: list[Problem] = []
    for name, config in settings.backends.items():
        cls = REGISTRY.get(config.strategy)
        if cls is None:
            problems.append(("V-08", f"MCP_AUTH_BACKENDS[{name}]", f"unknown strategy {config.strategy!r}"))
            continue
        strategy = cls(config, context)
        problems.extend(strategy.validate(settings))
        strategies[name] = strategy
    return strategies, problems
