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
from typing import Final

from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from veil.gateway.ledger.db import Database, logger
from veil.gateway.ledger.schema import ReservationRow, StackRow
from veil.gateway.ledger.state import Operation, ReservationState, sources, target

DEFAULT_IN_FLIGHT_GRACE: Final = 300.0
"""Seconds an in-flight request's lease may be overdue (no heartbeat) before expiry."""


class Expiry(Database):
    """The expiry part of :class:`~veil.gateway.ledger.Ledger`."""

    in_flight_grace: float = DEFAULT_IN_FLIGHT_GRACE

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
