"""The request path's SQL (run by ``hot.py``), written once per dialect from the schema's column
names and the transition table's states: the statements ``accounts``, ``reservations`` and
``settlement`` describe, each a single guarded statement where the dialect allows.

Placeholders are numbered, ``$N`` on PostgreSQL and ``?N`` on SQLite, so one text serves both.
"""

# S608: every statement here is assembled from constants only (the schema's column names, the
# transition table's states, placeholder numbers); values always travel as bound parameters.
# ruff: noqa: S608

from __future__ import annotations

import sqlite3
from typing import Final

from veil.gateway.ledger.schema import ReservationRow
from veil.gateway.ledger.state import INITIAL, Operation, StackState, sources, target

COLUMNS: Final = tuple(c.name for c in ReservationRow.__table__.c)
_RETURNING: Final = ", ".join(COLUMNS)


def unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is the driver saying a unique column already holds the value."""
    return isinstance(exc, sqlite3.IntegrityError) or getattr(exc, "sqlstate", None) == "23505"


def _states(operation: Operation) -> str:
    return ", ".join(f"'{state.value}'" for state in sources(operation))


AUTH_SQL: Final = (
    "SELECT k.key_hash, k.is_admin, k.revoked_at, u.id, u.name, u.created_at, "
    "u.requests_per_minute, u.concurrency FROM api_keys k JOIN users u ON u.id = k.user_id "
    "WHERE k.prefix = {0}"
)


def claim_sql(mark: str, *, by_id: bool, by_model: bool) -> str:
    """The claim of ``reservations.claim`` as one statement, placeholders ``{mark}N`` (``$`` for
    PostgreSQL, ``?`` for SQLite). Parameters: 1 request id, 2 lease end, 3 now, 4 user id,
    5 stack id, then 6 (and 7) the reservation id and/or the model."""
    wanted = []
    n = 6
    if by_id:
        wanted.append(f"r.id = {mark}{n} AND ")
        n += 1
    if by_model:
        wanted.append(f"(SELECT s.model FROM stacks s WHERE s.id = {mark}5) = {mark}{n} AND ")
    held = _states(Operation.CLAIM)
    # PostgreSQL: concurrent claims pass over each other's rows instead of queueing on the same
    # one (SQLite serializes writers).
    skip_locked = " FOR UPDATE SKIP LOCKED" if mark == "$" else ""
    oldest = (
        f"SELECT r.id FROM reservations r WHERE {''.join(wanted)}"
        f"r.user_id = {mark}4 AND r.stack_id = {mark}5 AND r.state IN ({held}) "
        f"AND r.expires_at > {mark}3 ORDER BY r.created_at, r.id LIMIT 1{skip_locked}"
    )
    return (
        f"UPDATE reservations SET state = '{target(Operation.CLAIM).value}', "
        f"request_id = {mark}1, "
        f"expires_at = CASE WHEN expires_at < {mark}2 THEN {mark}2 ELSE expires_at END "
        f"WHERE id = ({oldest}) AND state IN ({held}) AND expires_at > {mark}3 "
        f"RETURNING {_RETURNING}"
    )


def finish_sql(mark: str, operation: Operation) -> str:
    """Leave the live state, charging at most what was held: 1 id, 2 units to charge."""
    return (
        f"UPDATE reservations SET state = '{target(operation).value}', "
        f"charged_units = CASE WHEN units < {mark}2 THEN units ELSE {mark}2 END "
        f"WHERE id = {mark}1 AND state IN ({_states(operation)}) RETURNING {_RETURNING}"
    )


_RECEIPT_COLUMNS: Final = (
    "reservation_id, prompt_tokens, completion_tokens, compute_units, receipt, created_at"
)
SQLITE_MOVE_STACK: Final = (
    "UPDATE stacks SET reserved_units = reserved_units - ?1, used_units = used_units + ?2 "
    "WHERE id = ?3"
)
SQLITE_RECEIPT: Final = f"INSERT INTO usage_receipts ({_RECEIPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"


def pg_finish_sql(operation: Operation) -> str:
    """``settlement._finish`` as one PostgreSQL statement: 1 id, 2 charge, 3 prompt tokens,
    4 completion tokens, 5 receipt, 6 now. Nothing moves unless the reservation left its live
    state here."""
    return (
        f"WITH done AS ({finish_sql('$', operation)}), "
        "moved AS (UPDATE stacks SET reserved_units = stacks.reserved_units - done.units, "
        "used_units = stacks.used_units + done.charged_units FROM done "
        "WHERE stacks.id = done.stack_id), "
        f"noted AS (INSERT INTO usage_receipts ({_RECEIPT_COLUMNS}) "
        "SELECT done.id, $3::bigint, $4::bigint, done.charged_units, $5::bytea, "
        "$6::double precision FROM done) "
        f"SELECT {_RETURNING} FROM done"
    )


SELECT_RESERVATION: Final = f"SELECT {_RETURNING} FROM reservations WHERE id = {{0}}"


_FREE = "s.total_units - s.reserved_units - s.used_units"


def pick_stack_sql(mark: str, *, by_stack: bool) -> str:
    """``reservations.reserve``'s choice: the named stack, or the caller's best fit (fewest free
    units that still cover the request, then the oldest), active, for the model, with the units
    free. 1 user id, 2 model, 3 units, (8 the stack id)."""
    named = f"s.id = {mark}8 AND " if by_stack else ""
    return (
        f"SELECT s.id FROM stacks s WHERE {named}s.user_id = {mark}1 AND s.model = {mark}2 "
        f"AND s.state = '{StackState.ACTIVE.value}' AND {mark}3 <= {_FREE} "
        f"ORDER BY {_FREE}, s.id LIMIT 1"
    )


def take_sql(mark: str, stack: str, source: str = "") -> str:
    """Hold the units on the chosen stack, the guard written again (re-checked after a wait)."""
    return (
        f"UPDATE stacks SET reserved_units = stacks.reserved_units + {mark}3 {source}"
        f"WHERE stacks.id = {stack} AND {mark}3 <= "
        "stacks.total_units - stacks.reserved_units - stacks.used_units"
    )


_RESERVATION_INSERT: Final = (
    "INSERT INTO reservations (id, stack_id, user_id, node_small_id, units, state, created_at, "
    "expires_at)"
)


def pg_reserve_sql(*, by_stack: bool) -> str:
    """``reserve`` as one PostgreSQL statement: 1 user id, 2 model, 3 units, 4 node id,
    5 the new reservation id, 6 now, 7 deadline, (8 the stack id). No row: nothing was held
    (no such node, no stack fits, or a race lost), and the caller asks the full path why."""
    return (
        f"WITH pick AS ({pick_stack_sql('$', by_stack=by_stack)} FOR UPDATE OF s), "
        f"took AS ({take_sql('$', 'pick.id', 'FROM pick ')}"
        " AND EXISTS (SELECT 1 FROM nodes WHERE nodes.id = $4) RETURNING stacks.id), "
        f"made AS ({_RESERVATION_INSERT} SELECT $5::varchar, took.id, $1, $4, $3, "
        f"'{INITIAL.value}', $6::double precision, $7::double precision FROM took "
        f"RETURNING {_RETURNING}) "
        f"SELECT {_RETURNING} FROM made"
    )


SQLITE_NODE: Final = "SELECT id FROM nodes WHERE id = ?1"
SQLITE_RESERVE: Final = f"{_RESERVATION_INSERT} VALUES (?5, ?9, ?1, ?4, ?3, '{INITIAL.value}', ?6, ?7) RETURNING {_RETURNING}"
