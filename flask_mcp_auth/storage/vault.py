"""Upstream tokens at rest: encrypt/decrypt :class:`UpstreamToken` records for :class:`Storage`.

The storage layer only ever sees ciphertext blobs. The AES-GCM associated data binds each blob to its
``(session id, provider)`` slot, so a blob moved to another session or provider does not decrypt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..keys import Cipher, DecryptionError
from . import CorruptRecord, Storage, UpstreamToken, dumps

__all__ = ["TokenVault"]


def _aad(sid: str, provider: str) -> bytes:
    return f"upstream:{sid}:{provider}".encode()


class TokenVault:
    """Encrypting front for the upstream-token part of a :class:`Storage`.

    >>> vault = TokenVault(storage, cipher)
    >>> vault.save("sid", UpstreamToken(provider="github", access_token="gho_…"), ttl=600)
    >>> vault.decode_all("sid", storage.load_session("sid").tokens)["github"].access_token
    """

    def __init__(self, storage: Storage, cipher: Cipher) -> None:
        self.storage = storage
        self.cipher = cipher

    def encode(self, sid: str, token: UpstreamToken) -> str:
        return self.cipher.encrypt(dumps(token.to_dict()).encode(), _aad(sid, token.provider))

    def decode(self, sid: str, provider: str, blob: str) -> UpstreamToken:
        try:
            plain = self.cipher.decrypt(blob, _aad(sid, provider))
            record = UpstreamToken.from_dict(json.loads(plain))
        except (DecryptionError, ValueError) as exc:
            raise CorruptRecord(f"upstream token for provider {provider!r} cannot be decrypted") from exc
        if record.provider != provider:
            raise CorruptRecord("upstream token record names another provider")
        return record

    def decode_all(self, sid: str, blobs: Mapping[str, str]) -> dict[str, UpstreamToken]:
        return {p: self.decode(sid, p, b) for p, b in blobs.items()}

    def save(self, sid: str, token: UpstreamToken, ttl: int) -> None:
        self.storage.put_upstream_token(sid, token.provider, self.encode(sid, token), ttl)
