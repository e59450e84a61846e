"""Is this SEV-SNP report genuine, and does it describe a VM the caller trusts? Offline checks.

The checks, numbered as in ``check_snp`` (steps 1-3 are in ``verify_snp_vcek.py``):

1. signature    -- the VCEK's ECDSA P-384 / SHA-384 signature over report bytes 0x000-0x29F
2. chain        -- VCEK <- ASK <- ARK, RSA-PSS SHA-384, every certificate valid at ``at``, and
                   the ARK is AMD's root for the product (pinned by SHA-256 fingerprint)
3. extensions   -- the VCEK is the one for this chip and TCB: its chip-id and TCB extensions
                   equal the report's CHIP_ID and REPORTED_TCB (else a VCEK of another chip, or of
                   an older TCB, could vouch for the report)
4. policy       -- the guest policy forbids debugging and a migration agent, unless allowed
5. TCB          -- REPORTED_TCB meets the per-component minimums
6. measurements -- MEASUREMENT equals a pinned value; none pinned is a failure, never a pass

Steps 1-3 are ``verify_snp_report`` (raises); ``check_snp`` runs all six as report steps. The
report_data binding is the caller's (it knows the keys and nonce). Nothing is fetched here.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from veil.attestation.abi_snp import (
    MEASUREMENT_SIZE,
    SnpReport,
    SnpReportFormatError,
    parse_snp_report,
    policy_problems,
)
from veil.attestation.report_steps import VerificationReport, iso
from veil.attestation.verify_snp_vcek import (
    OID_TCB,
    STEP_CHAIN,
    STEP_EXTENSIONS,
    STEP_MEASUREMENTS,
    STEP_POLICY,
    STEP_SIGNATURE,
    STEP_TCB,
    SnpVerificationError,
    check_chain,
    check_signature,
    check_vcek_extensions,
    load_cert_chain,
    load_vcek,
    product_name,
)
from veil.attestation.verify_tdx import as_utc


@dataclass(frozen=True)
class SnpVerification:
    """A report signed by a VCEK that chains to AMD's root for ``product``, valid at the time."""

    report: SnpReport
    product: str
    verified_at: datetime

    @property
    def measurement(self) -> bytes:
        return self.report.measurement

    @property
    def report_data(self) -> bytes:
        return self.report.report_data


# -- steps 1-3 together ----------------------------------------------------------------------------
def verify_snp_report(
    report: bytes,
    vcek_der: bytes,
    cert_chain_pem: bytes,
    *,
    at: datetime,
    product: str | None = None,
) -> SnpVerification:
    """Steps 1-3 as of ``at``: genuine report, AMD-rooted VCEK, VCEK for this chip and TCB.

    Raises ``SnpReportFormatError`` for bytes that are not a report and ``SnpVerificationError``
    (its ``step`` and ``reason``) for the first check that fails.
    """
    when = as_utc(at)
    product = None if product is None else product_name(product)
    parsed = parse_snp_report(report, product)
    vcek = load_vcek(vcek_der)
    check_signature(parsed, vcek)
    ask, ark = load_cert_chain(cert_chain_pem)
    chosen = check_chain(vcek, ask, ark, at=when, product=product, report_product=parsed.product)
    if parsed.product != chosen:  # a version 2 report: decode its TCB with the product's layout
        parsed = parse_snp_report(report, chosen)
    check_vcek_extensions(parsed, vcek)
    return SnpVerification(report=parsed, product=chosen, verified_at=when)


# -- steps 4-6: policy on a verified report ------------------------------------------------------
def tcb_problems(report: SnpReport, min_tcb: Mapping[str, int] | None) -> list[str]:
    """Components of REPORTED_TCB below ``min_tcb`` (a component it does not name has none)."""
    reported = report.reported_tcb.components()
    problems = []
    for name, minimum in (min_tcb or {}).items():
        if name not in OID_TCB:
            problems.append(f"unknown TCB component {name!r} (known: {', '.join(OID_TCB)})")
        elif name not in reported:
            problems.append(f"a minimum is set for {name}, which a {report.product} TCB lacks")
        elif reported[name] < minimum:
            problems.append(f"{name} is {reported[name]}, the minimum is {minimum}")
    return problems


