"""Is this NVIDIA Hopper GPU genuine, running the firmware we expect, and answering our nonce?

``verify_gpu_report`` checks a GPU attestation report offline, at a time the caller gives:

1. GPU signature        -- the device leaf key's ECDSA P-384 / SHA-384 signature over request ||
                           response minus the signature (so over the caller's nonce too)
2. GPU certificate chain-- leaf <- ... <- root, each signed by the next, all valid at ``at``; the
                           root is NVIDIA's pinned device identity root
3. GPU FWID             -- the firmware hash in the leaf's TcbInfo extension (OID 2.23.133.5.4.1,
                           written by the GPU's boot ROM when it derives the leaf key) equals the
                           FWID the firmware reports, so the report came from the measured firmware
4. GPU nonce            -- the request's nonce is the caller's (constant-time)
5. GPU RIM signatures   -- each RIM's XML-DSig and signing chain to NVIDIA's pinned RIM root at ``at``
6. GPU firmware versions-- the driver RIM is for the reported driver, the VBIOS RIM for the
                           reported VBIOS, and both versions are among the caller's pins, if any
7. GPU measurements     -- every active RIM measurement equals the report's block at that index
                           (any listed alternative). Without RIMs this fails unless the caller pins
                           both the driver and the VBIOS version: nothing else vouches for them
8. GPU OCSP             -- given OCSP replies for the device chain say GOOD at ``at``
9. GPU RIM OCSP         -- the same for the RIM signing chains

A step that cannot apply (no nonce given, no OCSP replies for a chain) is "not checked", which is
never a pass. NVIDIA's own ``nv-local-gpu-verifier`` is not used: it always asks NVIDIA's OCSP and
RIM services over the network and cannot take recorded replies, so it cannot verify offline.

NVIDIA's OCSP responders do not know the device leaf (the GPU derives it at every boot), so the
device chain's OCSP covers the certificates between leaf and root; a RIM chain's covers all but
the root.

Each group of steps has its own module: ``verify_nvidia_device`` (1-4), ``verify_nvidia_rim``
(5-7), ``verify_nvidia_ocsp`` (8-9); ``gpu_check`` holds a step's outcome and the step names.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from veil.attestation.abi_nvidia import GpuReport, GpuReportFormatError, parse_gpu_report
from veil.attestation.gpu_check import (
    STEP_OCSP,
    STEP_RIM_OCSP,
    STEP_RIM_SIGNATURES,
    GpuCheck,
)
from veil.attestation.pki_nvidia import (
    DEFAULT_OCSP_MAX_AGE,
    DEVICE_ROOT_SHA256,
    RIM_ROOT_SHA256,
    stamp,
)
from veil.attestation.report_steps import VerificationReport
from veil.attestation.rim import Rim
from veil.attestation.verify_nvidia_device import (
    check_chain,
    check_fwid,
    check_nonce,
    check_signature,
    leaf_fwid,
    load_chain,
)
from veil.attestation.verify_nvidia_ocsp import load_replies, ocsp_step, rim_chain_pairs
from veil.attestation.verify_nvidia_rim import check_measurements, check_versions, load_rims

__all__ = [
    "GpuCheck",
    "GpuVerification",
    "check_gpu",
    "gpu_evidence_digest",
    "leaf_fwid",
    "verify_gpu_report",
]


@dataclass(frozen=True)
class GpuVerification:
    """Every step's outcome for one report; ``ok`` when none failed."""

    report: GpuReport
    verified_at: datetime
    checks: tuple[GpuCheck, ...]
    rims: tuple[Rim, ...] = ()
    mismatched_indices: tuple[int, ...] = ()
    measurements_matched: int = 0
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check.ok is not False for check in self.checks)

    @property
    def failures(self) -> tuple[GpuCheck, ...]:
        return tuple(check for check in self.checks if check.ok is False)

    def check(self, name: str) -> GpuCheck:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)


def _as_utc(at: datetime) -> datetime:
    if not isinstance(at, datetime):
        raise TypeError("the verification time must be a datetime")
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def gpu_evidence_digest(document_bytes: bytes) -> bytes:
    """SHA-256 of the exact GPU evidence bytes a CPU report commits to (CPU <-> GPU binding)."""
    return hashlib.sha256(bytes(document_bytes)).digest()


