"""requests integration: ``AuthBase`` per backend and ``BackendAdapter`` (placeholder; issue 5)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import requests

if TYPE_CHECKING:
    from ..identity import Identity
    from ..runtime import Runtime


def make_session(runtime: Runtime, names: Sequence[str]) -> requests.Session:
    raise NotImplementedError


def backend_auth(runtime: Runtime, name: str, identity: Identity | None) -> requests.auth.AuthBase:
    raise NotImplementedError