def _check_measurement(
    report: VerificationReport, measurement: bytes, accepted: Sequence[bytes]
) -> None:
    seen = measurement.hex()
    if not accepted:
        report.add(
            STEP_MEASUREMENTS,
            False,
            f"no SNP measurement pinned: pin snp_measurement = {seen} in a policy or release "
            "manifest",
            actual=seen,
        )
        return
    malformed = [len(pin) for pin in accepted if len(pin) != MEASUREMENT_SIZE]
    if malformed:
        report.add(
            STEP_MEASUREMENTS,
            False,
            f"a pinned snp_measurement must be {MEASUREMENT_SIZE} bytes, got {malformed[0]}",
        )
        return
    matched = False
    for pin in accepted:  # compare against every pin: no early exit on a match
        matched |= hmac.compare_digest(measurement, pin)
    pinned = ", ".join(pin.hex() for pin in accepted)
    if matched:
        report.add(STEP_MEASUREMENTS, True, "snp_measurement matches a pinned value", actual=seen)
    else:
        report.add(
            STEP_MEASUREMENTS,
            False,
            f"snp_measurement is {seen}, pinned: {pinned}",
            expected=pinned,
            actual=seen,
        )


def check_snp(
    report: VerificationReport,
    raw_report: bytes,
    vcek_der: bytes,
    cert_chain_pem: bytes,
    *,
    at: datetime,
    product: str | None = None,
    accepted_measurements: Sequence[bytes],
    min_tcb: Mapping[str, int] | None = None,
    allow_debug: bool = False,
    allow_migration_agent: bool = False,
) -> SnpReport | None:
    """Steps 1-6 as named report steps; the parsed report if steps 1-3 passed, else None.

    Steps 4-6 are judged only on a report whose signature, chain and VCEK checked out.
    """
    when = as_utc(at)
    report.facts["verified_at"] = iso(when)
    try:
        verified = verify_snp_report(raw_report, vcek_der, cert_chain_pem, at=when, product=product)
    except SnpReportFormatError as exc:
        report.add(STEP_SIGNATURE, False, f"not a readable SEV-SNP report: {exc}")
        return None
    except SnpVerificationError as exc:
        for step in (STEP_SIGNATURE, STEP_CHAIN, STEP_EXTENSIONS):
            if step == exc.step:
                report.add(step, False, exc.reason)
                return None
            report.add(step, True, _PASSED[step])
        report.add(exc.step, False, exc.reason)
        return None
    parsed = verified.report
    report.add(
        STEP_SIGNATURE,
        True,
        f"SEV-SNP report v{parsed.version} signed by its VCEK (ECDSA P-384, SHA-384)",
    )
    report.add(
        STEP_CHAIN,
        True,
        f"VCEK <- ASK <- ARK-{verified.product} (AMD's pinned root), RSA-PSS SHA-384, all valid "
        f"at {iso(when)}",
    )
    report.add(STEP_EXTENSIONS, True, _PASSED[STEP_EXTENSIONS])
    report.facts.update(
        {
            "snp_product": verified.product,
            "snp_measurement": parsed.measurement.hex(),
            "snp_policy": str(parsed.policy),
            "snp_reported_tcb": str(parsed.reported_tcb),
            "snp_chip_id": parsed.chip_id.hex()[:16] + "…",
            "report_data": parsed.report_data.hex(),
        }
    )

    problems = policy_problems(
        parsed, allow_debug=allow_debug, allow_migration_agent=allow_migration_agent
    )
    report.add(
        STEP_POLICY,
        not problems,
        "; ".join(problems) or f"guest policy {parsed.policy} is acceptable",
    )

    low = tcb_problems(parsed, min_tcb)
    shown = ", ".join(f"{k} {v}" for k, v in (min_tcb or {}).items())
    if low:
        report.add(
            STEP_TCB,
            False,
            f"reported TCB below the minimum: {'; '.join(low)}",
            expected=shown,
            actual=str(parsed.reported_tcb),
        )
    elif min_tcb:
        report.add(STEP_TCB, True, f"reported TCB {parsed.reported_tcb} meets {shown}")
    else:
        report.add(STEP_TCB, True, f"reported TCB {parsed.reported_tcb}; no minimum is set")

    _check_measurement(report, parsed.measurement, accepted_measurements)
    return parsed


_PASSED = {
    STEP_SIGNATURE: "SEV-SNP report signed by its VCEK (ECDSA P-384, SHA-384)",
    STEP_CHAIN: "VCEK <- ASK <- ARK to AMD's pinned root",
    STEP_EXTENSIONS: "the VCEK's chip id and TCB extensions equal the report's CHIP_ID and "
    "REPORTED_TCB",
}

__all__ = [
    "SnpVerification",
    "SnpVerificationError",
    "check_snp",
    "tcb_problems",
    "verify_snp_report",
]
