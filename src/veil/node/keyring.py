"""The node's keys: an X25519 keyring (current + previous) and a long-lived Ed25519 signing key.

Layout under ``DATA_DIR/keys/`` (directory 0700, every key file 0600)::

    x25519-current.key     32 raw private bytes
    x25519-previous.key    32 raw private bytes (absent until the first rotation)
    ed25519-signing.key    32 raw private bytes
    keyring.json           public metadata: key ids, creation and rotation times

``Keyring.rotate()`` may run in another process (``veil node rotate-key``) while the node serves:
the serving keyring notices ``keyring.json`` changed and reloads. A request sealed to the previous
key is accepted until ``rotated_at + grace``; afterwards, or for a key the node never had, the answer
is 409 STALE_NODE_KEY.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from veil.keyfiles import read_secret, write_secret
from veil.wire.envelopes import b64encode
from veil.wire.errors import StaleNodeKey
from veil.wire.keyid import key_id

DEFAULT_GRACE_SECONDS = 600.0
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


@dataclass(frozen=True)
class NodeKey:
    private_key: X25519PrivateKey
    public_key: bytes
    key_id: str
    created_at: float

    @classmethod
    def generate(cls, now: float) -> NodeKey:
        return cls.from_private(X25519PrivateKey.generate(), now)

    @classmethod
    def from_private(cls, private_key: X25519PrivateKey, created_at: float) -> NodeKey:
        public = private_key.public_key().public_bytes(_RAW, _RAW_PUB)
        return cls(private_key, public, key_id(public), created_at)

    def private_bytes(self) -> bytes:
        return self.private_key.private_bytes(_RAW, _RAW_PRIV, _NO_ENC)

    def __repr__(self) -> str:  # never show private material
        return f"NodeKey(key_id={self.key_id!r})"


class Keyring:
    def __init__(self, data_dir: Path, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        self.directory = Path(data_dir) / "keys"
        self.grace_seconds = grace_seconds
        self._lock = threading.Lock()
        self._meta_mtime: int = -1
        self.current: NodeKey
        self.previous: NodeKey | None = None
        self.rotated_at: float | None = None
        self.signing_key: Ed25519PrivateKey
        self.signing_public_key: bytes
        self._load_or_create()

    # -- files -----------------------------------------------------------------------------
    @property
    def _meta_path(self) -> Path:
        return self.directory / "keyring.json"

    def _path(self, name: str) -> Path:
        return self.directory / name

    def _load_or_create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        signing_path = self._path("ed25519-signing.key")
        if not signing_path.exists():
            write_secret(
                signing_path, Ed25519PrivateKey.generate().private_bytes(_RAW, _RAW_PRIV, _NO_ENC)
            )
        self.signing_key = Ed25519PrivateKey.from_private_bytes(read_secret(signing_path, 32))
        self.signing_public_key = self.signing_key.public_key().public_bytes(_RAW, _RAW_PUB)
        if not self._meta_path.exists():
            now = time.time()
            first = NodeKey.generate(now)
            write_secret(self._path("x25519-current.key"), first.private_bytes())
            self._write_meta({"current": {"key_id": first.key_id, "created_at": now}})
        self._reload()

    def _write_meta(self, meta: dict[str, Any]) -> None:
        # Public data only, but written the same careful way so readers never see half a file.
        write_secret(self._meta_path, json.dumps(meta, indent=2).encode())

    def _read_key(self, name: str, created_at: float) -> NodeKey:
        raw = read_secret(self._path(name), 32)
        return NodeKey.from_private(X25519PrivateKey.from_private_bytes(raw), created_at)

    def _reload(self) -> None:
        meta = json.loads(self._meta_path.read_text())
        self._meta_mtime = self._meta_path.stat().st_mtime_ns
        self.current = self._read_key("x25519-current.key", float(meta["current"]["created_at"]))
        previous = meta.get("previous")
        if previous is not None:
            self.previous = self._read_key("x25519-previous.key", float(previous["created_at"]))
            self.rotated_at = float(meta["rotated_at"])
        else:
            self.previous, self.rotated_at = None, None

    def refresh(self) -> None:
        """Pick up a rotation done by another process (cheap: one stat)."""
        try:
            mtime = self._meta_path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime != self._meta_mtime:
            with self._lock:
                self._reload()

    # -- operations ------------------------------------------------------------------------
    def rotate(self, now: float | None = None) -> NodeKey:
        """Make a fresh current key; the old current becomes previous for the grace window."""
        now = time.time() if now is None else now
        with self._lock:
            old, new = self.current, NodeKey.generate(now)
            write_secret(self._path("x25519-previous.key"), old.private_bytes())
            write_secret(self._path("x25519-current.key"), new.private_bytes())
            self._write_meta(
                {
                    "current": {"key_id": new.key_id, "created_at": now},
                    "previous": {"key_id": old.key_id, "created_at": old.created_at},
                    "rotated_at": now,
                }
            )
            self._reload()
        return new

    def previous_valid(self, now: float | None = None) -> bool:
        if self.previous is None or self.rotated_at is None:
            return False
        now = time.time() if now is None else now
        return now <= self.rotated_at + self.grace_seconds

    def accepted_keys(self, now: float | None = None) -> list[NodeKey]:
        keys = [self.current]
        if self.previous is not None and self.previous_valid(now):
            keys.append(self.previous)
        return keys

    def lookup(self, public_key: bytes, now: float | None = None) -> NodeKey:
        """The accepted key whose public half is ``public_key``, or 409 STALE_NODE_KEY."""
        self.refresh()
        found: NodeKey | None = None
        for key in self.accepted_keys(now):
            if hmac.compare_digest(key.public_key, public_key):
                found = key
        if found is None:
            raise StaleNodeKey(
                "the envelope is sealed to a node key this node no longer accepts; "
                "lock again and re-encrypt to the current key"
            )
        return found

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message)

    def describe(self, now: float | None = None) -> dict[str, Any]:
        """Public view for ``GET /v1/keys``."""
        self.refresh()
        keys: list[dict[str, Any]] = [
            {
                "key_id": self.current.key_id,
                "public_key": b64encode(self.current.public_key),
                "status": "current",
                "created_at": int(self.current.created_at),
            }
        ]
        if self.previous is not None and self.rotated_at is not None and self.previous_valid(now):
            keys.append(
                {
                    "key_id": self.previous.key_id,
                    "public_key": b64encode(self.previous.public_key),
                    "status": "previous",
                    "created_at": int(self.previous.created_at),
                    "accepted_until": int(self.rotated_at + self.grace_seconds),
                }
            )
        return {
            "keys": keys,
            "signing_public_key": b64encode(self.signing_public_key),
            "signing_key_id": key_id(self.signing_public_key),
            "signature_scheme": "ed25519",
        }
