"""Reservations: who may hold which units, and which request may claim them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.gateway.conftest import LedgerHarness
from tests.gateway.ledger.world import MODEL, T0, TTL, World, reserve, units
from veil.gateway.ledger import Ledger
from veil.wire.errors import BalanceError, InvalidBody, Locked, NotFound, UnavailableStack

# -- who may spend which stack ---------------------------------------------------------------


def test_someone_elses_stack_is_not_found_and_untouched(h: LedgerHarness, w: World) -> None:
    with pytest.raises(NotFound) as theirs:
        reserve(h, w, 10, stack_id=w.bobs.id)
    with pytest.raises(NotFound) as missing:
        reserve(h, w, 10, stack_id=999_999)
    assert theirs.value.message == f"no stack {w.bobs.id}"
    assert missing.value.message == "no stack 999999"
    assert units(h, w.bobs.id) == (1000, 0, 0)
    with pytest.raises(NotFound):
        h.get_stack(w.bobs.id, user_id=w.alice.id)


def test_a_stack_for_another_model_is_not_found(h: LedgerHarness, w: World) -> None:
    with pytest.raises(NotFound):
        reserve(h, w, 10, stack_id=w.stack.id, model="other-model")
    with pytest.raises(BalanceError):
        reserve(h, w, 10, model="other-model")


def test_locked_or_settling_stack_takes_no_reservations(h: LedgerHarness, w: World) -> None:
    live = reserve(h, w, 100)
    for state in ("locked", "settling"):
        assert h.set_state(w.stack.id, state).state == state
        with pytest.raises(Locked):
            reserve(h, w, 10, stack_id=w.stack.id)
        with pytest.raises(Locked):
            reserve(h, w, 10)
    # A reservation made before the lock still completes.
    h.claim(w.alice.id, w.stack.id, request_id="req-1", now=T0)
    assert h.settle(live.id, 40).charged_units == 40
    h.set_state(w.stack.id, "active")
    assert reserve(h, w, 10).stack_id == w.stack.id
    with pytest.raises(InvalidBody):
        h.set_state(w.stack.id, "frozen")


def test_not_enough_units_says_how_many_are_free(h: LedgerHarness, w: World) -> None:
    h.create_stack("alice", MODEL, 400)
    reserve(h, w, 900)
    with pytest.raises(BalanceError) as refused:
        reserve(h, w, 500)
    assert "at most 400 free" in refused.value.message
    with pytest.raises(BalanceError) as on_stack:
        reserve(h, w, 101, stack_id=w.stack.id)
    assert "100 free" in on_stack.value.message
    assert units(h, w.stack.id) == (1000, 900, 0)


def test_user_without_a_stack_gets_balance_error(h: LedgerHarness, w: World) -> None:
    carol, _ = h.create_user("carol")
    with pytest.raises(BalanceError) as refused:
        reserve(h, w, 1, user=carol)
    assert "at most 0 free" in refused.value.message


def test_reserve_picks_the_best_fitting_stack(h: LedgerHarness, w: World) -> None:
    small = h.create_stack("alice", MODEL, 200)
    smaller = h.create_stack("alice", MODEL, 50)
    assert reserve(h, w, 100).stack_id == small.id
    assert reserve(h, w, 50).stack_id == smaller.id
    assert reserve(h, w, 100).stack_id == small.id
    assert reserve(h, w, 100).stack_id == w.stack.id


def test_reserve_rejects_nonsense(h: LedgerHarness, w: World) -> None:
    for bad in (0, -5):
        with pytest.raises(InvalidBody):
            reserve(h, w, bad)
    with pytest.raises(NotFound):
        reserve(h, w, 10, node_small_id=424242)
    assert units(h, w.stack.id) == (1000, 0, 0)


def test_claim_without_a_reservation_is_unavailable(h: LedgerHarness, w: World) -> None:
    with pytest.raises(UnavailableStack):
        h.claim(w.alice.id, w.stack.id, request_id="req-1", now=T0)


def test_claim_by_another_user_is_unavailable(h: LedgerHarness, w: World) -> None:
    reserve(h, w, 100)
    with pytest.raises(UnavailableStack):
        h.claim(w.bob.id, w.stack.id, request_id="req-1", now=T0)
    assert h.claim(w.alice.id, w.stack.id, request_id="req-1", now=T0).state == "in_flight"


def test_each_reservation_serves_one_request(h: LedgerHarness, w: World) -> None:
    first = reserve(h, w, 100, now=T0)
    second = reserve(h, w, 100, now=T0 + 1)
    assert h.claim(w.alice.id, w.stack.id, request_id="a", now=T0 + 2).id == first.id
    assert h.claim(w.alice.id, w.stack.id, request_id="b", now=T0 + 2).id == second.id
    with pytest.raises(UnavailableStack):
        h.claim(w.alice.id, w.stack.id, request_id="c", now=T0 + 2)


def test_a_request_id_is_used_once(h: LedgerHarness, w: World) -> None:
    reserve(h, w, 100)
    reserve(h, w, 100)
    h.claim(w.alice.id, w.stack.id, request_id="same", now=T0)
    with pytest.raises(UnavailableStack):
        h.claim(w.alice.id, w.stack.id, request_id="same", now=T0)


def test_claim_a_named_reservation(h: LedgerHarness, w: World) -> None:
    reserve(h, w, 100, now=T0)
    newer = reserve(h, w, 100, now=T0 + 1)
    got = h.claim(w.alice.id, w.stack.id, request_id="a", reservation_id=newer.id, now=T0 + 2)
    assert got.id == newer.id
    with pytest.raises(UnavailableStack):
        h.claim(w.bob.id, w.stack.id, request_id="b", reservation_id=newer.id, now=T0 + 2)


def test_a_named_reservation_must_be_a_live_lock_of_the_caller_on_that_stack_and_model(
    h: LedgerHarness, w: World
) -> None:
    """Issue 12 #7: a request carrying its lock's handle takes exactly that reservation, or none."""
    mine = reserve(h, w, 100, now=T0)
    theirs = reserve(h, w, 100, user=w.bob, now=T0)
    other_stack = h.create_stack("alice", MODEL, 500)
    elsewhere = reserve(h, w, 100, stack_id=other_stack.id, now=T0)
    refused = [
        dict(user_id=w.alice.id, stack_id=w.stack.id, reservation_id=theirs.id),  # not mine
        dict(user_id=w.alice.id, stack_id=w.bobs.id, reservation_id=theirs.id),  # their stack
        dict(user_id=w.alice.id, stack_id=w.stack.id, reservation_id=elsewhere.id),  # stack
        dict(user_id=w.alice.id, stack_id=w.stack.id, reservation_id=mine.id, model="other"),
        dict(user_id=w.alice.id, stack_id=w.stack.id, reservation_id="0" * 32),  # unknown
    ]
    for n, ask in enumerate(refused):
        with pytest.raises(UnavailableStack, match="lock again"):
            h.claim(request_id=f"bad-{n}", now=T0 + 1, **ask)
    with pytest.raises(UnavailableStack):  # expired, even before a sweep
        h.claim(w.alice.id, w.stack.id, request_id="late", reservation_id=mine.id, now=T0 + TTL)
    assert [h.get_reservation(r.id).state for r in (mine, theirs, elsewhere)] == ["held"] * 3
    got = h.claim(
        w.alice.id, w.stack.id, request_id="ok", reservation_id=mine.id, model=MODEL, now=T0 + 1
    )
    assert (got.id, got.state) == (mine.id, "in_flight")
    with pytest.raises(UnavailableStack):  # each reservation serves one request
        h.claim(w.alice.id, w.stack.id, request_id="again", reservation_id=mine.id, now=T0 + 1)


