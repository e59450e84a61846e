"""RFC 9180 test vectors (cryptography-vectors' copy of the CFRG file) for the X25519 suite of
veil-v3, through what v3 calls: cryptography's ``hpke.Suite`` object ``v3.SUITES[Kem.X25519]``, the
key ``NodeKemKey.from_seed(Kem.X25519, ...)`` builds, and ``veil.hazmat.common.chunk_nonce``.

The suite: mode 0 (base), KEM 0x0020 DHKEM(X25519, HKDF-SHA256), KDF 0x0001 HKDF-SHA256,
AEAD 0x0002 AES-256-GCM. What is checked, and what cannot be:

* The request side. cryptography's HPKE is single shot: ``Suite.decrypt(enc || ct, sk, info)``
  opens sequence number 0 with an empty AAD, and every vector encryption has a non-empty AAD
  ("Count-i"). So the vector's first encryption is opened through cryptography's private
  ``_decrypt_with_aad`` (the same single-shot decryption, taking the AAD the public call leaves
  empty; in cryptography's source both run one inner function), under v3's own suite object and
  key object; that the public call behaves exactly as its empty-AAD case is checked here, not
  assumed. Sequence numbers above 0 are not reachable through a single-shot API (checked: they do
  not open), nor are the exports (v3 uses no exporter), DeriveKeyPair from ``ikmR``/``ikmE``
  (cryptography exposes none) or the sender's side (cryptography draws the ephemeral key itself,
  so ``enc`` and the ciphertexts cannot be reproduced from ``skEm``).
* The answer side. v3 seals chunk i with AES-256-GCM under ``chunk_nonce(base_nonce, i)``, as an
  HPKE context seals sequence number i. With the vector's ``key`` and ``base_nonce`` those calls
  reproduce every one of the vector's nonces and ciphertexts. (v3's own key and base nonce come
  from HKDF of the response secret, not from this key schedule: tests/vectors/veil-v3.json pins
  those.)
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.hazmat.common import chunk_nonce
from veil.hazmat.kem import Kem, NodeKemKey
from veil.hazmat.v3 import SUITES
from veil.wire.keyid import key_id

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

_decrypt_with_aad = rust_openssl.hpke._decrypt_with_aad
SUITE = SUITES[Kem.X25519]  # the one object v3 seals and opens X25519 requests with


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
    # The suite v3's X25519 KEM uses is present, and its base-mode vectors have the RFC 9180 fields.
    assert VECTORS, "no base-mode X25519/SHA-256/AES-256-GCM vector in the file"
    for vec in VECTORS:
        assert set(vec) == BASE_KEYS
        assert all(isinstance(vec[k], str) for k in HEX_KEYS)
        assert len(vec["encryptions"]) > 1
        for enc in vec["encryptions"]:
            assert set(enc) == {"aad", "ct", "nonce", "pt"}
            assert enc["aad"], "an empty AAD would make the public single-shot API usable"


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["info"][:16])
def test_the_node_key_and_the_encapsulation_are_the_vectors(vec: dict[str, Any]) -> None:
    """A v3 X25519 node key built from the vector's skRm is the vector's pkRm, and enc is the
    X25519 public key of skEm (DHKEM(X25519)'s encapsulation)."""
    node = NodeKemKey.from_seed(Kem.X25519, h(vec["skRm"]))
    assert node.public_key == node.x25519_public_key == h(vec["pkRm"])
    assert node.key_id == key_id(h(vec["pkRm"]))
    ephemeral = X25519PrivateKey.from_private_bytes(h(vec["skEm"]))
    assert ephemeral.public_key().public_bytes_raw() == h(vec["pkEm"]) == h(vec["enc"])
    assert Kem.X25519.enc_size == len(h(vec["enc"])) == 32


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["info"][:16])
def test_v3s_suite_and_key_open_the_first_encryption(vec: dict[str, Any]) -> None:
    node = NodeKemKey.from_seed(Kem.X25519, h(vec["skRm"]))
    first = vec["encryptions"][0]
    sealed = h(vec["enc"]) + h(first["ct"])
    opened = _decrypt_with_aad(
        SUITE, sealed, node.private_key, info=h(vec["info"]), aad=h(first["aad"])
    )
    assert opened == h(first["pt"])
    # The public call v3 makes authenticates an empty AAD, so it refuses this (AAD'd) ciphertext...
    with pytest.raises(InvalidTag):
        SUITE.decrypt(sealed, node.private_key, h(vec["info"]))
    # ... and the info: another one is another key schedule.
    with pytest.raises(InvalidTag):
        _decrypt_with_aad(SUITE, sealed, node.private_key, info=b"", aad=h(first["aad"]))
    # Sequence number 1 needs a context the single-shot API does not keep: it does not open.
    second = vec["encryptions"][1]
    with pytest.raises(InvalidTag):
        _decrypt_with_aad(
            SUITE,
            h(vec["enc"]) + h(second["ct"]),
            node.private_key,
            info=h(vec["info"]),
            aad=h(second["aad"]),
        )


