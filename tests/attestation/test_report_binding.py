"""Steps 8 and 9: the report_data binding of keys, GPU evidence and nonce (classical and
veil-v3), the expected keys, and a bare quote's binding."""

from __future__ import annotations

from tests.attestation import GOOD_AT, collateral, quote_bytes
from tests.attestation.bundles import (
    ED,
    KEM,
    NONCE,
    OTHER_KEM,
    SampleGpu,
    X,
)
from veil.attestation.abi_tdx import parse_tdx_quote
from veil.attestation.evidence import report_data
from veil.attestation.policy import Policy
from veil.attestation.providers import NoTeeProvider, build_evidence
from veil.attestation.report import verify_evidence, verify_quote
from veil.attestation.report_binding import NodeKey, check_quote_binding
from veil.attestation.report_steps import VerificationReport


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


def test_a_document_whose_keys_were_swapped_fails_the_binding() -> None:
    honest = build_evidence(NoTeeProvider(), X, ED, NONCE)
    swapped = honest.model_copy(update={"x25519_public_key": bytes(32)})
    report = verify_evidence(swapped, Policy(allow_no_tee=True))
    assert report.step("binding").outcome == "FAIL"


def test_gpu_evidence_moved_into_another_bundle_breaks_the_cpu_binding() -> None:
    honest = build_evidence(NoTeeProvider(), X, ED, NONCE, gpu_provider=SampleGpu())  # type: ignore[arg-type]
    assert len(honest.gpus) == 1
    policy = Policy(allow_no_tee=True)
    assert verify_evidence(honest, policy).step("binding").outcome == "pass"
    other = build_evidence(NoTeeProvider(), X, ED, NONCE)  # a VM with no GPU of its own
    paired = other.model_copy(update={"gpus": honest.gpus})
    assert verify_evidence(paired, policy).step("binding").outcome == "FAIL"
    dropped = honest.model_copy(update={"gpus": ()})
    assert verify_evidence(dropped, policy).step("binding").outcome == "FAIL"


def test_a_v3_bundle_binds_its_kem_key_and_one_naming_another_fails_the_binding() -> None:
    honest = build_evidence(NoTeeProvider(), X, ED, NONCE, kem_public_key=KEM)
    assert honest.report_data == report_data(X, ED, NONCE, kem_public_key=KEM)
    policy = Policy(allow_no_tee=True)
    report = verify_evidence(
        honest, policy, expect_x25519=X, expect_ed25519=ED, expect_nonce=NONCE,
        expect_kem_public_key=KEM,
    )  # fmt: skip
    assert report.ok, report.to_text()
    assert "veil-v3 report" in report.step("binding").detail
    assert "ML-KEM-768 + X25519" in report.step("expected keys").detail

    swapped = honest.model_copy(update={"kem_public_key": OTHER_KEM})
    assert verify_evidence(swapped, policy).step("binding").outcome == "FAIL"
    # Dropping the key from the bundle leaves report_data bound to it: the classical formula
    # (no post-quantum key) fails too.
    stripped = honest.model_copy(update={"kem_public_key": None})
    assert verify_evidence(stripped, policy).step("binding").outcome == "FAIL"


def test_a_caller_naming_a_kem_key_refuses_a_bundle_with_none_or_another() -> None:
    policy = Policy(allow_no_tee=True)
    v3 = build_evidence(NoTeeProvider(), X, ED, NONCE, kem_public_key=KEM)
    other = verify_evidence(v3, policy, expect_kem_public_key=OTHER_KEM)
    assert other.step("expected keys").outcome == "FAIL"
    assert "post-quantum key differ" in other.step("expected keys").detail
    assert not other.ok

    classical = build_evidence(NoTeeProvider(), X, ED, NONCE)  # no post-quantum key
    missing = verify_evidence(classical, policy, expect_x25519=X, expect_kem_public_key=KEM)
    assert missing.step("binding").outcome == "pass"
    assert missing.step("expected keys").outcome == "FAIL"
    assert "binds no post-quantum" in missing.step("expected keys").detail


