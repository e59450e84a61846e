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
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from veil.attestation.abi_tdx import QuoteFormatError, TdxQuote
from veil.attestation.evidence import (
    BINDING_FORMULA_V2,
    AttestationError,
    Evidence,
    report_data,
)
from veil.attestation.policy import MEASUREMENT_NAMES, Policy
from veil.attestation.verify_tdx import (
    NO_MATCHING_TCB_LEVEL,
    CollateralError,
    CollateralRequired,
    QuoteVerificationError,
    as_utc,
    verify_tdx_quote,
)

BINDING_FORMULA = BINDING_FORMULA_V2  # what a bare quote of a v2 node binds


@dataclass(frozen=True)
class Step:
    """One check. ``not_checked`` marks a step that cannot apply to the input (e.g. the key
    binding of a bare quote given without keys): it is no failure, and it is never a pass either.
    ``expected`` / ``actual`` carry the reference and the value seen, for a mismatch."""

    name: str
    ok: bool
    detail: str
    not_checked: bool = False
    expected: str | None = None
    actual: str | None = None

    @property
    def outcome(self) -> str:
        return "not checked" if self.not_checked else "pass" if self.ok else "FAIL"


@dataclass
class VerificationReport:
    subject: str
    steps: list[Step] = field(default_factory=list)
    tcb_status: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        name: str,
        ok: bool,
        detail: str,
        *,
        expected: str | None = None,
        actual: str | None = None,
    ) -> Step:
        step = Step(name, ok, detail, expected=expected, actual=actual)
        self.steps.append(step)
        return step

    def not_checked(self, name: str, detail: str) -> Step:
        """A step that cannot apply to this input; shown, never counted as a pass."""
        step = Step(name, True, detail, not_checked=True)
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
                {
                    "name": s.name,
                    "outcome": s.outcome,
                    "ok": s.ok,
                    "detail": s.detail,
                    **({"expected": s.expected} if s.expected is not None else {}),
                    **({"actual": s.actual} if s.actual is not None else {}),
                }
                for s in self.steps
            ],
            "facts": self.facts,
        }

    def render(self) -> RenderableType:
        """A table of the steps, the facts worth pinning, and a one-line verdict (for rich)."""
        styles = {"pass": "green", "FAIL": "bold red", "not checked": "dim"}
        steps = Table(title=f"Attestation: {self.subject}", title_justify="left", expand=False)
        steps.add_column("step", no_wrap=True)
        steps.add_column("result", no_wrap=True)
        steps.add_column("detail", overflow="fold")
        for s in self.steps:
            detail = s.detail
            if s.expected is not None or s.actual is not None:
                detail += f"\n  expected {s.expected or '-'}\n  actual   {s.actual or '-'}"
            steps.add_row(s.name, Text(s.outcome, style=styles[s.outcome]), detail)
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
            Text("PASS: every check that applies passed", style="bold green")
            if self.ok
            else Text(f"FAIL: {', '.join(s.name for s in self.failures)}", style="bold red")
        )
        parts.append(verdict)
        return Group(*parts)

    def to_text(self) -> str:
        lines = [f"{s.name}: {s.outcome}: {s.detail}" for s in self.steps]
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


# -- references: what the client pinned -----------------------------------------------------
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


# -- the TDX steps -------------------------------------------------------------------------------
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
        f"{_iso(at)} and before its next update",
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
    report.facts["verified_at"] = _iso(when)
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
        if pinned is not None and not _same(getattr(parsed, name), pinned):
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
        name for name in MEASUREMENT_NAMES if name in pins and not _same(actual[name], pins[name])
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


# -- the SEV-SNP steps ---------------------------------------------------------------------------
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
            m for m in refs.snp_measurements if not accepted or any(_same(m, p) for p in accepted)
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


# -- GPUs ----------------------------------------------------------------------------------------
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


