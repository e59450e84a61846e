"""NVIDIA's remote verdict (NRAS) on the Tinfoil H100 evidence: an EAT verified offline."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.attestation.nvidia_samples import (
    NONCE,
    NV,
    TINFOIL_NONCE,
    TODAY,
)
from veil.attestation.nras import NrasError, check_nras, verify_nras_eat
from veil.attestation.report_steps import VerificationReport

EAT = (NV / "teep_nras_eat_20260629.json").read_bytes()


JWKS = (NV / "teep_nras_jwks_subset_20260629.json").read_bytes()


NRAS_AT = datetime(2026, 6, 29, 2, 30, tzinfo=UTC)  # issued 02:08:03Z, valid one hour


def test_nras_verdict_verifies_at_its_time() -> None:
    verdict = verify_nras_eat(EAT, JWKS, at=NRAS_AT, expected_nonce=TINFOIL_NONCE)
    assert verdict.issued_at == datetime(2026, 6, 29, 2, 8, 3, tzinfo=UTC)
    gpu = verdict.gpus["GPU-0"]
    assert gpu["measres"] == "success" and gpu["secboot"] is True
    assert gpu["x-nvidia-gpu-driver-version"] == "595.71.05"  # the same GPU as the report
    report = VerificationReport(subject="gpu")
    assert check_nras(report, EAT, JWKS, at=NRAS_AT, expected_nonce=TINFOIL_NONCE) is not None
    assert report.step("NVIDIA remote verdict").ok


def test_nras_verdict_expires_after_an_hour() -> None:
    with pytest.raises(NrasError, match=r"valid 2026-06-29T02:08:03Z \.\. 2026-06-29T03:08:03Z"):
        verify_nras_eat(
            EAT, JWKS, at=datetime(2026, 6, 29, 4, tzinfo=UTC), expected_nonce=TINFOIL_NONCE
        )
    report = VerificationReport(subject="gpu")
    check_nras(report, EAT, JWKS, at=TODAY, expected_nonce=TINFOIL_NONCE)
    assert report.step("NVIDIA remote verdict").outcome == "FAIL"


def test_nras_verdict_for_another_nonce_fails() -> None:
    with pytest.raises(NrasError, match="eat_nonce"):
        verify_nras_eat(EAT, JWKS, at=NRAS_AT, expected_nonce=NONCE)


def _tampered_eat(part: int, position: int) -> bytes:
    document = json.loads(EAT)
    token = document[1]["GPU-0"]
    pieces = token.split(".")
    text = pieces[part]
    changed = "A" if text[position] != "A" else "B"
    pieces[part] = text[:position] + changed + text[position + 1 :]
    document[1]["GPU-0"] = ".".join(pieces)
    return json.dumps(document).encode()


def test_a_changed_nras_gpu_token_fails() -> None:
    with pytest.raises(NrasError, match="not the one the platform token names"):
        verify_nras_eat(_tampered_eat(1, 40), JWKS, at=NRAS_AT, expected_nonce=TINFOIL_NONCE)


def test_an_nras_token_signed_by_another_key_fails() -> None:
    keys = json.loads(JWKS)
    other = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    keys["keys"][0]["x"] = base64.urlsafe_b64encode(other.x.to_bytes(48, "big")).decode()
    keys["keys"][0]["y"] = base64.urlsafe_b64encode(other.y.to_bytes(48, "big")).decode()
    with pytest.raises(NrasError, match="differs from its x5c leaf"):
        verify_nras_eat(EAT, keys, at=NRAS_AT, expected_nonce=TINFOIL_NONCE)
    keys = json.loads(JWKS)
    keys["keys"][0]["kid"] = "someone-else"
    with pytest.raises(NrasError, match="not in the JWKS"):
        verify_nras_eat(EAT, keys, at=NRAS_AT, expected_nonce=TINFOIL_NONCE)
