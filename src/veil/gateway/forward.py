"""Forwarding one paid request to a node and settling it, whatever happens on the way.

Every path settles exactly once: a signed final receipt charges what it says (never more than was
reserved: the ledger caps it); a stream cut short (client gone, node gone) charges the last signed
running receipt, i.e. what was produced; a node error status or an unreachable node charges nothing.
A node that answers something no Veil node would (a 200 without a valid signed receipt or without a
JSON body, an error status without the error shape) gets the caller a 502 ``ENGINE_ERROR`` instead
of its bytes, and charges nothing. The gateway never sees plaintext here: it moves bytes and reads
signed receipts.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Response
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from veil.gateway.ledger import Ledger, Reservation
from veil.gateway.metrics import GatewayMetrics
from veil.gateway.registry import NodeInfo, NodeRegistry
from veil.protocol.errors import EngineError, InvalidBody, ServiceUnavailable
from veil.protocol.tickets import (
    RECEIPT_COMMENT,
    RECEIPT_HEADER,
    TICKET_HEADER,
    SignatureInvalid,
    Ticket,
    UsageReceipt,
    envelope_digest,
    sign_token,
    verify_token,
)
from veil.web import parse_json_object

log = logging.getLogger("veil.gateway.forward")

_RECEIPT_PREFIX = RECEIPT_COMMENT.decode()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# How long settlement keeps retrying while the ledger database is unreachable (a restart, a
# failover): settling is idempotent, and giving up leaves the units held until expiry.
SETTLE_RETRY_SECONDS = 30.0


def new_request_id() -> str:
    return uuid.uuid4().hex


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the ledger database cannot be reached right now (down, restarting,
    connection cut) rather than a bug: such a request fails with 503, never 500.

    PostgreSQL SQLSTATE classes 08 (connection exception) and 57P (admin or crash shutdown,
    cannot connect now), a connection SQLAlchemy invalidated, a DBAPI OperationalError, or an
    ``OSError`` (refused, reset, timed out) anywhere in the cause chain.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError | OperationalError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(("08", "57P")):
            return True
        orig = current.orig if isinstance(current, DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


@dataclass
class Forwarder:
    client: httpx.AsyncClient
    ledger: Ledger
    registry: NodeRegistry
    key: Ed25519PrivateKey
    metrics: GatewayMetrics
    node_timeout: float

    def ticket(self, reservation: Reservation, node: NodeInfo, body: bytes, request_id: str) -> str:
        ticket = Ticket(
            ticket_id=request_id,
            stack_small_id=reservation.stack_id,
            node_small_id=node.node_small_id,
            units=reservation.units,
            expires_at=time.time() + self.node_timeout,
            envelope_sha256=envelope_digest(body),
        )
        return sign_token(ticket, self.key)

    def _receipt(self, token: str | None, node: NodeInfo, request_id: str) -> UsageReceipt | None:
        if not token or node.signing_key is None:
            return None
        try:
            receipt = verify_token(token, UsageReceipt, [node.signing_key])
        except SignatureInvalid as exc:
            log.error("node %d sent an invalid usage receipt: %s", node.node_small_id, exc)
            return None
        if receipt.ticket_id != request_id:
            log.error("node %d sent a receipt for another request", node.node_small_id)
            return None
        return receipt

    async def settle(
        self, reservation: Reservation, receipt: UsageReceipt | None, model: str
    ) -> None:
        # Shielded: a client that disconnects cancels the response task, and the ledger must
        # still be written.
        self.registry.release(reservation.id)
        with anyio.CancelScope(shield=True):
            deadline = time.monotonic() + SETTLE_RETRY_SECONDS
            delay = 0.1
            while True:
                try:
                    op = "release" if receipt is None else "settle"
                    with self.metrics.ledger_latency.labels(op).time():
                        await self._write_settlement(reservation, receipt)
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

    async def _write_settlement(
        self, reservation: Reservation, receipt: UsageReceipt | None
    ) -> None:
        """One attempt; idempotent (a reservation already final is left as it is)."""
        if receipt is None:
            await self.ledger.release(reservation.id)
            return
        await self.ledger.settle(
            reservation.id,
            receipt.compute_units,
            prompt_tokens=receipt.prompt_tokens,
            completion_tokens=receipt.completion_tokens,
            receipt=receipt.model_dump_json(),
        )

    async def forward(
        self,
        node: NodeInfo,
        path: str,
        body: bytes,
        reservation: Reservation,
        model: str,
        request_id: str,
    ) -> Response:
        headers = {
            "content-type": "application/json",
            TICKET_HEADER: self.ticket(reservation, node, body, request_id),
        }
        request = self.client.build_request(
            "POST",
            f"{node.url}{path}",
            content=body,
            headers=headers,
            timeout=httpx.Timeout(self.node_timeout, connect=5.0),
        )
        try:
            with self.metrics.node_latency.labels(path).time():
                upstream = await self.client.send(request, stream=True)
        except httpx.HTTPError:
            self.registry.mark_unhealthy(node, "connection failed")
            await self.settle(reservation, None, model)
            raise ServiceUnavailable("the node did not answer; nothing was charged") from None

        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(
                self._relay(upstream, node, reservation, model, request_id),
                status_code=upstream.status_code,
                media_type="text/event-stream",
                headers=SSE_HEADERS,
            )
        try:
            content = await upstream.aread()
        except httpx.HTTPError:
            self.registry.mark_unhealthy(node, "connection lost")
            await self.settle(reservation, None, model)
            raise ServiceUnavailable("the node connection broke; nothing was charged") from None
        finally:
            await upstream.aclose()
        receipt = None
        if upstream.status_code == 200:
            receipt = self._receipt(upstream.headers.get(RECEIPT_HEADER), node, request_id)
            malformed = receipt is None or _json_object(content) is None
        else:
            malformed = not _is_error_body(content)
        if malformed:
            await self.settle(reservation, None, model)
            log.error(
                "node %d answered HTTP %d with a malformed answer (%d bytes)",
                node.node_small_id,
                upstream.status_code,
                len(content),
            )
            raise EngineError(
                f"the node answered HTTP {upstream.status_code} with a malformed answer (no "
                "signed usage receipt or not the expected JSON); nothing was charged"
            )
        await self.settle(reservation, receipt, model)
        return Response(
            content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "application/json"),
        )

    async def _relay(
        self,
        upstream: httpx.Response,
        node: NodeInfo,
        reservation: Reservation,
        model: str,
        request_id: str,
    ) -> AsyncIterator[bytes]:
        """Pass the node's SSE lines through as they arrive, keeping the newest signed receipt."""
        latest: UsageReceipt | None = None
        try:
            async for line in upstream.aiter_lines():
                if line.startswith(_RECEIPT_PREFIX):
                    receipt = self._receipt(line[len(_RECEIPT_PREFIX) :], node, request_id)
                    if receipt is not None:
                        latest = receipt
                yield (line + "\n").encode()
        except httpx.HTTPError:
            self.registry.mark_unhealthy(node, "stream broke")
            log.warning(
                "node %d stream broke mid-way; charging what was produced", node.node_small_id
            )
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            await self.settle(reservation, latest, model)


def _json_object(content: bytes) -> dict[str, object] | None:
    try:
        return parse_json_object(content)
    except InvalidBody:
        return None


def _is_error_body(content: bytes) -> bool:
    """``{"error": {"code": str, "message": str}}``: what every Veil node error looks like."""
    document = _json_object(content)
    error = document.get("error") if document is not None else None
    return (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    )
