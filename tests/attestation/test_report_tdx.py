"""The TDX steps on the real sample quotes: collateral, quote, TCB status, measurements."""

from __future__ import annotations

from tests.attestation import (
    GOOD_AT,
    OUTDATED_AT,
    OUTDATED_QUOTE,
    SAMPLE_MR_TD,
    TODAY,
    collateral,
    outdated_collateral,
    quote_bytes,
)
from tests.attestation.bundles import outcomes, sample_evidence
from veil.attestation.abi_tdx import parse_tdx_quote
from veil.attestation.policy import Policy
from veil.attestation.report import verify_evidence, verify_quote
from veil.attestation.verify_tdx import NO_MATCHING_TCB_LEVEL


def test_strict_means_pinned_nothing_pinned_fails_naming_mr_td() -> None:
    """Policy() pins nothing: the genuine, UpToDate sample quote is refused, and the step says
    what to pin; pinning its MRTD passes; a wrong pin shows both values."""
    report = verify_quote(quote_bytes(), collateral(), Policy(), at=GOOD_AT)
    step = report.step("measurements")
    assert step.outcome == "FAIL"
    assert "nothing pinned" in step.detail and f'mr_td = "{SAMPLE_MR_TD}"' in step.detail
    assert not report.ok

    pinned = verify_quote(
        quote_bytes(), collateral(), Policy(mr_td=bytes.fromhex(SAMPLE_MR_TD)), at=GOOD_AT
    )
    assert pinned.step("measurements").outcome == "pass"
    assert pinned.step("binding").outcome == "not checked"  # a bare quote, no keys given
    assert pinned.ok

    wrong = verify_quote(quote_bytes(), collateral(), Policy(mr_td=bytes(48)), at=GOOD_AT)
    step = wrong.step("measurements")
    assert step.outcome == "FAIL"
    assert step.expected == f"mr_td {'00' * 48}" and step.actual == f"mr_td {SAMPLE_MR_TD}"


def test_at_todays_date_the_collateral_is_refused_with_its_dates() -> None:
    report = verify_evidence(sample_evidence(), Policy(), at=TODAY)
    assert not report.ok
    assert report.failures[0].name == "collateral"
    assert "expired" in report.failures[0].detail
    assert "2025-07-19" in report.failures[0].detail  # the TCB info's nextUpdate
    assert "binding" not in outcomes(report)  # nothing is bound by a quote that did not verify


def test_collateral_older_than_the_age_bound_is_refused_even_before_it_expires() -> None:
    policy = Policy(mr_td=bytes.fromhex(SAMPLE_MR_TD), max_collateral_age_days=5)
    report = verify_quote(quote_bytes(), collateral(), policy, at=GOOD_AT)  # issued 2025-06-19
    assert report.step("collateral").outcome == "FAIL"
    assert "more than 5 days before the verification time" in report.step("collateral").detail
    assert "quote" not in outcomes(report)


def test_a_flipped_signature_byte_fails_the_quote_step() -> None:
    raw = bytearray(quote_bytes())
    raw[636 + 10] ^= 0x80  # inside the ECDSA signature of a v4 quote
    report = verify_evidence(sample_evidence(quote=bytes(raw)), Policy(), at=GOOD_AT)
    assert report.step("quote").outcome == "FAIL"
    assert "quote signature check failed" in report.step("quote").detail


def test_evidence_without_collateral_or_a_source_fails_closed() -> None:
    report = verify_evidence(sample_evidence(collateral=None), Policy(), at=GOOD_AT)
    assert report.step("collateral").outcome == "FAIL"
    assert "no collateral source is configured" in report.step("collateral").detail
    assert not report.ok


def test_pinned_measurements() -> None:
    parsed = parse_tdx_quote(quote_bytes())
    wrong = Policy(mr_td=bytes(48))
    report = verify_quote(quote_bytes(), collateral(), wrong, at=GOOD_AT)
    assert report.step("measurements").outcome == "FAIL"
    assert SAMPLE_MR_TD in (report.step("measurements").actual or "")
    assert not report.ok

    right = Policy(
        mr_td=parsed.mr_td,
        rtmr0=parsed.rtmrs[0],
        rtmr1=parsed.rtmrs[1],
        rtmr2=parsed.rtmrs[2],
        rtmr3=parsed.rtmrs[3],
    )
    report = verify_quote(quote_bytes(), collateral(), right, at=GOOD_AT)
    assert report.step("measurements").outcome == "pass"
    assert report.ok


def test_outdated_platform_is_refused_by_default_and_accepted_when_allowed() -> None:
    raw = OUTDATED_QUOTE.read_bytes()
    pins = Policy(mr_td=parse_tdx_quote(raw).mr_td)
    refused = verify_quote(raw, outdated_collateral(), pins, at=OUTDATED_AT)
    assert refused.tcb_status == NO_MATCHING_TCB_LEVEL
    assert refused.step("quote").outcome == "pass"
    assert refused.step("TCB status").outcome == "FAIL"
    assert "not allowed (policy: UpToDate)" in refused.step("TCB status").detail
    assert not refused.ok

    lenient = pins.model_copy(update={"allowed_tcb_statuses": ("UpToDate", NO_MATCHING_TCB_LEVEL)})
    accepted = verify_quote(raw, outdated_collateral(), lenient, at=OUTDATED_AT)
    assert accepted.step("TCB status").outcome == "pass"
    assert accepted.ok
