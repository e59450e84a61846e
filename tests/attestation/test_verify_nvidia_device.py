"""The GPU device steps: SPDM signature, certificate chain to NVIDIA's pinned root, FWID, nonce."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from tests.attestation.nvidia_samples import (
    AT,
    CHAIN,
    NONCE,
    REPORT,
    flip,
    raw_report,
    rims,
)
from veil.attestation.abi_nvidia import parse_gpu_report
from veil.attestation.pki_nvidia import RIM_ROOT_SHA256, fingerprint
from veil.attestation.verify_nvidia import leaf_fwid, verify_gpu_report


@pytest.mark.parametrize(
    "offset",
    [
        10,  # inside the request's nonce
        37 + 8 + 4 + 3 + 5,  # inside the first measurement value
        4117 - 96 - 50,  # inside the opaque data (FWID)
        4117 - 96 - 1,  # the last signed byte
    ],
)
def test_a_flipped_byte_in_the_signed_part_fails_the_signature(offset: int) -> None:
    result = verify_gpu_report(
        flip(raw_report(), offset), CHAIN, at=AT, expected_nonce=NONCE, rims=rims()
    )
    assert result.check("GPU signature").ok is False
    assert "does not verify" in result.check("GPU signature").detail
    assert not result.ok


def test_a_flipped_signature_byte_fails() -> None:
    result = verify_gpu_report(
        flip(raw_report(), 4117 - 20), CHAIN, at=AT, expected_nonce=NONCE, rims=rims()
    )
    assert result.check("GPU signature").ok is False


def test_a_flipped_fwid_byte_also_fails_the_fwid_binding() -> None:
    data = raw_report()
    fwid = parse_gpu_report(data).fwid
    assert fwid is not None
    offset = data.index(fwid) + 3
    result = verify_gpu_report(flip(data, offset), CHAIN, at=AT, expected_nonce=NONCE)
    step = result.check("GPU FWID")
    assert step.ok is False and step.expected == fwid.hex()
    assert leaf_fwid(x509.load_pem_x509_certificates(CHAIN)[0]) == fwid


def test_wrong_nonce_fails() -> None:
    result = verify_gpu_report(REPORT, CHAIN, at=AT, expected_nonce=bytes(32), rims=rims())
    step = result.check("GPU nonce")
    assert step.ok is False
    assert "another nonce" in step.detail
    assert step.expected == "00" * 32 and step.actual == NONCE.hex()
    assert not result.ok


def test_no_nonce_is_not_checked_never_a_pass() -> None:
    result = verify_gpu_report(REPORT, CHAIN, at=AT, expected_nonce=None, rims=rims())
    assert result.check("GPU nonce").ok is None


def test_a_chain_to_another_pinned_root_fails() -> None:
    result = verify_gpu_report(
        REPORT, CHAIN, at=AT, expected_nonce=NONCE, rims=rims(), device_roots=(RIM_ROOT_SHA256,)
    )
    step = result.check("GPU certificate chain")
    assert step.ok is False and "not the pinned NVIDIA root" in step.detail


def _impostor_root(genuine: x509.Certificate) -> x509.Certificate:
    """A self-signed certificate with the genuine root's name and validity but our own key."""
    key = ec.generate_private_key(ec.SECP384R1())
    return (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.subject)
        .public_key(key.public_key())
        .serial_number(genuine.serial_number)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )


def test_a_chain_ending_at_an_impostor_root_fails() -> None:
    certs = x509.load_pem_x509_certificates(CHAIN)
    forged = [*certs[:-1], _impostor_root(certs[-1])]
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in forged)
    result = verify_gpu_report(REPORT, pem, at=AT, expected_nonce=NONCE)
    step = result.check("GPU certificate chain")
    assert step.ok is False and "is not signed by the next certificate" in step.detail
    # and pinning the impostor still fails on the genuine intermediate's signature
    result = verify_gpu_report(
        REPORT, pem, at=AT, expected_nonce=NONCE, device_roots=(fingerprint(forged[-1]),)
    )
    assert result.check("GPU certificate chain").ok is False
