"""The SEV-SNP steps of ``verify_evidence`` (the checks themselves are in ``verify_snp.py``):
the VCEK and AMD's chain from the node or the client's own KDS, and the accepted measurements
from the policy and a verified release."""

from __future__ import annotations

from datetime import datetime

from veil.attestation.evidence import AttestationError
from veil.attestation.report_references import CollateralSource, References
from veil.attestation.report_steps import VerificationReport, same


def check_sev_snp(
    report: VerificationReport,
    raw_report: bytes,
    vcek: bytes | None,
    chain: bytes | None,
    refs: References,
    at: datetime,
    source: CollateralSource | None,
) -> bytes | None:
    """The SNP steps (verify_snp.py); the signed report_data if the report verified. The VCEK
    and AMD's chain come from the node (they are AMD-signed) or from the client's own KDS."""
    from veil.attestation.abi_snp import parse_snp_report
    from veil.attestation.verify_snp import check_snp

    if vcek is None or chain is None:
        if source is None:
            report.add(
                "SNP certificate chain",
                False,
                "no VCEK: the node offered none and no key distribution service is configured "
                "(--vcek/--cert-chain or --kds-url)",
            )
            return None
        try:
            parsed = parse_snp_report(raw_report)
            product = source.snp_product(parsed)
            vcek = vcek or source.snp_vcek(
                product, parsed.chip_id, parsed.reported_tcb_dict(), at=at
            )
            chain = chain or source.snp_cert_chain(product, at=at)
        except (AttestationError, ValueError) as exc:
            report.add("SNP certificate chain", False, f"cannot get the VCEK: {exc}")
            return None
    accepted = list(refs.policy.snp_measurement)
    if refs.has_release:
        # A verified release's sets, narrowed by any measurement the policy pins as well.
        accepted = [
            m for m in refs.snp_measurements if not accepted or any(same(m, p) for p in accepted)
        ]
    parsed_report = check_snp(
        report,
        raw_report,
        vcek,
        chain,
        at=at,
        accepted_measurements=accepted,
        min_tcb=refs.policy.snp_min_tcb or None,
        allow_debug=refs.policy.snp_allow_debug,
        allow_migration_agent=refs.policy.snp_allow_migration_agent,
    )
    return None if parsed_report is None else bytes(parsed_report.report_data)
