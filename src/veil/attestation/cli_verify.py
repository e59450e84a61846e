"""``veil attest verify``: a TDX quote, an SEV-SNP report, a GPU report or a whole evidence bundle."""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from veil.attestation.cli_inputs import (
    EXIT_FAILED,
    InputError,
    b64_option,
    bad_input,
    collateral_option,
    collateral_source,
    fetch_evidence,
    fetch_node_keys,
    load_event_log,
    load_evidence,
    out,
    parse_time,
    read_input,
)
from veil.attestation.evidence import AttestationError, Evidence
from veil.attestation.policy import Policy
from veil.attestation.report import verify_evidence, verify_quote
from veil.attestation.report_binding import NodeKey
from veil.attestation.report_steps import VerificationReport
from veil.attestation.verify_tdx import as_utc

__all__ = ["verify"]


def _bare_snp(
    report_path: Path,
    vcek: Path | None,
    chain: Path | None,
    policy: Policy,
    when: datetime | None,
    source: Any,
) -> VerificationReport:
    from veil.attestation.report_references import References
    from veil.attestation.report_snp import check_sev_snp

    raw = read_input(report_path, "SNP report")
    report = VerificationReport(subject="SEV-SNP report")
    report.add("format", True, "AMD SEV-SNP attestation report")
    signed = check_sev_snp(
        report,
        raw,
        None if vcek is None else read_input(vcek, "VCEK"),
        None if chain is None else read_input(chain, "certificate chain"),
        References(policy),
        as_utc(when),
        source,
    )
    if signed is not None:
        report.not_checked("binding", "a bare report comes without the node's keys and nonce")
    return report


def _bare_gpu(
    report_path: Path,
    chain: Path,
    rims: list[Path],
    ocsp: list[Path],
    policy: Policy,
    when: datetime | None,
    nonce: bytes | None,
) -> VerificationReport:
    from veil.attestation.nvidia import check_gpu

    report = VerificationReport(subject="GPU report")
    check_gpu(
        report,
        read_input(report_path, "GPU report"),  # raw bytes or hex text (NVIDIA's sample files)
        read_input(chain, "GPU certificate chain"),
        at=as_utc(when),
        expected_nonce=nonce,
        rims=[read_input(r, "RIM") for r in rims],
        ocsp=[read_input(o, "OCSP reply") for o in ocsp],
        allowed_drivers=policy.gpu_driver_versions,
        allowed_vbios=policy.gpu_vbios_versions,
    )
    return report


