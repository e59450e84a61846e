"""Client side: every check on a node's evidence, as a list of named steps with their outcome.

``verify_evidence`` runs, in order (README.md in this package says what each one proves):

1. format        -- a format this client verifies; "none" only if the policy allows no TEE
2. quote         -- signatures and collateral chain, via dcap-qvl (TDX)
3. TD attributes -- a production TD: no debug, SEPT_VE_DISABLE on, no service TD bound
4. TCB status    -- the platform's TCB status is one the policy allows
5. measurements  -- mr_td and rtmr0..3 equal the policy's pins
6. binding       -- report_data == SHA-512("veil-v1 report" || x25519 || ed25519 || nonce)
7. expected keys -- the evidence's keys are the ones the caller is about to use
8. nonce         -- the evidence answers the caller's own nonce (when the caller gives one)

A report passes only if no step failed. Steps that were not asked for are shown as skipped.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from veil.attestation.abi_tdx import QuoteFormatError, TdxQuote
from veil.attestation.evidence import AttestationError, Evidence, report_data
from veil.attestation.policy import MEASUREMENT_NAMES, Policy
from veil.attestation.verify_tdx import (
    NO_MATCHING_TCB_LEVEL,
    CollateralError,
    CollateralRequired,
    QuoteVerificationError,
    as_utc,
    verify_tdx_quote,
)

BINDING_FORMULA = 'SHA-512("veil-v1 report" || x25519 || ed25519 || nonce)'


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str
    skipped: bool = False

    @property
    def outcome(self) -> str:
        return "skipped" if self.skipped else "pass" if self.ok else "FAIL"


@dataclass
class VerificationReport:
    subject: str
    steps: list[Step] = field(default_factory=list)
    tcb_status: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str) -> Step:
        step = Step(name, ok, detail)
        self.steps.append(step)
        return step

    def skip(self, name: str, detail: str) -> Step:
        step = Step(name, True, detail, skipped=True)
        self.steps.append(step)
        return step

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    @property
    def failures(self) -> list[Step]:
        return [step for step in self.steps if not step.ok]

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "ok": self.ok,
            "tcb_status": self.tcb_status,
            "steps": [
                {"name": s.name, "outcome": s.outcome, "ok": s.ok, "detail": s.detail}
                for s in self.steps
            ],
            "facts": self.facts,
        }

    def render(self) -> RenderableType:
        """A table of the steps, the facts worth pinning, and a one-line verdict (for rich)."""
        styles = {"pass": "green", "FAIL": "bold red", "skipped": "dim"}
        steps = Table(title=f"Attestation: {self.subject}", title_justify="left", expand=False)
        steps.add_column("step", no_wrap=True)
        steps.add_column("result", no_wrap=True)
        steps.add_column("detail", overflow="fold")
        for s in self.steps:
            steps.add_row(s.name, Text(s.outcome, style=styles[s.outcome]), s.detail)
        parts: list[RenderableType] = [steps]
        if self.facts:
            facts = Table(show_header=False, box=None, pad_edge=False)
            facts.add_column(style="dim", no_wrap=True)
            facts.add_column(overflow="fold")
            for key, value in self.facts.items():
                shown = ", ".join(value) if isinstance(value, list) else str(value)
                facts.add_row(key, shown or "-")
            parts.append(facts)
        verdict = (
            Text("PASS: every check passed", style="bold green")
            if self.ok
            else Text(f"FAIL: {', '.join(s.name for s in self.failures)}", style="bold red")
        )
        parts.append(verdict)
        return Group(*parts)

    def to_text(self) -> str:
        lines = [f"{s.name}: {s.outcome}: {s.detail}" for s in self.steps]
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


# -- the TDX steps -------------------------------------------------------------------------------
def check_tdx_quote(
    report: VerificationReport,
    quote: bytes,
    collateral: dict[str, Any] | str | bytes | None,
    policy: Policy,
    at: datetime | None,
) -> TdxQuote | None:
    """Steps 2-5 for a TDX quote; the parsed quote if its signatures verified, else None."""
    when = as_utc(at)
    report.facts["verified_at"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
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
            "report_data": parsed.report_data.hex(),
        }
    )

    problems = parsed.attribute_problems()
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
            "TCB status", False, f"{status}{meaning} is not allowed (policy: {allowed}){advisories}"
        )

    check_measurements(report, parsed, policy)
    return parsed


def check_measurements(report: VerificationReport, quote: TdxQuote, policy: Policy) -> None:
    pins = policy.pins()
    if not pins:
        report.skip("measurements", f"the policy pins none (mr_td is {quote.mr_td.hex()})")
        return
    actual = {"mr_td": quote.mr_td, **{f"rtmr{i}": r for i, r in enumerate(quote.rtmrs)}}
    wrong = [
        name for name in MEASUREMENT_NAMES if name in pins and not _same(actual[name], pins[name])
    ]
    if wrong:
        detail = "; ".join(
            f"{name} is {actual[name].hex()}, policy pins {pins[name].hex()}" for name in wrong
        )
        report.add("measurements", False, detail)
    else:
        report.add("measurements", True, f"{', '.join(pins)} match the policy")


# -- binding and keys ----------------------------------------------------------------------------
def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def check_binding(report: VerificationReport, signed: bytes, evidence: Evidence) -> None:
    """The report_data the TEE signed commits to the evidence's keys and nonce."""
    try:
        expected = evidence.expected_report_data()
    except AttestationError as exc:
        report.add("binding", False, f"cannot compute the binding: {exc}")
        return
    if not _same(signed, expected):
        report.add(
            "binding",
            False,
            f"the signed report_data is not {BINDING_FORMULA} of the evidence's keys and nonce: "
            "this evidence does not vouch for these keys",
        )
    elif not _same(evidence.report_data, signed):
        report.add("binding", False, "the document's report_data differs from the signed one")
    else:
        report.add("binding", True, f"report_data = {BINDING_FORMULA}")


