"""Settlement: ending a live reservation exactly once, charging at most what it held.

``settle`` charges from the node's answer and ``release`` charges nothing; both hand the rest of
the units back and write the usage receipt ``GET /v1/usage`` later shows, in the one guarded
``UPDATE`` that takes the reservation out of its live state, so a retry or a second gateway finds
it final and gets the first result back.
"""

from __future__ import annotations

from veil.gateway.ledger.checks import check_count
from veil.gateway.ledger.db import Database
from veil.gateway.ledger.reservations import Reservation, to_reservation
from veil.gateway.ledger.state import Operation
from veil.wire.envelopes import MAX_ID
from veil.wire.errors import NotFound


class Settling(Database):
    """The settling part of :class:`~veil.gateway.ledger.Ledger`: ``settle`` and ``release``."""

    async def settle(
        self,
        reservation_id: str,
        charged_units: int,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        receipt: bytes | str | None = None,
        now: float | None = None,
    ) -> Reservation:
        """Charge ``min(charged_units, reserved)`` and hand the rest back to the stack, recording
        a usage receipt. Idempotent: on a reservation already final, changes nothing and returns
        it as it is (so a retry sees the first result). ``NotFound`` for an unknown id."""
        if isinstance(charged_units, bool) or not isinstance(charged_units, int):
            raise TypeError("charged_units must be an int")
        if charged_units < 0:
            raise ValueError("charged_units must be >= 0")
        # More than the column holds is more than any reservation: the charge is capped anyway.
        charged_units = min(charged_units, MAX_ID)
        check_count(prompt_tokens, "prompt_tokens", minimum=0)
        check_count(completion_tokens, "completion_tokens", minimum=0)
        return await self._finish(
            reservation_id,
            charged_units,
            Operation.SETTLE,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            receipt=receipt,
            now=now,
        )

    async def release(self, reservation_id: str, *, now: float | None = None) -> Reservation:
        """Hand every reserved unit back, charging nothing (state 'released'); idempotent."""
        return await self._finish(reservation_id, 0, Operation.RELEASE, now=now)

    async def _finish(
        self,
        reservation_id: str,
        charged_units: int,
        operation: Operation,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        receipt: bytes | str | None = None,
        now: float | None = None,
    ) -> Reservation:
        when = self._when(now)
        blob = receipt.encode("utf-8") if isinstance(receipt, str) else receipt
        # Leaving the live state and computing the charge is one guarded statement: exactly one
        # caller can move a reservation out of 'held'/'in_flight'; only that caller moves the
        # stack's counters and writes the receipt, in the same transaction (hot.py: one CTE on
        # PostgreSQL, one transaction in the SQLite thread).
        row, _ = await self._hot.finish(
            operation,
            (reservation_id, charged_units, prompt_tokens, completion_tokens, blob, when),
        )
        if row is None:
            raise NotFound("no such reservation")
        return to_reservation(row)
