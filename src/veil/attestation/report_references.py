"""The references a verification compares against, and where missing collateral comes from.

``References`` are the measurement sets the evidence may match: the policy's own pins and, after
step 2 ("release": ``check_release``), the sets of the release the node showed, when a signer the
*policy* names signed it. ``CollateralSource`` is what a verifier fetches with when the node
offered no collateral (``collateral_fetch.py`` implements it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from veil.attestation.evidence import AttestationError, Evidence
from veil.attestation.policy import MEASUREMENT_NAMES, Policy
from veil.attestation.report_steps import VerificationReport


@dataclass(frozen=True)
class References:
    """The measurement sets the evidence may match: the policy's own pins (all must hold) and,
    when a release verified, the release's sets (one must hold). Built by ``check_release``."""

    policy: Policy
    release_name: str | None = None
    tdx_sets: tuple[dict[str, bytes], ...] = ()
    snp_measurements: tuple[bytes, ...] = ()
    gpu_sets: tuple[tuple[str, str], ...] = ()

    @property
    def has_release(self) -> bool:
        return self.release_name is not None


def _raw(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return bytes.fromhex(str(value).lower().removeprefix("0x"))


def check_release(
    report: VerificationReport, evidence: Evidence, policy: Policy, at: datetime
) -> References:
    """Step "release": the node's manifest, signed by a signer the *policy* names."""
    shown = evidence.release
    if not policy.release_signers:
        if shown is not None:
            report.not_checked(
                "release", "the node shows a release, but the policy trusts no release signer"
            )
        return References(policy)
    if shown is None:
        report.add(
            "release",
            False,
            "the policy accepts only releases signed by "
            f"{'; '.join(s.describe() for s in policy.release_signers)}, and the node shows none",
        )
        return References(policy)
    from veil.attestation import release as releases

    try:
        verified = releases.verify_shown_release(shown, policy, at=at)
    except AttestationError as exc:
        report.add("release", False, str(exc))
        return References(policy)
    manifest = verified.manifest
    report.add("release", True, f"{manifest.release} signed by {verified.signer}")
    report.facts["release"] = manifest.release
    report.facts["release_signer"] = verified.signer
    tdx_sets = tuple(
        {
            name: raw
            for name in MEASUREMENT_NAMES
            if (raw := _raw(getattr(entry, name, None))) is not None
        }
        for entry in manifest.tdx
    )
    return References(
        policy,
        release_name=manifest.release,
        tdx_sets=tuple(s for s in tdx_sets if s),
        snp_measurements=tuple(
            raw for entry in manifest.sev_snp if (raw := _raw(entry.measurement)) is not None
        ),
        gpu_sets=tuple((entry.driver_version, entry.vbios_version) for entry in manifest.gpu),
    )


class CollateralSource(Protocol):
    """Where a verifier gets collateral the node did not offer (``collateral.py``)."""

    def describe(self) -> str: ...

    def tdx_for_quote(self, quote: bytes, *, at: datetime | None = None) -> dict[str, Any]: ...

    def snp_product(self, report: Any) -> str: ...

    def snp_vcek(
        self, product: str, chip_id: bytes, tcb: Mapping[str, int], *, at: datetime | None = None
    ) -> bytes: ...

    def snp_cert_chain(self, product: str, *, at: datetime | None = None) -> bytes: ...
