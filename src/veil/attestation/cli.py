"""``veil attest``: check a node's attestation from the command line.

    veil attest verify --quote FILE [--collateral FILE|DIR] [--event-log FILE] [...]
    veil attest verify --snp-report FILE [--vcek FILE --cert-chain FILE] [...]
    veil attest verify --gpu-report FILE --gpu-cert-chain FILE [--rim FILE ...] [--ocsp FILE ...]
    veil attest verify --bundle FILE | --evidence FILE      (what GET /v1/attestation returns)
    veil attest verify --url NODE_URL                        (live, with a fresh nonce)
        common: [--at ISO-8601-TIME] [--policy FILE] [--pccs-url URL] [--kds-url URL]
                [--expect-keys NODE_URL [--nonce B64]] [--json]
    veil attest pin NODE_URL --out policy.toml               (trust on first use)

Exit status: 0 when every step that applies passed, 1 when a check failed, 2 when an input could
not be read.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console

from veil.attestation.evidence import AttestationError, Evidence
from veil.attestation.policy import Policy
from veil.attestation.report import NodeKey, VerificationReport, verify_evidence, verify_quote
from veil.attestation.verify_tdx import as_utc
from veil.wire.envelopes import b64decode

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

attest_app = typer.Typer(
    help="Verify TEE attestation evidence: Intel TDX, AMD SEV-SNP, NVIDIA GPUs, releases.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


class InputError(Exception):
    """An input the command cannot use; one line, printed as is."""


def _bad_input(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _read_json(path: Path, what: str) -> Any:
    raw = _read(path, what)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc}") from None


def _parse_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"--at {value!r} is not an ISO-8601 time (e.g. 2025-07-01T00:00:00Z)"
        ) from None


def _b64(value: str, what: str) -> bytes:
    try:
        return b64decode(value, field=what)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def fetch_node_keys(node_url: str, *, timeout: float = 10.0) -> list[NodeKey]:
    """The keys a node lists at ``GET NODE_URL/v1/keys`` (current first)."""
    url = node_url.rstrip("/") + "/v1/keys"
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        document = response.json()
    except httpx.HTTPStatusError as exc:
        raise InputError(f"{url} answered HTTP {exc.response.status_code}") from None
    except httpx.HTTPError as exc:
        raise InputError(f"cannot fetch {url}: {exc}") from None
    except ValueError:
        raise InputError(f"{url} did not return JSON") from None
    try:
        signing = b64decode(document["signing_public_key"], field="signing_public_key")
        listed = sorted(document["keys"], key=lambda k: k.get("status") != "current")
        keys = [
            NodeKey(
                label=f"{entry.get('status', 'listed')} ({entry.get('key_id', '?')})",
                x25519_public_key=b64decode(entry["public_key"], field="public_key"),
                ed25519_public_key=signing,
            )
            for entry in listed
        ]
    except (KeyError, TypeError, AttributeError, ValueError):
        raise InputError(f"{url} is not a Veil key listing") from None
    if not keys:
        raise InputError(f"{url} lists no keys")
    return keys


@attest_app.callback()
def attest() -> None:
    """Verify a node's attestation: signatures, collateral, measurements, GPUs, key binding."""


def _collateral_arg(path: Path | None) -> dict[str, Any] | None:
    """``--collateral``: dcap-qvl's JSON, or a directory of raw Intel PCS replies."""
    if path is None:
        return None
    from veil.attestation.collateral import collateral_from_path

    if not path.exists():
        raise InputError(f"cannot read collateral {path}: No such file or directory")
    return dict(collateral_from_path(path))


def _source(policy: Policy, pccs_url: str | None, kds_url: str | None, offline: bool) -> Any:
    if offline:
        return None
    from veil.attestation.collateral import fetcher_for

    return fetcher_for(policy, pccs_url=pccs_url, kds_url=kds_url)


def _fetch_evidence(node_url: str, nonce: bytes, *, timeout: float = 30.0) -> Evidence:
    url = node_url.rstrip("/") + "/v1/attestation"
    try:
        response = httpx.get(
            url, params={"nonce": base64.b64encode(nonce).decode()}, timeout=timeout
        )
        response.raise_for_status()
        return Evidence.model_validate_json(response.content)
    except httpx.HTTPStatusError as exc:
        raise InputError(f"{url} answered HTTP {exc.response.status_code}") from None
    except httpx.HTTPError as exc:
        raise InputError(f"cannot fetch {url}: {exc}") from None
    except ValidationError:
        raise InputError(f"{url} did not return a Veil evidence bundle") from None


