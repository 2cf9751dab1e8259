"""Unpadded base64url (RFC 4648 §5 without ``=``, as RFC 7515 §2 and RFC 7636 §3 use it) and the SHA-256
digests built on it. A leaf module: no imports from the package, so every layer (``config`` up) may use it.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["b64url_decode", "b64url_encode", "sha256_b64url"]


def b64url_encode(data: bytes) -> str:
    """``data`` as unpadded base64url text."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Bytes of (un)padded base64url ``text``; ``binascii.Error``/``ValueError`` when it is not base64url."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sha256_b64url(data: bytes) -> str:
    """SHA-256 of ``data``, unpadded base64url (JWK thumbprints, stored-secret digests)."""
    return b64url_encode(hashlib.sha256(data).digest())
