"""The gateway's Ed25519 ticket-signing key, kept in DATA_DIR/keys (0600)."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.keyfiles import read_secret, write_secret

_RAW = serialization.Encoding.Raw


def load_or_create_gateway_key(data_dir: Path) -> Ed25519PrivateKey:
    path = Path(data_dir) / "keys" / "gateway-ed25519.key"
    if not path.exists():
        fresh = Ed25519PrivateKey.generate()
        raw = fresh.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        write_secret(path, raw)
    return Ed25519PrivateKey.from_private_bytes(read_secret(path, 32))


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()