@pytest.mark.parametrize(
    ("kdf", "aead"),
    [
        (hpke.KDF.HKDF_SHA512, hpke.AEAD.AES_256_GCM),
        (hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM),
        (hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305),
    ],
    ids=["hkdf-sha512", "aes-128-gcm", "chacha20-poly1305"],
)
def test_only_the_suite_v3_names_opens_the_vector(kdf: hpke.KDF, aead: hpke.AEAD) -> None:
    """The KDF and AEAD ids enter the key schedule, so opening the vector pins v3's suite."""
    for vec in VECTORS:
        node = NodeKemKey.from_seed(Kem.X25519, h(vec["skRm"]))
        first = vec["encryptions"][0]
        with pytest.raises(InvalidTag):
            _decrypt_with_aad(
                hpke.Suite(hpke.KEM.X25519, kdf, aead),
                h(vec["enc"]) + h(first["ct"]),
                node.private_key,
                info=h(vec["info"]),
                aad=h(first["aad"]),
            )


def test_the_public_single_shot_call_is_the_empty_aad_case() -> None:
    """What makes the private function's result speak for the public call v3 makes."""
    node = NodeKemKey.generate(Kem.X25519)
    public = X25519PrivateKey.from_private_bytes(node.seed).public_key()
    sealed = SUITE.encrypt(b"body", public, b"info")
    for aad in (None, b""):
        assert _decrypt_with_aad(SUITE, sealed, node.private_key, info=b"info", aad=aad) == b"body"
    with pytest.raises(InvalidTag):
        _decrypt_with_aad(SUITE, sealed, node.private_key, info=b"info", aad=b"x")
    assert SUITE.decrypt(sealed, node.private_key, b"info") == b"body"


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["info"][:16])
def test_chunk_nonce_is_compute_nonce_for_every_sequence_number(vec: dict[str, Any]) -> None:
    base_nonce = h(vec["base_nonce"])
    assert len(vec["encryptions"]) > 256  # so the count carries into a second byte
    for i, step in enumerate(vec["encryptions"]):
        assert chunk_nonce(base_nonce, i) == h(step["nonce"]), i


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["info"][:16])
def test_v3s_chunk_calls_reproduce_every_ciphertext(vec: dict[str, Any]) -> None:
    """AES-256-GCM under chunk_nonce(base_nonce, i), as v3 seals and opens chunk i."""
    aead = AESGCM(h(vec["key"]))
    assert len(h(vec["key"])) == 32
    for i, step in enumerate(vec["encryptions"]):
        nonce = chunk_nonce(h(vec["base_nonce"]), i)
        assert aead.encrypt(nonce, h(step["pt"]), h(step["aad"])) == h(step["ct"]), i
        assert aead.decrypt(nonce, h(step["ct"]), h(step["aad"])) == h(step["pt"]), i
