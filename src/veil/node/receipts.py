"""Signed usage receipts of one request: what the gateway settles from.

A receipt names the gateway ticket, the v3 request id and the ``response_hash`` (v3: the running hash) of the last
message sent, and charges at most the request's budget. Streams get running receipts at a bounded
cadence (``veil.node.streams``: after the first chunk, then every ``RUNNING_RECEIPT_CHUNKS`` chunks
or ``RUNNING_RECEIPT_SECONDS``), so a client that hangs up pays at least up to the last one (at
most that many chunks, that long, unbilled) and never more than it got, and a final one at the end.
Every receipt signed for a gateway's ticket is also kept in the node's ``ReceiptLog``, newest
replacing older, for a gateway that lost it (``veil.node.receipt_log``).
"""

from __future__ import annotations

from dataclasses import dataclass

from veil.node.bodies import OpenAIRequest
from veil.node.frames import Frame
from veil.node.keyring import Keyring
from veil.node.receipt_log import ReceiptLog
from veil.node.tickets import sign_receipt
from veil.wire.envelopes import b64encode
from veil.wire.openai import ImageGenerationRequest
from veil.wire.tickets import RECEIPT_COMMENT, Ticket, UsageReceipt


@dataclass(frozen=True)
class Receipts:
    keyring: Keyring
    request: OpenAIRequest
    ticket: Ticket | None
    frame: Frame  # its last_hash is what a receipt vouches for
    request_id: str | None = None
    budget: int | None = None  # no receipt charges more
    log: ReceiptLog | None = None  # where a ticket's receipts are kept for recovery

    def sign(self, usage: dict[str, int] | None, *, final: bool = True) -> str:
        prompt = usage["prompt_tokens"] if usage else 0
        completion = usage["completion_tokens"] if usage else 0
        if isinstance(self.request, ImageGenerationRequest):
            units = self.request.compute_units()
        else:
            units = prompt + completion
        if self.budget is not None:
            units = min(units, self.budget)  # an engine's usage is charged at most the budget
        last_hash = self.frame.last_hash
        receipt = UsageReceipt(
            ticket_id=self.ticket.ticket_id if self.ticket else "direct",
            model=self.request.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            compute_units=units,
            final=final,
            request_id=self.request_id,
            response_hash=b64encode(last_hash) if last_hash is not None else None,
        )
        token = sign_receipt(self.keyring, receipt)
        if self.ticket is not None and self.log is not None:
            self.log.record(self.ticket.ticket_id, token)
        return token

    def comment(self, usage: dict[str, int], *, final: bool) -> bytes:
        """The receipt as the SSE comment line that follows a stream event."""
        return RECEIPT_COMMENT + self.sign(usage, final=final).encode() + b"\n\n"
