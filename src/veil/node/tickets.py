"""The node's side of gateway tickets: verify them, refuse replays, and sign usage receipts.

A node serves paid routes only to requests carrying a valid ticket from one of its gateway keys.
Only a node started with ``--insecure-no-gateway`` (a developer talking to it directly) serves
without tickets, and says so loudly at start. A node with neither refuses every paid request with
401 (the CLI refuses to start that way at all).

A ticket is checked on the raw request bytes (its ``envelope_sha256``), before anything is
decrypted. Ticket ids are remembered until the ticket expires in a ``veil.node.replay`` cache, the
same abstraction as v3 request ids: bounded and fail-closed in memory, or shared by every node
process on one Redis when ``--replay-cache redis://...`` is given, so a ticket replayed to a second
process behind the same URL is refused too.
"""

from __future__ import annotations

import hashlib
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.config import TICKET_REPLAY_MAX_ENTRIES
from veil.node.keyring import Keyring
from veil.node.replay import MemoryReplayCache, ReplayCache
from veil.wire.errors import AuthError, Replayed
from veil.wire.tickets import (
    RECEIPT_QUERY_WINDOW_SECONDS,
    ReceiptQuery,
    SignatureInvalid,
    Ticket,
    UsageReceipt,
    envelope_digest,
    sign_token,
    verify_token,
)

__all__ = ["TicketChecker", "sign_receipt"]

# A ticket stays acceptable through its expires_at: its id is remembered a moment past that.
REMEMBER_PAST_EXPIRY_SECONDS = 1.0


class TicketChecker:
    def __init__(
        self,
        gateway_keys: list[Ed25519PublicKey],
        replays: ReplayCache | None = None,
        *,
        insecure_no_gateway: bool = False,
    ) -> None:
        self.gateway_keys = gateway_keys
        self.replays: ReplayCache = (
            replays if replays is not None else MemoryReplayCache(TICKET_REPLAY_MAX_ENTRIES)
        )
        self.insecure_no_gateway = insecure_no_gateway and not gateway_keys

    @property
    def required(self) -> bool:
        return not self.insecure_no_gateway

    async def check(
        self, token: str | None, body: bytes, now: float | None = None
    ) -> Ticket | None:
        """The ticket for ``body`` (None on an insecure node), or AuthError (401) / Replayed
        (409); the replay cache may refuse with 503 when it cannot answer or is full."""
        if not self.required:
            return None
        if not self.gateway_keys:
            raise AuthError(
                "this node has no gateway key configured, so it serves no paid requests "
                "(start it with --gateway-key, or --insecure-no-gateway for direct use)"
            )
        if not token:
            raise AuthError("this node serves only requests carrying a gateway ticket")
        try:
            ticket = verify_token(token, Ticket, self.gateway_keys)
        except SignatureInvalid as exc:
            raise AuthError(f"gateway ticket refused: {exc}") from None
        now = time.time() if now is None else now
        if ticket.expires_at < now:
            raise AuthError("gateway ticket expired")
        if ticket.envelope_sha256 != envelope_digest(body):
            raise AuthError("gateway ticket was issued for a different body")
        # Hashed to a fixed size: the cache takes ids of at most 64 bytes.
        ticket_id = hashlib.sha256(ticket.ticket_id.encode()).digest()
        remember_until = ticket.expires_at + REMEMBER_PAST_EXPIRY_SECONDS
        if not await self.replays.check_and_add(ticket_id, remember_until, now):
            raise Replayed("this gateway ticket was already used")
        return ticket

    def check_query(self, token: object, now: float | None = None) -> ReceiptQuery:
        """A gateway's signed receipt query, or AuthError (401): not signed by one of this
        node's gateway keys, not a query, or issued too long ago (or ahead)."""
        if not self.gateway_keys:
            raise AuthError("this node takes no gateway tickets, so it keeps no receipts")
        if not isinstance(token, str) or not token:
            raise AuthError("a receipt query is a token signed by the gateway")
        try:
            query = verify_token(token, ReceiptQuery, self.gateway_keys)
        except SignatureInvalid as exc:
            raise AuthError(f"receipt query refused: {exc}") from None
        now = time.time() if now is None else now
        if abs(now - query.issued_at) > RECEIPT_QUERY_WINDOW_SECONDS:
            raise AuthError("receipt query was issued too long ago: check the gateway's clock")
        return query


def sign_receipt(keyring: Keyring, receipt: UsageReceipt) -> str:
    return sign_token(receipt, keyring.signing_key)
