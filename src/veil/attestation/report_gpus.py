"""The GPU steps of ``verify_evidence`` (step 7; the checks themselves are in ``nvidia.py``),
one set per GPU in the bundle, named "GPU signature 0", "GPU signature 1", ... when there are
several."""

from __future__ import annotations

from datetime import datetime

from veil.attestation.evidence import Evidence
from veil.attestation.report_references import References
from veil.attestation.report_steps import Step, VerificationReport


def check_gpus(
    report: VerificationReport, evidence: Evidence, refs: References, at: datetime
) -> None:
    """Each GPU's steps (nvidia.py), with the nonce the bundle's keys and nonce imply."""
    wants_gpu = bool(refs.gpu_sets or refs.policy.gpu_driver_versions)
    if not evidence.gpus:
        if wants_gpu:
            report.add(
                "GPU evidence",
                False,
                "the policy or release expects confidential GPUs, and the bundle has none",
            )
        return
    from veil.attestation.nvidia import check_gpu

    allowed_drivers = tuple(refs.policy.gpu_driver_versions) + tuple(d for d, _ in refs.gpu_sets)
    allowed_vbios = tuple(refs.policy.gpu_vbios_versions) + tuple(v for _, v in refs.gpu_sets)
    expected_nonce = evidence.gpu_nonce()
    for index, gpu in enumerate(evidence.gpus):
        sub = VerificationReport(subject=f"GPU {index}")
        check_gpu(
            sub,
            gpu.report,
            gpu.cert_chain.encode(),
            at=at,
            expected_nonce=expected_nonce,
            rims=gpu.rims,
            ocsp=gpu.ocsp,
            allowed_drivers=allowed_drivers,
            allowed_vbios=allowed_vbios,
        )
        label = f" {index}" if len(evidence.gpus) > 1 else ""
        for step in sub.steps:
            report.steps.append(
                Step(
                    step.name + label,
                    step.ok,
                    step.detail,
                    not_checked=step.not_checked,
                    expected=step.expected,
                    actual=step.actual,
                )
            )
        report.facts.update({f"gpu{index}_{k}": v for k, v in sub.facts.items()})