# -- the entry points -------------------------------------------------------------------------------
def verify_gpu_report(
    report: bytes | str,
    cert_chain_pem: bytes | str,
    *,
    at: datetime,
    expected_nonce: bytes | None,
    rims: Sequence[bytes] | Mapping[str, bytes] = (),
    ocsp: Mapping[str, bytes | str] | Sequence[bytes | str] = (),
    allowed_drivers: Sequence[str] = (),
    allowed_vbios: Sequence[str] = (),
    ocsp_max_age: timedelta = DEFAULT_OCSP_MAX_AGE,
    device_roots: Iterable[bytes] = (DEVICE_ROOT_SHA256,),
    rim_roots: Iterable[bytes] = (RIM_ROOT_SHA256,),
) -> GpuVerification:
    """Every check on one GPU report at ``at``; read ``.ok`` and ``.checks``.

    ``report`` is the SPDM request || response (raw or hex text), ``cert_chain_pem`` the device
    chain, leaf first. ``rims`` are NVIDIA's driver and VBIOS RIM files (name -> bytes, or a
    list), ``ocsp`` recorded OCSP replies (DER or base64; name -> reply, or a list), matched to
    certificates by their CertID. Raises ``GpuReportFormatError`` for a malformed report or chain.
    """
    when = _as_utc(at)
    parsed = parse_gpu_report(report)
    chain = load_chain(cert_chain_pem)
    driver, vbios = parsed.driver_version, parsed.vbios_version  # format-checked here
    leaf = chain[0]
    checks = [
        check_signature(parsed, leaf),
        check_chain(chain, when, tuple(device_roots)),
        check_fwid(parsed, leaf),
        check_nonce(parsed, expected_nonce),
    ]
    # RIMs
    loaded, rim_problems = load_rims(rims, when, rim_roots)
    if not rims:
        checks.append(GpuCheck(STEP_RIM_SIGNATURES, None, "no RIMs given"))
    elif rim_problems:
        checks.append(GpuCheck(STEP_RIM_SIGNATURES, False, "; ".join(rim_problems)))
    else:
        checks.append(
            GpuCheck(
                STEP_RIM_SIGNATURES,
                True,
                f"{len(loaded)} RIM(s) signed by NVIDIA (XML-DSig, chain to the pinned RIM root "
                f"valid at {stamp(when)})",
            )
        )
    checks.append(check_versions(parsed, loaded, len(rims), allowed_drivers, allowed_vbios))
    measured, mismatched, matched = check_measurements(
        parsed, loaded, rim_problems, allowed_drivers, allowed_vbios
    )
    checks.append(measured)
    # OCSP
    replies, reply_problems = load_replies(ocsp)
    used: set[int] = set()
    device_pairs = list(
        itertools.pairwise(chain[1:])
    )  # not the leaf, which NVIDIA's OCSP does not know
    device_step = ocsp_step(
        STEP_OCSP, "device chain", device_pairs, replies, used, when, ocsp_max_age, reply_problems
    )
    rim_step = ocsp_step(
        STEP_RIM_OCSP, "RIM chains", rim_chain_pairs(loaded), replies, used, when, ocsp_max_age, []
    )
    stray = [reply.name for i, reply in enumerate(replies) if i not in used]
    if stray:
        detail = f"OCSP reply(ies) {', '.join(map(repr, stray))} match no certificate given"
        device_step = GpuCheck(
            STEP_OCSP,
            False,
            detail if device_step.ok is None else f"{device_step.detail}; {detail}",
        )
    checks += [device_step, rim_step]
    facts = {
        "gpu_driver": driver,
        "gpu_vbios": vbios,
        "gpu_nonce": parsed.nonce.hex(),
        "gpu_measurements_matched": matched,
    }
    return GpuVerification(
        report=parsed,
        verified_at=when,
        checks=tuple(checks),
        rims=tuple(loaded),
        mismatched_indices=mismatched,
        measurements_matched=matched,
        facts=facts,
    )


def check_gpu(
    report: VerificationReport,
    gpu_report: bytes | str,
    cert_chain_pem: bytes | str,
    *,
    at: datetime,
    expected_nonce: bytes | None,
    rims: Sequence[bytes] | Mapping[str, bytes] = (),
    ocsp: Mapping[str, bytes | str] | Sequence[bytes | str] = (),
    allowed_drivers: Sequence[str] = (),
    allowed_vbios: Sequence[str] = (),
    ocsp_max_age: timedelta = DEFAULT_OCSP_MAX_AGE,
) -> GpuVerification | None:
    """Append the GPU steps to ``report`` (a ``VerificationReport``) and its facts.

    Returns the verification, or None when the report or chain could not be parsed (then one
    failing "GPU report" step says why).
    """
    try:
        verified = verify_gpu_report(
            gpu_report,
            cert_chain_pem,
            at=at,
            expected_nonce=expected_nonce,
            rims=rims,
            ocsp=ocsp,
            allowed_drivers=allowed_drivers,
            allowed_vbios=allowed_vbios,
            ocsp_max_age=ocsp_max_age,
        )
    except GpuReportFormatError as exc:
        report.add("GPU report", False, str(exc))
        return None
    for check in verified.checks:
        if check.ok is None:
            report.not_checked(check.name, check.detail)
        else:
            report.add(
                check.name, check.ok, check.detail, expected=check.expected, actual=check.actual
            )
    report.facts.update(verified.facts)
    return verified
