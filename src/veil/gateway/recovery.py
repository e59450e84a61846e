"""Charging what a dead gateway answered: orphaned reservations recovered from their nodes' receipts.

A gateway writes a request's charge after the node's answer reached it (a stream: when the stream
ends). Killed in between, it leaves the reservation in flight; once its lease is the in-flight
grace overdue, the expiry sweep would hand every unit back, and the caller would have had the
answer (or the part of a stream sent before the crash) free. So before each sweep the gateway
takes those orphans (``Ledger.orphans``), asks each one's node for the receipts it kept
(``POST /v1/receipts`` with a ``ReceiptQuery`` signed by this gateway's key, ``veil.node.receipt_log``),
checks every receipt against that node's signing key and the orphan's ticket, and settles the
orphan with it, the receipt stored as for any settlement. An orphan whose node is gone, has no
receipt or answers something else is released by the sweep as before (and said so in the log).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.gateway.forward import read_bounded
from veil.gateway.ledger import Ledger, Orphan
from veil.gateway.registry import NodeInfo, NodeRegistry
from veil.gateway.settlement import signed_receipt
from veil.wire.errors import NotFound
from veil.wire.tickets import (
    MAX_RECEIPT_QUERY_IDS,
    RECEIPTS_PATH,
    ReceiptQuery,
    sign_token,
)

__all__ = ["recover_orphans"]

log = logging.getLogger("veil.gateway.recovery")

#: How long one node may take to answer a receipt query.
QUERY_TIMEOUT_SECONDS = 5.0
#: The largest answer read from a node: 1,000 receipts of well under 1 KiB each.
ANSWER_MAX_BYTES = 2 * 1024 * 1024


async def recover_orphans(
    ledger: Ledger,
    registry: NodeRegistry,
    client: httpx.AsyncClient,
    key: Ed25519PrivateKey,
    *,
    now: float | None = None,
) -> int:
    """Settle every orphan whose node kept a valid receipt for it; returns how many were
    charged. Never raises for a node's failure: that orphan is left to the sweep."""
    charged = 0
    after: Orphan | None = None
    while True:  # a page of at most one query's ids at a time
        page = await ledger.orphans(now, limit=MAX_RECEIPT_QUERY_IDS, after=after)
        if not page:
            break
        by_node: dict[int, list[Orphan]] = defaultdict(list)
        for orphan in page:
            by_node[orphan.node_small_id].append(orphan)
        for node_small_id, group in by_node.items():
            charged += await _recover_group(ledger, registry, client, key, node_small_id, group)
        if len(page) < MAX_RECEIPT_QUERY_IDS:
            break
        after = page[-1]
    if charged:
        log.info("charged %d orphaned request(s) from their nodes' receipts", charged)
    return charged


async def _recover_group(
    ledger: Ledger,
    registry: NodeRegistry,
    client: httpx.AsyncClient,
    key: Ed25519PrivateKey,
    node_small_id: int,
    group: list[Orphan],
) -> int:
    try:
        node = registry.by_id(node_small_id)
    except NotFound:
        log.warning(
            "%d orphaned request(s) of node %d: the node is not in rotation, nothing recovered",
            len(group),
            node_small_id,
        )
        return 0
    receipts = await _ask(node, group, client, key)
    charged = 0
    for orphan in group:
        token = receipts.get(orphan.request_id)
        receipt = signed_receipt(token, node, orphan.request_id)
        if token is None or receipt is None:
            continue
        try:
            await ledger.settle(
                orphan.id,
                receipt.compute_units,
                prompt_tokens=receipt.prompt_tokens,
                completion_tokens=receipt.completion_tokens,
                receipt=token.strip(),
            )
        except Exception as exc:  # this orphan is left to the sweep; the others go on
            log.error("charging an orphan from its receipt failed: %s", type(exc).__name__)
            continue
        charged += 1
    if charged < len(group):
        log.warning(
            "%d orphaned request(s) of node %d have no valid receipt there: released",
            len(group) - charged,
            node_small_id,
        )
    return charged


async def _ask(
    node: NodeInfo, group: list[Orphan], client: httpx.AsyncClient, key: Ed25519PrivateKey
) -> dict[str, str]:
    """The node's kept receipts for ``group`` by ticket id ({} when it cannot say)."""
    query = ReceiptQuery(ticket_ids=[o.request_id for o in group], issued_at=time.time())
    url = f"{node.url}{RECEIPTS_PATH}"
    try:
        async with client.stream(
            "POST", url, json={"query": sign_token(query, key)}, timeout=QUERY_TIMEOUT_SECONDS
        ) as answer:
            if answer.status_code != 200:
                log.warning(
                    "node %d answered the receipt query with HTTP %d",
                    node.node_small_id,
                    answer.status_code,
                )
                return {}
            body = await read_bounded(answer, ANSWER_MAX_BYTES)
    except httpx.HTTPError as exc:
        log.warning("node %d: receipt query failed (%s)", node.node_small_id, type(exc).__name__)
        return {}
    if body is None:
        log.warning("node %d: receipt answer too large", node.node_small_id)
        return {}
    try:
        found = json.loads(body).get("receipts")
    except (ValueError, AttributeError, RecursionError):
        found = None
    if not isinstance(found, dict):
        log.warning("node %d answered the receipt query without receipts", node.node_small_id)
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}
