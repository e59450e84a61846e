"""The node signing keys this client saw in attested locks, kept on disk for ``veil usage --verify``.

Why: the gateway's ledger says what each request cost and shows the node's signed usage receipt.
A receipt only proves something if its key belongs to a node the client itself attested; a key
the gateway merely names proves nothing (the operator could sign receipts with a key of its own).
So every lock that passed attestation records its node's Ed25519 signing key here, with when it
was first and last seen and the evidence format that vouched for it ("none" for a demo node
accepted with ``insecure_no_tee``, which ``--verify`` does not trust unless told to).

The file is ``$VEIL_HOME/known_nodes.json`` (default ``~/.local/share/veil/known_nodes.json``),
mode 0600, in a 0700 directory. Writers take an exclusive ``flock`` on ``known_nodes.lock`` and
replace the file atomically, so processes recording at once lose nothing. A process writes a key
at most once a minute (``last_seen`` is precise to that), so a busy client does not write per
request. Recording never fails a request: a problem is logged and the request goes on.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from veil.wire.keyid import key_id

__all__ = ["KnownNode", "KnownNodes", "KnownNodesError", "known_nodes_path"]

log = logging.getLogger("veil.client.known_nodes")

FILE_NAME: Final = "known_nodes.json"
VERSION: Final = 1
REWRITE_AFTER_SECONDS: Final = 60.0
MAX_FILE_BYTES: Final = 16 * 1024 * 1024


class KnownNodesError(Exception):
    """The known-nodes file cannot be read or is not what this client writes."""


def known_nodes_path() -> Path:
    home = os.environ.get("VEIL_HOME")
    base = Path(home) if home else Path.home() / ".local" / "share" / "veil"
    return base / FILE_NAME


@dataclass(frozen=True)
class KnownNode:
    """One node signing key and what vouched for it."""

    signing_public_key: bytes
    node_small_id: int
    gateway: str
    attestation_formats: tuple[str, ...]
    first_seen: float
    last_seen: float

    @property
    def key_id(self) -> str:
        return key_id(self.signing_public_key)

    @property
    def tee_attested(self) -> bool:
        """Whether some lock vouched for this key with real TEE evidence (not "none")."""
        return any(fmt != "none" for fmt in self.attestation_formats)

    def to_json(self) -> dict[str, Any]:
        return {
            "signing_public_key": base64.b64encode(self.signing_public_key).decode(),
            "key_id": self.key_id,
            "node_small_id": self.node_small_id,
            "gateway": self.gateway,
            "attestation_formats": list(self.attestation_formats),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }

    @classmethod
    def from_json(cls, item: Any) -> KnownNode:
        try:
            key = base64.b64decode(item["signing_public_key"], validate=True)
            formats = item["attestation_formats"]
            if len(key) != 32 or not isinstance(formats, list):
                raise ValueError("bad key or formats")
            return cls(
                signing_public_key=key,
                node_small_id=int(item["node_small_id"]),
                gateway=str(item["gateway"]),
                attestation_formats=tuple(str(f) for f in formats),
                first_seen=float(item["first_seen"]),
                last_seen=float(item["last_seen"]),
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise KnownNodesError(
                "a known_nodes.json entry is malformed (expected a 32-byte base64 key, a node id, "
                "a gateway, attestation formats and two times)"
            ) from None


class KnownNodes:
    """The known-nodes file of one ``path`` (default :func:`known_nodes_path`)."""

    _written: dict[tuple[str, str, str], float] = {}  # (path, key, format) -> monotonic time
    _guard = threading.Lock()

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else known_nodes_path()

    def __repr__(self) -> str:
        return f"KnownNodes({str(self.path)!r})"

    # -- reading ---------------------------------------------------------------------------
    def load(self) -> dict[bytes, KnownNode]:
        """Every known key (raw bytes -> entry); an absent file is an empty set."""
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KnownNodesError(f"cannot read {self.path}: {exc.strerror}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise KnownNodesError(f"{self.path} is over {MAX_FILE_BYTES} bytes")
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            raise KnownNodesError(f"{self.path} is not valid JSON") from None
        if (
            not isinstance(document, dict)
            or document.get("version") != VERSION
            or not isinstance(document.get("nodes"), list)
        ):
            raise KnownNodesError(f"{self.path}: expected {{'version': {VERSION}, 'nodes': [...]}}")
        nodes = [KnownNode.from_json(item) for item in document["nodes"]]
        return {node.signing_public_key: node for node in nodes}

    # -- writing ---------------------------------------------------------------------------
    def record(
        self,
        signing_public_key: bytes,
        *,
        node_small_id: int,
        gateway: str,
        attestation_format: str,
        now: float | None = None,
    ) -> None:
        """Remember a key an attested lock named. Never raises: a failure is logged."""
        if len(signing_public_key) != 32:
            log.warning("not recording a node signing key of %d bytes", len(signing_public_key))
            return
        key_b64 = base64.b64encode(signing_public_key).decode()
        memo = (str(self.path), key_b64, attestation_format)
        with self._guard:
            last = self._written.get(memo)
            if last is not None and time.monotonic() - last < REWRITE_AFTER_SECONDS:
                return
            self._written[memo] = time.monotonic()
        when = time.time() if now is None else now
        try:
            with self._locked():
                nodes = self.load()
                old = nodes.get(signing_public_key)
                formats = set(old.attestation_formats) if old else set()
                formats.add(attestation_format)
                nodes[signing_public_key] = KnownNode(
                    signing_public_key=signing_public_key,
                    node_small_id=node_small_id,
                    gateway=gateway,
                    attestation_formats=tuple(sorted(formats)),
                    first_seen=old.first_seen if old else when,
                    last_seen=when,
                )
                self._write(nodes)
        except (KnownNodesError, OSError) as exc:
            with self._guard:
                self._written.pop(memo, None)  # try again next time
            log.warning("could not record a node signing key in %s: %s", self.path, exc)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, nodes: dict[bytes, KnownNode]) -> None:
        document = {
            "version": VERSION,
            "nodes": [n.to_json() for n in sorted(nodes.values(), key=lambda n: n.first_seen)],
        }
        fd, tmp = tempfile.mkstemp(prefix=".known_nodes.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
