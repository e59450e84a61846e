"""Reservations: units held on a stack for one request, from the lock to the request's claim.

Each method is one guarded SQL ``UPDATE`` whose ``WHERE`` carries the rule and whose state change
comes from the transition table (``state.py``), so two gateways sharing a PostgreSQL database can
never both take the last units or claim the same reservation (PostgreSQL re-checks the ``WHERE``
after waiting for a row lock). Ending a reservation: ``settlement.py``; sweeping stale ones:
``expiry.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import case, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from veil.gateway.ledger.checks import check_count, check_seconds
from veil.gateway.ledger.db import MAX_ATTEMPTS, Database, all_rows, first_row, one_row
from veil.gateway.ledger.schema import NodeRow, ReservationRow, StackRow
from veil.gateway.ledger.stacks import FREE_UNITS
from veil.gateway.ledger.state import (
    INITIAL,
    LIVE_STATES,
    Operation,
    ReservationState,
    StackState,
    sources,
    target,
)
from veil.gateway.ledger.statements import unique_violation
from veil.wire.errors import BalanceError, Locked, NotFound, UnavailableStack

DEFAULT_LEASE_SECONDS: Final = 300.0
"""How long a claim or a heartbeat covers an in-flight request (the gateway's node timeout)."""


@dataclass(frozen=True)
class Reservation:
    """Units held on a stack for one request.

    ``charged_units`` is None while the reservation is live ('held' or 'in_flight') and the number
    of units actually charged once it is final ('settled'; 0 when 'released' or 'expired').
    """

    id: str
    stack_id: int
    user_id: int
    node_small_id: int
    units: int
    state: ReservationState
    created_at: float
    expires_at: float
    charged_units: int | None
    request_id: str | None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def released_units(self) -> int:
        """Units handed back to the stack when the reservation ended (0 while still live)."""
        return 0 if self.charged_units is None else self.units - self.charged_units


RESERVATION_COLUMNS: Final = tuple(ReservationRow.__table__.c)


def to_reservation(row: Mapping[Any, Any]) -> Reservation:
    return Reservation(
        id=row["id"],
        stack_id=row["stack_id"],
        user_id=row["user_id"],
        node_small_id=row["node_small_id"],
        units=row["units"],
        state=ReservationState(row["state"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        charged_units=row["charged_units"],
        request_id=row["request_id"],
    )


def _lease_until(lease_end: float) -> Any:
    """``expires_at`` moved out to ``lease_end``, never in (a lease never shortens a deadline)."""
    return case((ReservationRow.expires_at < lease_end, lease_end), else_=ReservationRow.expires_at)


class Reservations(Database):
    """The reservations part of :class:`~veil.gateway.ledger.Ledger`."""

    async def reserve(
        self,
        user_id: int,
        model: str,
        units: int,
        *,
        node_small_id: int,
        ttl_seconds: float,
        stack_id: int | None = None,
        now: float | None = None,
    ) -> Reservation:
        """Hold ``units`` on a stack of ``user_id`` for ``model`` until ``now + ttl_seconds``.

        With ``stack_id``: that stack, which must be the caller's (else ``NotFound``), for this
        model (else ``NotFound``), active (else ``Locked``) and have the units free (else
        ``BalanceError``). Without: the caller's best-fit active stack for the model (fewest free
        units that still fit, then oldest); ``BalanceError`` saying the most units free on any
        one stack if none fits, ``Locked`` if the caller's stacks for the model are all inactive.
        """
        check_count(units, "units", minimum=1)
        check_seconds(ttl_seconds, "ttl_seconds")
        start = self._when(now)

        def take(candidate: int) -> Any:
            # The whole rule in one statement: re-checked by PostgreSQL after any row lock wait.
            # Written as "units fit in what is free" (a subtraction of counters whose sum never
            # passes the total) so no intermediate value can leave the signed 64-bit range.
            return (
                update(StackRow)
                .where(
                    StackRow.id == candidate,
                    StackRow.user_id == user_id,
                    StackRow.model == model,
                    StackRow.state == StackState.ACTIVE,
                    units <= FREE_UNITS,
                )
                .values(reserved_units=StackRow.reserved_units + units)
                .returning(StackRow.id)
            )

        # The common case in one round trip (hot.py); a refusal, a missing node or a lost race
        # is then asked again below, where each is explained (the attempt changed nothing).
        params: list[Any] = [user_id, model, units, node_small_id, secrets.token_hex(16), start]
        params += [start + ttl_seconds] + ([stack_id] if stack_id is not None else [])
        held = await self._hot.reserve(params, by_stack=stack_id is not None)
        if held is not None:
            return to_reservation(held)

        async def body(conn: AsyncConnection) -> Reservation:
            node = await conn.execute(select(NodeRow.id).where(NodeRow.id == node_small_id))
            if node.first() is None:
                raise NotFound(f"no node {node_small_id}")
            chosen: int | None = None
            if stack_id is not None:
                if (await conn.execute(take(stack_id))).first() is None:
                    await self._explain_refusal(conn, user_id, model, units, stack_id)
                chosen = stack_id
            else:
                for _ in range(MAX_ATTEMPTS):
                    candidates = await self._best_fit(conn, user_id, model, units)
                    if not candidates:
                        await self._explain_refusal(conn, user_id, model, units, None)
                    for candidate in candidates:
                        if (await conn.execute(take(candidate))).first() is not None:
                            chosen = candidate
                            break
                    if chosen is not None:
                        break
                if chosen is None:  # lost every race MAX_ATTEMPTS times: report the state now
                    await self._explain_refusal(conn, user_id, model, units, None)
            row = await one_row(
                conn,
                insert(ReservationRow)
                .values(
                    id=secrets.token_hex(16),
                    stack_id=chosen,
                    user_id=user_id,
                    node_small_id=node_small_id,
                    units=units,
                    state=INITIAL,
                    created_at=start,
                    expires_at=start + ttl_seconds,
                )
                .returning(*RESERVATION_COLUMNS),
            )
            return to_reservation(row)

        return await self._write(body)

    async def _best_fit(
        self, conn: AsyncConnection, user_id: int, model: str, units: int
    ) -> Sequence[int]:
        rows = await conn.execute(
            select(StackRow.id)
            .where(
                StackRow.user_id == user_id,
                StackRow.model == model,
                StackRow.state == StackState.ACTIVE,
                units <= FREE_UNITS,
            )
            .order_by(FREE_UNITS, StackRow.id)
        )
        return [int(stack_id) for stack_id in rows.scalars()]

    async def _explain_refusal(
        self, conn: AsyncConnection, user_id: int, model: str, units: int, stack_id: int | None
    ) -> None:
        """Raise the error that says why ``units`` could not be reserved (always raises)."""
        if stack_id is not None:
            row = await first_row(
                conn,
                select(
                    StackRow.user_id, StackRow.model, StackRow.state, FREE_UNITS.label("free")
                ).where(StackRow.id == stack_id),
            )
            if row is None or row["user_id"] != user_id:
                raise NotFound(f"no stack {stack_id}")
            if row["model"] != model:
                raise NotFound(f"stack {stack_id} is not for model {model!r}")
            if row["state"] != StackState.ACTIVE:
                raise Locked(f"stack {stack_id} is {row['state']}")
            raise BalanceError(f"stack {stack_id} has {row['free']} free units, {units} requested")
        rows = await all_rows(
            conn,
            select(StackRow.state, FREE_UNITS.label("free")).where(
                StackRow.user_id == user_id, StackRow.model == model
            ),
        )
        active = [int(row["free"]) for row in rows if row["state"] == StackState.ACTIVE]
        if rows and not active:
            raise Locked(f"every stack for model {model!r} is locked or settling")
        raise BalanceError(
            f"not enough free units for model {model!r}: {units} requested, "
            f"at most {max(active, default=0)} free on one stack"
        )

    async def claim(
        self,
        user_id: int,
        stack_id: int,
        *,
        request_id: str,
        reservation_id: str | None = None,
        model: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: float | None = None,
    ) -> Reservation:
        """Attach an arriving request to a live 'held' reservation of this user on this stack,
        moving it to 'in_flight' and covering it until ``now + lease_seconds`` (never shortening
        the lock's deadline); the gateway renews that with :meth:`heartbeat` while it serves it.

        With ``reservation_id`` (the handle the lock returned, or the gateway's own reservation)
        exactly that reservation, else the caller's oldest held one on the stack (what atoma-sdk,
        which knows no handle, gets). With ``model``, the stack must be for that model.
        ``UnavailableStack`` if there is none (no lock, someone else's reservation or stack,
        another stack or model, expired, already used) or if ``request_id`` was already used."""
        check_seconds(lease_seconds, "lease_seconds")
        when = self._when(now)
        # One guarded UPDATE (hot.claim_sql): the caller's held, unexpired reservation on the
        # stack (the named one, or the oldest), its lease moved out, never in.
        params: list[Any] = [request_id, when + lease_seconds, when, user_id, stack_id]
        params += [reservation_id] if reservation_id is not None else []
        params += [model] if model is not None else []
        try:
            row = await self._hot.claim(
                params, by_id=reservation_id is not None, by_model=model is not None
            )
        except Exception as exc:
            if not unique_violation(exc):
                raise
            raise UnavailableStack("this request id was already used") from exc
        claimed = None if row is None else to_reservation(row)
        if claimed is None:
            if reservation_id is not None:
                raise UnavailableStack(
                    f"the reservation this request names is not a live lock of this caller on "
                    f"stack {stack_id}{'' if model is None else f' for model {model!r}'}: "
                    "lock again"
                )
            raise UnavailableStack(
                f"no live reservation on stack {stack_id} for this caller: lock first"
            )
        return claimed

    async def heartbeat(
        self,
        reservation_id: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: float | None = None,
    ) -> float | None:
        """The request is still being served: extend its in-flight reservation to
        ``now + lease_seconds`` (never shortening it). Returns the new deadline, or None when the
        reservation is no longer in flight (already settled, or expired by a sweep)."""
        check_seconds(lease_seconds, "lease_seconds")
        when = self._when(now)
        renew = (
            update(ReservationRow)
            .where(
                ReservationRow.id == reservation_id,
                ReservationRow.state.in_(sources(Operation.HEARTBEAT)),
            )
            .values(
                state=target(Operation.HEARTBEAT), expires_at=_lease_until(when + lease_seconds)
            )
            .returning(ReservationRow.expires_at)
        )

        async def body(conn: AsyncConnection) -> float | None:
            row = (await conn.execute(renew)).first()
            return None if row is None else float(row[0])

        return await self._write(body)

    async def get_reservation(self, reservation_id: str) -> Reservation:
        async with self._read() as conn:
            row = await first_row(
                conn, select(*RESERVATION_COLUMNS).where(ReservationRow.id == reservation_id)
            )
        if row is None:
            raise NotFound("no such reservation")
        return to_reservation(row)
