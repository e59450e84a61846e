"""verify_evidence: every step, on the real sample quotes and on "none" evidence."""

from __future__ import annotations

from typing import Any

from rich.console import Console

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
from veil.attestation.abi_tdx import parse_tdx_quote
from veil.attestation.evidence import Evidence, report_data
from veil.attestation.policy import Policy
from veil.attestation.providers import NoTeeProvider, build_evidence
from veil.attestation.report import NodeKey, verify_evidence, verify_quote
from veil.attestation.verify_tdx import NO_MATCHING_TCB_LEVEL

X = bytes(range(32))
ED = bytes(range(100, 132))
NONCE = bytes(range(200, 232))


def sample_evidence(**changes: Any) -> Evidence:
    """The real quote wrapped as if a node had sent it with our keys: its report_data is the
    quote's own, which commits to somebody else's keys."""
    raw = quote_bytes()
    fields: dict[str, Any] = {
        "format": "tdx",
        "report_data": parse_tdx_quote(raw).report_data,
        "nonce": NONCE,
        "x25519_public_key": X,
        "ed25519_public_key": ED,
        "quote": raw,
        "collateral": collateral(),
    }
    fields.update(changes)
    return Evidence.model_validate(fields)


def outcomes(report: Any) -> dict[str, str]:
    return {step.name: step.outcome for step in report.steps}


def test_sample_quote_passes_every_tdx_step_but_not_the_binding() -> None:
    report = verify_evidence(sample_evidence(), Policy(), at=GOOD_AT)
    assert outcomes(report) == {
        "format": "pass",
        "quote": "pass",
        "TD attributes": "pass",
        "TCB status": "pass",
        "measurements": "skipped",
        "binding": "FAIL",
        "expected keys": "skipped",
    }
    assert report.tcb_status == "UpToDate"
    assert "does not vouch for these keys" in report.step("binding").detail
    assert not report.ok


def test_at_todays_date_the_quote_step_fails_with_the_reason() -> None:
    report = verify_evidence(sample_evidence(), Policy(), at=TODAY)
    assert not report.ok
    assert report.failures[0].name == "quote"
    assert "collateral expired" in report.failures[0].detail
    assert "binding" not in outcomes(report)  # nothing is bound by a quote that did not verify


def test_a_flipped_signature_byte_fails_the_quote_step() -> None:
    raw = bytearray(quote_bytes())
    raw[636 + 10] ^= 0x80  # inside the ECDSA signature of a v4 quote
    report = verify_evidence(sample_evidence(quote=bytes(raw)), Policy(), at=GOOD_AT)
    assert report.step("quote").outcome == "FAIL"
    assert "quote signature check failed" in report.step("quote").detail


def test_evidence_without_collateral_says_it_is_required() -> None:
    report = verify_evidence(sample_evidence(collateral=None), Policy(), at=GOOD_AT)
    assert "collateral is required" in report.step("quote").detail
    assert not report.ok


def test_pinned_measurements() -> None:
    parsed = parse_tdx_quote(quote_bytes())
    wrong = Policy(mr_td=bytes(48))
    report = verify_quote(quote_bytes(), collateral(), wrong, at=GOOD_AT)
    assert report.step("measurements").outcome == "FAIL"
    assert SAMPLE_MR_TD in report.step("measurements").detail
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
    refused = verify_quote(raw, outdated_collateral(), Policy(), at=OUTDATED_AT)
    assert refused.tcb_status == NO_MATCHING_TCB_LEVEL
    assert refused.step("quote").outcome == "pass"
    assert refused.step("TCB status").outcome == "FAIL"
    assert "not allowed (policy: UpToDate)" in refused.step("TCB status").detail
    assert not refused.ok

    lenient = Policy(allowed_tcb_statuses=("UpToDate", NO_MATCHING_TCB_LEVEL))
    accepted = verify_quote(raw, outdated_collateral(), lenient, at=OUTDATED_AT)
    assert accepted.step("TCB status").outcome == "pass"
    assert accepted.ok


def test_bare_quote_binding_needs_keys_and_a_nonce() -> None:
    node = [NodeKey("current (k1)", X, ED)]
    no_nonce = verify_quote(quote_bytes(), collateral(), Policy(), at=GOOD_AT, node_keys=node)
    assert no_nonce.step("binding").outcome == "FAIL"
    assert "does not carry the nonce" in no_nonce.step("binding").detail

    with_nonce = verify_quote(
        quote_bytes(), collateral(), Policy(), at=GOOD_AT, node_keys=node, nonce=NONCE
    )
    assert with_nonce.step("binding").outcome == "FAIL"
    assert "does not commit to the node's keys" in with_nonce.step("binding").detail


def test_none_evidence_is_refused_by_default_and_accepted_with_allow_no_tee() -> None:
    evidence = build_evidence(NoTeeProvider(), X, ED, NONCE)
    refused = verify_evidence(evidence, Policy())
    assert refused.step("format").outcome == "FAIL"
    assert "no TEE: development only" in refused.step("format").detail
    assert not refused.ok

    accepted = verify_evidence(
        evidence, Policy(allow_no_tee=True), expect_x25519=X, expect_ed25519=ED, expect_nonce=NONCE
    )
    assert outcomes(accepted) == {
        "format": "pass",
        "binding": "pass",
        "expected keys": "pass",
        "nonce": "pass",
    }
    assert accepted.ok


def test_keys_and_nonce_other_than_expected_are_refused() -> None:
    evidence = build_evidence(NoTeeProvider(), X, ED, NONCE)
    policy = Policy(allow_no_tee=True)
    other = bytes(32)
    report = verify_evidence(evidence, policy, expect_x25519=other, expect_ed25519=ED)
    assert report.step("expected keys").outcome == "FAIL"
    assert "X25519 encryption key" in report.step("expected keys").detail
    report = verify_evidence(evidence, policy, expect_nonce=bytes(32))
    assert report.step("nonce").outcome == "FAIL"


def test_a_document_whose_keys_were_swapped_fails_the_binding() -> None:
    honest = build_evidence(NoTeeProvider(), X, ED, NONCE)
    swapped = honest.model_copy(update={"x25519_public_key": bytes(32)})
    report = verify_evidence(swapped, Policy(allow_no_tee=True))
    assert report.step("binding").outcome == "FAIL"


def test_formats_without_a_verifier_fail_plainly() -> None:
    evidence = Evidence(
        format="sev-snp",
        report_data=report_data(X, ED, NONCE),
        nonce=NONCE,
        x25519_public_key=X,
        ed25519_public_key=ED,
        quote=b"report",
    )
    report = verify_evidence(evidence, Policy())
    assert outcomes(report) == {"format": "FAIL"}
    assert "no verifier" in report.step("format").detail


def test_render_shows_each_step_and_the_tcb_status() -> None:
    report = verify_quote(quote_bytes(), collateral(), Policy(), at=GOOD_AT)
    console = Console(record=True, width=200)
    console.print(report.render())
    text = console.export_text()
    for expected in ("quote", "TD attributes", "TCB status", "UpToDate", "PASS", SAMPLE_MR_TD):
        assert expected in text
    as_dict = report.to_dict()
    assert as_dict["ok"] is True and as_dict["tcb_status"] == "UpToDate"
