"""Audit: checking that the books balance (every counter agrees with the reservations behind it)."""

from __future__ import annotations

from typing import Final

from sqlalchemy import func, select

from veil.gateway.ledger.db import Database, all_rows
from veil.gateway.ledger.schema import ReservationRow, StackRow, UsageReceiptRow
from veil.gateway.ledger.state import LIVE_STATES, ReservationState

RECEIPTED_STATES: Final = (ReservationState.SETTLED, ReservationState.RELEASED)
"""Final states reached through ``settle``/``release``, which write a usage receipt (expiry does
not: nothing was served)."""


class Audit(Database):
    """The audit part of :class:`~veil.gateway.ledger.Ledger`."""

    async def reconcile(self) -> list[str]:
        """Check every stack's counters against its reservations; the discrepancies found, as
        sentences (an empty list means the books balance).

        - ``reserved_units`` == sum of units of its 'held' and 'in_flight' reservations;
        - ``used_units`` == sum of ``charged_units`` of its final reservations (the ledger has no
          other way to charge a stack);
        - ``reserved_units + used_units <= total_units``;
        - every final reservation has ``charged_units`` (0 unless 'settled'), every live one none;
          every 'in_flight' one has a request id;
        - every settled or released reservation has exactly one usage receipt with
          ``compute_units`` equal to its charge.
        """
        live = (
            select(func.coalesce(func.sum(ReservationRow.units), 0))
            .where(ReservationRow.stack_id == StackRow.id, ReservationRow.state.in_(LIVE_STATES))
            .scalar_subquery()
        )
        charged = (
            select(func.coalesce(func.sum(ReservationRow.charged_units), 0))
            .where(
                ReservationRow.stack_id == StackRow.id, ReservationRow.charged_units.is_not(None)
            )
            .scalar_subquery()
        )
        stacks = select(
            StackRow.id,
            StackRow.total_units,
            StackRow.reserved_units,
            StackRow.used_units,
            live.label("live"),
            charged.label("charged"),
        ).order_by(StackRow.id)
        receipts = (
            select(
                ReservationRow.id,
                ReservationRow.state,
                ReservationRow.charged_units,
                ReservationRow.request_id,
                UsageReceiptRow.compute_units,
                UsageReceiptRow.id.label("receipt_id"),
            )
            .outerjoin(UsageReceiptRow, UsageReceiptRow.reservation_id == ReservationRow.id)
            .order_by(ReservationRow.created_at, ReservationRow.id)
        )
        problems: list[str] = []
        async with self._read(snapshot=True) as conn:
            stack_rows = await all_rows(conn, stacks)
            reservation_rows = await all_rows(conn, receipts)
        for stack in stack_rows:
            if stack["reserved_units"] != stack["live"]:
                problems.append(
                    f"stack {stack['id']}: reserved_units={stack['reserved_units']} but live "
                    f"reservations hold {stack['live']}"
                )
            if stack["used_units"] != stack["charged"]:
                problems.append(
                    f"stack {stack['id']}: used_units={stack['used_units']} but reservations were "
                    f"charged {stack['charged']}"
                )
            if stack["reserved_units"] + stack["used_units"] > stack["total_units"]:
                problems.append(f"stack {stack['id']}: reserved + used exceeds total_units")
        for row in reservation_rows:
            name, state, charge = f"reservation {row['id']}", row["state"], row["charged_units"]
            if state in LIVE_STATES:
                if charge is not None:
                    problems.append(f"{name}: {state} but already charged {charge}")
                if state == ReservationState.IN_FLIGHT and row["request_id"] is None:
                    problems.append(f"{name}: in_flight without a request id")
                continue
            if charge is None:
                problems.append(f"{name}: {state} without charged_units")
            elif state != ReservationState.SETTLED and charge != 0:
                problems.append(f"{name}: {state} but charged {charge}")
            if state in RECEIPTED_STATES:
                if row["receipt_id"] is None:
                    problems.append(f"{name}: {state} without a usage receipt")
                elif row["compute_units"] != charge:
                    problems.append(
                        f"{name}: receipt says {row['compute_units']} units, charged {charge}"
                    )
        return problems
