"""Stacks: prepaid units one user holds for one model, created, topped up and switched by the
operator (what spends them: ``reservations.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import RowMapping, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from veil.gateway.ledger.accounts import Accounts
from veil.gateway.ledger.checks import check_count, check_name
from veil.gateway.ledger.db import all_rows, first_row
from veil.gateway.ledger.schema import StackRow, UserRow
from veil.gateway.ledger.state import StackState
from veil.wire.envelopes import MAX_ID
from veil.wire.errors import InvalidBody, NotFound


@dataclass(frozen=True)
class Stack:
    """A stack of prepaid units (``id`` is the wire's ``stack_small_id``).

    ``price`` is micro-units of currency per one million compute units.
    """

    id: int
    user_id: int
    user: str
    model: str
    total_units: int
    reserved_units: int
    used_units: int
    price: int
    state: StackState
    created_at: float

    @property
    def free_units(self) -> int:
        return self.total_units - self.reserved_units - self.used_units


FREE_UNITS = StackRow.total_units - StackRow.reserved_units - StackRow.used_units
"""A stack's free units, as SQL (never negative: the CHECK constraints keep the sum in range)."""

_STACK_SELECT = select(*StackRow.__table__.c, UserRow.name.label("user_name")).join(
    UserRow, UserRow.id == StackRow.user_id
)


def _to_stack(row: RowMapping) -> Stack:
    return Stack(
        id=row["id"],
        user_id=row["user_id"],
        user=row["user_name"],
        model=row["model"],
        total_units=row["total_units"],
        reserved_units=row["reserved_units"],
        used_units=row["used_units"],
        price=row["price_per_million_units"],
        state=StackState(row["state"]),
        created_at=row["created_at"],
    )


class Stacks(Accounts):
    """The stacks part of :class:`~veil.gateway.ledger.Ledger` (stacks name their owner, hence
    built on :class:`Accounts`)."""

    async def _stack(self, conn: AsyncConnection, stack_id: int) -> Stack:
        row = await first_row(conn, _STACK_SELECT.where(StackRow.id == stack_id))
        if row is None:
            raise NotFound(f"no stack {stack_id}")
        return _to_stack(row)

    async def create_stack(
        self, user_name: str, model: str, units: int, price_per_million: int = 0
    ) -> Stack:
        """A new active stack of ``units`` for ``model`` owned by ``user_name``.
        ``price_per_million`` is micro-units of currency per million units (stored, not applied).
        """
        check_count(units, "units", minimum=0)
        check_count(price_per_million, "price_per_million", minimum=0)
        check_name(model, "model")

        async def body(conn: AsyncConnection) -> Stack:
            user_id = await self._user_id(conn, user_name)
            stack_id = (
                await conn.execute(
                    insert(StackRow)
                    .values(
                        user_id=user_id,
                        model=model,
                        total_units=units,
                        reserved_units=0,
                        used_units=0,
                        price_per_million_units=price_per_million,
                        state=StackState.ACTIVE,
                        created_at=self.now(),
                    )
                    .returning(StackRow.id)
                )
            ).scalar_one()
            return await self._stack(conn, stack_id)

        return await self._write(body)

    async def list_stacks(self, user_name: str | None = None) -> list[Stack]:
        """Every stack, or every stack of one user, oldest first."""
        async with self._read() as conn:
            query = _STACK_SELECT.order_by(StackRow.id)
            if user_name is not None:
                query = query.where(StackRow.user_id == await self._user_id(conn, user_name))
            rows = await all_rows(conn, query)
        return [_to_stack(row) for row in rows]

    async def get_stack(self, stack_id: int, *, user_id: int | None = None) -> Stack:
        """One stack; with ``user_id``, someone else's stack is ``NotFound`` like a missing one."""
        async with self._read() as conn:
            stack = await self._stack(conn, stack_id)
        if user_id is not None and stack.user_id != user_id:
            raise NotFound(f"no stack {stack_id}")
        return stack

    async def top_up(self, stack_id: int, units: int) -> Stack:
        """Add ``units`` to a stack's total (an atomic increment). Totals live in signed 64-bit
        columns: a top-up that would pass ``MAX_ID`` is refused (``InvalidBody``) in the same
        guarded statement, so concurrent top-ups cannot overflow it either."""
        check_count(units, "units", minimum=1)
        check_count(stack_id, "stack id", minimum=0)

        async def body(conn: AsyncConnection) -> Stack:
            done = await conn.execute(
                update(StackRow)
                .where(StackRow.id == stack_id, StackRow.total_units <= MAX_ID - units)
                .values(total_units=StackRow.total_units + units)
                .returning(StackRow.id)
            )
            if done.first() is None:
                await self._stack(conn, stack_id)  # NotFound for an unknown stack
                raise InvalidBody(f"a stack holds at most {MAX_ID} units in total")
            return await self._stack(conn, stack_id)

        return await self._write(body)

    async def set_state(self, stack_id: int, state: str) -> Stack:
        """Set a stack 'active', 'locked' or 'settling' (:class:`StackState`). Only active
        stacks take new reservations; live reservations finish or expire whatever the state."""
        try:
            new_state = StackState(state)
        except ValueError:
            raise InvalidBody(f"stack state must be one of {', '.join(StackState)}") from None

        async def body(conn: AsyncConnection) -> Stack:
            done = await conn.execute(
                update(StackRow)
                .where(StackRow.id == stack_id)
                .values(state=new_state)
                .returning(StackRow.id)
            )
            if done.first() is None:
                raise NotFound(f"no stack {stack_id}")
            return await self._stack(conn, stack_id)

        return await self._write(body)
