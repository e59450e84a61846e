"""``veil usage``: every charged request with its node's signed receipt; ``--verify`` checks
every receipt's signature against node keys seen in attested locks, and every stack's used units
against its receipts (``veil.client.usage``). ``--file FILE`` reads the receipts the web console
downloaded instead of the gateway (``veil.client.usage_file``); ``--trust-page-nodes`` adds the
keys that page attested to this client's own."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer

from veil.client.cli import DEFAULT_BASE_URL, ApiKey, BaseUrl, InsecureNoTee, err, fail, require_key

if TYPE_CHECKING:
    from veil.client.known_nodes import KnownNode

USAGE_PAGE = 1000  # rows per GET /v1/usage (the gateway's maximum)


def _get_json(http: httpx.Client, url: str, key: str, params: dict[str, Any]) -> Any:
    from veil.wire.errors import error_from_body

    try:
        response = http.get(url, params=params, headers={"authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        fail("TRANSPORT_ERROR", f"cannot reach {url}: {type(exc).__name__}")
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.status_code != 200:
        failure = error_from_body(response.status_code, document)
        fail(failure.code, failure.message)
    if not isinstance(document, dict):
        fail("MALFORMED_RESPONSE", f"{url} did not answer a JSON object")
    return document


def _usage_rows(
    http: httpx.Client, root: str, key: str, since: str | None, user: str | None
) -> list[dict[str, Any]]:
    """Every row, page after page (the gateway caps a page at USAGE_PAGE rows)."""
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        params: dict[str, Any] = {"limit": USAGE_PAGE, "after": after}
        if since is not None:
            params["since"] = since
        if user is not None:
            params["user"] = user
        page = _get_json(http, f"{root}/v1/usage", key, params)
        rows.extend(page.get("usage") or [])
        following = page.get("next_after")
        if not isinstance(following, int) or following <= after:
            return rows
        after = following


def _usage_line(row: dict[str, Any], status: str) -> str:
    return (
        f"{row.get('time_iso', '?'):<32} stack {row.get('stack_small_id')!s:>5}  "
        f"{row.get('model')!s:<20} {row.get('charged_units')!s:>8} units "
        f"({row.get('prompt_tokens')}+{row.get('completion_tokens')} tokens)  "
        f"node {row.get('node_small_id')} key {row.get('node_signing_key_id') or '-'}  {status}"
    )


def usage(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only from this time on: ISO 8601 or Unix seconds."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Check every receipt's signature against node keys seen in attested locks, "
            "and every stack's used units against its receipts; exit 1 if anything fails.",
        ),
    ] = False,
    user: Annotated[
        str | None, typer.Option("--user", help="Another user's usage (admin API key).")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="Read the receipts the web console's Usage page downloaded, not the gateway.",
            dir_okay=False,
        ),
    ] = None,
    trust_page_nodes: Annotated[
        bool,
        typer.Option(
            "--trust-page-nodes",
            help="With --file: also trust the node keys the page attested (only if you trust "
            "the page that wrote the file, e.g. one `veil console` served).",
        ),
    ] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    insecure_no_tee: InsecureNoTee = False,
) -> None:
    """Every charged request with its signed node receipt; --verify checks the bill."""
    from veil.client.known_nodes import KnownNodes, KnownNodesError
    from veil.client.options import gateway_root

    if trust_page_nodes and file is None:
        fail("USAGE", "--trust-page-nodes applies to a receipts file: give --file FILE")
    if file is not None:
        if since is not None or user is not None:
            fail("USAGE", "--since and --user ask the gateway; --file reads what the page saved")
        _from_file(file, verify, as_json, trust_page_nodes, insecure_no_tee)
        return
    key = require_key(api_key)
    root = gateway_root(base_url)
    with httpx.Client(timeout=60) as http:
        # The stack sums need every row, so --verify reads all of them and filters for display.
        rows = _usage_rows(http, root, key, None if verify else since, user)
        if not verify:
            if as_json:
                sys.stdout.write(json.dumps({"usage": rows}, indent=2) + "\n")
            else:
                for row in rows:
                    sys.stdout.write(_usage_line(row, "") + "\n")
            return
        stacks_url = f"{root}/admin/stacks" if user else f"{root}/v1/stacks"
        stacks = _get_json(http, stacks_url, key, {"user": user} if user else {})["stacks"]
        # Which rows to show: the gateway applies --since (one rule for the time formats).
        wanted = (
            {r.get("id") for r in _usage_rows(http, root, key, since, user)}
            if since is not None
            else {r.get("id") for r in rows}
        )
    try:
        known = KnownNodes().load()
    except KnownNodesError as exc:
        fail("KNOWN_NODES", str(exc))
    _report(rows, stacks, known, wanted, as_json, insecure_no_tee)


def _from_file(
    path: Path, verify: bool, as_json: bool, trust_page_nodes: bool, insecure_no_tee: bool
) -> None:
    """``--file``: the console's download, listed or verified like a live read."""
    from veil.client.known_nodes import KnownNodes, KnownNodesError
    from veil.client.usage_file import ReceiptsFileError, read_receipts_file

    try:
        saved = read_receipts_file(path)
    except ReceiptsFileError as exc:
        fail("RECEIPTS_FILE", str(exc))
    if not verify:
        if as_json:
            sys.stdout.write(json.dumps({"usage": saved.rows}, indent=2) + "\n")
        else:
            for row in saved.rows:
                sys.stdout.write(_usage_line(row, "") + "\n")
        return
    try:
        known = KnownNodes().load()
    except KnownNodesError as exc:
        fail("KNOWN_NODES", str(exc))
    if trust_page_nodes:
        err.print(
            f"trusting {len(saved.page_nodes)} node key(s) the page attested, beside "
            f"{len(known)} this client attested itself"
        )
        known = {**saved.page_nodes, **known}  # this client's own record wins on a shared key
    elif saved.page_nodes.keys() - known.keys():
        err.print(
            f"the page attested {len(saved.page_nodes.keys() - known.keys())} node key(s) this "
            "client never saw; pass --trust-page-nodes if you trust the page that saved the file"
        )
    wanted = {r.get("id") for r in saved.rows}
    _report(saved.rows, saved.stacks, known, wanted, as_json, insecure_no_tee)