def check_expected_keys(
    report: VerificationReport,
    evidence: Evidence,
    expect_x25519: bytes | None,
    expect_ed25519: bytes | None,
) -> None:
    if expect_x25519 is None and expect_ed25519 is None:
        report.skip("expected keys", "the caller named no keys to compare with")
        return
    wrong = []
    if expect_x25519 is not None and not _same(expect_x25519, evidence.x25519_public_key):
        wrong.append("X25519 encryption key")
    if expect_ed25519 is not None and not _same(expect_ed25519, evidence.ed25519_public_key):
        wrong.append("Ed25519 signing key")
    if wrong:
        report.add(
            "expected keys", False, f"the evidence's {' and '.join(wrong)} differ from the expected"
        )
    else:
        named = [
            n for n, k in (("X25519", expect_x25519), ("Ed25519", expect_ed25519)) if k is not None
        ]
        report.add("expected keys", True, f"{' and '.join(named)} equal the expected keys")


# -- entry points --------------------------------------------------------------------------------
def verify_evidence(
    evidence: Evidence,
    policy: Policy,
    *,
    at: datetime | None = None,
    expect_x25519: bytes | None = None,
    expect_ed25519: bytes | None = None,
    expect_nonce: bytes | None = None,
) -> VerificationReport:
    """Every check on ``evidence`` under ``policy``; read ``.ok`` for the verdict.

    ``expect_nonce`` is the nonce the caller sent when asking for evidence: with it, evidence
    made for someone else's (or an old) request is refused.
    """
    report = VerificationReport(subject=f"{evidence.format} evidence")
    if evidence.warning:
        report.facts["warning"] = evidence.warning
    if evidence.format == "tdx":
        report.add("format", True, "Intel TDX quote")
        assert evidence.quote is not None  # the model guarantees it for tdx
        parsed = check_tdx_quote(report, evidence.quote, evidence.collateral, policy, at)
        if parsed is None:
            return report
        check_binding(report, parsed.report_data, evidence)
    elif evidence.format == "none":
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
    else:
        report.add(
            "format", False, f"{evidence.format} evidence has no verifier in this client yet"
        )
        return report
    check_expected_keys(report, evidence, expect_x25519, expect_ed25519)
    if expect_nonce is not None:
        fresh = _same(expect_nonce, evidence.nonce)
        report.add(
            "nonce",
            fresh,
            "the evidence answers the caller's nonce"
            if fresh
            else "the evidence was made for another nonce (stale or replayed)",
        )
    return report


@dataclass(frozen=True)
class NodeKey:
    """A key pair a node lists at ``GET /v1/keys`` (public halves only)."""

    label: str
    x25519_public_key: bytes
    ed25519_public_key: bytes


def verify_quote(
    quote: bytes,
    collateral: dict[str, Any] | str | bytes | None,
    policy: Policy,
    *,
    at: datetime | None = None,
    node_keys: Sequence[NodeKey] | None = None,
    nonce: bytes | None = None,
) -> VerificationReport:
    """A bare TDX quote (no evidence document): steps 2-5, and the binding if keys are given.

    A bare quote does not carry the nonce its report_data commits to, so the binding check needs
    ``nonce`` as well as ``node_keys``; it passes if the quote binds any one of the listed keys.
    """
    report = VerificationReport(subject="TDX quote")
    parsed = check_tdx_quote(report, quote, collateral, policy, at)
    if parsed is None:
        return report
    if not node_keys:
        report.skip("binding", "no node keys to check report_data against (see --expect-keys)")
        return report
    if nonce is None:
        report.add(
            "binding",
            False,
            f"cannot check: report_data = {BINDING_FORMULA}, and a bare quote does not carry "
            "the nonce; pass the nonce the node was asked to attest (--nonce)",
        )
        return report
    for key in node_keys:
        try:
            expected = report_data(key.x25519_public_key, key.ed25519_public_key, nonce)
        except AttestationError as exc:
            report.add("binding", False, f"cannot compute the binding: {exc}")
            return report
        if _same(parsed.report_data, expected):
            report.add("binding", True, f"report_data binds the node's {key.label} key and nonce")
            return report
    labels = ", ".join(key.label for key in node_keys)
    report.add(
        "binding",
        False,
        f"report_data does not commit to the node's keys ({labels}) with this nonce: this quote "
        "does not vouch for them",
    )
    return report
