"""RFC 9180 test vectors (cryptography-vectors' copy of the CFRG file) through the exact pyhpke
calls veil-v2 makes: ``v2.hpke_sender`` / ``v2.hpke_recipient`` on ``v2.CIPHER_SUITE``.

Only the suite v2 uses is exercised: mode 0 (base), KEM 0x0020 DHKEM(X25519, HKDF-SHA256),
KDF 0x0001 HKDF-SHA256, AEAD 0x0002 AES-256-GCM.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pyhpke import AEADId, KDFId, KEMId, KEMKeyPair

from veil.hazmat import v2

VECTOR_FILE = files("cryptography_vectors") / "HPKE" / "test-vectors.json"

MODE_BASE = 0
KEM_X25519 = 0x0020
KDF_SHA256 = 0x0001
AEAD_AES256GCM = 0x0002

BASE_KEYS = {
    "mode", "kem_id", "kdf_id", "aead_id", "info", "ikmR", "ikmE", "skRm", "skEm", "pkRm", "pkEm",
    "enc", "shared_secret", "key_schedule_context", "secret", "key", "base_nonce",
    "exporter_secret", "encryptions", "exports",
}  # fmt: skip
HEX_KEYS = BASE_KEYS - {"mode", "kem_id", "kdf_id", "aead_id", "encryptions", "exports"}


def _load() -> list[dict[str, Any]]:
    data = json.loads(VECTOR_FILE.read_text())
    assert isinstance(data, list)
    return data


ALL_VECTORS = _load()
VECTORS = [
    v
    for v in ALL_VECTORS
    if (v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"])
    == (MODE_BASE, KEM_X25519, KDF_SHA256, AEAD_AES256GCM)
]
h = bytes.fromhex


def test_the_vector_file_has_the_expected_structure() -> None:
    assert len(ALL_VECTORS) > 100
    for vec in ALL_VECTORS:
        assert isinstance(vec, dict)
        assert {"mode", "kem_id", "kdf_id", "aead_id", "encryptions", "exports"} <= set(vec)
        assert all(isinstance(vec[k], int) for k in ("mode", "kem_id", "kdf_id", "aead_id"))
    # The suite v2 uses is present, and its base-mode vectors have exactly the RFC 9180 fields.
    assert VECTORS, "no base-mode X25519/SHA-256/AES-256-GCM vector in the file"
    for vec in VECTORS:
        assert set(vec) == BASE_KEYS
        assert all(isinstance(vec[k], str) for k in HEX_KEYS)
        assert len(vec["encryptions"]) > 0
        for enc in vec["encryptions"]:
            assert set(enc) == {"aad", "ct", "nonce", "pt"}
        assert len(vec["exports"]) > 0
        for exp in vec["exports"]:
            assert set(exp) == {"exporter_context", "L", "exported_value"}
            assert isinstance(exp["L"], int)


def test_v2_uses_exactly_that_suite() -> None:
    assert v2.CIPHER_SUITE.kem.id == KEMId.DHKEM_X25519_HKDF_SHA256 == KEMId(KEM_X25519)
    assert v2.CIPHER_SUITE.kdf.id == KDFId.HKDF_SHA256 == KDFId(KDF_SHA256)
    assert v2.CIPHER_SUITE.aead.id == AEADId.AES256_GCM == AEADId(AEAD_AES256GCM)


def _ephemeral(vec: dict[str, Any]) -> KEMKeyPair:
    kem = v2.CIPHER_SUITE.kem
    sk = kem.deserialize_private_key(h(vec["skEm"]))
    pk = kem.deserialize_public_key(h(vec["pkEm"]))
    return KEMKeyPair(sk, pk)


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["info"][:16])
def test_key_pairs_derive_from_the_vector_ikm(vec: dict[str, Any]) -> None:
    kem = v2.CIPHER_SUITE.kem
    for ikm, sk, pk in (("ikmE", "skEm", "pkEm"), ("ikmR", "skRm", "pkRm")):
        pair = kem.derive_key_pair(h(vec[ikm]))
        assert pair.private_key.to_private_bytes() == h(vec[sk])
        assert pair.public_key.to_public_bytes() == h(vec[pk])


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["info"][:16])
def test_sender_reproduces_enc_every_ciphertext_and_every_export(vec: dict[str, Any]) -> None:
    enc, ctx = v2.hpke_sender(h(vec["pkRm"]), h(vec["info"]), _ephemeral(vec))
    assert enc == h(vec["enc"])
    for i, step in enumerate(vec["encryptions"]):
        # The vector's nonce is the one RFC 9180 ComputeNonce gives for sequence number i;
        # v2's response nonces are computed the same way.
        assert v2.chunk_nonce(h(vec["base_nonce"]), i) == h(step["nonce"])
        assert ctx.seal(h(step["pt"]), h(step["aad"])) == h(step["ct"])
    for exp in vec["exports"]:
        assert ctx.export(h(exp["exporter_context"]), exp["L"]) == h(exp["exported_value"])


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["info"][:16])
def test_recipient_opens_every_ciphertext_and_reproduces_every_export(
    vec: dict[str, Any],
) -> None:
    node_key = X25519PrivateKey.from_private_bytes(h(vec["skRm"]))
    assert node_key.public_key().public_bytes_raw() == h(vec["pkRm"])
    ctx = v2.hpke_recipient(h(vec["enc"]), node_key, h(vec["info"]))
    for step in vec["encryptions"]:
        assert ctx.open(h(step["ct"]), h(step["aad"])) == h(step["pt"])
    for exp in vec["exports"]:
        assert ctx.export(h(exp["exporter_context"]), exp["L"]) == h(exp["exported_value"])
