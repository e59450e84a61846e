"""The reservation state machine: the one table, and the ledger doing exactly what it says."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from sqlalchemy.exc import IntegrityError

from tests.gateway.conftest import LedgerHarness
from tests.gateway.ledger.world import T0, World, reserve
from veil.gateway.ledger import Reservation
from veil.gateway.ledger.schema import ReservationRow, StackRow
from veil.gateway.ledger.state import (
    FINAL_STATES,
    INITIAL,
    LIVE_STATES,
    TRANSITIONS,
    ForbiddenTransition,
    Operation,
    ReservationState,
    StackState,
    check_in,
    next_state,
    sources,
    target,
)
from veil.wire.errors import UnavailableStack

HELD, IN_FLIGHT = ReservationState.HELD, ReservationState.IN_FLIGHT
SETTLED, RELEASED, EXPIRED = (
    ReservationState.SETTLED,
    ReservationState.RELEASED,
    ReservationState.EXPIRED,
)
# Far enough past T0 that a held lock and an unrenewed in-flight lease are both overdue.
LONG_AFTER = T0 + 100_000


# -- the table -------------------------------------------------------------------------------


def test_every_state_is_in_the_table_and_reachable_from_the_initial_state() -> None:
    assert set(TRANSITIONS) == set(ReservationState)
    reached, frontier = {INITIAL}, [INITIAL]
    while frontier:
        for following in TRANSITIONS[frontier.pop()].values():
            if following not in reached:
                reached.add(following)
                frontier.append(following)
    assert reached == set(ReservationState)


def test_live_states_can_always_end_and_final_states_never_move() -> None:
    assert LIVE_STATES == (HELD, IN_FLIGHT)
    assert FINAL_STATES == (SETTLED, RELEASED, EXPIRED)
    for state in LIVE_STATES:  # nothing holds units forever
        for ending in (Operation.SETTLE, Operation.RELEASE, Operation.EXPIRE):
            assert next_state(state, ending) in FINAL_STATES
    for state in FINAL_STATES:
        assert TRANSITIONS[state] == {}


def test_the_moves_the_ledger_relies_on() -> None:
    assert (sources(Operation.CLAIM), target(Operation.CLAIM)) == ((HELD,), IN_FLIGHT)
    assert (sources(Operation.HEARTBEAT), target(Operation.HEARTBEAT)) == ((IN_FLIGHT,), IN_FLIGHT)
    assert sources(Operation.SETTLE) == LIVE_STATES and target(Operation.SETTLE) == SETTLED
    assert sources(Operation.RELEASE) == LIVE_STATES and target(Operation.RELEASE) == RELEASED
    assert sources(Operation.EXPIRE) == LIVE_STATES and target(Operation.EXPIRE) == EXPIRED


def test_a_forbidden_transition_is_refused() -> None:
    with pytest.raises(ForbiddenTransition, match=r"^settle is not allowed from state expired$"):
        next_state(EXPIRED, Operation.SETTLE)  # expiry is final
    with pytest.raises(ForbiddenTransition):
        next_state(IN_FLIGHT, Operation.CLAIM)  # each reservation serves one request
    with pytest.raises(ForbiddenTransition):
        next_state(HELD, Operation.HEARTBEAT)  # a lock's deadline is not a lease
    refused = [
        (state, operation)
        for state, operation in itertools.product(ReservationState, Operation)
        if operation not in TRANSITIONS[state]
    ]
    assert len(refused) == 5 * 5 - 8
    for state, operation in refused:
        with pytest.raises(ForbiddenTransition):
            next_state(state, operation)


def test_the_check_constraints_are_built_from_the_enums() -> None:
    def check_text(table: type[ReservationRow] | type[StackRow]) -> str:
        name = f"ck_{table.__tablename__}_state_valid"  # the schema's naming convention
        constraints = ReservationRow.metadata.tables[table.__tablename__].constraints
        (found,) = [c for c in constraints if c.name == name]
        return str(found.sqltext)  # type: ignore[attr-defined]

    assert check_text(ReservationRow) == (
        "state IN ('held', 'in_flight', 'settled', 'released', 'expired')"
    )
    assert check_text(StackRow) == "state IN ('active', 'locked', 'settling')"
    assert check_in("state", [StackState.ACTIVE]) == "state IN ('active')"


def test_the_database_accepts_exactly_the_enum_states(h: LedgerHarness, w: World) -> None:
    """The migrated database (whose CHECKs the migrations wrote as literal SQL) and the enums
    agree: every enum state can be stored, nothing else can."""
    r = reserve(h, w, 1)
    for state in ReservationState:
        h.sql("UPDATE reservations SET state = :state WHERE id = :id", state=state, id=r.id)
        assert h.get_reservation(r.id).state is state
    h.sql("UPDATE reservations SET state = :state WHERE id = :id", state=HELD, id=r.id)
    with pytest.raises(IntegrityError):
        h.sql("UPDATE reservations SET state = 'frozen' WHERE id = :id", id=r.id)
    for stack_state in StackState:
        h.sql("UPDATE stacks SET state = :state WHERE id = :id", state=stack_state, id=w.stack.id)
        assert h.get_stack(w.stack.id).state is stack_state
    with pytest.raises(IntegrityError):
        h.sql("UPDATE stacks SET state = 'frozen' WHERE id = :id", id=w.stack.id)
    h.release(r.id)


# -- the ledger follows the table ------------------------------------------------------------


def test_every_operation_from_every_state_does_what_the_table_says(
    h: LedgerHarness, w: World
) -> None:
    """Each operation applied to a reservation in each state: the state it ends in is the table's
    (an allowed move happened, and reports success), or the one it had (a forbidden move was
    refused, and reports that); no other reservation is touched."""
    requests = itertools.count()

    def claim(r: Reservation) -> Reservation:
        claimed: Reservation = h.claim(
            w.alice.id, w.stack.id, request_id=f"r{next(requests)}", reservation_id=r.id, now=T0
        )
        return claimed

    into: dict[ReservationState, Callable[[Reservation], object]] = {
        HELD: lambda r: None,
        IN_FLIGHT: claim,
        SETTLED: lambda r: (claim(r), h.settle(r.id, 1)),
        RELEASED: lambda r: h.release(r.id),
        EXPIRED: lambda r: h.expire(now=LONG_AFTER),
    }
    for state, operation in itertools.product(ReservationState, Operation):
        r = reserve(h, w, 3, now=T0)
        into[state](r)
        assert h.get_reservation(r.id).state is state
        allowed = operation in TRANSITIONS[state]
        if operation is Operation.CLAIM:
            if allowed:
                assert claim(r).state is IN_FLIGHT
            else:
                with pytest.raises(UnavailableStack):
                    claim(r)
        elif operation is Operation.HEARTBEAT:
            renewed = h.heartbeat(r.id, now=T0 + 1)
            assert (renewed is not None) == allowed
        else:
            reserved_before = h.get_stack(w.stack.id).reserved_units
            if operation is Operation.SETTLE:
                h.settle(r.id, 2)
            elif operation is Operation.RELEASE:
                h.release(r.id)
            else:
                assert h.expire(now=LONG_AFTER) == (1 if allowed else 0)
            handed_back = reserved_before - h.get_stack(w.stack.id).reserved_units
            assert handed_back == (3 if allowed else 0), (state, operation)
        expected = TRANSITIONS[state].get(operation, state)
        assert h.get_reservation(r.id).state is expected, (state, operation)
        if expected in LIVE_STATES:  # leave nothing live for the next round's sweep to find
            h.release(r.id)
