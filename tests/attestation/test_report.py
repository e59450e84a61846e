"""verify_evidence: every step, on the real sample quotes and on "none" evidence."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console

from tests.attestation import (
    GOOD_AT,
    OUTDATED_AT,
    OUTDATED_QUOTE,
    SAMPLE_MR_TD,
    SAMPLES,
    TODAY,
    collateral,
    outdated_collateral,
    quote_bytes,
)
from veil.attestation.abi_tdx import parse_tdx_quote
from veil.attestation.evidence import Evidence, GpuEvidence, report_data
from veil.attestation.policy import Policy
from veil.attestation.providers import NoTeeProvider, build_evidence
from veil.attestation.release import ReleaseSigner, sign_manifest
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


def test_render_shows_each_step_and_the_tcb_status() -> None:
    policy = Policy(mr_td=bytes.fromhex(SAMPLE_MR_TD))
    report = verify_quote(quote_bytes(), collateral(), policy, at=GOOD_AT)
    console = Console(record=True, width=200)
    console.print(report.render())
    text = console.export_text()
    for expected in ("quote", "TD attributes", "TCB status", "UpToDate", "PASS", SAMPLE_MR_TD):
        assert expected in text
    as_dict = report.to_dict()
    assert as_dict["ok"] is True and as_dict["tcb_status"] == "UpToDate"


# -- SEV-SNP bundles, releases and GPUs ---------------------------------------------------------
SNP = SAMPLES / "sev-snp"
GENOA_MEASUREMENT = (
    "7adcb574b1e22ab579f3c883da3e5b6e632ef06775dd13fdb16850640135a5f6"
    "3c7eb8741fe340c672edaf241bd1ed7c"
)
TINFOIL_BUNDLE = SAMPLES / "sigstore" / "tinfoil_confidential-model-router_v0.0.110.sigstore.json"
TINFOIL_SIGNER = {
    "sigstore_identity": "https://github.com/tinfoilsh/confidential-model-router/.github/"
    "workflows/tinfoil-release-publish.yml@refs/tags/v0.0.110",
    "sigstore_issuer": "https://token.actions.githubusercontent.com",
}
SNP_AT = datetime(2026, 6, 29, 3, 0, tzinfo=UTC)


def genoa_evidence(**changes: Any) -> Evidence:
    """Tinfoil's genuine Genoa report, VCEK and AMD chain, wrapped as a Veil bundle (its
    report_data commits to Tinfoil's keys, not to X / ED)."""
    raw = (SNP / "teep_tinfoil_genoa_report.bin").read_bytes()
    fields: dict[str, Any] = {
        "format": "sev-snp",
        "report_data": raw[0x50:0x90],
        "nonce": NONCE,
        "x25519_public_key": X,
        "ed25519_public_key": ED,
        "quote": raw,
        "vcek": (SNP / "teep_genoa_vcek.der").read_bytes(),
        "cert_chain": (SNP / "ask_ark_genoa.pem").read_text(),
    }
    fields.update(changes)
    return Evidence.model_validate(fields)


def test_snp_bundle_strict_needs_a_pin_and_passes_every_snp_step_with_it() -> None:
    unpinned = verify_evidence(genoa_evidence(), Policy(), at=SNP_AT)
    assert unpinned.step("SNP signature").outcome == "pass"
    assert unpinned.step("SNP certificate chain").outcome == "pass"
    assert unpinned.step("measurements").outcome == "FAIL"
    assert GENOA_MEASUREMENT in unpinned.step("measurements").detail

    pinned = verify_evidence(genoa_evidence(), Policy(snp_measurement=GENOA_MEASUREMENT), at=SNP_AT)
    snp_steps = [s for s in pinned.steps if s.name.startswith("SNP") or s.name == "measurements"]
    assert snp_steps and all(s.outcome == "pass" for s in snp_steps), snp_steps
    assert pinned.step("binding").outcome == "FAIL"  # Tinfoil's keys, not ours
    assert not pinned.ok


def test_snp_evidence_without_a_vcek_or_a_kds_fails_closed() -> None:
    report = verify_evidence(genoa_evidence(vcek=None), Policy(), at=SNP_AT)
    assert report.step("SNP certificate chain").outcome == "FAIL"
    assert "no key distribution service" in report.step("SNP certificate chain").detail


def test_snp_vcek_is_fetched_from_the_kds_the_client_names() -> None:
    from tests.attestation.pcs_kds_standin import PcsKdsStandIn
    from veil.attestation.collateral import fetcher_for

    policy = Policy(snp_measurement=GENOA_MEASUREMENT)
    with PcsKdsStandIn() as standin:
        source = fetcher_for(policy, kds_url=standin.url)
        report = verify_evidence(
            genoa_evidence(vcek=None, cert_chain=None),
            policy,
            at=SNP_AT,
            collateral_source=source,
        )
        assert any("/vcek/v1/Genoa/" in path for path in standin.requests)
    assert report.step("SNP certificate chain").outcome == "pass"
    assert report.step("measurements").outcome == "pass"


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


