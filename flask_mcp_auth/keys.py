"""Keys: signing keys and the public JWKS (RFC 7517, ``kid`` = RFC 7638 thumbprint), and AES-GCM
encryption of upstream tokens at rest with key rotation.

Key objects are loaded once (at ``init_app``); nothing here parses PEM per request.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._encoding import b64url_decode, b64url_encode, sha256_b64url

__all__ = [
    "Cipher",
    "DecryptionError",
    "KeySet",
    "SigningKey",
    "generate_rsa_pem",
    "load_signing_key",
    "thumbprint",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_EC_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) over the required members only."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
    members = {k: jwk[k] for k in required[str(jwk["kty"])]}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return sha256_b64url(canonical)


def generate_rsa_pem(bits: int = 2048) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key with its algorithm, ``kid`` and public JWK."""

    kid: str
    alg: str
    private_key: PrivateKey = field(repr=False)
    public_key: PublicKey = field(repr=False)
    public_jwk: Mapping[str, Any]


def load_signing_key(pem: str | bytes) -> SigningKey:
    """Load a PEM private key; RSA ≥ 2048 (RS256), P-256/384/521 (ES*), Ed25519 (EdDSA)."""
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError(f"RSA key of {key.key_size} bits is too small; use at least 2048")
        alg = "RS256"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _EC_ALGS:
            raise ValueError(f"EC curve {key.curve.name} is unsupported; use P-256, P-384 or P-521")
        alg = _EC_ALGS[key.curve.name]
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        alg = "EdDSA"
    else:
        raise ValueError("unsupported key type; use RSA, EC (P-256/384/521) or Ed25519")
    public = key.public_key()
    jwk: dict[str, Any] = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(public))
    kid = thumbprint(jwk)
    jwk.update(kid=kid, alg=alg, use="sig")
    return SigningKey(kid=kid, alg=alg, private_key=key, public_key=public, public_jwk=jwk)


class KeySet:
    """Our signing keys: the first signs, all verify and are published (rotation)."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self.keys = tuple(keys)
        self.current = self.keys[0]
        self.by_kid = {k.kid: k for k in self.keys}

    @classmethod
    def from_pems(cls, pems: Sequence[str | bytes]) -> KeySet:
        return cls([load_signing_key(p) for p in pems])

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(k.public_jwk) for k in self.keys]}

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k.alg for k in self.keys))


class DecryptionError(Exception):
    """A blob could not be decrypted (unknown key id, tampered, or not ours)."""


class Cipher:
    """AES-256-GCM with a key id in every blob, so keys rotate: the first key encrypts, all decrypt.

    Blob format: ``v1.<kid>.<base64url(nonce || ciphertext+tag)>`` where ``kid`` is the first 8 bytes of
    SHA-256 of the key (base64url). ``aad`` binds a blob to its slot (e.g. session id and provider), so a
    blob copied to another session does not decrypt.

    >>> c = Cipher([os.urandom(32)])
    >>> c.decrypt(c.encrypt(b"secret", b"slot"), b"slot")
    b'secret'
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is needed")
        self._keys: dict[str, AESGCM] = {}
        self._order: list[str] = []
        for raw in keys:
            if len(raw) != 32:
                raise ValueError("encryption keys must be 32 bytes")
            kid = b64url_encode(hashlib.sha256(raw).digest()[:8])
            self._keys[kid] = AESGCM(raw)
            self._order.append(kid)
        self.current_kid = self._order[0]

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> str:
        nonce = os.urandom(12)
        ct = self._keys[self.current_kid].encrypt(nonce, plaintext, aad)
        return f"v1.{self.current_kid}.{b64url_encode(nonce + ct)}"

    def decrypt(self, blob: str, aad: bytes = b"") -> bytes:
        try:
            version, kid, body = blob.split(".", 2)
        except ValueError as exc:
            raise DecryptionError("malformed blob") from exc
        if version != "v1" or kid not in self._keys:
            raise DecryptionError("unknown blob version or key id")
        try:
            raw = b64url_decode(body)
            return self._keys[kid].decrypt(raw[:12], raw[12:], aad)
        except (InvalidTag, ValueError) as exc:
            raise DecryptionError("blob failed authentication") from exc
