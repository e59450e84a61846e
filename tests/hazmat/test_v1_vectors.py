"""Every atoma-sdk vector in shared/vectors/atoma-v1.json reproduces byte for byte."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from veil.hazmat import v1
from veil.node.keyring import NodeKey
from veil.wire.errors import DecryptionFailed, InvalidBody

VECTORS_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "atoma-v1.json"


def _load() -> list[dict[str, str]]:
    return json.loads(VECTORS_PATH.read_text())["vectors"]


VECTORS = _load()
b = base64.b64decode


def test_the_vector_file_covers_every_endpoint() -> None:
    assert {v["kind"] for v in VECTORS} == {"chat", "chat_stream", "embeddings", "images"}


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["kind"])
def test_request_side_reproduces(vec: dict[str, str]) -> None:
    client = X25519PrivateKey.from_private_bytes(b(vec["client_private_key"]))
    node = NodeKey.from_private(X25519PrivateKey.from_private_bytes(b(vec["node_private_key"])), 0)
    assert node.public_key == b(vec["node_dh_public_key"])

    shared = v1.exchange(client, node.public_key)
    assert shared == b(vec["shared_secret"])
    assert v1.exchange(node.private_key, b(vec["client_dh_public_key"])) == shared
    key = v1.derive_key(shared, b(vec["salt"]))
    assert key == b(vec["derived_key"])

    plaintext = vec["plaintext"].encode()
    assert v1.body_hash(plaintext) == b(vec["plaintext_body_hash"])
    nonce, ciphertext = v1.Session(key).seal(plaintext, nonce=b(vec["nonce"]))
    assert ciphertext == b(vec["ciphertext"])
    assert v1.Session(key).open(nonce, ciphertext) == plaintext


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["kind"])
def test_response_side_reproduces(vec: dict[str, str]) -> None:
    session = v1.Session(b(vec["derived_key"]))
    plaintext = vec["response_plaintext"].encode()
    _, ciphertext = session.seal(plaintext, nonce=b(vec["response_nonce"]))
    assert ciphertext == b(vec["response_ciphertext"])
    assert v1.body_hash(plaintext) == b(vec["response_hash"])


def test_fresh_nonce_for_every_seal() -> None:
    session = v1.Session(bytes(32))
    nonces = {session.seal(b"same chunk")[0] for _ in range(200)}
    assert len(nonces) == 200


@pytest.mark.parametrize("field", ["ciphertext", "tag", "nonce", "key"])
def test_any_altered_part_fails_with_decryption_failed(field: str) -> None:
    vec = VECTORS[0]
    key, nonce, ct = b(vec["derived_key"]), b(vec["nonce"]), bytearray(b(vec["ciphertext"]))
    if field == "ciphertext":
        ct[0] ^= 1
    elif field == "tag":
        ct[-1] ^= 1
    elif field == "nonce":
        nonce = bytes([nonce[0] ^ 1]) + nonce[1:]
    else:
        key = bytes([key[0] ^ 1]) + key[1:]
    with pytest.raises(DecryptionFailed) as info:
        v1.Session(key).open(nonce, bytes(ct))
    assert vec["plaintext"][:10] not in info.value.message


# Low-order points of Curve25519 (RFC 7748 section 6.1 warns about them).
LOW_ORDER = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p.hex()[:8])
def test_low_order_peer_keys_are_refused(point: bytes) -> None:
    with pytest.raises(InvalidBody, match="low-order"):
        v1.exchange(X25519PrivateKey.generate(), point)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_wrong_size_keys_are_refused_before_use(size: int) -> None:
    with pytest.raises(InvalidBody, match="32 bytes"):
        v1.exchange(X25519PrivateKey.generate(), bytes(size))


def test_salt_size_checked() -> None:
    with pytest.raises(InvalidBody, match="salt"):
        v1.derive_key(bytes(range(32)), bytes(15))
