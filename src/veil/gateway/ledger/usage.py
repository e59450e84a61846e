"""Usage: the charged requests a user can check (``GET /v1/usage``), each with the node's signed
usage receipt it was charged from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select

from veil.gateway.ledger.checks import check_count
from veil.gateway.ledger.db import Database, all_rows
from veil.gateway.ledger.schema import ReservationRow, StackRow, UsageReceiptRow
from veil.gateway.ledger.state import ReservationState
from veil.wire.envelopes import MAX_ID


@dataclass(frozen=True)
class UsageRecord:
    """One settled request as the caller may check it (``GET /v1/usage``): what was charged, and
    the node's signed usage receipt it was charged from (``receipt``: the signed token as the node
    sent it; None if the node sent none). ``id`` orders the records and pages through them."""

    id: int
    created_at: float
    request_id: str | None
    reservation_id: str
    stack_id: int
    model: str
    node_small_id: int
    reserved_units: int
    charged_units: int
    prompt_tokens: int
    completion_tokens: int
    receipt: str | None


def _receipt_text(value: Any) -> str | None:
    """A stored receipt as text (a BLOB written by the ledger; TEXT if someone else wrote it)."""
    if value is None or isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "replace")


class Usage(Database):
    """The usage part of :class:`~veil.gateway.ledger.Ledger`."""

    async def usage(
        self,
        user_id: int,
        *,
        since: float | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[UsageRecord]:
        """The user's charged requests (reservations settled from a node's answer), oldest
        first: at most ``limit``, with a usage receipt id above ``after_id`` (page on with the last
        id returned), settled at or after ``since`` (Unix seconds) if given."""
        check_count(limit, "limit", minimum=1)
        check_count(after_id, "after_id", minimum=0)
        query = (
            select(
                UsageReceiptRow.id,
                UsageReceiptRow.created_at,
                UsageReceiptRow.prompt_tokens,
                UsageReceiptRow.completion_tokens,
                UsageReceiptRow.receipt,
                ReservationRow.id.label("reservation_id"),
                ReservationRow.request_id,
                ReservationRow.stack_id,
                ReservationRow.node_small_id,
                ReservationRow.units,
                ReservationRow.charged_units,
                StackRow.model,
            )
            .join(ReservationRow, ReservationRow.id == UsageReceiptRow.reservation_id)
            .join(StackRow, StackRow.id == ReservationRow.stack_id)
            .where(
                ReservationRow.user_id == user_id,
                UsageReceiptRow.id > min(after_id, MAX_ID),
                or_(
                    ReservationRow.state == ReservationState.SETTLED,
                    ReservationRow.charged_units > 0,
                ),
            )
            .order_by(UsageReceiptRow.id)
            .limit(limit)
        )
        if since is not None:
            query = query.where(UsageReceiptRow.created_at >= since)
        async with self._read() as conn:
            rows = await all_rows(conn, query)
        return [
            UsageRecord(
                id=int(row["id"]),
                created_at=float(row["created_at"]),
                request_id=row["request_id"],
                reservation_id=row["reservation_id"],
                stack_id=int(row["stack_id"]),
                model=row["model"],
                node_small_id=int(row["node_small_id"]),
                reserved_units=int(row["units"]),
                charged_units=int(row["charged_units"] or 0),
                prompt_tokens=int(row["prompt_tokens"]),
                completion_tokens=int(row["completion_tokens"]),
                receipt=_receipt_text(row["receipt"]),
            )
            for row in rows
        ]
