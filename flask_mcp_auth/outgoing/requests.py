"""requests integration of outgoing auth (SPEC §6), through requests' documented seams (STYLE habit 7):

* :class:`BackendAuth` — a ``requests.auth.AuthBase`` applying one backend's strategy to any request;
* :class:`BackendAdapter` — an ``HTTPAdapter`` mounted at a backend's ``url``; it applies the strategy
  to every request requests routes to it, so "which credential goes where" is requests' own
  prefix mounting, and a request to any other URL carries no credential;
* :func:`make_session` — a ``requests.Session`` with one adapter per backend.

Adapters are built once per app and shared by every session (so connections are pooled and kept
alive across views and users); the identity of the call in flight travels in a ``threading.local``
set by the session's ``send``. Credentials are put on the request only while the adapter sends it:
the request object requests keeps for redirects never holds them, so a redirect reaches another
origin with nothing, and the same origin gets them re-applied by its own adapter.

requests sends every redirect hop through the adapter mounted for the hop's URL, so a page on any
host (fetched through the same session) could redirect *into* a backend's URL and have that backend's
credential added. :class:`BackendSession` therefore records, on each redirected request, the URLs of
the hops before it; the adapter applies its credential only when every one of them was inside its own
mount prefix (a redirect within the backend keeps working; one that entered from elsewhere gets none).

Sessions hold no per-user state: their cookie jar (``_http.NoCookieJar``) never stores a cookie, so a
backend's ``Set-Cookie`` to one user is never sent on another user's call through a shared session.

``verify``: requests' ``merge_environment_settings`` replaces an unset ``verify`` with
``REQUESTS_CA_BUNDLE`` even when ``Session.verify`` is a CA path or ``False``; our session passes its
own ``verify`` first, so the configured value (``MCP_AUTH_TLS_VERIFY``) is what reaches ``send``.
(``True`` keeps requests' meaning: verify, with the environment's CA bundle when one is set.)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urljoin, urlsplit

import requests
from flask import g, has_app_context
from requests.adapters import HTTPAdapter

from .._http import NoCookieJar
from ..errors import ConfigError
from .strategies import HeaderInjection, Strategy, StrategyContext, build_strategies, strip_credentials

if TYPE_CHECKING:
    from requests.sessions import _Settings

    from ..identity import Identity
    from ..runtime import Runtime

__all__ = ["BackendAdapter", "BackendAuth", "BackendSession", "backend_auth", "make_session",
           "mount_prefix"]

#: the identity of the request being sent on this thread, set by ``BackendSession.send``
_call = threading.local()
_UNSET: Any = object()
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: attribute of a redirected ``PreparedRequest``: the URLs of the earlier hops of its chain, set by
#: ``BackendSession.rebuild_auth`` (``PreparedRequest.copy`` does not carry it to the next hop)
_HOPS = "_flask_mcp_auth_previous_hops"


def _request_identity() -> Identity | None:
    if not has_app_context():
        return None
    return cast("Identity | None", g.get("identity"))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or ""), parts.port or _DEFAULT_PORTS.get(scheme)


def mount_prefix(url: str) -> str:
    """The adapter prefix for a backend ``url``: lower-case scheme and host, no default port, and a
    trailing ``/`` so ``https://api.example`` never matches ``https://api.example.evil/`` and
    ``http://127.0.0.1:80`` never matches ``http://127.0.0.1:8000/``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if parts.port and parts.port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{parts.port}"
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return f"{scheme}://{host}{path}"


def _injected(strategy: Strategy) -> tuple[str, ...]:
    if isinstance(strategy, HeaderInjection) and strategy.config.header:
        return ("Authorization", strategy.config.header)
    return ("Authorization",)


class BackendAuth(requests.auth.AuthBase):
    """Apply one backend's strategy to a single request, for any session.

    >>> requests.get("https://api.github.com/user", auth=auth.backend_auth("github"))

    ``identity=None`` means the current ``g.identity`` at the time the request is prepared. Injected
    headers are dropped before requests follows a redirect to another origin.
    """

    def __init__(self, strategy: Strategy, identity: Identity | None = None) -> None:
        self.strategy = strategy
        self.identity = identity
        self._headers = _injected(strategy)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        identity = self.identity if self.identity is not None else _request_identity()
        self.strategy.apply(r, identity)
        r.register_hook("response", self._drop_on_cross_origin_redirect)  # type: ignore[no-untyped-call]
        return r

    def _drop_on_cross_origin_redirect(self, r: requests.Response, **kwargs: Any) -> requests.Response:
        # requests keeps Authorization on an http->https upgrade of the same host and never strips
        # custom headers (header_injection); we compare full origins (scheme, host, port) ourselves.
        if r.is_redirect and r.request.url:
            target = urljoin(r.request.url, r.headers.get("location", ""))
            if _origin(target) != _origin(r.request.url):
                for name in self._headers:
                    r.request.headers.pop(name, None)
        return r


