"""The two KEMs veil-v3 seals with, their HPKE suites, and a node's key of each.

    Kem.HYBRID   mlkem768-x25519   X-Wing (cryptography's ``hpke.KEM.MLKEM768_X25519``, HPKE KEM
                                   id 0x647a): post-quantum, the default
    Kem.X25519   x25519            DHKEM(X25519, HKDF-SHA256), KEM id 0x0020: classical, only
                                   where a client's policy allows it

Both with KDF HKDF-SHA256 and AEAD AES-256-GCM, RFC 9180 base mode (the suites themselves are
``veil.hazmat.v3.schedule.SUITES``: this module only makes and parses keys, and the node's keyring
imports nothing else of ``veil.hazmat``).

Node keys: one 32-byte seed per key id. For X-Wing it expands, as the X-Wing draft specifies, with
SHAKE256 to 96 bytes: the ML-KEM-768 seed (d || z, 64 bytes) and the X25519 private key (32); the
public key is the ML-KEM public key (1184 bytes) followed by the X25519 one (32). The key id is
``veil.wire.keyid.key_id`` of that public key.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Final

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from veil.wire.envelopes import X25519_KEY_SIZE
from veil.wire.errors import InvalidBody
from veil.wire.keyid import key_id as key_id_of

__all__ = [
    "HPKE_KEM",
    "MLKEM768_PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "Kem",
    "NodeKemKey",
    "hpke_public_key",
    "parse_kem",
]

_SUITE: Final = "veil-v3"
SEED_SIZE: Final = 32
MLKEM768_PUBLIC_KEY_SIZE: Final = 1184


class Kem(StrEnum):
    """The KEM a v3 request was sealed with (the envelope's ``kem`` field says which)."""

    HYBRID = "mlkem768-x25519"  # X-Wing: post-quantum; the default
    X25519 = "x25519"  # classical; only where a policy allows it

    @property
    def public_key_size(self) -> int:
        return MLKEM768_PUBLIC_KEY_SIZE + X25519_KEY_SIZE if self is Kem.HYBRID else X25519_KEY_SIZE

    @property
    def enc_size(self) -> int:
        return HPKE_KEM[self].enc_length()


#: The HPKE KEM of each (the suites that seal and open with them are ``veil.hazmat.v3``'s).
HPKE_KEM: Final = {Kem.HYBRID: hpke.KEM.MLKEM768_X25519, Kem.X25519: hpke.KEM.X25519}

_HpkePublic = hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey
_HpkePrivate = hpke.MLKEM768X25519PrivateKey | x25519.X25519PrivateKey


def parse_kem(value: str | None) -> Kem:
    """The envelope's ``kem``; anything else (or none) is a 400."""
    try:
        return Kem(value or "")
    except ValueError:
        raise InvalidBody(f"unknown {_SUITE} kem (expected one of: {_KEM_NAMES})") from None


_KEM_NAMES = ", ".join(k.value for k in Kem)


def hpke_public_key(kem: Kem, raw: bytes) -> _HpkePublic:
    """A node's published public key as cryptography's HPKE key; wrong sizes are a 400."""
    if len(raw) != kem.public_key_size:
        raise InvalidBody(f"{kem.value} public key must be {kem.public_key_size} bytes")
    return _parsed_public_key(kem, bytes(raw))


@lru_cache(maxsize=256)
def _parsed_public_key(kem: Kem, raw: bytes) -> _HpkePublic:
    """Parsing ML-KEM-768's 1,184 bytes costs about as much as a third of the encryption, and a
    client seals to the same few node keys again and again: parsed once per key (the objects are
    immutable; a failure is not cached)."""
    try:
        x = x25519.X25519PublicKey.from_public_bytes(raw[-X25519_KEY_SIZE:])
        if kem is Kem.X25519:
            return x
        m = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_KEY_SIZE])
        return hpke.MLKEM768X25519PublicKey(m, x)
    except ValueError:
        raise InvalidBody(f"not a valid {kem.value} public key") from None


@dataclass(frozen=True)
class NodeKemKey:
    """One node key of a KEM: its seed (the only secret to store), the derived pair, its id."""

    kem: Kem
    seed: bytes
    public_key: bytes
    key_id: str
    private_key: _HpkePrivate

    @classmethod
    def generate(cls, kem: Kem = Kem.HYBRID) -> NodeKemKey:
        return cls.from_seed(kem, os.urandom(SEED_SIZE))

    @classmethod
    def from_seed(cls, kem: Kem, seed: bytes) -> NodeKemKey:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"a {_SUITE} key seed is {SEED_SIZE} bytes")
        private: _HpkePrivate
        if kem is Kem.HYBRID:
            expanded = hashlib.shake_256(seed).digest(96)
            m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
            x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
            public = m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
            private = hpke.MLKEM768X25519PrivateKey(m, x)
        else:
            x = x25519.X25519PrivateKey.from_private_bytes(seed)
            public = x.public_key().public_bytes_raw()
            private = x
        return cls(kem, seed, public, key_id_of(public), private)

    @property
    def x25519_public_key(self) -> bytes:
        """What the envelope's ``node_dh_public_key`` carries."""
        return self.public_key[-X25519_KEY_SIZE:]

    def __repr__(self) -> str:  # never the seed
        return f"NodeKemKey(kem={self.kem.value}, key_id={self.key_id})"
