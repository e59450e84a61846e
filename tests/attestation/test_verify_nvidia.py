"""The GPU steps end to end (``verify_gpu_report``, ``check_gpu``) on NVIDIA's sample and the live
Tinfoil H100 (times: ``nvidia_samples.py``)."""

from __future__ import annotations

from tests.attestation.nvidia_samples import (
    AT,
    CHAIN,
    NONCE,
    REPORT,
    TINFOIL_AT,
    TINFOIL_CHAIN,
    TINFOIL_NONCE,
    TINFOIL_REPORT,
    replies,
    rims,
)
from veil.attestation.report_steps import VerificationReport
from veil.attestation.verify_nvidia import check_gpu, verify_gpu_report


def test_nvidia_sample_passes_at_its_time_with_rims_and_rim_ocsp() -> None:
    result = verify_gpu_report(
        REPORT, CHAIN, at=AT, expected_nonce=NONCE, rims=rims(), ocsp=replies("rim")
    )
    outcome = {c.name: c.ok for c in result.checks}
    assert outcome == {
        "GPU signature": True,
        "GPU certificate chain": True,
        "GPU FWID": True,
        "GPU nonce": True,
        "GPU RIM signatures": True,
        "GPU firmware versions": True,
        "GPU measurements": True,
        "GPU OCSP": None,  # no device-chain replies valid at AT were given: not checked
        "GPU RIM OCSP": True,
    }, result.failures
    assert result.ok
    assert result.measurements_matched == 33
    assert result.mismatched_indices == ()
    assert {r.kind: r.version for r in result.rims} == {
        "driver": "550.90.07",
        "vbios": "96.00.9F.00.01",
    }
    assert result.facts == {
        "gpu_driver": "550.90.07",
        "gpu_vbios": "96.00.9F.00.01",
        "gpu_nonce": NONCE.hex(),
        "gpu_measurements_matched": 33,
    }
    assert "HCC RIM L4 Signer" in result.check("GPU RIM OCSP").detail


def test_tinfoil_h100_signature_chain_fwid_and_nonce_pass() -> None:
    result = verify_gpu_report(
        TINFOIL_REPORT, TINFOIL_CHAIN, at=TINFOIL_AT, expected_nonce=TINFOIL_NONCE
    )
    for name in ("GPU signature", "GPU certificate chain", "GPU FWID", "GPU nonce"):
        assert result.check(name).ok is True, result.check(name)
    assert result.facts["gpu_driver"] == "595.71.05"
    assert result.facts["gpu_vbios"] == "96.00.D9.00.02"


def test_check_gpu_appends_named_steps_and_facts() -> None:
    report = VerificationReport(subject="gpu")
    verified = check_gpu(
        report, REPORT, CHAIN, at=AT, expected_nonce=NONCE, rims=rims(), ocsp=replies("rim")
    )
    assert verified is not None
    names = [s.name for s in report.steps]
    assert names == [
        "GPU signature",
        "GPU certificate chain",
        "GPU FWID",
        "GPU nonce",
        "GPU RIM signatures",
        "GPU firmware versions",
        "GPU measurements",
        "GPU OCSP",
        "GPU RIM OCSP",
    ]
    assert report.step("GPU OCSP").outcome == "not checked"
    assert report.step("GPU measurements").outcome == "pass"
    assert report.ok
    assert report.facts["gpu_driver"] == "550.90.07"
    assert report.facts["gpu_measurements_matched"] == 33


def test_check_gpu_records_a_failure_with_expected_and_actual() -> None:
    report = VerificationReport(subject="gpu")
    check_gpu(report, REPORT, CHAIN, at=AT, expected_nonce=bytes(32))
    step = report.step("GPU nonce")
    assert step.outcome == "FAIL" and step.actual == NONCE.hex()
    assert not report.ok


def test_check_gpu_with_a_malformed_report_fails_one_step() -> None:
    report = VerificationReport(subject="gpu")
    assert check_gpu(report, b"\x11\xe0junk", CHAIN, at=AT, expected_nonce=NONCE) is None
    assert [s.outcome for s in report.steps] == ["FAIL"]
    assert "at least" in report.steps[0].detail
    report = VerificationReport(subject="gpu")
    assert check_gpu(report, REPORT, b"no pem here", at=AT, expected_nonce=NONCE) is None
    assert "not PEM" in report.steps[0].detail