def _report(
    rows: list[dict[str, Any]],
    stacks: list[dict[str, Any]],
    known: Mapping[bytes, KnownNode],
    wanted: set[Any],
    as_json: bool,
    insecure_no_tee: bool,
) -> None:
    """The verdict on ``rows`` and ``stacks``, shown for the ``wanted`` rows; exit 1 on a failure."""
    from veil.client.usage import verify_usage

    verdict = verify_usage(rows, stacks, known, allow_no_tee=insecure_no_tee)
    shown = {id(r) for r in rows if r.get("id") in wanted}
    if as_json:
        document = {
            "ok": verdict.ok,
            "usage": [
                {**c.row, "verified": c.ok, "problems": list(c.problems)}
                for c in verdict.rows
                if id(c.row) in shown
            ],
            "stacks": [
                {
                    "stack_small_id": s.stack_id,
                    "used_units": s.used_units,
                    "signed_units": s.signed_units,
                    "ok": s.ok,
                    "problem": s.problem,
                }
                for s in verdict.stacks
            ],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        for check in verdict.rows:
            if id(check.row) in shown:
                status = "OK" if check.ok else "FAIL: " + "; ".join(check.problems)
                sys.stdout.write(_usage_line(dict(check.row), status) + "\n")
        for stack in verdict.stacks:
            status = "OK" if stack.ok else f"FAIL: {stack.problem}"
            sys.stdout.write(
                f"stack {stack.stack_id}: used {stack.used_units} units, signed "
                f"{stack.signed_units}  {status}\n"
            )
    failures = sum(not c.ok for c in verdict.rows) + sum(not s.ok for s in verdict.stacks)
    if failures:
        err.print(f"usage does not verify: {failures} problem(s) ({len(rows)} receipts checked)")
        raise typer.Exit(1)
    err.print(f"usage verified: {len(rows)} receipt(s), {len(verdict.stacks)} stack(s)")
