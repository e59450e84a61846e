"""Forwarding one paid request to a node and settling it, whatever happens on the way.

Every path settles exactly once: a signed final receipt charges what it says (never more than was
reserved: the ledger caps it); a stream cut short (client gone, node gone) charges the last signed
running receipt, i.e. what was produced; a node error status without a receipt or an unreachable
node charges nothing.

A request is covered for as long as it runs: the claim leased its reservation (``lease_seconds``),
and a heartbeat renews the lease every third of it while the request is being served (however
slowly its reader reads), so expiry never forgives it. A non-streamed request's ticket carries a
deadline one node timeout away: there the node stops the engine and answers what it produced,
signed, which is charged. A node that has not answered even a margin later is left to answer in
the background (the caller gets a 503; whatever the node then signs is charged). A long request
is the caller's doing, not the node's failure: a node is marked unhealthy only for its own
failures (refused or broken connections), never for a timeout.
A node that answers something no Veil node would (a 200 without a valid signed receipt or without a
JSON body, an error status without the error shape) gets the caller a 502 ``ENGINE_ERROR`` instead
of its bytes, and charges nothing. The gateway never sees plaintext here: it moves bytes and reads
signed receipts.

The lease renewals, the receipt checks and the ledger writes are ``settlement.Settlement``'s; this
module is the exchange with the node (the ticket, the request, the answer or stream, the drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Response
from fastapi.responses import StreamingResponse

from veil.gateway.ledger import Ledger, Reservation
from veil.gateway.metrics import GatewayMetrics
from veil.gateway.registry import NodeInfo, NodeRegistry
from veil.gateway.settlement import Settlement
from veil.web import parse_json_object
from veil.wire.errors import EngineError, InvalidBody, ServiceUnavailable
from veil.wire.tickets import (
    RECEIPT_COMMENT,
    RECEIPT_HEADER,
    TICKET_HEADER,
    Ticket,
    UsageReceipt,
    envelope_digest,
    sign_token,
)

log = logging.getLogger("veil.gateway.forward")

#: The longest SSE line a stream relays (a sealed chat chunk is a few hundred bytes): a node that
#: sends more without a line end is cut off rather than buffered without bound.
STREAM_LINE_BYTES = 1 << 20
#: The largest whole answer read from a node (a sealed batch of embeddings or images runs to
#: megabytes): a node that sends more gets the caller a 502 instead of being buffered without bound.
ANSWER_BYTES = 64 << 20
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def answer_margin(node_timeout: float) -> float:
    """How long past a ticket's deadline the node's answer may take to arrive (1 to 10 s)."""
    return min(max(1.0, node_timeout), 10.0)


def lease_for(node_timeout: float) -> float:
    """The lease a claim or a heartbeat gives a request: a node timeout and its answer margin."""
    return node_timeout + answer_margin(node_timeout)


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Forwarder:
    client: httpx.AsyncClient
    ledger: Ledger
    registry: NodeRegistry
    key: Ed25519PrivateKey
    metrics: GatewayMetrics
    node_timeout: float
    # requests the caller was answered for (a node timeout) that still wait for the node's receipt
    _draining: set[asyncio.Task[None]] = field(default_factory=set)
    settlement: Settlement = field(init=False)

    def __post_init__(self) -> None:
        self.settlement = Settlement(self.ledger, self.registry, self.metrics, self.lease_seconds)

    @property
    def lease_seconds(self) -> float:
        """How long a claim or a heartbeat covers a request: a deadline and its margin."""
        return lease_for(self.node_timeout)

    async def aclose(self) -> None:
        """At shutdown: stop listening for late answers (their units are released) and renewals."""
        self.settlement.stop()
        for task in self._draining:
            task.cancel()
        for task in list(self._draining):
            with contextlib.suppress(BaseException):
                await task

    def ticket(
        self,
        reservation: Reservation,
        node: NodeInfo,
        body: bytes,
        request_id: str,
        *,
        stream: bool = False,
    ) -> str:
        now = time.time()
        ticket = Ticket(
            ticket_id=request_id,
            stack_small_id=reservation.stack_id,
            node_small_id=node.node_small_id,
            units=reservation.units,
            expires_at=now + self.node_timeout,
            envelope_sha256=envelope_digest(body),
            deadline=None if stream else now + self.node_timeout,
            # A veil-v3 request is sealed bound to its lock's reservation: the node compares.
            reservation_id=reservation.id,
        )
        return sign_token(ticket, self.key)

    async def forward(
        self,
        node: NodeInfo,
        path: str,
        body: bytes,
        reservation: Reservation,
        model: str,
        request_id: str,
        *,
        stream: bool = False,
    ) -> Response:
        """Send ``body`` to the node and settle. ``stream``: the request says it streams (then
        its ticket carries no deadline: heartbeats cover it for as long as it is read)."""
        headers = {
            "content-type": "application/json",
            TICKET_HEADER: self.ticket(reservation, node, body, request_id, stream=stream),
        }
        wait = lease_for(self.node_timeout)
        # httpx waits one node timeout longer than the caller does: the background drain
        # listens through it for what the node signs.
        request = self.client.build_request(
            "POST",
            f"{node.url}{path}",
            content=body,
            headers=headers,
            timeout=httpx.Timeout(wait + self.node_timeout, connect=5.0),
        )
        self.settlement.keep_alive(reservation, node)
        try:
            return await self._exchange(request, path, node, reservation, model, request_id)
        except BaseException:
            # Whatever went wrong, a request still owned here is released: its lease must not
            # be renewed forever. (A relayed stream or a late answer settles on its own.)
            if self.settlement.unsettled(reservation):
                await self.settlement.settle(reservation, None, model)
            raise

    async def _exchange(
        self,
        request: httpx.Request,
        path: str,
        node: NodeInfo,
        reservation: Reservation,
        model: str,
        request_id: str,
    ) -> Response:
        wait = lease_for(self.node_timeout)
        sending = asyncio.ensure_future(self._send(request, path))
        try:
            done, _ = await asyncio.wait({sending}, timeout=wait)
        except asyncio.CancelledError:  # the caller left: still charge what the node signs
            self._drain(sending, node, reservation, model, request_id)
            raise
        if not done:
            self._drain(sending, node, reservation, model, request_id)
            log.warning(
                "node %d did not answer within %g s; the caller gets a 503, the node stays in "
                "rotation, and the request is charged what the node signs",
                node.node_small_id,
                wait,
            )
            raise ServiceUnavailable(
                f"the node did not answer within {wait:g} s; you are charged only what the "
                "node signs for the work it did"
            )
        try:
            upstream = sending.result()
        except httpx.HTTPError as exc:
            self._blame(node, exc, "connection failed")
            await self.settlement.settle(reservation, None, model)
            raise ServiceUnavailable("the node did not answer; nothing was charged") from None
        if upstream.status_code < 500:
            self.registry.answered(node)  # a plain request may skip its health probe

        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            relay = self._relay(upstream, node, reservation, model, request_id)
            self.settlement.hand_over(reservation)
            self.settlement.watch_relay(reservation, relay, model)
            return StreamingResponse(
                relay,
                status_code=upstream.status_code,
                media_type="text/event-stream",
                headers=SSE_HEADERS,
            )
        try:
            content = await read_bounded(upstream, ANSWER_BYTES)
        except httpx.HTTPError as exc:
            self._blame(node, exc, "connection lost")
            await self.settlement.settle(reservation, None, model)
            raise ServiceUnavailable("the node connection broke; nothing was charged") from None
        finally:
            await upstream.aclose()
        if content is None:
            await self.settlement.settle(reservation, None, model)
            self.registry.mark_unhealthy(node, "answer too large")
            log.error(
                "node %d sent an answer over %d bytes; it was not relayed", node.node_small_id,
                ANSWER_BYTES,
            )  # fmt: skip
            raise EngineError(
                f"the node's answer is over {ANSWER_BYTES >> 20} MiB, more than any Veil node "
                "sends; nothing was charged"
            )
        receipt, malformed = self._judge(upstream, content, node, request_id)
        if malformed:
            await self.settlement.settle(reservation, None, model)
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
        await self.settlement.settle(reservation, receipt, model)
        return Response(
            content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "application/json"),
        )

    async def _send(self, request: httpx.Request, path: str) -> httpx.Response:
        with self.metrics.node_latency.labels(path).time():
            return await self.client.send(request, stream=True)

    def _judge(
        self, upstream: httpx.Response, content: bytes, node: NodeInfo, request_id: str
    ) -> tuple[UsageReceipt | None, bool]:
        """(the receipt to charge, whether the answer is malformed). A 200 must carry a valid
        receipt and a JSON object; an error must have the error shape, and is charged only if the
        node signed a receipt for it (what it produced before it stopped)."""
        receipt = self.settlement.receipt(upstream.headers.get(RECEIPT_HEADER), node, request_id)
        if upstream.status_code == 200:
            return receipt, receipt is None or _json_object(content) is None
        return receipt, not _is_error_body(content)

    def _blame(self, node: NodeInfo, exc: httpx.HTTPError, why: str) -> None:
        """Out of rotation for the node's own failures only: a timeout means a long request (or
        our own connection pool), which a caller can cause at will."""
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            log.warning("node %d: %s (%s)", node.node_small_id, why, type(exc).__name__)
            return
        self.registry.mark_unhealthy(node, why)

    def _drain(
        self,
        sending: asyncio.Future[httpx.Response],
        node: NodeInfo,
        reservation: Reservation,
        model: str,
        request_id: str,
    ) -> None:
        self.settlement.hand_over(reservation)
        task = asyncio.create_task(self._late(sending, node, reservation, model, request_id))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _late(
        self,
        sending: asyncio.Future[httpx.Response],
        node: NodeInfo,
        reservation: Reservation,
        model: str,
        request_id: str,
    ) -> None:
        """The caller was answered already; settle from what the node signs when it answers (a
        stream: its first receipt, then hang up so the node stops)."""
        receipt: UsageReceipt | None = None
        try:
            upstream = await sending
            try:
                if upstream.headers.get("content-type", "").startswith("text/event-stream"):
                    with contextlib.suppress(_LineTooLong):  # nothing signed that can be read
                        receipt = await self._first_receipt(upstream, node, request_id)
                else:
                    content = await read_bounded(upstream, ANSWER_BYTES)
                    if content is not None:
                        found, malformed = self._judge(upstream, content, node, request_id)
                        receipt = None if malformed else found
            finally:
                with anyio.CancelScope(shield=True):
                    await upstream.aclose()
        except httpx.HTTPError as exc:
            self._blame(node, exc, "connection failed")
        except asyncio.CancelledError:  # shutdown: release below
            sending.cancel()
        except Exception as exc:  # nobody awaits this task: say it here, then release
            log.error("reading a late answer failed: %s", type(exc).__name__)
        finally:
            try:
                await self.settlement.settle(reservation, receipt, model)
            except Exception as exc:  # nobody awaits this task: say it here
                log.error("settling a late answer failed: %s", type(exc).__name__)
            log.info(
                "late answer of node %d settled: %s",
                node.node_small_id,
                "nothing signed, nothing charged"
                if receipt is None
                else f"{receipt.compute_units} unit(s) signed",
            )

    async def _first_receipt(
        self, upstream: httpx.Response, node: NodeInfo, request_id: str
    ) -> UsageReceipt | None:
        """The first receipt a stream carries that the node signed for this request."""
        async for block in _whole_lines(upstream):
            for token in _receipt_tokens(block):
                receipt = self.settlement.receipt(token, node, request_id)
                if receipt is not None:
                    return receipt
        return None

    async def _relay(
        self,
        upstream: httpx.Response,
        node: NodeInfo,
        reservation: Reservation,
        model: str,
        request_id: str,
    ) -> AsyncIterator[bytes]:
        """Pass the node's SSE bytes through as they arrive, every complete line read so far in
        one write (not two writes an event), keeping the newest signed receipt."""
        latest: UsageReceipt | None = None
        latest_token: str | None = None
        try:
            async for block in _whole_lines(upstream):
                for token in _receipt_tokens(block):
                    receipt = self.settlement.receipt(token, node, request_id)
                    if receipt is not None:
                        latest, latest_token = receipt, token
                yield block
        except _LineTooLong:  # held in memory until it ends: never
            self.registry.mark_unhealthy(node, "stream line too long")
            log.error(
                "node %d sent a stream line over %d bytes; the stream is cut, charging its last "
                "receipt",
                node.node_small_id,
                STREAM_LINE_BYTES,
            )
        except httpx.HTTPError as exc:
            self._blame(node, exc, "stream broke")
            log.warning(
                "node %d stream broke mid-way; charging what was produced", node.node_small_id
            )
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            await self.settlement.settle(reservation, latest, model, latest_token)


async def read_bounded(response: httpx.Response, limit: int) -> bytes | None:
    """A node's whole answer, or None once it passes ``limit`` bytes (declared or sent)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for part in response.aiter_bytes():
        body += part
        if len(body) > limit:
            return None
    return bytes(body)


class _LineTooLong(Exception):
    """A node's stream line passed ``STREAM_LINE_BYTES`` without an end."""


async def _whole_lines(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """A node's stream as it arrives, in blocks of whole lines (a last line the node did not end
    is ended here). Raises ``_LineTooLong`` rather than hold a line over ``STREAM_LINE_BYTES``."""
    pending = b""  # the start of a line the node has not ended yet
    async for data in upstream.aiter_bytes():
        pending += data
        cut = pending.rfind(b"\n") + 1
        if len(pending) - cut > STREAM_LINE_BYTES:
            raise _LineTooLong
        if cut:
            block, pending = pending[:cut], pending[cut:]
            yield block
    if pending:
        yield pending + b"\n"


def _receipt_tokens(block: bytes) -> Iterator[str]:
    """The signed tokens of the receipt comment lines in ``block`` (whole lines)."""
    if RECEIPT_COMMENT not in block:
        return
    for line in block.split(b"\n"):
        if line.startswith(RECEIPT_COMMENT):
            yield line[len(RECEIPT_COMMENT) :].rstrip(b"\r").decode("utf-8", "replace")


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