def test_a_release_the_node_shows_counts_only_under_a_signer_the_client_named() -> None:
    node_key = Ed25519PrivateKey.generate()
    manifest = json.dumps(
        {"release": "node-chosen@1", "sev_snp": [{"measurement": GENOA_MEASUREMENT}]}
    ).encode()
    shown = {"manifest": manifest, "signature": sign_manifest(manifest, node_key)}
    # No signer configured: the release is "not checked" and pins nothing.
    report = verify_evidence(genoa_evidence(release=shown), Policy(), at=SNP_AT)
    assert report.step("release").outcome == "not checked"
    assert report.step("measurements").outcome == "FAIL"
    # A signer configured, but not the node's key: refused.
    client_key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    policy = Policy(release_signers=[{"ed25519_public_key": base64.b64encode(client_key).decode()}])
    report = verify_evidence(genoa_evidence(release=shown), policy, at=SNP_AT)
    assert report.step("release").outcome == "FAIL"
    # The client's own key signed it: the release pins the measurement.
    trusted = base64.b64encode(node_key.public_key().public_bytes_raw()).decode()
    policy = Policy(release_signers=[{"ed25519_public_key": trusted}])
    report = verify_evidence(genoa_evidence(release=shown), policy, at=SNP_AT)
    assert report.step("release").outcome == "pass"
    assert report.step("measurements").outcome == "pass"
    assert report.facts["release"] == "node-chosen@1"


def test_a_policy_requiring_a_release_refuses_a_node_that_shows_none() -> None:
    trusted = base64.b64encode(bytes(range(32))).decode()
    policy = Policy(release_signers=[{"ed25519_public_key": trusted}])
    report = verify_evidence(genoa_evidence(), policy, at=SNP_AT)
    assert report.step("release").outcome == "FAIL"
    assert "the node shows none" in report.step("release").detail


class SampleGpu:
    """A stand-in for NVIDIA's SDK (no GPU here): hands out NVIDIA's genuine sample report."""

    def get_gpu_evidence(self, nonce: bytes) -> list[GpuEvidence]:
        report = bytes.fromhex(
            (SAMPLES / "nvidia" / "nvtrust_hopperAttestationReport.txt").read_text().strip()
        )
        chain = (SAMPLES / "nvidia" / "nvtrust_hopperCertChain.txt").read_text()
        return [GpuEvidence(report=report, cert_chain=chain)]


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


def test_a_gpu_report_for_another_nonce_fails_the_gpu_nonce_step() -> None:
    """NVIDIA's sample answers NVIDIA's nonce, not this bundle's gpu_nonce: refused."""
    gpu = SampleGpu().get_gpu_evidence(bytes(32))
    evidence = genoa_evidence(gpus=gpu)
    policy = Policy(
        snp_measurement=GENOA_MEASUREMENT,
        gpu_driver_versions=("550.90.07",),
        gpu_vbios_versions=("96.00.9F.00.01",),
    )
    report = verify_evidence(evidence, policy, at=datetime(2025, 10, 24, 12, tzinfo=UTC))
    assert report.step("GPU nonce").outcome == "FAIL"
    assert report.step("GPU signature").outcome == "pass"


def test_a_release_with_gpus_refuses_a_bundle_without_them() -> None:
    policy = Policy(snp_measurement=GENOA_MEASUREMENT, gpu_driver_versions=("550.90.07",))
    report = verify_evidence(genoa_evidence(), policy, at=SNP_AT)
    assert report.step("GPU evidence").outcome == "FAIL"


# -- veil-v3: a bundle binds the node's post-quantum key --------------------------------------------

KEM = bytes(range(256)) * 4 + bytes(range(192))  # the size of an ML-KEM-768 + X25519 public key
OTHER_KEM = bytes(reversed(KEM))


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
    # Dropping the key from the bundle leaves report_data bound to it: the v2 formula fails too.
    stripped = honest.model_copy(update={"kem_public_key": None})
    assert verify_evidence(stripped, policy).step("binding").outcome == "FAIL"


def test_a_caller_naming_a_kem_key_refuses_a_bundle_with_none_or_another() -> None:
    policy = Policy(allow_no_tee=True)
    v3 = build_evidence(NoTeeProvider(), X, ED, NONCE, kem_public_key=KEM)
    other = verify_evidence(v3, policy, expect_kem_public_key=OTHER_KEM)
    assert other.step("expected keys").outcome == "FAIL"
    assert "post-quantum key differ" in other.step("expected keys").detail
    assert not other.ok

    v2 = build_evidence(NoTeeProvider(), X, ED, NONCE)
    missing = verify_evidence(v2, policy, expect_x25519=X, expect_kem_public_key=KEM)
    assert missing.step("binding").outcome == "pass"
    assert missing.step("expected keys").outcome == "FAIL"
    assert "binds no post-quantum" in missing.step("expected keys").detail


def test_a_v2_bundle_still_verifies_under_the_v2_formula() -> None:
    v2 = build_evidence(NoTeeProvider(), X, ED, NONCE)
    assert v2.kem_public_key is None
    assert v2.report_data == report_data(X, ED, NONCE)
    report = verify_evidence(
        v2, Policy(allow_no_tee=True), expect_x25519=X, expect_ed25519=ED, expect_nonce=NONCE
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
