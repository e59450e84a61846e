"""Key ids: how every party names a public key (docs/PROTOCOL.md section 2).

One rule for every key Veil shows (a node's X25519 or ML-KEM keys, its Ed25519 signing key, a
gateway's ticket key): the first 8 bytes of BLAKE2b-256 of the raw public key, in hex. A key id
names a key; it proves nothing (a client always compares the whole key it verified)."""

from __future__ import annotations

import hashlib

__all__ = ["key_id"]


def key_id(public_key: bytes) -> str:
    """First 8 bytes of BLAKE2b-256 of the raw public key, hex."""
    return hashlib.blake2b(public_key, digest_size=32).digest()[:8].hex()
