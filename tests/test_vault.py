"""Upstream tokens at rest (SPEC §7/§8, TESTPLAN SH-03): AES-GCM through TokenVault on both backends,
no token text in Redis, key rotation, blobs bound to their (session, provider) slot."""

from __future__ import annotations

import os
from typing import Any

import pytest
import redis

from flask_mcp_auth.keys import Cipher
from flask_mcp_auth.storage import CorruptRecord, UpstreamToken
from flask_mcp_auth.storage.memory import MemoryStorage
from flask_mcp_auth.storage.redis import RedisStorage
from flask_mcp_auth.storage.vault import TokenVault

PREFIX = "test:{vault}:"
KEY = os.urandom(32)

GOOGLE = UpstreamToken(
    provider="google",
    access_token="ya29.ACCESS-google-0123456789",
    refresh_token="1//REFRESH-google-abcdef",
    id_token="eyJhbGciOiJSUzI1NiJ9.ID-TOKEN-google.sig",
    expires_at=1_900_000_000.0,
    scope="openid email offline_access",
    subject="110169484474386276334",
)
GITHUB = UpstreamToken(provider="github", access_token="gho_ACCESSgithub0123456789abcdef", subject="583231")


def test_roundtrip_through_storage(store: Any) -> None:
    vault = TokenVault(store, Cipher([KEY]))
    vault.save("sid1", GOOGLE, ttl=60)
    vault.save("sid1", GITHUB, ttl=60)
    tokens = vault.decode_all("sid1", store.load_session("sid1").tokens)
    assert tokens == {"google": GOOGLE, "github": GITHUB}
    assert "ACCESS" not in repr(tokens)


def test_sh03_no_token_text_in_redis(redis_url: str) -> None:
    store = RedisStorage.from_url(redis_url, prefix=PREFIX)
    vault = TokenVault(store, Cipher([KEY]))
    vault.save("sid1", GOOGLE, ttl=60)
    vault.save("sid1", GITHUB, ttl=60)
    store.set_session("sid1", "user-1", ttl=60, complete=True)
    raw = redis.Redis.from_url(redis_url)
    blob = raw.get(f"{PREFIX}upstream:sid1:google")
    assert blob is not None and blob.startswith(b"v1.")
    secrets_ = [GOOGLE.access_token, GOOGLE.refresh_token, GOOGLE.id_token, GITHUB.access_token]
    dump = b"".join(
        k + b"=" + (raw.get(k) if raw.type(k) == b"string" else repr(raw.smembers(k)).encode())
        for k in raw.scan_iter(match="*")
    )
    for text in secrets_:
        assert text is not None
        for fragment in (text, text[:12], text[-12:]):
            assert fragment.encode() not in dump
    raw.close()
    store.close()


def test_key_rotation(store: Any) -> None:
    old, new = os.urandom(32), os.urandom(32)
    TokenVault(store, Cipher([old])).save("sid", GOOGLE, ttl=60)
    rotated = TokenVault(store, Cipher([new, old]))
    assert rotated.decode("sid", "google", store.load_session("sid").tokens["google"]) == GOOGLE
    rotated.save("sid", GITHUB, ttl=60)
    blob = store.load_session("sid").tokens["github"]
    assert blob.startswith(f"v1.{Cipher([new]).current_kid}.")
    assert TokenVault(store, Cipher([new])).decode("sid", "github", blob) == GITHUB
    with pytest.raises(CorruptRecord):  # the old key alone cannot read what the new key wrote
        TokenVault(store, Cipher([old])).decode("sid", "github", blob)
    with pytest.raises(CorruptRecord):  # a retired key: old blobs become unreadable
        TokenVault(store, Cipher([new])).decode("sid", "google", store.load_session("sid").tokens["google"])


def test_blob_moved_to_another_slot_fails(store: Any) -> None:
    vault = TokenVault(store, Cipher([KEY]))
    vault.save("victim", GITHUB, ttl=60)
    blob = store.load_session("victim").tokens["github"]
    store.put_upstream_token("attacker", "github", blob, ttl=60)  # copied to another session
    with pytest.raises(CorruptRecord):
        vault.decode_all("attacker", store.load_session("attacker").tokens)
    store.put_upstream_token("victim", "gitlab", blob, ttl=60)  # copied to another provider
    with pytest.raises(CorruptRecord):
        vault.decode("victim", "gitlab", store.load_session("victim").tokens["gitlab"])
    assert vault.decode("victim", "github", blob) == GITHUB


@pytest.mark.parametrize("position", [-2, 30, 12])  # tag, ciphertext, key id
def test_tampered_blob_fails(store: Any, position: int) -> None:
    vault = TokenVault(store, Cipher([KEY]))
    vault.save("sid", GOOGLE, ttl=60)
    blob = store.load_session("sid").tokens["google"]
    position %= len(blob)
    flipped = "A" if blob[position] != "A" else "B"
    tampered = blob[:position] + flipped + blob[position + 1 :]
    store.put_upstream_token("sid", "google", tampered, ttl=60)
    with pytest.raises(CorruptRecord):
        vault.decode_all("sid", store.load_session("sid").tokens)


@pytest.mark.parametrize("blob", ["", "garbage", "v1.unknownkid.AAAA", "v2.x.y", "v1..", "v1.x"])
def test_malformed_blobs_fail(blob: str) -> None:
    vault = TokenVault(MemoryStorage(), Cipher([KEY]))
    with pytest.raises(CorruptRecord):
        vault.decode("sid", "google", blob)


def test_record_naming_another_provider_fails() -> None:
    cipher = Cipher([KEY])
    vault = TokenVault(MemoryStorage(), cipher)
    # encrypted for the github slot, but the record inside claims google
    forged = vault.encode("sid", UpstreamToken(provider="google", access_token="x"))
    blob = cipher.encrypt(cipher.decrypt(forged, b"upstream:sid:google"), b"upstream:sid:github")
    with pytest.raises(CorruptRecord):
        vault.decode("sid", "github", blob)