def _load_evidence(path: Path) -> Evidence:
    document = _read_json(path, "evidence")
    try:
        return Evidence.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise InputError(
            f"evidence {path} is not a Veil evidence document ({where}: {first['msg']})"
        ) from None


def _bare_snp(
    report_path: Path,
    vcek: Path | None,
    chain: Path | None,
    policy: Policy,
    when: datetime | None,
    source: Any,
) -> VerificationReport:
    from veil.attestation.report import References, check_sev_snp

    raw = _read(report_path, "SNP report")
    report = VerificationReport(subject="SEV-SNP report")
    report.add("format", True, "AMD SEV-SNP attestation report")
    signed = check_sev_snp(
        report,
        raw,
        None if vcek is None else _read(vcek, "VCEK"),
        None if chain is None else _read(chain, "certificate chain"),
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
        _read(report_path, "GPU report"),  # raw bytes or hex text (NVIDIA's sample files)
        _read(chain, "GPU certificate chain"),
        at=as_utc(when),
        expected_nonce=nonce,
        rims=[_read(r, "RIM") for r in rims],
        ocsp=[_read(o, "OCSP reply") for o in ocsp],
        allowed_drivers=policy.gpu_driver_versions,
        allowed_vbios=policy.gpu_vbios_versions,
    )
    return report


@attest_app.command("verify")
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
        when = _parse_time(at) if at is not None else None
        chosen_policy = Policy() if policy is None else Policy.load(policy)
        collateral_doc = _collateral_arg(collateral)
        nonce_bytes = None if nonce is None else _b64(nonce, "--nonce")
        node_keys = None if expect_keys is None else fetch_node_keys(expect_keys)
        source = _source(chosen_policy, pccs_url, kds_url, offline)
        if evidence is not None or url is not None:
            if url is not None:
                nonce_bytes = secrets.token_bytes(32)
                bundle = _fetch_evidence(url, nonce_bytes)
            else:
                assert evidence is not None
                bundle = _load_evidence(evidence)
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
            raw = _read(quote, "quote")
            events = None if event_log is None else _event_log(event_log)
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
        _bad_input(str(exc))
    _print(report, as_json)
    raise typer.Exit(0 if report.ok else EXIT_FAILED)


def _event_log(path: Path) -> list[dict[str, Any]]:
    document = _read_json(path, "event log")
    if isinstance(document, dict) and isinstance(document.get("event_log"), list):
        document = document["event_log"]
    if not isinstance(document, list):
        raise InputError(f"event log {path} is not a JSON list of events")
    return document


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
    expect_x = expect_ed = None
    if node_keys:
        match = [k for k in node_keys if k.x25519_public_key == bundle.x25519_public_key]
        chosen = match[0] if match else node_keys[0]
        expect_x, expect_ed = chosen.x25519_public_key, chosen.ed25519_public_key
    return verify_evidence(
        bundle,
        policy,
        at=at,
        expect_x25519=expect_x,
        expect_ed25519=expect_ed,
        expect_nonce=nonce,
        collateral_source=source,
    )


@attest_app.command("pin")
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
        when = _parse_time(at) if at is not None else None
        nonce = secrets.token_bytes(32)
        bundle = _fetch_evidence(node_url, nonce)
        source = _source(base, pccs_url, kds_url, False)
        report = verify_evidence(
            bundle, base, at=when, expect_nonce=nonce, collateral_source=source
        )
        pins = pins_from_report(bundle, report)
    except (InputError, AttestationError) as exc:
        _bad_input(str(exc))
    unpinned_failures = [s for s in report.failures if s.name != "measurements"]
    if unpinned_failures or not pins:
        out.print(report.render())
        _bad_input_exit(
            "not pinned: the evidence fails checks other than the pins "
            f"({', '.join(s.name for s in unpinned_failures) or 'no measurements seen'})"
        )
    document = {**base.model_dump(mode="json", exclude_defaults=True), **pins}
    out_path.write_text(_toml(document))
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


def _toml(document: dict[str, Any]) -> str:
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


if __name__ == "__main__":
    attest_app()
