"""Checking the gateway's bill: every charge against a node signature the client can trust.

``veil usage --verify`` runs :func:`verify_usage` over the rows of ``GET /v1/usage`` and the
caller's stacks. It trusts nothing the gateway says about keys: a receipt counts only if its
Ed25519 signature verifies under a node signing key that this client itself saw in an attested
lock (:mod:`veil.client.known_nodes`). The checks, per row:

1. the row carries the node's signed receipt token;
2. its signature verifies under a known key (the key the gateway names first, then every known
   key: the name is only a hint);
3. that key was vouched for by real TEE evidence (a key seen only with "none" evidence counts
   only with ``allow_no_tee``);
4. the receipt is for this request (``ticket_id`` = the row's request id) and this model;
5. the charge is what the receipt says, capped by the reservation (``min(compute_units,
   reserved_units)``, the ledger's own rule), and the token counts match.

Per stack: ``used_units`` equals the sum of the signed charges of its rows that verified. So an
operator cannot bill for work no attested node signed, nor alter a receipt or a counter unseen.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.client.known_nodes import KnownNode
from veil.wire.tickets import SignatureInvalid, UsageReceipt, verify_token

__all__ = ["RowCheck", "StackCheck", "UsageVerdict", "verify_usage"]


@dataclass(frozen=True)
class RowCheck:
    row: Mapping[str, Any]
    problems: tuple[str, ...]
    signed_charge: int | None  # what the verified receipt pays for; None if it did not verify
    key_id: str | None  # the known key that verified it

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class StackCheck:
    stack_id: int
    used_units: int
    signed_units: int
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class UsageVerdict:
    rows: tuple[RowCheck, ...]
    stacks: tuple[StackCheck, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and all(s.ok for s in self.stacks)


def _named_key(row: Mapping[str, Any]) -> bytes | None:
    try:
        raw = base64.b64decode(str(row.get("node_signing_key") or ""), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def _verified(
    token: str, known: Mapping[bytes, KnownNode], hint: bytes | None
) -> tuple[UsageReceipt, KnownNode] | None:
    """The receipt and the known key it verifies under (the named key first), or None."""
    order = [known[hint]] if hint is not None and hint in known else []
    order += [node for key, node in known.items() if key != hint]
    for node in order:
        try:
            key = Ed25519PublicKey.from_public_bytes(node.signing_public_key)
            return verify_token(token, UsageReceipt, [key]), node
        except SignatureInvalid:
            continue
    return None


def check_row(
    row: Mapping[str, Any], known: Mapping[bytes, KnownNode], *, allow_no_tee: bool
) -> RowCheck:
    """Steps 1-5 of the module docstring for one usage row."""
    token = row.get("receipt")
    if not isinstance(token, str) or "." not in token:  # 1.
        return RowCheck(row, ("no signed receipt from the node",), None, None)
    found = _verified(token, known, _named_key(row))  # 2.
    if found is None:
        return RowCheck(
            row,
            (
                "the receipt's signature does not verify under any node key seen in an attested lock",
            ),
            None,
            None,
        )
    receipt, node = found
    problems: list[str] = []
    if not node.tee_attested and not allow_no_tee:  # 3.
        problems.append(
            "signed by a node only ever attested with 'none' evidence (no TEE); "
            "pass --insecure-no-tee to accept it"
        )
    request_id = row.get("request_id")  # 4.
    if not isinstance(request_id, str) or not hmac.compare_digest(
        receipt.ticket_id.encode(), request_id.encode()
    ):
        problems.append("the signed receipt is for another request")
    if receipt.model != row.get("model"):
        problems.append(
            f"the signed receipt is for model {receipt.model!r}, not {row.get('model')!r}"
        )
    reserved, charged = row.get("reserved_units"), row.get("charged_units")  # 5.
    if not isinstance(reserved, int) or not isinstance(charged, int):
        problems.append("the row's reserved or charged units are missing")
        return RowCheck(row, tuple(problems), None, node.key_id)
    signed = min(receipt.compute_units, reserved)
    if charged != signed:
        problems.append(f"charged {charged} units, the signed receipt says {signed}")
    if (row.get("prompt_tokens"), row.get("completion_tokens")) != (
        receipt.prompt_tokens,
        receipt.completion_tokens,
    ):
        problems.append(
            f"token counts {row.get('prompt_tokens')}+{row.get('completion_tokens')} differ from "
            f"the signed {receipt.prompt_tokens}+{receipt.completion_tokens}"
        )
    return RowCheck(row, tuple(problems), signed, node.key_id)


def verify_usage(
    rows: Sequence[Mapping[str, Any]],
    stacks: Sequence[Mapping[str, Any]],
    known: Mapping[bytes, KnownNode],
    *,
    allow_no_tee: bool = False,
) -> UsageVerdict:
    """Check every row, then every stack's ``used_units`` against its verified receipts.
    ``rows`` must be all of the user's usage (not one page), or the sums cannot match."""
    checks = tuple(check_row(row, known, allow_no_tee=allow_no_tee) for row in rows)
    signed: defaultdict[int, int] = defaultdict(int)
    for check in checks:
        if check.signed_charge is not None:
            signed[int(check.row.get("stack_small_id", -1))] += check.signed_charge
    results = []
    seen = set()
    for stack in stacks:
        stack_id, used = int(stack["stack_small_id"]), int(stack["used_units"])
        seen.add(stack_id)
        total = signed.get(stack_id, 0)
        problem = (
            None
            if used == total
            else f"used_units is {used} but its verified receipts add up to {total}"
        )
        results.append(StackCheck(stack_id, used, total, problem))
    for stack_id in sorted(set(signed) - seen):
        results.append(
            StackCheck(stack_id, 0, signed[stack_id], "receipts for a stack that is not listed")
        )
    return UsageVerdict(checks, tuple(results))
