"""The node's pipeline: open -> check -> engine -> seal -> sign. Plaintext exists only here.

The app hands :class:`Pipeline` the raw request bytes (and the gateway ticket it checked on those
bytes) and gets back an :data:`Answer`: the bytes of a whole response with its signed receipt, or
an iterator of already-framed SSE events. Decrypted request bodies and model answers live in the
pipeline's modules and the engines it drives, and nowhere else on the node:

    pipeline   this file: one request from bytes to an Answer, for confidential and plain routes
    sealing    open an envelope (atoma-v1, veil-v3), check it, refuse replays; seal answers
    frames     an answer as sealed envelopes or plain OpenAI JSON
    streams    a chat stream: running receipts, budget and deadline stops, mid-stream failures
    receipts   the signed usage receipts the gateway settles from
    service    engines and budgets (veil.engines does the inference)
    bodies     OpenAI body parsing and encoding

Nothing here logs request content, and no error raised here carries decrypted bytes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from veil.hazmat.kem import Kem
from veil.node.bodies import OpenAIRequest, parse_openai_request, wire_usage
from veil.node.frames import Frame, PlainFrame, SealedFrame
from veil.node.keyring import Keyring
from veil.node.metrics import NodeMetrics
from veil.node.receipt_log import ReceiptLog
from veil.node.receipts import Receipts
from veil.node.replay import ReplayCache
from veil.node.sealing import DEFAULT_KEMS, OpenedRequest, open_request
from veil.node.service import EngineRegistry, NodeService
from veil.node.streams import start_chat_stream
from veil.web import parse_model
from veil.wire.envelopes import ConfidentialComputeRequest
from veil.wire.openai import ChatCompletionRequest, EmbeddingRequest, ImageGenerationRequest
from veil.wire.routes import Endpoint, confidential_path
from veil.wire.tickets import Ticket

__all__ = ["Answer", "Pipeline", "StreamAnswer", "WholeAnswer", "open_request"]


@dataclass(frozen=True)
class WholeAnswer:
    """A whole response: its bytes (sealed on confidential routes) and its signed receipt."""

    body: bytes
    receipt: str


@dataclass(frozen=True)
class StreamAnswer:
    """A stream whose first chunk arrived: SSE events, each already framed, receipts between."""

    events: AsyncIterator[bytes]


Answer = WholeAnswer | StreamAnswer


class Pipeline:
    def __init__(
        self,
        *,
        keyring: Keyring,
        engines: EngineRegistry,
        replay: ReplayCache,
        metrics: NodeMetrics,
        default_units: int,
        request_timeout_seconds: float,
        kems: Iterable[str] | None = None,
        receipt_log: ReceiptLog | None = None,
    ) -> None:
        self.keyring = keyring
        self.receipt_log = receipt_log  # every ticket's newest receipt, for a gateway that lost it
        # What veil-v3 requests may be sealed with (NodeSettings.kems; the default: hybrid only).
        self.allowed_kems = DEFAULT_KEMS if kems is None else frozenset(Kem(k) for k in kems)
        self.engines = engines
        self.replay = replay  # v3 request ids, partitioned per tenant
        self.metrics = metrics
        self.service = NodeService(engines, default_units)
        self.request_timeout_seconds = request_timeout_seconds

    async def confidential(self, endpoint: Endpoint, raw: bytes, ticket: Ticket | None) -> Answer:
        """A confidential request: ``raw`` is the envelope, the answer is sealed."""
        envelope = parse_model(raw, ConfidentialComputeRequest, "envelope")
        self.engines.get(endpoint, envelope.model_name)  # 404 before any decryption work
        # The replay space is partitioned per tenant: the ticket's stack (the envelope's own
        # claim only on an --insecure-no-gateway node, where the caller is its own gateway).
        tenant = ticket.stack_small_id if ticket is not None else envelope.stack_small_id
        opened = await open_request(
            envelope,
            endpoint,
            self.keyring,
            self.replay,
            path=confidential_path(endpoint),
            tenant=tenant,
            allowed_kems=self.allowed_kems,
            # v3 binds the lock's reservation: the ticket says which one this request claims.
            reservation_id=ticket.reservation_id if ticket is not None else None,
        )
        frame = SealedFrame(opened.sealer, self.metrics)
        units = _budget(opened, ticket)
        return await self._serve(opened.request, units, ticket, frame, opened.request_id)

    async def plain(self, endpoint: Endpoint, raw: bytes, ticket: Ticket | None) -> Answer:
        """A plain request: ``raw`` is the OpenAI body; the ticket (if any) is its budget."""
        request = parse_openai_request(endpoint, raw)
        units = ticket.units if ticket is not None else None
        return await self._serve(request, units, ticket, PlainFrame(), None)

    async def _serve(
        self,
        request: OpenAIRequest,
        units: int | None,
        ticket: Ticket | None,
        frame: Frame,
        request_id: str | None,
    ) -> Answer:
        def receipts(budget: int | None) -> Receipts:
            return Receipts(
                self.keyring, request, ticket, frame, request_id, budget, self.receipt_log
            )

        if isinstance(request, ChatCompletionRequest):
            plan = await self.service.plan_chat(request, units)
            if request.stream:
                events = await start_chat_stream(
                    self.service.chat_stream(plan, request),
                    plan=plan,
                    frame=frame,
                    receipts=receipts(plan.units),
                    deadline=self._deadline(ticket),
                    metrics=self.metrics,
                )
                return StreamAnswer(events)
            # Past the deadline the engine stops and answers what it wrote.
            result = await self.service.chat(plan, request, deadline=self._deadline(ticket))
            signer = receipts(plan.units)
            usage = wire_usage(result.get("usage"))
        elif isinstance(request, EmbeddingRequest):
            result = await self.service.embed(request, units)
            signer = receipts(units)
            usage = wire_usage(result.get("usage"))
        else:
            assert isinstance(request, ImageGenerationRequest)
            result = await self.service.generate_images(request, units)
            signer = receipts(units)
            # Images are metered in pixels; v1 envelopes carry no usage for them.
            usage = wire_usage(result.get("usage")) if frame.reports_image_usage else None
        body = frame.whole(result, usage)  # seals first: the receipt names its response_hash
        receipt = signer.sign(usage)
        self.metrics.count_usage(request.model, usage)
        if isinstance(request, ImageGenerationRequest):
            self.metrics.tokens.labels(request.model, "pixels").inc(request.compute_units())
        return WholeAnswer(body, receipt)

    def _deadline(self, ticket: Ticket | None) -> float:
        """The ``time.monotonic()`` instant a request must end by: the node's
        ``request_timeout_seconds``, or the ticket's own deadline if it carries an earlier one."""
        timeout = self.request_timeout_seconds
        if ticket is not None and ticket.deadline is not None:
            timeout = min(timeout, max(0.0, ticket.deadline - time.time()))
        return time.monotonic() + timeout


def _budget(opened: OpenedRequest, ticket: Ticket | None) -> int | None:
    """The units a confidential request may spend.

    Without a ticket (a node used directly) the envelope's ``num_compute_units`` is the budget.
    With one, the ticket decides for v1: atoma-sdk puts ``max_tokens`` in ``num_compute_units``,
    which caps the completion (the body's ``max_tokens`` does that already), not prompt +
    completion. In v3 the client's ``num_compute_units`` is authenticated, so it also caps
    the ticket: a gateway cannot make the node spend more than the client agreed to.
    """
    if ticket is None:
        return opened.units
    if opened.request_id is not None and opened.units is not None:
        return min(ticket.units, opened.units)
    return ticket.units
