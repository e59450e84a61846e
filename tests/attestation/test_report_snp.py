"""The SEV-SNP steps of a bundle: Tinfoil's genuine Genoa report, VCEK and AMD chain."""

from __future__ import annotations

from tests.attestation.bundles import GENOA_MEASUREMENT, SNP_AT, genoa_evidence
from veil.attestation.policy import Policy
from veil.attestation.report import verify_evidence


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
