"""The node's side of gateway tickets: verify, refuse replays, and sign usage receipts.

A node serves paid routes only to requests carrying a valid ticket from one of its gateway keys.
Only a node started with ``--insecure-no-gateway`` (a developer talking to it directly) serves
without tickets, and says so loudly at start. A node with neither refuses every paid request with
401 (the CLI refuses to start that way at all).

Ticket ids are remembered until the ticket expires, in the same caches as v2 request ids
(``veil.node.replay``): bounded and O(log n) in memory, or shared by every node process on one
Redis (``SET NX PX``) when ``--replay-cache redis://...`` is given, so a ticket replayed to a
second process behind the same URL is refused too.
"""

from __future__ import annotations

import hashlib
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.node.keyring import Keyring
from veil.node.replay import (
    DEFAULT_REDIS_PREFIX,
    MemoryReplayCache,
    ReplayCache,
    make_replay_cache,
)
from veil.wire.errors import AuthError, Replayed
from veil.wire.tickets import (
    SignatureInvalid,
    Ticket,
    UsageReceipt,
    envelope_digest,
    sign_token,
    verify_token,
)

__all__ = ["TICKET_REDIS_PREFIX", "TicketChecker", "make_ticket_cache", "sign_receipt"]

TICKET_REDIS_PREFIX = DEFAULT_REDIS_PREFIX + "ticket:"
DEFAULT_MAX_TICKETS = 200_000  # live tickets; a full cache refuses (503), never forgets


def make_ticket_cache(
    spec: str | None, *, max_entries: int = DEFAULT_MAX_TICKETS, prefix: str = TICKET_REDIS_PREFIX
) -> ReplayCache:
    """The ticket-id cache for a node's ``--replay-cache`` setting (``memory`` or a Redis URL)."""
    return make_replay_cache(spec, max_entries=max_entries, prefix=prefix)


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
            replays if replays is not None else MemoryReplayCache(DEFAULT_MAX_TICKETS)
        )
        self.insecure_no_gateway = insecure_no_gateway and not gateway_keys

    @property
    def required(self) -> bool:
        return not self.insecure_no_gateway

    async def check(
        self, token: str | None, body: bytes, now: float | None = None
    ) -> Ticket | None:
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
        # A ticket stays acceptable through its expires_at: remember it a moment past that.
        ticket_id = hashlib.sha256(ticket.ticket_id.encode()).digest()
        if not await self.replays.check_and_add(ticket_id, ticket.expires_at + 1.0, now):
            raise Replayed("this gateway ticket was already used")
        return ticket


def sign_receipt(keyring: Keyring, receipt: UsageReceipt) -> str:
    return sign_token(receipt, keyring.signing_key)