# -- binding and keys ----------------------------------------------------------------------------
def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_binding(report: VerificationReport, signed: bytes, evidence: Evidence) -> None:
    """The report_data the TEE signed commits to the bundle's keys, GPU evidence and nonce."""
    try:
        expected = evidence.expected_report_data()
    except AttestationError as exc:
        report.add("binding", False, f"cannot compute the binding: {exc}")
        return
    if not _same(signed, expected):
        report.add(
            "binding",
            False,
            f"the signed report_data is not {evidence.binding_formula} of the bundle's keys, GPU "
            "evidence and nonce: this evidence does not vouch for these keys",
            expected=expected.hex(),
            actual=signed.hex(),
        )
    elif not _same(evidence.report_data, signed):
        report.add("binding", False, "the document's report_data differs from the signed one")
    else:
        gpus = f", {len(evidence.gpus)} GPU(s)" if evidence.gpus else ""
        report.add("binding", True, f"report_data = {evidence.binding_formula}{gpus}")


def check_expected_keys(
    report: VerificationReport,
    evidence: Evidence,
    expect_x25519: bytes | None,
    expect_ed25519: bytes | None,
    expect_kem: bytes | None = None,
) -> None:
    """The bundle's keys are the caller's. ``expect_kem`` (the veil-v3 client's lock key) fails a
    bundle that binds no post-quantum key, or another one."""
    expected = (
        ("X25519", "X25519 encryption key", expect_x25519, evidence.x25519_public_key),
        ("Ed25519", "Ed25519 signing key", expect_ed25519, evidence.ed25519_public_key),
        ("ML-KEM-768 + X25519", "post-quantum key", expect_kem, evidence.kem_public_key),
    )
    if all(want is None for _, _, want, _ in expected):
        report.not_checked("expected keys", "the caller named no keys to compare with")
        return
    wrong = [
        what
        for _, what, want, have in expected
        if want is not None and (have is None or not _same(want, have))
    ]
    if expect_kem is not None and evidence.kem_public_key is None:
        report.add(
            "expected keys",
            False,
            "the evidence binds no post-quantum (ML-KEM-768 + X25519) key: this node cannot be "
            "sent a veil-v3 request sealed with the hybrid KEM",
        )
    elif wrong:
        report.add(
            "expected keys", False, f"the evidence's {' and '.join(wrong)} differ from the expected"
        )
    else:
        named = [name for name, _, want, _ in expected if want is not None]
        report.add("expected keys", True, f"{' and '.join(named)} equal the expected keys")


# -- entry points --------------------------------------------------------------------------------
class CollateralSource(Protocol):
    """Where a verifier gets collateral the node did not offer (``collateral.py``)."""

    def describe(self) -> str: ...

    def tdx_for_quote(self, quote: bytes, *, at: datetime | None = None) -> dict[str, Any]: ...

    def snp_product(self, report: Any) -> str: ...

    def snp_vcek(
        self, product: str, chip_id: bytes, tcb: Mapping[str, int], *, at: datetime | None = None
    ) -> bytes: ...

    def snp_cert_chain(self, product: str, *, at: datetime | None = None) -> bytes: ...


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
    report.facts["verified_at"] = _iso(when)
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
    kem_public_key: bytes | None = None  # veil-v3's post-quantum key: the v3 formula binds it


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
    if not node_keys:
        report.not_checked(
            "binding", "no node keys to check report_data against (see --expect-keys)"
        )
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
        # A key with a post-quantum key beside it: the v3 formula, or the v2 one (a quote made
        # before the node had one still binds its X25519 and Ed25519 keys).
        kems = (None,) if key.kem_public_key is None else (key.kem_public_key, None)
        try:
            formulas = [
                report_data(key.x25519_public_key, key.ed25519_public_key, nonce, kem_public_key=k)
                for k in kems
            ]
        except AttestationError as exc:
            report.add("binding", False, f"cannot compute the binding: {exc}")
            return report
        if any(_same(parsed.report_data, expected) for expected in formulas):
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