class BackendAdapter(HTTPAdapter):
    """Mounted at a backend's ``url``: every request sent through it gets the backend's credential.

    >>> session = BackendSession(verify)
    >>> session.mount(mount_prefix(backend.url), BackendAdapter(strategy, identity=identity))

    The identity is, in order: the one of the :class:`BackendSession` call in flight (thread-local),
    the adapter's own ``identity``, the current ``g.identity``.

    A redirected request gets the credential only if every earlier hop of its chain was inside this
    adapter's prefix. Those hops are recorded by :class:`BackendSession`; mounted on a plain
    ``requests.Session`` the adapter cannot tell a redirect hop from a first request.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        prefix: str | None = None,
        identity: Identity | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.strategy = strategy
        self.identity = identity
        self.prefix = (prefix or (mount_prefix(strategy.config.url) if strategy.config.url else "")).lower()

    def _identity(self) -> Identity | None:
        identity = getattr(_call, "identity", _UNSET)
        if identity is not _UNSET:
            return cast("Identity | None", identity)
        return self.identity if self.identity is not None else _request_identity()

    def _inside(self, url: str | None) -> bool:
        return not self.prefix or (url or "").lower().startswith(self.prefix)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        identity = self._identity()
        hops: tuple[str, ...] = getattr(request, _HOPS, ())
        original = request.headers
        request.headers = original.copy()
        try:
            if self._inside(request.url) and all(self._inside(url) for url in hops):
                self.strategy.apply(request, identity)
            else:
                # mounted somewhere unexpected, or a redirect into this backend from elsewhere (whoever
                # answered that hop chose this URL): never hand this backend's credential to it
                strip_credentials(request, identity)
                for name in _injected(self.strategy):
                    request.headers.pop(name, None)
            return super().send(request, **kwargs)
        finally:
            # requests follows redirects from this very object: leave it as the caller built it
            request.headers = original


class _GuardAdapter(HTTPAdapter):
    """Default adapter of our sessions for every non-backend URL: sends the caller's headers as given,
    except any header that holds the incoming access token (never passed through)."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        identity = getattr(_call, "identity", None)
        token = identity.token if identity is not None else ""
        if not token or not any(token in str(v) for v in request.headers.values()):
            return super().send(request, **kwargs)
        original = request.headers
        request.headers = original.copy()
        try:
            for name in [k for k, v in original.items() if token in str(v)]:
                del request.headers[name]
            return super().send(request, **kwargs)
        finally:
            request.headers = original


class BackendSession(requests.Session):
    """A ``requests.Session`` whose configured ``verify`` wins over ``REQUESTS_CA_BUNDLE`` and whose
    calls carry an identity (``identity=None``: the current ``g.identity`` at each call).

    It stores no cookies (one session may serve many users), and records each redirect hop's chain
    so a :class:`BackendAdapter` can refuse a redirect that entered its backend from elsewhere."""

    def __init__(self, verify: bool | str = True, identity: Identity | None = None) -> None:
        super().__init__()
        self.verify = verify
        self.identity = identity
        self.cookies = NoCookieJar()

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]
        previous = response.request
        hops: tuple[str, ...] = getattr(previous, _HOPS, ())
        setattr(prepared_request, _HOPS, (*hops, previous.url or ""))

    def merge_environment_settings(
        self,
        url: str | bytes | None,
        proxies: MutableMapping[str, str] | None,
        stream: bool | None,
        verify: bool | str | None,
        cert: Any,
    ) -> _Settings:
        if verify is None:
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        previous = getattr(_call, "identity", _UNSET)
        _call.identity = self.identity if self.identity is not None else _request_identity()
        try:
            return super().send(request, **kwargs)
        finally:
            if previous is _UNSET:
                del _call.identity
            else:
                _call.identity = previous

    def close(self) -> None:
        # adapters shared with other sessions of the app keep their pools
        for adapter in self.adapters.values():
            if not getattr(adapter, "shared", False):
                adapter.close()


def strategies(runtime: Runtime) -> Mapping[str, Strategy]:
    """The app's strategies (built by ``decorators.install``; built here for a hand-made runtime)."""
    built = runtime.parts.get("backends")
    if built is None:
        context = StrategyContext(http=runtime.http, verify=runtime.verify, timeout=runtime.timeout)
        built, _ = build_strategies(runtime.settings, context)
        runtime.parts["backends"] = built
    return cast("Mapping[str, Strategy]", built)


def _shared_adapters(runtime: Runtime) -> dict[str, HTTPAdapter]:
    """Per-app adapters (one per backend with a ``url``, plus the guard), created once."""
    adapters = runtime.parts.get("backend_adapters")
    if adapters is None:
        adapters = {}
        for name, strategy in strategies(runtime).items():
            if strategy.config.url:
                adapters[name] = BackendAdapter(strategy)
        adapters[""] = _GuardAdapter()
        for adapter in adapters.values():
            adapter.shared = True
        runtime.parts["backend_adapters"] = adapters
    return cast("dict[str, HTTPAdapter]", adapters)


def _strategy(runtime: Runtime, name: str) -> Strategy:
    found = strategies(runtime)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ConfigError([("V-08", "MCP_AUTH_BACKENDS", f"no backend named {name!r} (configured: {known})")])
    return found[name]


def make_session(
    runtime: Runtime, names: Sequence[str], *, identity: Identity | None = None
) -> requests.Session:
    """A session with a :class:`BackendAdapter` at each named backend's ``url`` (default: every
    backend that has a ``url``). ``identity=None``: the current ``g.identity`` at each call."""
    adapters = _shared_adapters(runtime)
    session = BackendSession(runtime.verify, identity)
    guard = adapters[""]
    session.mount("https://", guard)
    session.mount("http://", guard)
    selected = list(names) if names else [n for n in strategies(runtime) if n in adapters]
    for name in selected:
        strategy = _strategy(runtime, name)
        if not strategy.config.url:
            raise ConfigError([("V-08", f"MCP_AUTH_BACKENDS[{name}]",
                                f"backend {name!r} has no 'url': a session needs it to know where the "
                                "credential may be sent; set 'url' or use backend_auth() per request")])
        adapter = adapters[name]
        assert isinstance(adapter, BackendAdapter)
        session.mount(adapter.prefix, adapter)
    return session


def backend_auth(runtime: Runtime, name: str, identity: Identity | None) -> requests.auth.AuthBase:
    """The ``AuthBase`` of backend ``name`` for ``identity`` (default: ``g.identity`` when used)."""
    return BackendAuth(_strategy(runtime, name), identity)