def test_a_classical_bundle_without_a_post_quantum_key_verifies_under_its_formula() -> None:
    classical = build_evidence(NoTeeProvider(), X, ED, NONCE)
    assert classical.kem_public_key is None
    assert classical.report_data == report_data(X, ED, NONCE)
    report = verify_evidence(
        classical, Policy(allow_no_tee=True), expect_x25519=X, expect_ed25519=ED, expect_nonce=NONCE
    )
    assert report.ok
    assert "veil-v2 report" in report.step("binding").detail


def test_a_bare_quote_is_checked_against_the_v3_formula_of_a_key_with_a_kem_key() -> None:
    parsed = parse_tdx_quote(quote_bytes())
    assert parsed.report_data != report_data(X, ED, NONCE, kem_public_key=KEM)
    node = [NodeKey("current (k1)", X, ED, kem_public_key=KEM)]
    report = verify_quote(
        quote_bytes(), collateral(), Policy(), at=GOOD_AT, node_keys=node, nonce=NONCE
    )
    assert report.step("binding").outcome == "FAIL"
    with_bad_kem = [NodeKey("current (k1)", X, ED, kem_public_key=KEM[:10])]
    report = verify_quote(
        quote_bytes(), collateral(), Policy(), at=GOOD_AT, node_keys=with_bad_kem, nonce=NONCE
    )
    assert "kem_public_key must be 1216 bytes" in report.step("binding").detail


# -- a key listed with a post-quantum key binds by the veil-v3 formula only ----------------------


def quote_binding(signed: bytes, node: list[NodeKey]) -> VerificationReport:
    """The binding step of a bare quote whose report_data is ``signed``, for the keys a node
    lists (the quote's own steps are the TDX tests'; here only what it binds matters)."""
    report = VerificationReport(subject="TDX quote")
    check_quote_binding(report, signed, node, NONCE)
    return report


def test_a_quote_binding_only_the_classical_keys_of_a_node_listing_a_kem_key_fails() -> None:
    """The node lists a post-quantum key beside its X25519 and Ed25519 keys: a quote whose
    report_data binds only those two (the classical formula) does not vouch for the KEM key."""
    classical = report_data(X, ED, NONCE)
    report = quote_binding(classical, [NodeKey("current (k1)", X, ED, kem_public_key=KEM)])
    assert report.step("binding").outcome == "FAIL"
    assert "does not commit to the node's keys" in report.step("binding").detail
    assert not report.ok


def test_a_quote_binds_a_kem_key_by_v3_and_a_key_without_one_by_the_classical_formula() -> None:
    v3 = report_data(X, ED, NONCE, kem_public_key=KEM)
    assert quote_binding(v3, [NodeKey("current (k1)", X, ED, kem_public_key=KEM)]).ok
    assert quote_binding(report_data(X, ED, NONCE), [NodeKey("current (k1)", X, ED)]).ok
    # The v3 formula of another KEM key, or for a key the node lists without one: refused.
    assert not quote_binding(v3, [NodeKey("current (k1)", X, ED, kem_public_key=OTHER_KEM)]).ok
    assert not quote_binding(v3, [NodeKey("current (k1)", X, ED)]).ok
    # Of several listed keys, the one the quote binds is named.
    listed = [
        NodeKey("current (k2)", ED, X, kem_public_key=KEM),
        NodeKey("previous (k1)", X, ED, kem_public_key=KEM),
    ]
    report = quote_binding(v3, listed)
    assert report.ok and "previous (k1)" in report.step("binding").detail


def test_a_bundle_binding_only_the_classical_keys_while_naming_a_kem_key_fails() -> None:
    classical = build_evidence(NoTeeProvider(), X, ED, NONCE)
    named = classical.model_copy(update={"kem_public_key": KEM})
    report = verify_evidence(named, Policy(allow_no_tee=True))
    assert report.step("binding").outcome == "FAIL"
    assert "veil-v3 report" in report.step("binding").detail
