"""The GPU OCSP steps: the device chain's and the RIM chains' replies, each at its own time."""

from __future__ import annotations

import pytest

from tests.attestation.nvidia_samples import (
    AT,
    CHAIN,
    DEVICE_OCSP_AT,
    NONCE,
    REPORT,
    replies,
    rims,
)
from veil.attestation.pki_nvidia import OcspError, load_ocsp_reply
from veil.attestation.verify_nvidia import verify_gpu_report


def test_device_chain_ocsp_passes_at_its_own_time() -> None:
    result = verify_gpu_report(
        REPORT, CHAIN, at=DEVICE_OCSP_AT, expected_nonce=NONCE, rims=rims(), ocsp=replies("device")
    )
    assert result.ok, result.failures
    step = result.check("GPU OCSP")
    assert step.ok is True
    for name in ("GH100 A01 GSP BROM", "NVIDIA GH100 Provisioner ICA 1", "NVIDIA GH100 Identity"):
        assert name in step.detail
    assert result.check("GPU RIM OCSP").ok is None


def test_device_ocsp_replies_are_stale_two_months_later() -> None:
    result = verify_gpu_report(
        REPORT,
        CHAIN,
        at=AT,
        expected_nonce=NONCE,
        rims=rims(),
        ocsp={**replies("device"), **replies("rim")},
    )
    step = result.check("GPU OCSP")
    assert step.ok is False
    assert "stale" in step.detail and "2025-08-22T06:47:07Z" in step.detail
    assert result.check("GPU RIM OCSP").ok is True
    assert not result.ok


def test_rim_ocsp_replies_are_not_yet_valid_before_they_were_issued() -> None:
    result = verify_gpu_report(
        REPORT, CHAIN, at=DEVICE_OCSP_AT, expected_nonce=NONCE, rims=rims(), ocsp=replies("rim")
    )
    step = result.check("GPU RIM OCSP")
    assert step.ok is False
    assert "issued 2025-10-24T11:32:21Z, after the verification time" in step.detail


def test_an_ocsp_reply_for_no_given_certificate_fails() -> None:
    # RIM-chain replies, but no RIMs: they can be matched to nothing
    result = verify_gpu_report(REPORT, CHAIN, at=AT, expected_nonce=NONCE, ocsp=replies("rim"))
    step = result.check("GPU OCSP")
    assert step.ok is False
    assert "match no certificate given" in step.detail


def test_partial_device_ocsp_coverage_fails() -> None:
    some = dict(list(replies("device").items())[:2])
    result = verify_gpu_report(
        REPORT, CHAIN, at=DEVICE_OCSP_AT, expected_nonce=NONCE, rims=rims(), ocsp=some
    )
    step = result.check("GPU OCSP")
    assert step.ok is False and "no OCSP reply for" in step.detail


def test_unreadable_ocsp_reply_is_refused() -> None:
    with pytest.raises(OcspError, match="neither DER nor base64"):
        load_ocsp_reply("junk", b"not an ocsp reply!")
    result = verify_gpu_report(REPORT, CHAIN, at=AT, expected_nonce=NONCE, ocsp=[b"\x30\x03junk"])
    assert result.check("GPU OCSP").ok is False
