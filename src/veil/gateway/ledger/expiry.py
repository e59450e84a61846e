"""Expiry: handing back the units of reservations nobody will settle.

Expiry is a column (``expires_at``), not a timer in memory, so it survives restarts and any gateway
can sweep it. A held reservation expires at its lock's deadline; an in-flight one only once its
lease (renewed by heartbeats while a gateway serves it) is a grace period overdue, i.e. when the
gateway serving it is gone.

Who sweeps: the gateway calls :meth:`Expiry.expire` once when it starts and then every
``expire_interval_seconds`` (``GatewaySettings``) from its own background maintenance task, which
also refreshes its nodes. :meth:`Expiry.run_expiry` is that sweep on its own, for a process that
keeps a ledger and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Final

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from veil.gateway.ledger.db import Database, logger
from veil.gateway.ledger.schema import ReservationRow, StackRow
from veil.gateway.ledger.state import Operation, ReservationState, sources, target

DEFAULT_IN_FLIGHT_GRACE: Final = 300.0
"""Seconds an in-flight request's lease may be overdue (no heartbeat) before expiry."""


@dataclass(frozen=True)
class Orphan:
    """An in-flight reservation whose gateway is gone: the next sweep would release it."""

    id: str
    node_small_id: int
    request_id: str  # the ticket the node signed its receipts for
    expires_at: float


class Expiry(Database):
    """The expiry part of :class:`~veil.gateway.ledger.Ledger`."""

    in_flight_grace: float = DEFAULT_IN_FLIGHT_GRACE

    async def orphans(
        self, now: float | None = None, *, limit: int = 1000, after: Orphan | None = None
    ) -> list[Orphan]:
        """The in-flight reservations :meth:`expire` would release now (lease more than the grace
        overdue: nobody serves them any more), by lease then id, at most ``limit``, from past
        ``after`` (the last of the page before): a sweeping gateway asks their nodes for a
        receipt to charge before they are released."""
        overdue = self._when(now) - self.in_flight_grace
        row = ReservationRow
        where = (
            (row.state == ReservationState.IN_FLIGHT)
            & (row.expires_at <= overdue)
            & row.request_id.is_not(None)
        )
        if after is not None:
            where &= (row.expires_at > after.expires_at) | (
                (row.expires_at == after.expires_at) & (row.id > after.id)
            )
        query = (
            select(row.id, row.node_small_id, row.request_id, row.expires_at)
            .where(where)
            .order_by(row.expires_at, row.id)
            .limit(limit)
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [Orphan(str(r[0]), int(r[1]), str(r[2]), float(r[3])) for r in rows]

    async def expire(self, now: float | None = None) -> int:
        """Release every 'held' reservation whose ``expires_at`` has passed and every
        'in_flight' one whose lease (renewed by :meth:`heartbeat` while a gateway serves it) is
        more than the grace period overdue; returns how many expired.

        Safe to run from several gateways at once: a reservation leaves its live state in one
        guarded statement, so its units are handed back exactly once.
        """
        when = self._when(now)
        # How overdue each state the table lets expire must be (a KeyError here is a state added
        # to the table without saying when it expires).
        overdue_after = {
            ReservationState.HELD: when,
            ReservationState.IN_FLIGHT: when - self.in_flight_grace,
        }
        stale = (
            update(ReservationRow)
            .where(
                or_(
                    *(
                        (ReservationRow.state == state)
                        & (ReservationRow.expires_at <= overdue_after[state])
                        for state in sources(Operation.EXPIRE)
                    )
                )
            )
            .values(state=target(Operation.EXPIRE), charged_units=0)
            .returning(ReservationRow.stack_id, ReservationRow.units)
        )

        async def body(conn: AsyncConnection) -> int:
            expired = (await conn.execute(stale)).all()
            per_stack: dict[int, int] = defaultdict(int)
            for stack_id, units in expired:
                per_stack[int(stack_id)] += int(units)
            for stack_id in sorted(per_stack):  # one lock order for every writer
                await conn.execute(
                    update(StackRow)
                    .where(StackRow.id == stack_id)
                    .values(reserved_units=StackRow.reserved_units - per_stack[stack_id])
                )
            return len(expired)

        count = await self._write(body)
        if count:
            logger.info("ledger: %d reservation(s) expired", count)
        return count

    async def run_expiry(
        self, interval_seconds: float = 30.0, *, stop: asyncio.Event | None = None
    ) -> None:
        """Sweep expired reservations now and then every ``interval_seconds`` until ``stop`` is
        set or the task is cancelled. A failed sweep is logged and tried again next time. (The
        gateway does not use this: it sweeps from its maintenance task, see above.)"""
        stop = stop or asyncio.Event()
        while True:
            try:
                await self.expire()
            except Exception:
                logger.exception("ledger: expiry sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_seconds)
            if stop.is_set():
                return
