"""The two ends of a veil-v3 exchange for the hazmat tests: a node (its KEM key, its Ed25519
signing key, and ``open_request`` as the node calls it) and a client sealing to it.

Nothing here is a stand-in: the keys are real, and every call is the suite's own."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.hazmat import v3
from veil.hazmat.v3 import Kem, NodeKemKey
from veil.wire.envelopes import ConfidentialComputeRequest, ConfidentialComputeResponse

CHAT = "/v1/confidential/chat/completions"
EMBED = "/v1/confidential/embeddings"
NOW = 1_750_000_000.0
BODY = b'{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"a secret"}]}'
SECRET_TEXT = b"a secret"  # what must never show in an envelope or an error
RESERVATION = "0123456789abcdef0123456789abcdef"


class Node:
    def __init__(self, kem: Kem = Kem.HYBRID, key: NodeKemKey | None = None) -> None:
        self.key = key or NodeKemKey.generate(kem)
        self.signer = Ed25519PrivateKey.generate()
        self.signing_public = self.signer.public_key().public_bytes_raw()

    def keys(self, wanted: str) -> NodeKemKey | None:
        return self.key if wanted == self.key.key_id else None

    @property
    def x25519_private(self) -> x25519.X25519PrivateKey:
        """The X25519 half of the node key: all of it for X25519, X-Wing's last 32 seed bytes."""
        if self.key.kem is Kem.X25519:
            return x25519.X25519PrivateKey.from_private_bytes(self.key.seed)
        expanded = hashlib.shake_256(self.key.seed).digest(96)
        return x25519.X25519PrivateKey.from_private_bytes(expanded[64:])

    def open(
        self, envelope: ConfidentialComputeRequest, **kwargs: Any
    ) -> tuple[bytes, v3.ServerSession]:
        args: dict[str, Any] = {
            "endpoint": CHAT,
            "now": NOW,
            "allowed_kems": frozenset({self.key.kem}),
            "reservation_id": RESERVATION,
        }
        args.update(kwargs)
        return v3.open_request(envelope, self.keys, **args)


def seal(
    node: Node, body: bytes = BODY, **overrides: Any
) -> tuple[ConfidentialComputeRequest, v3.ClientSession]:
    args: dict[str, Any] = {
        "node_signing_key": node.signing_public,
        "endpoint": CHAT,
        "model_name": "smollm2-135m-instruct",
        "stack_small_id": 7,
        "num_compute_units": 256,
        "stream": True,
        "reservation_id": RESERVATION,
        "kem": node.key.kem,
        "now": NOW,
    }
    args.update(overrides)
    return v3.seal_request(node.key.public_key, node.key.key_id, body, **args)


def answer(
    node: Node, server: v3.ServerSession, parts: list[bytes], usage: dict[str, int] | None = None
) -> list[ConfidentialComputeResponse]:
    """The node's answer: every part a chunk, the last one final, signed and carrying ``usage``."""
    sealed = [server.seal(p, final=False, sign=node.signer.sign) for p in parts[:-1]]
    sealed.append(server.seal(parts[-1], final=True, sign=node.signer.sign, usage=usage))
    return sealed


def stream(node: Node, n: int = 4) -> tuple[v3.ClientSession, list[ConfidentialComputeResponse]]:
    """A fresh request to ``node`` and its genuine ``n``-chunk answer."""
    envelope, client = seal(node)
    _, server = node.open(envelope)
    return client, answer(
        node, server, [f"part {i}".encode() for i in range(n)], {"total_tokens": n}
    )
