"""The GPU steps of a bundle, on NVIDIA's genuine sample report."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.attestation.bundles import (
    GENOA_MEASUREMENT,
    SNP_AT,
    SampleGpu,
    genoa_evidence,
)
from veil.attestation.policy import Policy
from veil.attestation.report import verify_evidence


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