def test_a_claim_for_another_model_than_the_stack_is_unavailable(
    h: LedgerHarness, w: World
) -> None:
    """Without a handle too: a lock on a cheap model's stack cannot pay for another model."""
    reserve(h, w, 100)
    with pytest.raises(UnavailableStack):
        h.claim(w.alice.id, w.stack.id, request_id="r", model="pricier-model", now=T0)
    assert h.claim(w.alice.id, w.stack.id, request_id="r", model=MODEL, now=T0).state == (
        "in_flight"
    )


def test_concurrent_requests_with_handles_take_their_own_reservations(
    h: LedgerHarness, w: World
) -> None:
    """Locks made in one order, requests arriving in the other, on two gateways at once."""
    locks = [reserve(h, w, 10 * (i + 1), now=T0 + i) for i in range(8)]
    second = h.open_another()

    async def one(i: int) -> Any:
        ledger = h.ledger if i % 2 else second
        return await ledger.claim(
            w.alice.id, w.stack.id, request_id=f"r{i}", reservation_id=locks[i].id, now=T0 + 20
        )

    results = h.run(asyncio.gather(*(one(i) for i in reversed(range(8)))))
    assert [r.id for r in results] == [lock.id for lock in reversed(locks)]
    assert [r.request_id for r in results] == [f"r{i}" for i in reversed(range(8))]


# -- concurrency -----------------------------------------------------------------------------


def test_fifty_concurrent_reservations_on_a_stack_that_fits_seventeen(
    h: LedgerHarness, w: World
) -> None:
    stack = h.create_stack("alice", "tight-model", 17 * 60)
    second = h.open_another()

    async def one(ledger: Ledger) -> Any:
        try:
            return await ledger.reserve(
                w.alice.id, "tight-model", 60, node_small_id=w.node, ttl_seconds=TTL, now=T0
            )
        except BalanceError as exc:
            return exc

    async def storm() -> list[Any]:
        # Two gateways: 25 calls each, all in flight at once.
        return list(await asyncio.gather(*(one(h.ledger if i % 2 else second) for i in range(50))))

    results = h.run(storm())
    won = [r for r in results if not isinstance(r, BalanceError)]
    assert len(won) == 17
    assert len(results) - len(won) == 33
    assert units(h, stack.id) == (17 * 60, 17 * 60, 0)


def test_concurrent_claims_take_distinct_reservations(h: LedgerHarness, w: World) -> None:
    made = {reserve(h, w, 10, now=T0 + i).id for i in range(10)}
    second = h.open_another()

    async def one(i: int) -> Any:
        ledger = h.ledger if i % 2 else second
        try:
            return await ledger.claim(w.alice.id, w.stack.id, request_id=f"r{i}", now=T0 + 20)
        except UnavailableStack as exc:
            return exc

    results = h.run(asyncio.gather(*(one(i) for i in range(20))))
    claimed = [r.id for r in results if not isinstance(r, UnavailableStack)]
    assert sorted(claimed) == sorted(made)
