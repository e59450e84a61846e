"""Signed RIMs (XML-DSig): a tampered signature, a RIM under another root."""

from __future__ import annotations

import pytest

from tests.attestation.nvidia_samples import (
    AT,
    DRIVER_RIM,
    NV,
    VBIOS_RIM,
    rim_with_flip,
)
from veil.attestation.rim import RimError, load_rim


def test_a_flipped_byte_in_a_rim_signature_fails() -> None:
    tampered = rim_with_flip(VBIOS_RIM, b"<ds:SignatureValue>", 30)
    with pytest.raises(RimError, match="does not verify"):
        load_rim(tampered, at=AT, name=VBIOS_RIM)


def test_a_rim_signed_under_another_root_fails() -> None:
    with pytest.raises(RimError, match="not the pinned NVIDIA root"):
        load_rim((NV / DRIVER_RIM).read_bytes(), at=AT, pinned_roots=(bytes(32),))
