"""What ``veil attest`` reads: files, times, nonces, a node's keys and evidence, collateral options.

Every input that cannot be used becomes one ``InputError`` line, printed as ``error:`` with exit
status 2 (``bad_input``).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console

from veil.attestation.evidence import Evidence
from veil.attestation.policy import Policy
from veil.attestation.report_binding import NodeKey
from veil.wire.envelopes import b64decode

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
out = Console()
err = Console(stderr=True)


class InputError(Exception):
    """An input the command cannot use; one line, printed as is."""


def bad_input(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_json(path: Path, what: str) -> Any:
    raw = read_input(path, what)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc}") from None


def parse_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"--at {value!r} is not an ISO-8601 time (e.g. 2025-07-01T00:00:00Z)"
        ) from None


def b64_option(value: str, what: str) -> bytes:
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
                kem_public_key=b64decode(entry["kem_public_key"], field="kem_public_key")
                if "kem_public_key" in entry
                else None,
            )
            for entry in listed
        ]
    except (KeyError, TypeError, AttributeError, ValueError):
        raise InputError(f"{url} is not a Veil key listing") from None
    if not keys:
        raise InputError(f"{url} lists no keys")
    return keys


def collateral_option(path: Path | None) -> dict[str, Any] | None:
    """``--collateral``: dcap-qvl's JSON, or a directory of raw Intel PCS replies."""
    if path is None:
        return None
    from veil.attestation.collateral import collateral_from_path

    if not path.exists():
        raise InputError(f"cannot read collateral {path}: No such file or directory")
    return dict(collateral_from_path(path))


def collateral_source(
    policy: Policy, pccs_url: str | None, kds_url: str | None, offline: bool
) -> Any:
    if offline:
        return None
    from veil.attestation.collateral import fetcher_for

    return fetcher_for(policy, pccs_url=pccs_url, kds_url=kds_url)


def fetch_evidence(node_url: str, nonce: bytes, *, timeout: float = 30.0) -> Evidence:
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


def load_evidence(path: Path) -> Evidence:
    document = read_json(path, "evidence")
    try:
        return Evidence.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise InputError(
            f"evidence {path} is not a Veil evidence document ({where}: {first['msg']})"
        ) from None


def load_event_log(path: Path) -> list[dict[str, Any]]:
    document = read_json(path, "event log")
    if isinstance(document, dict) and isinstance(document.get("event_log"), list):
        document = document["event_log"]
    if not isinstance(document, list):
        raise InputError(f"event log {path} is not a JSON list of events")
    return document
