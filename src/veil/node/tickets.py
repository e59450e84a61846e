"""The node's side of gateway tickets: verify, refuse replays, and sign usage receipts.

A node configured with gateway keys serves only envelopes that carry a valid ticket from one of
them; a node with none configured (a developer talking to it directly) needs no ticket and says so
in its start-up log.
"""

from __future__ import annotations

import threading
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.node.keyring import Keyring
from veil.protocol.errors import AuthError, Replayed
from veil.protocol.tickets import (
    SignatureInvalid,
    Ticket,
    UsageReceipt,
    envelope_digest,
    sign_token,
    verify_token,
)


class TicketReplayCache:
    """Ticket ids seen and not yet expired. In memory: one node process."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, ticket_id: str, expires_at: float, now: float) -> bool:
        """Record ``ticket_id``; False if it was already recorded."""
        with self._lock:
            if len(self._seen) > 1024:
                self._seen = {k: exp for k, exp in self._seen.items() if exp >= now}
            if ticket_id in self._seen:
                return False
            self._seen[ticket_id] = expires_at
            return True


class TicketChecker:
    def __init__(self, gateway_keys: list[Ed25519PublicKey]) -> None:
        self.gateway_keys = gateway_keys
        self.replays = TicketReplayCache()

    @property
    def required(self) -> bool:
        return bool(self.gateway_keys)

    def check(self, token: str | None, body: bytes, now: float | None = None) -> Ticket | None:
        if not self.required:
            return None
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
        if not self.replays.add(ticket.ticket_id, ticket.expires_at, now):
            raise Replayed("this gateway ticket was already used")
        return ticket


def sign_receipt(keyring: Keyring, receipt: UsageReceipt) -> str:
    return sign_token(receipt, keyring.signing_key)
