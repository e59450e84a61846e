"""Random sequences of reserve / claim / settle / release / expire / lock / top-up, checked step by
step against a plain-Python model of the rules, on both backends.

After every step the stacks in the database must equal the model's and ``reconcile()`` must find
nothing. Each Hypothesis example gets its own users and model name on the test's database, so the
examples do not see each other's stacks, and releases what it left live when it ends (``expire``
sweeps the whole database).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.gateway.conftest import LedgerHarness
from veil.wire.errors import BalanceError, Locked, NotFound, UnavailableStack, VeilError

T0 = 1_800_000_000.0
GRACE = 50.0
LEASE = 40.0  # what a claim or a heartbeat covers an in-flight request for
_examples = itertools.count()


@dataclass
class ModelStack:
    id: int
    mine: bool
    total: int
    reserved: int = 0
    used: int = 0
    state: str = "active"

    @property
    def free(self) -> int:
        return self.total - self.reserved - self.used


@dataclass
class ModelReservation:
    id: str
    stack: int
    units: int
    created: float
    expires: float
    state: str = "held"
    charged: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class LedgerMachine(RuleBasedStateMachine):
    harness: LedgerHarness

    def __init__(self) -> None:
        super().__init__()
        self.h = type(self).harness
        n = next(_examples)
        self.model_name = f"model-{n}"
        self.me, _ = self.h.create_user(f"me-{n}")
        self.them, _ = self.h.create_user(f"them-{n}")
        self.node = self.h.node_small_id("http://node")
        self.now = T0
        self.stacks: dict[int, ModelStack] = {}
        self.reservations: dict[str, ModelReservation] = {}
        self.requests = itertools.count()

    # -- helpers ---------------------------------------------------------------------------------

    def stack_ids(self) -> list[int]:
        return sorted(self.stacks)

    def pick_stack(self, index: int) -> ModelStack:
        ids = self.stack_ids()
        return self.stacks[ids[index % len(ids)]]

    def pick_reservation(self, index: int) -> ModelReservation:
        # By creation order, not by (random) id, so a replayed example makes the same choices.
        made = list(self.reservations.values())
        return made[index % len(made)]

    def finish(self, r: ModelReservation, state: str, charged: int) -> None:
        s = self.stacks[r.stack]
        s.reserved -= r.units
        s.used += charged
        r.state, r.charged = state, charged

    # -- rules -----------------------------------------------------------------------------------

    @initialize(
        mine=st.lists(st.integers(0, 300), min_size=1, max_size=3), theirs=st.integers(0, 300)
    )
    def make_stacks(self, mine: list[int], theirs: int) -> None:
        for total in mine:
            s = self.h.create_stack(self.me.name, self.model_name, total)
            self.stacks[s.id] = ModelStack(s.id, True, total)
        s = self.h.create_stack(self.them.name, self.model_name, theirs)
        self.stacks[s.id] = ModelStack(s.id, False, theirs)

    @rule(
        units=st.integers(1, 150),
        pick=st.none() | st.integers(0, 3),
        ttl=st.sampled_from([5.0, 30.0, 120.0]),
    )
    def reserve(self, units: int, pick: int | None, ttl: float) -> None:
        expected: type[VeilError] | int
        mine = [s for s in self.stacks.values() if s.mine]
        if pick is not None:
            s = self.pick_stack(pick)
            if not s.mine:
                expected = NotFound
            elif s.state != "active":
                expected = Locked
            elif s.free < units:
                expected = BalanceError
            else:
                expected = s.id
        else:
            fits = sorted((s.free, s.id) for s in mine if s.state == "active" and s.free >= units)
            if fits:
                expected = fits[0][1]
            elif all(s.state != "active" for s in mine):
                expected = Locked
            else:
                expected = BalanceError
        try:
            got = self.h.reserve(
                self.me.id,
                self.model_name,
                units,
                node_small_id=self.node,
                ttl_seconds=ttl,
                stack_id=None if pick is None else self.pick_stack(pick).id,
                now=self.now,
            )
        except VeilError as exc:
            assert not isinstance(expected, int), f"refused with {exc!r}, expected {expected}"
            assert type(exc) is expected
            return
        assert got.stack_id == expected
        self.stacks[got.stack_id].reserved += units
        self.reservations[got.id] = ModelReservation(
            got.id, got.stack_id, units, self.now, self.now + ttl
        )
        # One second per reservation: "oldest first" never has to break a tie on the random id,
        # which would make replays of an example diverge.
        self.now += 1

    @rule(pick=st.integers(0, 1000), by_me=st.sampled_from([True, True, True, False]))
    def claim(self, pick: int, by_me: bool) -> None:
        # Mostly on a stack that has reservations, so in-flight requests are common.
        if self.reservations:
            s = self.stacks[self.pick_reservation(pick).stack]
        else:
            s = self.pick_stack(pick)
        waiting = sorted(
            (r.created, r.id)
            for r in self.reservations.values()
            if r.stack == s.id and r.state == "held" and r.expires > self.now
        )
        user = self.me if by_me else self.them
        request_id = f"{self.model_name}-{next(self.requests)}"
        if not (by_me and waiting):
            with pytest.raises(UnavailableStack):
                self.h.claim(
                    user.id, s.id, request_id=request_id, lease_seconds=LEASE, now=self.now
                )
            return
        got = self.h.claim(user.id, s.id, request_id=request_id, lease_seconds=LEASE, now=self.now)
        assert got.id == waiting[0][1]
        r = self.reservations[got.id]
        r.state = "in_flight"
        r.expires = max(r.expires, self.now + LEASE)  # a claim leases, never shortens
        assert got.expires_at == r.expires

    @precondition(lambda self: self.reservations)
    @rule(index=st.integers(0, 1000))
    def heartbeat(self, index: int) -> None:
        r = self.pick_reservation(index)
        got = self.h.heartbeat(r.id, lease_seconds=LEASE, now=self.now)
        if r.state != "in_flight":
            assert got is None
            return
        r.expires = max(r.expires, self.now + LEASE)
        assert got == r.expires

    @precondition(lambda self: self.reservations)
    @rule(index=st.integers(0, 1000), charge=st.integers(0, 200))
    def settle(self, index: int, charge: int) -> None:
        r = self.pick_reservation(index)
        was_live = r.state in ("held", "in_flight")
        got = self.h.settle(r.id, charge)
        if was_live:
            self.finish(r, "settled", min(charge, r.units))
        assert (got.state, got.charged_units) == (r.state, r.charged)

    @precondition(lambda self: self.reservations)
    @rule(index=st.integers(0, 1000))
    def release(self, index: int) -> None:
        r = self.pick_reservation(index)
        if r.state in ("held", "in_flight"):
            self.finish(r, "released", 0)
        got = self.h.release(r.id)
        assert (got.state, got.charged_units) == (r.state, r.charged)

    @rule(seconds=st.sampled_from([0, 1, 4, 25, 50, 100]))
    def tick(self, seconds: int) -> None:
        self.now += seconds

    @rule(seconds=st.sampled_from([0, 4, 25, 50, 100]))
    def expire(self, seconds: int) -> None:
        self.now += seconds
        due = [
            r
            for r in self.reservations.values()
            if (r.state == "held" and r.expires <= self.now)
            or (r.state == "in_flight" and r.expires + GRACE <= self.now)
        ]
        for r in due:
            self.finish(r, "expired", 0)
        assert self.h.expire(now=self.now) == len(due)

    @rule(pick=st.integers(0, 3), state=st.sampled_from(["active", "locked", "settling"]))
    def set_state(self, pick: int, state: str) -> None:
        s = self.pick_stack(pick)
        assert self.h.set_state(s.id, state).state == state
        s.state = state

    @rule(pick=st.integers(0, 3), units=st.integers(1, 100))
    def top_up(self, pick: int, units: int) -> None:
        s = self.pick_stack(pick)
        assert self.h.top_up(s.id, units).total_units == s.total + units
        s.total += units

    def teardown(self) -> None:
        # expire() sweeps the whole database: leave nothing live for the next example to find.
        for r in self.reservations.values():
            if r.state in ("held", "in_flight"):
                self.h.release(r.id)

    # -- after every step ------------------------------------------------------------------------

    @invariant()
    def database_matches_the_model(self) -> None:
        got = {
            s.id: (s.total_units, s.reserved_units, s.used_units, s.state)
            for name in (self.me.name, self.them.name)
            for s in self.h.list_stacks(name)
        }
        want = {s.id: (s.total, s.reserved, s.used, s.state) for s in self.stacks.values()}
        assert got == want
        assert all(s.free >= 0 for s in self.stacks.values())

    @invariant()
    def books_balance(self) -> None:
        assert self.h.reconcile() == []


def test_random_sequences_follow_the_model(h: LedgerHarness) -> None:
    h.reopen(in_flight_grace=GRACE)
    machine = type("Machine", (LedgerMachine,), {"harness": h})
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=30, stateful_step_count=25, deadline=None, database=None),
    )
