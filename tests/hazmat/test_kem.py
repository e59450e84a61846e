"""Node KEM keys as cryptography's HPKE keys (``veil.hazmat.kem``): a published key is parsed
once and reused; a malformed one is a 400 every time, never a cached success."""

from __future__ import annotations

import pytest

from veil.hazmat.kem import Kem, NodeKemKey, hpke_public_key
from veil.wire.errors import InvalidBody


@pytest.mark.parametrize("kem", list(Kem))
def test_a_published_key_is_parsed_once(kem: Kem) -> None:
    key = NodeKemKey.generate(kem)
    first = hpke_public_key(kem, key.public_key)
    assert hpke_public_key(kem, bytearray(key.public_key)) is first  # same key, same object
    assert hpke_public_key(kem, NodeKemKey.generate(kem).public_key) is not first


@pytest.mark.parametrize("kem", list(Kem))
def test_a_wrong_size_is_refused_every_time(kem: Kem) -> None:
    raw = NodeKemKey.generate(kem).public_key
    for _ in range(2):
        with pytest.raises(InvalidBody, match="public key must be"):
            hpke_public_key(kem, raw[:-1])


def test_an_invalid_ml_kem_key_is_refused_every_time() -> None:
    raw = bytearray(NodeKemKey.generate(Kem.HYBRID).public_key)
    raw[0:2] = b"\xff\xff"  # a coefficient past q: not an ML-KEM-768 encapsulation key
    for _ in range(2):
        with pytest.raises(InvalidBody, match="not a valid"):
            hpke_public_key(Kem.HYBRID, bytes(raw))
