"""SEV-SNP verification on AMD's real reports (``snp_samples.py``): steps 1-3 together
(``verify_snp_report``) and every step as a report step (``check_snp``)."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

import pytest

from tests.attestation.snp_samples import (
    AT,
    GENOA_MEASUREMENT,
    MILAN_MEASUREMENT,
    SNP_STEPS,
    flip,
    genoa,
    milan,
    read,
)
from veil.attestation.abi_snp import SnpReportFormatError
from veil.attestation.report_steps import VerificationReport
from veil.attestation.verify_snp import check_snp, verify_snp_report


# -- genuine samples pass ----------------------------------------------------------------------
def test_milan_sample_verifies() -> None:
    report, vcek, chain = milan()
    verified = verify_snp_report(report, vcek, chain, at=AT)
    assert verified.product == "Milan"
    assert verified.measurement == MILAN_MEASUREMENT
    assert verified.report_data == bytes.fromhex("0102030405") + bytes(59)
    assert verified.report.policy.raw == 0xB0000
    assert verified.report.reported_tcb.components() == {
        "bootloader": 2,
        "tee": 0,
        "snp": 5,
        "microcode": 68,
    }
    assert verified.verified_at == AT


def test_genoa_sample_verifies_with_product_inferred_or_given() -> None:
    report, vcek, chain = genoa()
    inferred = verify_snp_report(report, vcek, chain, at=AT)
    assert inferred.product == "Genoa"
    assert inferred.measurement == GENOA_MEASUREMENT
    assert verify_snp_report(report, vcek, chain, at=AT, product="genoa").product == "Genoa"


def test_verification_emits_no_warning_for_amds_serial_number_zero() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verify_snp_report(*genoa(), at=AT)
        verify_snp_report(*milan(), at=AT)


def test_today_is_a_parameter_not_a_default() -> None:
    with pytest.raises(TypeError):
        verify_snp_report(*milan())  # type: ignore[call-arg]


# -- check_snp: the report steps -----------------------------------------------------------------
def run(sample: tuple[bytes, bytes, bytes], **kwargs: object) -> VerificationReport:
    report = VerificationReport(subject="SEV-SNP report")
    options: dict[str, object] = {"at": AT, "accepted_measurements": [], **kwargs}
    check_snp(report, *sample, **options)  # type: ignore[arg-type]
    return report


def test_genoa_passes_every_step_with_its_measurement_pinned() -> None:
    report = VerificationReport(subject="SEV-SNP report")
    parsed = check_snp(
        report,
        *genoa(),
        at=AT,
        accepted_measurements=[MILAN_MEASUREMENT, GENOA_MEASUREMENT],
        min_tcb={"bootloader": 10, "snp": 23, "microcode": 80},
    )
    assert report.ok, report.to_text()
    assert [step.name for step in report.steps] == SNP_STEPS
    assert parsed is not None and parsed.measurement == GENOA_MEASUREMENT
    assert report.facts["snp_measurement"] == GENOA_MEASUREMENT.hex()
    assert report.facts["snp_product"] == "Genoa"
    assert report.facts["snp_reported_tcb"] == "bootloader 10 / tee 0 / snp 23 / microcode 84"
    assert report.facts["snp_policy"].startswith("0x30000")
    assert report.facts["snp_chip_id"].startswith("1af1aa6c1f56037a")
    assert len(report.facts["snp_chip_id"]) < 32  # a prefix, not the whole chip id


def test_milan_fails_on_its_debug_policy_unless_debug_is_allowed() -> None:
    pinned = {"accepted_measurements": [MILAN_MEASUREMENT]}
    strict = run(milan(), **pinned)
    assert [s.name for s in strict.failures] == ["SNP policy"]
    assert "allows debugging" in strict.step("SNP policy").detail
    relaxed = run(milan(), allow_debug=True, **pinned)
    assert relaxed.ok, relaxed.to_text()


def test_tcb_below_the_minimum_fails_naming_both_values() -> None:
    report = run(genoa(), accepted_measurements=[GENOA_MEASUREMENT], min_tcb={"snp": 24})
    step = report.step("SNP TCB")
    assert not step.ok
    assert "snp is 23, the minimum is 24" in step.detail
    assert step.expected == "snp 24" and step.actual is not None and "snp 23" in step.actual


def test_unknown_tcb_component_and_fmc_on_genoa_fail() -> None:
    unknown = run(genoa(), accepted_measurements=[GENOA_MEASUREMENT], min_tcb={"psp": 1})
    assert "unknown TCB component 'psp'" in unknown.step("SNP TCB").detail
    fmc = run(genoa(), accepted_measurements=[GENOA_MEASUREMENT], min_tcb={"fmc": 0})
    assert not fmc.step("SNP TCB").ok
    assert "fmc, which a Genoa TCB lacks" in fmc.step("SNP TCB").detail


def test_no_pinned_measurement_fails_saying_what_to_pin() -> None:
    report = run(genoa())
    step = report.step("measurements")
    assert not step.ok and not report.ok
    assert step.detail == (
        f"no SNP measurement pinned: pin snp_measurement = {GENOA_MEASUREMENT.hex()} in a "
        "policy or release manifest"
    )


def test_wrong_pinned_measurement_fails_showing_both_values() -> None:
    report = run(genoa(), accepted_measurements=[MILAN_MEASUREMENT])
    step = report.step("measurements")
    assert not step.ok
    assert GENOA_MEASUREMENT.hex() in step.detail and MILAN_MEASUREMENT.hex() in step.detail
    assert step.expected == MILAN_MEASUREMENT.hex() and step.actual == GENOA_MEASUREMENT.hex()


def test_a_pin_of_the_wrong_size_fails() -> None:
    report = run(genoa(), accepted_measurements=[GENOA_MEASUREMENT[:32]])
    assert "must be 48 bytes, got 32" in report.step("measurements").detail


def test_chain_failure_stops_before_the_policy_steps() -> None:
    report_bytes, vcek, _ = genoa()
    report = VerificationReport(subject="SEV-SNP report")
    parsed = check_snp(
        report,
        report_bytes,
        vcek,
        read("ask_ark_milan.pem"),
        at=AT,
        accepted_measurements=[GENOA_MEASUREMENT],
    )
    assert parsed is None and not report.ok
    assert [(s.name, s.ok) for s in report.steps] == [
        ("SNP signature", True),
        ("SNP certificate chain", False),
    ]
    assert "snp_measurement" not in report.facts


def test_a_flipped_byte_fails_the_signature_step_of_the_report() -> None:
    report_bytes, vcek, chain = genoa()
    report = VerificationReport(subject="SEV-SNP report")
    parsed = check_snp(
        report,
        flip(report_bytes, 0x090),
        vcek,
        chain,
        at=AT,
        accepted_measurements=[GENOA_MEASUREMENT],
    )
    assert parsed is None
    assert [(s.name, s.ok) for s in report.steps] == [("SNP signature", False)]


def test_expired_chain_fails_in_the_report() -> None:
    report = run(milan(), at=datetime(2035, 1, 1, tzinfo=UTC))
    assert not report.step("SNP certificate chain").ok
    assert report.facts["verified_at"] == "2035-01-01T00:00:00Z"


def test_truncated_report_fails_in_the_report_and_raises_format_error() -> None:
    report_bytes, vcek, chain = milan()
    report = run((report_bytes[:-1], vcek, chain))
    assert not report.ok
    assert "not a readable SEV-SNP report" in report.step("SNP signature").detail
    with pytest.raises(SnpReportFormatError, match="got 1183"):
        verify_snp_report(report_bytes[:-1], vcek, chain, at=AT)
    with pytest.raises(SnpReportFormatError, match="got 1185"):
        verify_snp_report(report_bytes + b"\0", vcek, chain, at=AT)
