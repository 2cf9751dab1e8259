"""Redis storage (placeholder until the storage work lands)."""

from __future__ import annotations

from typing import Any


class RedisStorage:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    @classmethod
    def from_url(cls, url: str, *, prefix: str, timeout: float = 3.0) -> RedisStorage:
        return cls(url, prefix=prefix, timeout=timeout)
