"""Client side: every check on a node's evidence bundle, as named steps with their outcome.

``verify_evidence`` runs, in order (README.md in this package says what each one proves):

1. format        -- a CPU TEE this client verifies (TDX, SEV-SNP); "none" only if allowed
2. release       -- the release manifest the node shows is signed by a signer the policy names
3. collateral    -- TDX: Intel-signed collateral, fresh (issued within max_collateral_age_days,
                    before its nextUpdate) whether the client fetched it or the node offered it
4. quote         -- TDX: signatures and collateral chain, via dcap-qvl; TD attributes; TCB status
   SNP steps     -- SEV-SNP: VCEK signature, VCEK <- ASK <- AMD's pinned ARK, VCEK extensions,
                    guest policy bits, TCB minimums (verify_snp.py)
5. measurements  -- the CPU measurements equal a reference the client configured: the policy's
                    pins and/or a measurement set of the verified release. Nothing pinned fails.
6. event log     -- dstack-style runtime: the log replays to the RTMRs; the app compose hash pin
7. GPU steps     -- each GPU: SPDM signature, device chain to NVIDIA's root, nonce = gpu_nonce,
                    FWID, RIMs, OCSP, firmware versions pinned (nvidia.py)
8. binding       -- report_data == SHA-512("veil-v2 report" || x25519 || ed25519 || gpus || nonce),
                    or for a bundle with a post-quantum key, SHA-512("veil-v3 report" || x25519
                    || ed25519 || SHA-256(kem_public_key) || gpus || nonce) (evidence.py)
9. expected keys -- the evidence's keys are the ones the caller is about to use (a caller that
                    names a post-quantum key fails a bundle that binds none or another)
10. nonce        -- the evidence answers the caller's own nonce

Each step is pass, FAIL or "not checked" (it cannot apply to the input, e.g. the binding of a
bare quote given without keys). A report passes only if no step failed and it has steps.

The steps live in their own modules: ``report_steps`` (the report model), ``report_references``
(step 2 and the references of step 5), ``report_tdx`` (steps 3-6), ``report_snp`` (the SEV-SNP
steps), ``report_gpus`` (step 7) and ``report_binding`` (steps 8-9, and a bare quote's binding).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from veil.attestation.evidence import Evidence
from veil.attestation.policy import Policy
from veil.attestation.report_binding import (
    NodeKey,
    check_binding,
    check_expected_keys,
    check_quote_binding,
)
from veil.attestation.report_gpus import check_gpus
from veil.attestation.report_references import CollateralSource, References, check_release
from veil.attestation.report_snp import check_sev_snp
from veil.attestation.report_steps import Step, VerificationReport, iso, same
from veil.attestation.report_tdx import check_tdx
from veil.attestation.verify_tdx import as_utc

# Step and VerificationReport are imported from here by veil.client (receipt.py, errors.py).
__all__ = ["Step", "VerificationReport", "verify_evidence", "verify_quote"]


def verify_evidence(
    evidence: Evidence,
    policy: Policy,
    *,
    at: datetime | None = None,
    expect_x25519: bytes | None = None,
    expect_ed25519: bytes | None = None,
    expect_nonce: bytes | None = None,
    collateral_source: CollateralSource | None = None,
    expect_kem_public_key: bytes | None = None,
) -> VerificationReport:
    """Every check on ``evidence`` under ``policy``; read ``.ok`` for the verdict.

    ``expect_kem_public_key`` is the post-quantum key a veil-v3 client is about to seal to (its
    lock's): the bundle must bind exactly that one (the v3 report_data formula).

    ``expect_nonce`` is the nonce the caller sent when asking for evidence: with it, evidence
    made for someone else's (or an old) request is refused. ``collateral_source`` fetches what
    the node did not offer (TDX collateral, SNP VCEKs), from the services the client chose.
    """
    when = as_utc(at)
    report = VerificationReport(subject=f"{evidence.format} evidence")
    report.facts["verified_at"] = iso(when)
    if evidence.warning:
        report.facts["warning"] = evidence.warning
    if evidence.format == "none":
        if policy.allow_no_tee:
            report.add("format", True, "no TEE: development only; accepted because allow_no_tee")
        else:
            report.add(
                "format",
                False,
                "no TEE: development only; nothing protects this node's keys. Refused "
                "(a development policy can set allow_no_tee)",
            )
        # Only the document's own consistency: with no TEE, nothing vouches for it.
        check_binding(report, evidence.report_data, evidence)
    elif evidence.format in ("tdx", "sev-snp"):
        assert evidence.quote is not None  # the model guarantees it for a TEE format
        names = {"tdx": "Intel TDX quote", "sev-snp": "AMD SEV-SNP attestation report"}
        gpus = f" with {len(evidence.gpus)} GPU report(s)" if evidence.gpus else ""
        report.add("format", True, names[evidence.format] + gpus)
        refs = check_release(report, evidence, policy, when)
        signed: bytes | None
        if evidence.format == "tdx":
            parsed = check_tdx(
                report,
                evidence.quote,
                evidence.collateral,
                refs,
                when,
                collateral_source,
                evidence.event_log,
            )
            signed = None if parsed is None else parsed.report_data
        else:
            signed = check_sev_snp(
                report,
                evidence.quote,
                evidence.vcek,
                evidence.cert_chain.encode() if evidence.cert_chain else None,
                refs,
                when,
                collateral_source,
            )
        check_gpus(report, evidence, refs, when)
        if signed is None:
            return report
        check_binding(report, signed, evidence)
    else:
        report.add(
            "format",
            False,
            f"{evidence.format} evidence alone has no CPU TEE to bind the node's keys: GPU "
            "evidence is accepted only inside a TDX or SEV-SNP bundle",
        )
        return report
    check_expected_keys(report, evidence, expect_x25519, expect_ed25519, expect_kem_public_key)
    if expect_nonce is not None:
        fresh = same(expect_nonce, evidence.nonce)
        report.add(
            "nonce",
            fresh,
            "the evidence answers the caller's nonce"
            if fresh
            else "the evidence was made for another nonce (stale or replayed)",
        )
    return report


def verify_quote(
    quote: bytes,
    collateral: dict[str, Any] | None,
    policy: Policy,
    *,
    at: datetime | None = None,
    node_keys: Sequence[NodeKey] | None = None,
    nonce: bytes | None = None,
    collateral_source: CollateralSource | None = None,
    event_log: list[dict[str, Any]] | None = None,
) -> VerificationReport:
    """A bare TDX quote (no evidence document): collateral, quote, TCB and measurement steps,
    and the binding if keys are given (else "not checked": a bare quote's binding cannot apply).

    A bare quote does not carry the nonce its report_data commits to, so the binding check needs
    ``nonce`` as well as ``node_keys``; it passes if the quote binds any one of the listed keys.
    """
    when = as_utc(at)
    report = VerificationReport(subject="TDX quote")
    refs = References(policy)
    parsed = check_tdx(report, quote, collateral, refs, when, collateral_source, event_log)
    if parsed is None:
        return report
    check_quote_binding(report, parsed.report_data, node_keys, nonce)
    return report
