"""``veil attest``: check a node's attestation from the command line.

    veil attest verify --quote FILE [--collateral FILE] [--at ISO-8601-TIME] [--policy FILE]
                       [--expect-keys NODE_URL [--nonce B64]] [--json]
    veil attest verify --evidence FILE [...]      (the JSON document GET /v1/attestation returns)

Exit status: 0 when every step passed, 1 when a check failed, 2 when an input could not be read.
"""

from __future__ import annotations

import json
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
from veil.protocol.envelopes import b64decode

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

attest_app = typer.Typer(
    help="Verify TEE attestation evidence (Intel TDX quotes with dcap-qvl).",
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


def _evidence_report(
    path: Path,
    collateral: Any,
    policy: Policy,
    at: datetime | None,
    node_keys: list[NodeKey] | None,
    nonce: bytes | None,
) -> VerificationReport:
    document = _read_json(path, "evidence")
    try:
        evidence = Evidence.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise InputError(
            f"evidence {path} is not a Veil evidence document ({where}: {first['msg']})"
        ) from None
    if collateral is not None:
        evidence = evidence.model_copy(update={"collateral": collateral})
    expect_x = expect_ed = None
    if node_keys:
        match = [k for k in node_keys if k.x25519_public_key == evidence.x25519_public_key]
        chosen = match[0] if match else node_keys[0]
        expect_x, expect_ed = chosen.x25519_public_key, chosen.ed25519_public_key
    return verify_evidence(
        evidence,
        policy,
        at=at,
        expect_x25519=expect_x,
        expect_ed25519=expect_ed,
        expect_nonce=nonce,
    )


@attest_app.callback()
def attest() -> None:
    """Verify a node's attestation: quote signatures, TCB status, measurements, key binding."""


@attest_app.command("verify")
def verify(
    quote: Annotated[
        Path | None, typer.Option("--quote", help="A raw TDX quote (binary) to verify.")
    ] = None,
    evidence: Annotated[
        Path | None,
        typer.Option("--evidence", help="A Veil evidence JSON document (GET /v1/attestation)."),
    ] = None,
    collateral: Annotated[
        Path | None,
        typer.Option(help="dcap-qvl QuoteCollateralV3 JSON (required for a bare quote)."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(help="Verify as of this ISO-8601 time instead of now (naive means UTC)."),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(help="Policy file, JSON or .toml (default: UpToDate only, no pins)."),
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
        typer.Option(help="The nonce (base64) the node was asked to attest."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify a TDX quote or an evidence document and print each step and its outcome."""
    try:
        if (quote is None) == (evidence is None):
            raise InputError("give exactly one of --quote FILE or --evidence FILE")
        when = _parse_time(at) if at is not None else None
        chosen_policy = Policy() if policy is None else Policy.load(policy)
        collateral_doc = None if collateral is None else _read_json(collateral, "collateral")
        nonce_bytes = None if nonce is None else _b64(nonce, "--nonce")
        node_keys = None if expect_keys is None else fetch_node_keys(expect_keys)
        if evidence is not None:
            report = _evidence_report(
                evidence, collateral_doc, chosen_policy, when, node_keys, nonce_bytes
            )
        else:
            assert quote is not None
            raw = _read(quote, "quote")
            report = verify_quote(
                raw, collateral_doc, chosen_policy, at=when, node_keys=node_keys, nonce=nonce_bytes
            )
    except (InputError, AttestationError) as exc:
        _bad_input(str(exc))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        out.print(report.render())
    raise typer.Exit(0 if report.ok else EXIT_FAILED)


if __name__ == "__main__":
    attest_app()
