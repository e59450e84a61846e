"""Everything that affects the reservation state machine lives here.

A reservation is born ``held`` (by ``reserve``) and ends in exactly one final state::

    reserve ─▶ held ── claim ──▶ in_flight ◀─┐ heartbeat: the lease moves, the state does not
                │                    │  └─────┘
                ├── settle ──────────┼──▶ settled    charged from the node's answer
                ├── release ─────────┼──▶ released   nothing charged
                └── expire ──────────┴──▶ expired    nothing charged

:data:`TRANSITIONS` is the one table of which operation moves which state where. The ledger's
guarded ``UPDATE`` statements take their ``WHERE state IN (...)`` from :func:`sources` and their new
state from :func:`target`, and the schema's CHECK constraints are built from the enums
(:func:`check_in`), so no module repeats a state's spelling. An operation not in the table for a
state is refused: in SQL it matches no row (``settle`` of an expired reservation changes nothing),
in Python :func:`next_state` raises :class:`ForbiddenTransition`. What else an operation needs
(the caller's own reservation, a deadline not passed, a lease a grace period overdue) is the
guard of the method that performs it.

Stacks have a state too (:class:`StackState`), set by the operator from any state to any other, so
they need no table: only an ``active`` stack takes new reservations. Nodes likewise
(:class:`NodeState`, ``nodes.py`` says which moves the operator may make).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class ReservationState(StrEnum):
    """Where a reservation is in its life; the values are what the ``state`` column holds."""

    HELD = "held"
    """Units set aside by a lock; no request has arrived yet."""
    IN_FLIGHT = "in_flight"
    """A request claimed it and is being served (under a lease renewed by heartbeats)."""
    SETTLED = "settled"
    """Final: charged from the node's answer (at most the units held)."""
    RELEASED = "released"
    """Final: every unit handed back, nothing charged."""
    EXPIRED = "expired"
    """Final: its deadline (or lease, plus grace) passed; nothing charged."""


class Operation(StrEnum):
    """The ledger methods that move a reservation (``reserve`` creates one in :data:`INITIAL`)."""

    CLAIM = "claim"
    HEARTBEAT = "heartbeat"
    SETTLE = "settle"
    RELEASE = "release"
    EXPIRE = "expire"


class StackState(StrEnum):
    """An operator's switch on a stack; only ``active`` takes new reservations."""

    ACTIVE = "active"
    LOCKED = "locked"
    SETTLING = "settling"


class NodeState(StrEnum):
    """An operator's switch on a node (``veil nodes``); only ``active`` gets new locks."""

    ACTIVE = "active"
    DRAINING = "draining"
    """No new locks; requests and streams in flight finish and settle."""
    REMOVED = "removed"
    """Gone from every gateway; the row stays so settled usage keeps pointing at its id."""


class ForbiddenTransition(ValueError):
    """An operation the table does not allow from a state (a bug in a caller, never a wire error:
    the ledger's SQL refuses such a move by matching no row)."""


INITIAL: Final = ReservationState.HELD

_HELD, _IN_FLIGHT = ReservationState.HELD, ReservationState.IN_FLIGHT
TRANSITIONS: Final[Mapping[ReservationState, Mapping[Operation, ReservationState]]] = (
    MappingProxyType(
        {
            _HELD: MappingProxyType(
                {
                    Operation.CLAIM: _IN_FLIGHT,
                    Operation.SETTLE: ReservationState.SETTLED,
                    Operation.RELEASE: ReservationState.RELEASED,
                    Operation.EXPIRE: ReservationState.EXPIRED,
                }
            ),
            _IN_FLIGHT: MappingProxyType(
                {
                    Operation.HEARTBEAT: _IN_FLIGHT,
                    Operation.SETTLE: ReservationState.SETTLED,
                    Operation.RELEASE: ReservationState.RELEASED,
                    Operation.EXPIRE: ReservationState.EXPIRED,
                }
            ),
            ReservationState.SETTLED: MappingProxyType({}),
            ReservationState.RELEASED: MappingProxyType({}),
            ReservationState.EXPIRED: MappingProxyType({}),
        }
    )
)
"""state -> {operation: next state}. A final state is one with no way out."""

LIVE_STATES: Final = tuple(state for state in ReservationState if TRANSITIONS[state])
"""Reservations whose units are still counted in ``stacks.reserved_units`` (not yet final)."""
FINAL_STATES: Final = tuple(state for state in ReservationState if not TRANSITIONS[state])


def next_state(state: ReservationState, operation: Operation) -> ReservationState:
    """Where ``operation`` takes a reservation in ``state``; :class:`ForbiddenTransition` if the
    table has no such move."""
    try:
        return TRANSITIONS[state][operation]
    except KeyError:
        raise ForbiddenTransition(f"{operation} is not allowed from state {state}") from None


def sources(operation: Operation) -> tuple[ReservationState, ...]:
    """Every state ``operation`` may start from, in the enum's order (for ``state IN (...)``)."""
    return tuple(state for state in ReservationState if operation in TRANSITIONS[state])


def target(operation: Operation) -> ReservationState:
    """The one state ``operation`` leads to from every state it is allowed in."""
    (only,) = {TRANSITIONS[state][operation] for state in sources(operation)}
    return only


def check_in(column: str, states: Iterable[StrEnum]) -> str:
    """The SQL CHECK text that keeps ``column`` to ``states``: ``state IN ('a', 'b')``."""
    quoted = ", ".join(f"'{state.value}'" for state in states)
    return f"{column} IN ({quoted})"
