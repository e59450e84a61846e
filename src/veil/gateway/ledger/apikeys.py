"""API keys: how they are made, how they are stored, and how a presented key is checked.

A key is ``"veil_"`` followed by the URL-safe base64 (no padding) of 32 random bytes: 256 bits
from the OS CSPRNG, 48 characters in all, safe in headers and shells.

The database never holds a key. It holds:

- ``prefix``: the first 12 characters (``"veil_"`` + 7 key characters, 42 random bits). It is
  only a lookup index, so a check costs one indexed read instead of hashing against every row; it
  is also what a user can quote to revoke a key without pasting the secret.
- ``key_hash``: SHA-256 of the whole key. A fast unsalted hash is enough here (unlike passwords)
  because the key itself carries 256 random bits: there is nothing to brute-force.

A presented key is compared with :func:`hmac.compare_digest` so that the time taken does not leak
how many leading bytes of the hash matched. Nothing here logs or formats a key into a message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

KEY_SCHEME = "veil_"
KEY_RANDOM_BYTES = 32
PREFIX_LENGTH = 12
KEY_LENGTH = len(KEY_SCHEME) + 43  # 32 bytes of base64 without padding is 43 characters


def generate_api_key() -> str:
    """A new random API key (shown to its owner once, stored only as a hash)."""
    raw = secrets.token_bytes(KEY_RANDOM_BYTES)
    return KEY_SCHEME + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def key_prefix(api_key: str) -> str:
    """The lookup prefix of a key: its first 12 characters."""
    return api_key[:PREFIX_LENGTH]


def hash_api_key(api_key: str) -> bytes:
    """SHA-256 of the full key (32 bytes): the only form in which a key is stored."""
    return hashlib.sha256(api_key.encode("utf-8")).digest()


def looks_like_api_key(value: str) -> bool:
    """Whether ``value`` has the shape of a full key (not a prefix); says nothing about validity."""
    return value.startswith(KEY_SCHEME) and len(value) == KEY_LENGTH


def hashes_match(presented: bytes, stored: bytes) -> bool:
    """Constant-time comparison of two key hashes."""
    return hmac.compare_digest(presented, stored)
