"""Settling a forwarded request exactly once, and covering it until then.

While a request is served its reservation is leased; ``keep_alive`` renews the lease every third
of it (``HEARTBEATS_PER_LEASE``), however slowly the reader reads, so expiry never forgives a
request in progress. ``settle`` stops the renewals and writes the outcome once: the node's signed
receipt (charged, capped by the ledger at what was reserved) or nothing (released). The write
retries while the ledger database is unreachable, and is shielded from the caller hanging up.

Receipts are verified here (``receipt``) against the node's signing key, and the newest signed
token of each request is kept until settlement, so the ledger stores the node's own signature
(``GET /v1/usage`` shows it; ``veil usage --verify`` checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio

from veil.gateway.ledger import Ledger, Reservation, database_unavailable
from veil.gateway.metrics import GatewayMetrics
from veil.gateway.registry import NodeInfo, NodeRegistry
from veil.wire.tickets import SignatureInvalid, UsageReceipt, verify_token

__all__ = ["HEARTBEATS_PER_LEASE", "SETTLE_RETRY_SECONDS", "Settlement", "signed_receipt"]

log = logging.getLogger("veil.gateway.forward")

# How long settlement keeps retrying while the ledger database is unreachable (a restart, a
# failover): settling is idempotent, and giving up leaves the units held until expiry.
SETTLE_RETRY_SECONDS = 30.0
# Lease renewals per lease: two may fail in a row before the lease runs out (and then the
# ledger's in-flight grace still stands between a slow database and a forgiven request).
HEARTBEATS_PER_LEASE = 3


def signed_receipt(token: str | None, node: NodeInfo, ticket_id: str) -> UsageReceipt | None:
    """The usage receipt in ``token`` if ``node`` signed it for the ticket ``ticket_id``, else
    None (said in the log: a node sending anything else is misbehaving)."""
    if not token or node.signing_key is None:
        return None
    try:
        receipt = verify_token(token, UsageReceipt, [node.signing_key])
    except SignatureInvalid as exc:
        log.error("node %d sent an invalid usage receipt: %s", node.node_small_id, exc)
        return None
    if receipt.ticket_id != ticket_id:
        log.error("node %d sent a receipt for another request", node.node_small_id)
        return None
    return receipt


@dataclass
class Settlement:
    ledger: Ledger
    registry: NodeRegistry
    metrics: GatewayMetrics
    lease_seconds: float
    # reservation id -> the task renewing its lease while its request is served
    _leases: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # reservations whose settlement a stream relay or a late-answer drain has taken over
    _handed: set[str] = field(default_factory=set)
    # reservation id -> (its stream relay, model), watched by the lease renewal
    _relays: dict[str, tuple[weakref.ref[AsyncIterator[bytes]], str]] = field(default_factory=dict)
    # request id -> its newest verified receipt and the signed token it came in
    _tokens: dict[str, tuple[UsageReceipt, str]] = field(default_factory=dict)

    def keep_alive(self, reservation: Reservation, node: NodeInfo) -> None:
        """Renew ``reservation``'s lease until it is settled (``settle`` stops the renewals)."""
        if reservation.id not in self._leases:
            self._leases[reservation.id] = asyncio.create_task(self._renew(reservation, node))

    def hand_over(self, reservation: Reservation) -> None:
        """A stream relay or a late-answer drain settles this reservation when it ends."""
        self._handed.add(reservation.id)

    def watch_relay(
        self, reservation: Reservation, relay: AsyncIterator[bytes], model: str
    ) -> None:
        """A relay dropped unstarted (the caller left first) never runs its ``finally``: the
        lease renewal notices it is gone and releases the reservation instead."""
        self._relays[reservation.id] = (weakref.ref(relay), model)

    def unsettled(self, reservation: Reservation) -> bool:
        """Still covered here and not handed over: whoever is failing must release it."""
        return reservation.id in self._leases and reservation.id not in self._handed

    def stop(self) -> None:
        """At shutdown: no more renewals."""
        for task in self._leases.values():
            task.cancel()

    async def _renew(self, reservation: Reservation, node: NodeInfo) -> None:
        interval = self.lease_seconds / HEARTBEATS_PER_LEASE
        while True:
            await asyncio.sleep(interval)
            relay = self._relays.get(reservation.id)
            if relay is not None and relay[0]() is None:
                log.warning("a stream was dropped before it was relayed; releasing its units")
                self._leases.pop(reservation.id, None)  # this task: settle must not cancel it
                await self.settle(reservation, None, relay[1])
                return
            try:
                deadline = await self.ledger.heartbeat(
                    reservation.id, lease_seconds=self.lease_seconds
                )
            except Exception as exc:  # the next beat may succeed; the grace covers a few misses
                log.warning("lease renewal failed (%s); retrying", type(exc).__name__)
                continue
            if deadline is None:  # settled, or expired by a sweep: nothing left to cover
                return
            with contextlib.suppress(Exception):  # the node may have left the registry
                self.registry.hold(node.node_small_id, reservation.id, deadline)

    def receipt(self, token: str | None, node: NodeInfo, request_id: str) -> UsageReceipt | None:
        """The usage receipt in ``token`` if the node signed it for this request, else None."""
        receipt = signed_receipt(token, node, request_id)
        if receipt is not None and token is not None:
            self._tokens[request_id] = (receipt, token.strip())
        return receipt

    async def settle(
        self,
        reservation: Reservation,
        receipt: UsageReceipt | None,
        model: str,
        token: str | None = None,
    ) -> None:
        """Charge ``receipt`` (None: release), once, retrying while the database is down."""
        lease = self._leases.pop(reservation.id, None)
        if lease is not None:
            lease.cancel()
        self._handed.discard(reservation.id)
        self._relays.pop(reservation.id, None)
        signed = self._tokens.pop(reservation.request_id or "", None)
        if receipt is not None:
            signed = self._tokens.pop(receipt.ticket_id, signed)
        if token is None and signed is not None and signed[0] is receipt:
            token = signed[1]
        self.registry.release(reservation.id)
        # Shielded: a client that disconnects cancels the response task, and the ledger must
        # still be written.
        with anyio.CancelScope(shield=True):
            deadline = time.monotonic() + SETTLE_RETRY_SECONDS
            delay = 0.1
            while True:
                try:
                    op = "release" if receipt is None else "settle"
                    with self.metrics.ledger_latency.labels(op).time():
                        await self._write(reservation, receipt, token)
                    break
                except Exception as exc:
                    if not database_unavailable(exc) or time.monotonic() + delay > deadline:
                        raise
                    log.warning(
                        "ledger unavailable while settling (%s); retrying", type(exc).__name__
                    )
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            if receipt is not None:
                self.metrics.units_charged.labels(model).inc(
                    min(receipt.compute_units, reservation.units)
                )

    async def _write(
        self, reservation: Reservation, receipt: UsageReceipt | None, token: str | None
    ) -> None:
        """One attempt; idempotent (a reservation already final is left as it is). The node's
        signed token is what the ledger keeps, so a user can check the charge."""
        if receipt is None:
            await self.ledger.release(reservation.id)
            return
        await self.ledger.settle(
            reservation.id,
            receipt.compute_units,
            prompt_tokens=receipt.prompt_tokens,
            completion_tokens=receipt.completion_tokens,
            receipt=token.strip() if token else receipt.model_dump_json(),
        )
