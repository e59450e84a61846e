"""The node's keys: an X25519 keyring (current + previous) and a long-lived Ed25519 signing key.

Each key generation also holds a veil-v3 post-quantum key: ML-KEM-768 + X25519 (X-Wing), kept as
its 32-byte seed and rotated with the X25519 key, with the same grace. v3's classical KEM uses the
generation's X25519 key itself (so its key id is the X25519 key id).

Layout under ``DATA_DIR/keys/`` (directory 0700, every key file 0600)::

    x25519-current.key     32 raw private bytes
    x25519-previous.key    32 raw private bytes (absent until the first rotation)
    xwing-current.seed     32-byte seed of the current ML-KEM-768 + X25519 key
    xwing-previous.seed    its previous generation's (absent until the first rotation)
    ed25519-signing.key    32 raw private bytes
    keyring.json           public metadata: key ids, creation and rotation times

A keyring written before veil-v3 gains its current X-Wing seed the first time it is loaded; its
previous generation (if any) then has none and serves atoma-v1 requests (and veil-v3 sealed to its X25519 key) only.

``Keyring.rotate()`` may run in another process (``veil node rotate-key``) while the node serves:
the serving keyring notices ``keyring.json`` changed and reloads. A request sealed to the previous
key is accepted until ``rotated_at + grace``; afterwards, or for a key the node never had, the answer
is 409 STALE_NODE_KEY.
"""

from __future__ import annotations

import contextlib
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

from veil.hazmat.kem import SEED_SIZE, Kem, NodeKemKey
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
    """One key generation: the X25519 key (atoma-v1 and v3's classical KEM) and, since veil-v3,
    the post-quantum ``hybrid`` key beside it."""

    private_key: X25519PrivateKey
    public_key: bytes
    key_id: str
    created_at: float
    hybrid: NodeKemKey | None = None
    classical: NodeKemKey | None = None  # the X25519 key as a v3 key (same key id)

    @classmethod
    def generate(cls, now: float) -> NodeKey:
        return cls.from_private(X25519PrivateKey.generate(), now, NodeKemKey.generate(Kem.HYBRID))

    @classmethod
    def from_private(
        cls, private_key: X25519PrivateKey, created_at: float, hybrid: NodeKemKey | None = None
    ) -> NodeKey:
        public = private_key.public_key().public_bytes(_RAW, _RAW_PUB)
        raw = private_key.private_bytes(_RAW, _RAW_PRIV, _NO_ENC)
        classical = NodeKemKey.from_seed(Kem.X25519, raw)
        return cls(private_key, public, key_id(public), created_at, hybrid, classical)

    def kem_key(self, kem_key_id: str) -> NodeKemKey | None:
        """This generation's v3 key with id ``kem_key_id`` (either KEM), or None."""
        for candidate in (self.hybrid, self.classical):
            if candidate is not None and hmac.compare_digest(candidate.key_id, kem_key_id):
                return candidate
        return None

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
            self._write_generation("current", first)
            self._write_meta({"current": _meta_entry(first)})
        elif not self._path("xwing-current.seed").exists():
            # A keyring from before veil-v3: its current generation gains its post-quantum key.
            # Written only if still absent, so two processes loading it at once agree on one.
            _create_secret(self._path("xwing-current.seed"), os.urandom(SEED_SIZE))
        self._reload()

    def _write_generation(self, slot: str, key: NodeKey) -> None:
        write_secret(self._path(f"x25519-{slot}.key"), key.private_bytes())
        if key.hybrid is not None:
            write_secret(self._path(f"xwing-{slot}.seed"), key.hybrid.seed)
        else:
            with contextlib.suppress(FileNotFoundError):
                self._path(f"xwing-{slot}.seed").unlink()

    def _write_meta(self, meta: dict[str, Any]) -> None:
        # Public data only, but written the same careful way so readers never see half a file.
        write_secret(self._meta_path, json.dumps(meta, indent=2).encode())

    def _read_key(self, slot: str, created_at: float) -> NodeKey:
        raw = read_secret(self._path(f"x25519-{slot}.key"), 32)
        seed_path = self._path(f"xwing-{slot}.seed")
        hybrid = None
        if seed_path.exists():
            hybrid = NodeKemKey.from_seed(Kem.HYBRID, read_secret(seed_path, SEED_SIZE))
        return NodeKey.from_private(X25519PrivateKey.from_private_bytes(raw), created_at, hybrid)

    def _reload(self) -> None:
        meta = json.loads(self._meta_path.read_text())
        self._meta_mtime = self._meta_path.stat().st_mtime_ns
        self.current = self._read_key("current", float(meta["current"]["created_at"]))
        previous = meta.get("previous")
        if previous is not None:
            self.previous = self._read_key("previous", float(previous["created_at"]))
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
            self._write_generation("previous", old)
            self._write_generation("current", new)
            self._write_meta(
                {"current": _meta_entry(new), "previous": _meta_entry(old), "rotated_at": now}
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

    def kem_key(self, kem_key_id: str, now: float | None = None) -> NodeKemKey:
        """The accepted veil-v3 key with id ``kem_key_id``, or 409 STALE_NODE_KEY (as for
        ``lookup``: the client locks again and seals to the current key)."""
        self.refresh()
        for key in self.accepted_keys(now):
            found = key.kem_key(kem_key_id)
            if found is not None:
                return found
        raise StaleNodeKey(
            "the envelope is sealed to a node key this node no longer accepts; "
            "lock again and re-encrypt to the current key"
        )

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message)

    def describe(self, now: float | None = None) -> dict[str, Any]:
        """Public view for ``GET /v1/keys``."""
        self.refresh()
        keys: list[dict[str, Any]] = [_describe(self.current, "current")]
        if self.previous is not None and self.rotated_at is not None and self.previous_valid(now):
            entry = _describe(self.previous, "previous")
            entry["accepted_until"] = int(self.rotated_at + self.grace_seconds)
            keys.append(entry)
        return {
            "keys": keys,
            "signing_public_key": b64encode(self.signing_public_key),
            "signing_key_id": key_id(self.signing_public_key),
            "signature_scheme": "ed25519",
        }


def _describe(key: NodeKey, status: str) -> dict[str, Any]:
    """One ``/v1/keys`` entry: the X25519 key, and the generation's post-quantum key if any."""
    entry: dict[str, Any] = {
        "key_id": key.key_id,
        "public_key": b64encode(key.public_key),
        "status": status,
        "created_at": int(key.created_at),
    }
    if key.hybrid is not None:
        entry["kem"] = key.hybrid.kem.value
        entry["kem_public_key"] = b64encode(key.hybrid.public_key)
        entry["kem_key_id"] = key.hybrid.key_id
    return entry


def _meta_entry(key: NodeKey) -> dict[str, Any]:
    entry: dict[str, Any] = {"key_id": key.key_id, "created_at": key.created_at}
    if key.hybrid is not None:
        entry["kem_key_id"] = key.hybrid.key_id
    return entry


def _create_secret(path: Path, data: bytes) -> None:
    """Create a secret file only if none exists: written whole (0600 from the first byte) under a
    temporary name, then linked in place, so a racing writer's file wins and no reader ever sees
    half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink()
