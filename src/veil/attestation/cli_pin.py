"""``veil attest pin``: trust on first use, written as a policy file that pins what a node measured."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from veil.attestation.cli_inputs import (
    EXIT_FAILED,
    InputError,
    bad_input,
    collateral_source,
    err,
    fetch_evidence,
    out,
    parse_time,
)
from veil.attestation.evidence import AttestationError, Evidence
from veil.attestation.policy import Policy
from veil.attestation.report import verify_evidence
from veil.attestation.report_steps import VerificationReport

__all__ = ["pin", "pins_from_report", "policy_toml"]


def pin(
    node_url: Annotated[str, typer.Argument(help="The node (or gateway-relayed node) to pin.")],
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the policy (TOML).")],
    policy: Annotated[
        Path | None, typer.Option(help="Start from this policy (collateral sources, statuses).")
    ] = None,
    pccs_url: Annotated[str | None, typer.Option(help="PCCS / Intel PCS for TDX.")] = None,
    kds_url: Annotated[str | None, typer.Option(help="AMD KDS for SEV-SNP.")] = None,
    at: Annotated[str | None, typer.Option(help="Verify as of this time (ISO-8601).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Trust on first use: verify a node's evidence (fresh nonce) except the pins, then write a
    policy pinning what it measured. Pin only a node you have reason to trust right now."""
    try:
        if out_path.exists() and not force:
            raise InputError(f"{out_path} exists; pass --force to overwrite it")
        base = Policy() if policy is None else Policy.load(policy)
        when = parse_time(at) if at is not None else None
        nonce = secrets.token_bytes(32)
        bundle = fetch_evidence(node_url, nonce)
        source = collateral_source(base, pccs_url, kds_url, False)
        report = verify_evidence(
            bundle, base, at=when, expect_nonce=nonce, collateral_source=source
        )
        pins = pins_from_report(bundle, report)
    except (InputError, AttestationError) as exc:
        bad_input(str(exc))
    unpinned_failures = [s for s in report.failures if s.name != "measurements"]
    if unpinned_failures or not pins:
        out.print(report.render())
        _bad_input_exit(
            "not pinned: the evidence fails checks other than the pins "
            f"({', '.join(s.name for s in unpinned_failures) or 'no measurements seen'})"
        )
    document = {**base.model_dump(mode="json", exclude_defaults=True), **pins}
    out_path.write_text(policy_toml(document))
    err.print(
        f"[bold yellow]Trust on first use:[/] pinned what {node_url} measured right now "
        f"({', '.join(pins)}) into {out_path}. This trusts the node as it is today; compare "
        "these values with the release its operator publishes.",
        highlight=False,
        soft_wrap=True,
    )


def _bad_input_exit(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_FAILED)


def pins_from_report(bundle: Evidence, report: VerificationReport) -> dict[str, Any]:
    """The measurements a verified report saw, as policy keys."""
    facts = report.facts
    if bundle.format == "tdx" and "mr_td" in facts:
        pins: dict[str, Any] = {
            name: facts[name] for name in ("mr_td", "rtmr0", "rtmr1", "rtmr2") if name in facts
        }
        if bundle.event_log is not None and "compose_hash" in facts:
            pins["app_compose_hash"] = [facts["compose_hash"]]
        else:
            pins["rtmr3"] = facts.get("rtmr3")
        return {k: v for k, v in pins.items() if v is not None}
    if bundle.format == "sev-snp" and "snp_measurement" in facts:
        return {"snp_measurement": [facts["snp_measurement"]]}
    return {}


def policy_toml(document: dict[str, Any]) -> str:
    """A small TOML writer for a flat policy (strings, numbers, booleans, lists, tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(str(v))

    lines = ["# written by `veil attest pin` (trust on first use)"]
    for key, v in document.items():
        if key == "release_signers":
            continue
        lines.append(f"{key} = {value(v)}")
    for signer in document.get("release_signers", []):
        lines.append("")
        lines.append("[[release_signers]]")
        lines.extend(f"{k} = {value(x)}" for k, x in signer.items())
    return "\n".join(lines) + "\n"
