"""The TDX steps of ``verify_evidence``: collateral (3), quote, TD attributes and TCB status (4),
measurements (5) and the event log (6). README.md in this package says what each one proves.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from veil.attestation.abi_tdx import QuoteFormatError, TdxQuote
from veil.attestation.evidence import AttestationError
from veil.attestation.policy import MEASUREMENT_NAMES, Policy
from veil.attestation.report_references import CollateralSource, References
from veil.attestation.report_steps import VerificationReport, iso, same
from veil.attestation.verify_tdx import (
    NO_MATCHING_TCB_LEVEL,
    CollateralError,
    CollateralRequired,
    QuoteVerificationError,
    as_utc,
    verify_tdx_quote,
)


def _tdx_collateral(
    report: VerificationReport,
    quote: bytes,
    offered: dict[str, Any] | None,
    policy: Policy,
    at: datetime,
    source: CollateralSource | None,
) -> dict[str, Any] | None:
    """Step "collateral": the node's (if offered) or the client's own, fresh either way.

    Collateral is Intel-signed, so who relays it does not matter for authenticity; what a relay
    could do is replay an old, still unexpired TCB info from before a TCB recovery. The age bound
    (``max_collateral_age_days``) stops that, and applies to every source alike."""
    from veil.attestation.collateral import check_collateral_freshness

    if offered is not None:
        chosen, origin = offered, "offered by the node"
    elif source is not None:
        try:
            chosen = source.tdx_for_quote(quote, at=at)
        except (AttestationError, ValueError) as exc:
            report.add("collateral", False, f"cannot get collateral: {exc}")
            return None
        origin = f"fetched from {source.describe()}"
    else:
        report.add(
            "collateral",
            False,
            "no collateral: the node offered none and no collateral source is configured "
            "(--collateral FILE|DIR or --pccs-url)",
        )
        return None
    problems = check_collateral_freshness(chosen, at, policy.max_collateral_age_days)
    if problems:
        report.add("collateral", False, f"collateral {origin} refused: {'; '.join(problems)}")
        return None
    report.add(
        "collateral",
        True,
        f"collateral {origin}: issued within {policy.max_collateral_age_days} days of "
        f"{iso(at)} and before its next update",
    )
    return chosen


def check_tdx_quote(
    report: VerificationReport,
    quote: bytes,
    collateral: dict[str, Any] | str | bytes | None,
    policy: Policy,
    at: datetime | None,
) -> TdxQuote | None:
    """The quote, TD attributes and TCB status steps; the parsed quote if its signatures
    verified, else None."""
    when = as_utc(at)
    report.facts["verified_at"] = iso(when)
    try:
        verified = verify_tdx_quote(quote, collateral, when)
    except (CollateralRequired, CollateralError, QuoteFormatError) as exc:
        report.add("quote", False, str(exc))
        return None
    except QuoteVerificationError as exc:
        report.add("quote", False, f"{exc.reason} [dcap-qvl: {exc.detail}]")
        return None
    except AttestationError as exc:
        report.add("quote", False, str(exc))
        return None
    parsed = verified.quote
    report.add(
        "quote",
        True,
        f"TDX quote v{parsed.version} signed by a genuine Intel TDX platform (FMSPC "
        f"{parsed.fmspc}); collateral chain and CRLs valid at {report.facts['verified_at']}",
    )
    report.tcb_status = verified.tcb_status
    report.facts.update(
        {
            "tcb_status": verified.tcb_status,
            "advisory_ids": list(verified.advisory_ids),
            "mr_td": parsed.mr_td.hex(),
            **{f"rtmr{i}": rtmr.hex() for i, rtmr in enumerate(parsed.rtmrs)},
            "mr_config_id": parsed.mr_config_id.hex(),
            "td_attributes": parsed.td_attributes.hex(),
            "xfam": parsed.xfam.hex(),
            "report_data": parsed.report_data.hex(),
        }
    )

    problems = parsed.attribute_problems()
    for name in ("td_attributes", "xfam"):
        pinned = getattr(policy, name)
        if pinned is not None and not same(getattr(parsed, name), pinned):
            problems.append(f"{name} is {getattr(parsed, name).hex()}, policy pins {pinned.hex()}")
    report.add(
        "TD attributes",
        not problems,
        "; ".join(problems) or "production TD: debug off, SEPT_VE_DISABLE on",
    )

    status = verified.tcb_status
    allowed = ", ".join(policy.allowed_tcb_statuses)
    advisories = (
        f"; advisories: {', '.join(verified.advisory_ids)}" if verified.advisory_ids else ""
    )
    meaning = (
        " (the platform TCB is older than every level in Intel's TCB info)"
        if status == NO_MATCHING_TCB_LEVEL
        else ""
    )
    if policy.allows_status(status):
        report.add("TCB status", True, f"{status}{meaning}, allowed by policy{advisories}")
    else:
        report.add(
            "TCB status",
            False,
            f"{status}{meaning} is not allowed (policy: {allowed}){advisories}",
            expected=allowed,
            actual=status,
        )
    return parsed


def tdx_registers(quote: TdxQuote) -> dict[str, bytes]:
    return {
        "mr_td": quote.mr_td,
        **{f"rtmr{i}": r for i, r in enumerate(quote.rtmrs)},
        "mr_seam": quote.mr_seam,
        "mr_config_id": quote.mr_config_id,
        "mr_owner": quote.mr_owner,
        "mr_owner_config": quote.mr_owner_config,
    }


def _mismatches(actual: dict[str, bytes], pins: dict[str, bytes]) -> list[str]:
    return [
        name for name in MEASUREMENT_NAMES if name in pins and not same(actual[name], pins[name])
    ]


def check_tdx_measurements(report: VerificationReport, quote: TdxQuote, refs: References) -> None:
    """Step "measurements": strict means pinned. The policy's pins must all hold; with a verified
    release, one of its measurement sets must hold too; with neither, the step fails."""
    actual = tdx_registers(quote)
    pins = refs.policy.pins()
    if not pins and not refs.has_release:
        report.add(
            "measurements",
            False,
            "nothing pinned: a strict client trusts only the code it pinned. Pin mr_td = "
            f'"{quote.mr_td.hex()}" (and rtmr0..rtmr2 for firmware, kernel and command line) in '
            "a policy file, or trust a signed release (release_signers); `veil attest pin URL` "
            "writes such a policy from a node you choose to trust",
            actual=f"mr_td {quote.mr_td.hex()}",
        )
        return
    wrong = _mismatches(actual, pins)
    if wrong:
        report.add(
            "measurements",
            False,
            f"{', '.join(wrong)} differ from the policy's pins",
            expected="; ".join(f"{n} {pins[n].hex()}" for n in wrong),
            actual="; ".join(f"{n} {actual[n].hex()}" for n in wrong),
        )
        return
    matched = "policy pins " + ", ".join(pins) if pins else ""
    if refs.has_release:
        if not refs.tdx_sets:
            report.add(
                "measurements",
                False,
                f"release {refs.release_name} lists no TDX measurements: this node's platform "
                "is not part of the release",
            )
            return
        hits = [i for i, s in enumerate(refs.tdx_sets) if not _mismatches(actual, s)]
        if not hits:
            first = refs.tdx_sets[0]
            report.add(
                "measurements",
                False,
                f"the TD's measurements are in no measurement set of release {refs.release_name}",
                expected="; ".join(f"{n} {v.hex()}" for n, v in first.items()),
                actual="; ".join(f"{n} {actual[n].hex()}" for n in first),
            )
            return
        chosen = refs.tdx_sets[hits[0]]
        if "mr_td" not in chosen and "mr_td" not in pins:
            report.add(
                "measurements",
                False,
                f"release {refs.release_name} does not pin mr_td (the TD firmware, which "
                "measures everything else into the RTMRs): pin mr_td in the policy as well",
                actual=f"mr_td {quote.mr_td.hex()}",
            )
            return
        release = f"release {refs.release_name} ({', '.join(chosen)})"
        matched = f"{matched} and {release}" if matched else release
    unpinned = [n for n in ("rtmr0", "rtmr1", "rtmr2") if n not in pins]
    if refs.has_release:
        unpinned = [n for n in unpinned if n not in chosen]
    note = f"; not pinned: {', '.join(unpinned)}" if unpinned else ""
    report.add("measurements", True, f"match {matched}{note}")


def check_tdx(
    report: VerificationReport,
    evidence_quote: bytes,
    offered_collateral: dict[str, Any] | None,
    refs: References,
    at: datetime,
    source: CollateralSource | None,
    event_log: list[dict[str, Any]] | None,
) -> TdxQuote | None:
    collateral = _tdx_collateral(
        report, evidence_quote, offered_collateral, refs.policy, at, source
    )
    if collateral is None:
        return None
    parsed = check_tdx_quote(report, evidence_quote, collateral, refs.policy, at)
    if parsed is None:
        return None
    check_tdx_measurements(report, parsed, refs)
    if event_log is not None or refs.policy.app_compose_hash:
        from veil.attestation.eventlog import check_event_log

        if event_log is None:
            report.add(
                "event log",
                False,
                "the policy pins app_compose_hash, and the node sent no event log to prove it",
            )
        else:
            check_event_log(
                report, parsed, event_log, pinned_compose_hashes=refs.policy.app_compose_hash
            )
    return parsed
