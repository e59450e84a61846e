"""verify_evidence and verify_quote from end to end: the format step, the nonce, a release
that proves a running enclave."""

from __future__ import annotations

import json

from tests.attestation import GOOD_AT, SAMPLES
from tests.attestation.bundles import (
    ED,
    NONCE,
    SNP_AT,
    X,
    genoa_evidence,
    outcomes,
    sample_evidence,
)
from veil.attestation.evidence import Evidence, report_data
from veil.attestation.policy import Policy
from veil.attestation.providers import NoTeeProvider, build_evidence
from veil.attestation.release import ReleaseSigner
from veil.attestation.report import verify_evidence

TINFOIL_BUNDLE = SAMPLES / "sigstore" / "tinfoil_confidential-model-router_v0.0.110.sigstore.json"
TINFOIL_SIGNER = {
    "sigstore_identity": "https://github.com/tinfoilsh/confidential-model-router/.github/"
    "workflows/tinfoil-release-publish.yml@refs/tags/v0.0.110",
    "sigstore_issuer": "https://token.actions.githubusercontent.com",
}


def test_sample_quote_passes_every_tdx_step_but_the_pins_and_the_binding() -> None:
    report = verify_evidence(sample_evidence(), Policy(), at=GOOD_AT)
    assert outcomes(report) == {
        "format": "pass",
        "collateral": "pass",
        "quote": "pass",
        "TD attributes": "pass",
        "TCB status": "pass",
        "measurements": "FAIL",
        "binding": "FAIL",
        "expected keys": "not checked",
    }
    assert report.tcb_status == "UpToDate"
    assert "does not vouch for these keys" in report.step("binding").detail
    assert not report.ok


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


def test_gpu_evidence_alone_is_refused_plainly() -> None:
    evidence = Evidence(
        format="nvidia",
        report_data=report_data(X, ED, NONCE),
        nonce=NONCE,
        x25519_public_key=X,
        ed25519_public_key=ED,
        quote=b"gpu report",
    )
    report = verify_evidence(evidence, Policy())
    assert outcomes(report) == {"format": "FAIL"}
    assert "no CPU TEE to bind" in report.step("format").detail


def test_the_tinfoil_release_proves_the_genoa_enclave_end_to_end() -> None:
    """Release -> running enclave: the Sigstore bundle verifies offline under the workflow
    identity the policy names, and its SNP measurement is the genuine report's."""
    bundle = json.loads(TINFOIL_BUNDLE.read_text())
    policy = Policy(
        release_signers=[TINFOIL_SIGNER],
        sigstore_trusted_root=str(SAMPLES / "sigstore" / "trusted_root.json"),
    )
    report = verify_evidence(genoa_evidence(release={"sigstore_bundle": bundle}), policy, at=SNP_AT)
    assert report.step("release").outcome == "pass"
    assert "tinfoilsh/confidential-model-router" in report.facts["release"]
    assert report.step("measurements").outcome == "pass"

    impostor = policy.model_copy(
        update={
            "release_signers": (
                ReleaseSigner(
                    sigstore_identity=TINFOIL_SIGNER["sigstore_identity"].replace(
                        "v0.0.110", "v0.0.111"
                    ),
                    sigstore_issuer=TINFOIL_SIGNER["sigstore_issuer"],
                ),
            )
        }
    )
    refused = verify_evidence(
        genoa_evidence(release={"sigstore_bundle": bundle}), impostor, at=SNP_AT
    )
    assert refused.step("release").outcome == "FAIL"
    assert refused.step("measurements").outcome == "FAIL"  # no verified release: nothing pinned