def verify(
    quote: Annotated[
        Path | None, typer.Option("--quote", help="A raw TDX quote (binary) to verify.")
    ] = None,
    evidence: Annotated[
        Path | None,
        typer.Option(
            "--evidence", "--bundle", help="A Veil evidence bundle (JSON, GET /v1/attestation)."
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Fetch a node's bundle live, for a fresh random nonce."),
    ] = None,
    snp_report: Annotated[
        Path | None, typer.Option("--snp-report", help="A raw SEV-SNP attestation report.")
    ] = None,
    vcek: Annotated[Path | None, typer.Option(help="The SNP report's VCEK (DER).")] = None,
    cert_chain: Annotated[
        Path | None, typer.Option(help="AMD's ASK + ARK chain (PEM, as KDS serves it).")
    ] = None,
    gpu_report: Annotated[
        Path | None, typer.Option("--gpu-report", help="An NVIDIA GPU SPDM report (hex or raw).")
    ] = None,
    gpu_cert_chain: Annotated[
        Path | None, typer.Option("--gpu-cert-chain", help="The GPU's device chain (PEM).")
    ] = None,
    rim: Annotated[
        list[Path] | None, typer.Option("--rim", help="A signed RIM (swidtag XML); repeatable.")
    ] = None,
    ocsp: Annotated[
        list[Path] | None, typer.Option("--ocsp", help="An OCSP reply (DER/base64); repeatable.")
    ] = None,
    collateral: Annotated[
        Path | None,
        typer.Option(
            help="TDX collateral: dcap-qvl JSON, or a directory of raw Intel PCS replies."
        ),
    ] = None,
    event_log: Annotated[
        Path | None, typer.Option(help="A dstack runtime event log (JSON) for the TDX quote.")
    ] = None,
    pccs_url: Annotated[
        str | None, typer.Option(help="Fetch TDX collateral from this PCCS / Intel PCS.")
    ] = None,
    kds_url: Annotated[
        str | None, typer.Option(help="Fetch SNP VCEKs and chains from this AMD KDS.")
    ] = None,
    offline: Annotated[
        bool, typer.Option(help="Never fetch collateral; use only what is given.")
    ] = False,
    at: Annotated[
        str | None,
        typer.Option(help="Verify as of this ISO-8601 time instead of now (naive means UTC)."),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(help="Policy file, JSON or .toml (default: strict, nothing pinned)."),
    ] = None,
    expect_keys: Annotated[
        str | None,
        typer.Option(
            "--expect-keys",
            metavar="NODE_URL",
            help="Fetch NODE_URL/v1/keys and check the quote's report_data binds those keys.",
        ),
    ] = None,
    nonce: Annotated[
        str | None,
        typer.Option(help="The nonce (base64) the node (or GPU) was asked to attest."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify a TDX quote, an SEV-SNP report, a GPU report or a whole evidence bundle, and
    print each step and its outcome."""
    try:
        given = [x for x in (quote, evidence, url, snp_report, gpu_report) if x is not None]
        if len(given) != 1:
            raise InputError(
                "give exactly one of --quote, --snp-report, --gpu-report, --bundle/--evidence "
                "or --url"
            )
        when = parse_time(at) if at is not None else None
        chosen_policy = Policy() if policy is None else Policy.load(policy)
        collateral_doc = collateral_option(collateral)
        nonce_bytes = None if nonce is None else b64_option(nonce, "--nonce")
        node_keys = None if expect_keys is None else fetch_node_keys(expect_keys)
        source = collateral_source(chosen_policy, pccs_url, kds_url, offline)
        if evidence is not None or url is not None:
            if url is not None:
                nonce_bytes = secrets.token_bytes(32)
                bundle = fetch_evidence(url, nonce_bytes)
            else:
                assert evidence is not None
                bundle = load_evidence(evidence)
            if collateral_doc is not None:
                bundle = bundle.model_copy(update={"collateral": collateral_doc})
            report = _bundle_report(bundle, chosen_policy, when, node_keys, nonce_bytes, source)
        elif snp_report is not None:
            report = _bare_snp(snp_report, vcek, cert_chain, chosen_policy, when, source)
        elif gpu_report is not None:
            if gpu_cert_chain is None:
                raise InputError("--gpu-report needs --gpu-cert-chain")
            report = _bare_gpu(
                gpu_report, gpu_cert_chain, rim or [], ocsp or [], chosen_policy, when, nonce_bytes
            )
        else:
            assert quote is not None
            raw = read_input(quote, "quote")
            events = None if event_log is None else load_event_log(event_log)
            report = verify_quote(
                raw,
                collateral_doc,
                chosen_policy,
                at=when,
                node_keys=node_keys,
                nonce=nonce_bytes,
                collateral_source=source if collateral_doc is None else None,
                event_log=events,
            )
    except (InputError, AttestationError) as exc:
        bad_input(str(exc))
    _print(report, as_json)
    raise typer.Exit(0 if report.ok else EXIT_FAILED)


def _print(report: VerificationReport, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        out.print(report.render())


def _bundle_report(
    bundle: Evidence,
    policy: Policy,
    at: datetime | None,
    node_keys: list[NodeKey] | None,
    nonce: bytes | None,
    source: Any,
) -> VerificationReport:
    expect_x = expect_ed = expect_kem = None
    if node_keys:
        match = [k for k in node_keys if k.x25519_public_key == bundle.x25519_public_key]
        chosen = match[0] if match else node_keys[0]
        expect_x, expect_ed = chosen.x25519_public_key, chosen.ed25519_public_key
        if bundle.kem_public_key is not None:  # a v3 bundle must bind the listed one
            expect_kem = chosen.kem_public_key
    return verify_evidence(
        bundle,
        policy,
        at=at,
        expect_x25519=expect_x,
        expect_ed25519=expect_ed,
        expect_nonce=nonce,
        collateral_source=source,
        expect_kem_public_key=expect_kem,
    )
