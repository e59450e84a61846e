"""The ledger's rules, each pinned down on SQLite and on PostgreSQL (see conftest.db_url)."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.gateway.conftest import LedgerHarness
from veil.gateway.ledger import DEFAULT_LEASE_SECONDS, Ledger, Stack, User, alembic_config
from veil.gateway.ledger.schema import metadata
from veil.wire.envelopes import MAX_ID
from veil.wire.errors import (
    AuthError,
    BalanceError,
    InvalidBody,
    Locked,
    NotFound,
    UnavailableStack,
)

T0 = 1_800_000_000.0
MODEL = "smollm2-135m-instruct"
TTL = 60.0


@dataclass
class World:
    alice: User
    bob: User
    node: int
    stack: Stack  # alice's, 1000 units of MODEL
    bobs: Stack  # bob's, 1000 units of MODEL


@pytest.fixture
def w(h: LedgerHarness) -> World:
    alice, _ = h.create_user("alice")
    bob, _ = h.create_user("bob")
    return World(
        alice=alice,
        bob=bob,
        node=h.node_small_id("http://127.0.0.1:8081"),
        stack=h.create_stack("alice", MODEL, 1000),
        bobs=h.create_stack("bob", MODEL, 1000),
    )


def reserve(h: LedgerHarness, w: World, units: int, **kwargs: Any) -> Any:
    kwargs.setdefault("now", T0)
    kwargs.setdefault("ttl_seconds", TTL)
    kwargs.setdefault("node_small_id", w.node)
    user = kwargs.pop("user", w.alice)
    return h.reserve(user.id, kwargs.pop("model", MODEL), units, **kwargs)


def units(h: LedgerHarness, stack_id: int) -> tuple[int, int, int]:
    """(total, reserved, used) of a stack."""
    s = h.get_stack(stack_id)
    return s.total_units, s.reserved_units, s.used_units


# -- schema and migrations -------------------------------------------------------------------


def test_migrated_schema_matches_the_models(h: LedgerHarness) -> None:
    async def diff() -> Any:
        async with h.ledger.engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )

    assert h.run(diff()) == []
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    assert h.sql("SELECT version_num FROM alembic_version") == [(head,)]


def test_gateways_starting_together_migrate_once(db_url: str) -> None:
    async def start_three() -> list[str]:
        ledgers = await asyncio.gather(*(Ledger.open(db_url) for _ in range(3)))
        try:
            await ledgers[0].create_user("alice")
            await ledgers[1].create_stack("alice", MODEL, 10)
            return [s.user for s in await ledgers[2].list_stacks()]
        finally:
            for ledger in ledgers:
                await ledger.close()

    assert asyncio.run(start_three()) == ["alice"]


GATEWAY_PROCESS = """
import asyncio, sys
from veil.gateway.ledger import Ledger

async def main() -> None:
    print("ready", flush=True)
    sys.stdin.readline()  # everyone starts at once
    ledger = await Ledger.open(sys.argv[1])
    await ledger.close()

asyncio.run(main())
"""


def test_gateway_processes_starting_together_migrate_once(db_url: str) -> None:
    gateways = [
        subprocess.Popen(
            [sys.executable, "-c", GATEWAY_PROCESS, db_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for gateway in gateways:
        assert gateway.stdout is not None and gateway.stdout.readline() == "ready\n"
    for gateway in gateways:
        assert gateway.stdin is not None
        gateway.stdin.write("go\n")
        gateway.stdin.flush()
    for gateway in gateways:
        _, stderr = gateway.communicate(timeout=60)
        assert gateway.returncode == 0, stderr

    async def version() -> Any:
        ledger = await Ledger.open(db_url)
        try:
            async with ledger.engine.connect() as conn:
                return (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        finally:
            await ledger.close()

    assert asyncio.run(version()) == [
        (ScriptDirectory.from_config(alembic_config()).get_current_head(),)
    ]


def test_check_constraint_rejects_overcommitting_a_stack(h: LedgerHarness, w: World) -> None:
    with pytest.raises(IntegrityError):
        h.sql(
            "UPDATE stacks SET reserved_units = 600, used_units = 401 WHERE id = :id", id=w.stack.id
        )
    with pytest.raises(IntegrityError):
        h.sql("UPDATE stacks SET used_units = -1 WHERE id = :id", id=w.stack.id)
    assert units(h, w.stack.id) == (1000, 0, 0)


def test_reconcile_reports_counters_that_disagree_with_reservations(
    h: LedgerHarness, w: World
) -> None:
    reserve(h, w, 100)
    h.sql("UPDATE stacks SET reserved_units = 90 WHERE id = :id", id=w.stack.id)
    problems = h.reconcile()
    assert len(problems) == 1 and "reserved_units=90" in problems[0]
    h.sql("UPDATE stacks SET reserved_units = 100 WHERE id = :id", id=w.stack.id)


# -- the request lifecycle -------------------------------------------------------------------


def test_reserve_claim_settle_happy_path(h: LedgerHarness, w: World) -> None:
    r = reserve(h, w, 300)
    assert (r.state, r.units, r.stack_id, r.node_small_id) == ("held", 300, w.stack.id, w.node)
    assert r.expires_at == T0 + TTL and r.charged_units is None
    assert units(h, w.stack.id) == (1000, 300, 0)
    assert h.get_stack(w.stack.id).free_units == 700

    claimed = h.claim(w.alice.id, w.stack.id, request_id="req-1", now=T0 + 1)
    assert (claimed.id, claimed.state, claimed.request_id) == (r.id, "in_flight", "req-1")

    done = h.settle(r.id, 120, prompt_tokens=20, completion_tokens=100, receipt=b"signed")
    assert (done.state, done.charged_units, done.released_units) == ("settled", 120, 180)
    assert units(h, w.stack.id) == (1000, 0, 120)
    rows = h.sql(
        "SELECT prompt_tokens, completion_tokens, compute_units, receipt FROM usage_receipts"
    )
    assert [tuple(row) for row in rows] == [(20, 100, 120, b"signed")]


def test_settle_charges_at_most_what_was_reserved(h: LedgerHarness, w: World) -> None:
    r = reserve(h, w, 300)
    h.claim(w.alice.id, w.stack.id, request_id="req-1", now=T0)
    assert h.settle(r.id, 10_000).charged_units == 300
    assert units(h, w.stack.id) == (1000, 0, 300)


def test_release_returns_every_unit(h: LedgerHarness, w: World) -> None:
    r = reserve(h, w, 300)
    done = h.release(r.id)
    assert (done.state, done.charged_units, done.released_units) == ("released", 0, 300)
    assert units(h, w.stack.id) == (1000, 0, 0)


def test_settle_is_idempotent(h: LedgerHarness, w: World) -> None:
    r = reserve(h, w, 300)
    h.claim(w.alice.id, w.stack.id, request_id="req-1", now=T0)
    first = h.settle(r.id, 100)
    assert h.settle(r.id, 250) == first
    assert h.release(r.id) == first
    assert units(h, w.stack.id) == (1000, 0, 100)
    assert h.sql("SELECT count(*) FROM usage_receipts") == [(1,)]

    other = reserve(h, w, 50)
    released = h.release(other.id)
    assert h.settle(other.id, 50) == released
    assert units(h, w.stack.id) == (1000, 0, 100)


def test_concurrent_settles_charge_once(h: LedgerHarness, w: World) -> None:
    r = reserve(h, w, 300)
    h.claim(w.alice.id, w.stack.id, request_id="req-1", now=T0)
    second = h.open_another()

    async def race() -> list[Any]:
        settles = [h.ledger.settle(r.id, 100 + i) for i in range(5)]
        settles += [second.settle(r.id, 200 + i) for i in range(5)]
        return list(await asyncio.gather(*settles))

    results = h.run(race())
    assert len({(x.state, x.charged_units) for x in results}) == 1
    charged = results[0].charged_units
    assert units(h, w.stack.id) == (1000, 0, charged)


def test_settle_unknown_reservation_is_not_found(h: LedgerHarness, w: World) -> None:
    with pytest.raises(NotFound):
        h.settle("0" * 32, 1)
    with pytest.raises(NotFound):
        h.release("nope")


# -- expiry ----------------------------------------------------------------------------------


def test_expiry_releases_held_reservations_past_their_deadline(h: LedgerHarness, w: World) -> None:
    r = reserve(h, w, 300)
    assert h.expire(now=T0 + TTL - 0.001) == 0
    assert units(h, w.stack.id) == (1000, 300, 0)
    assert h.expire(now=T0 + TTL) == 1
    assert units(h, w.stack.id) == (1000, 0, 0)
    gone = h.get_reservation(r.id)
    assert (gone.state, gone.charged_units) == ("expired", 0)
    assert h.expire(now=T0 + 10 * TTL) == 0


def test_expired_reservation_cannot_be_claimed_even_before_the_sweep(
    h: LedgerHarness, w: World
) -> None:
    reserve(h, w, 300)
    with pytest.raises(UnavailableStack):
        h.claim(w.alice.id, w.stack.id, request_id="late", now=T0 + TTL)


def test_a_request_being_served_past_its_lock_timeout_is_still_charged(
    h: LedgerHarness, w: World
) -> None:
    """Issue 12 #1: the sweep used to expire an in-flight reservation once its *lock* deadline was
    a grace period old, and the settle that followed charged nothing. A claim leases the
    reservation for the request instead (DEFAULT_LEASE_SECONDS unless the gateway says)."""
    grace = h.ledger.in_flight_grace
    r = reserve(h, w, 300)
    claimed = h.claim(w.alice.id, w.stack.id, request_id="req-1", now=T0 + 1)
    assert claimed.expires_at == T0 + 1 + DEFAULT_LEASE_SECONDS
    assert h.expire(now=T0 + TTL + grace) == 0
    assert h.get_reservation(r.id).state == "in_flight"
    done = h.settle(r.id, 250, now=T0 + TTL + grace + 1)
    assert (done.state, done.charged_units) == ("settled", 250)
    assert units(h, w.stack.id) == (1000, 0, 250)


def test_heartbeats_keep_a_request_covered_however_long_it_runs(h: LedgerHarness, w: World) -> None:
    """An hour-long request with a 60 s lock, a 100 s lease and a 5 s grace: every renewal moves
    the lease, a sweep between renewals finds nothing, and the settle charges in full."""
    h.reopen(in_flight_grace=5.0)
    r = reserve(h, w, 300)
    h.claim(w.alice.id, w.stack.id, request_id="req-1", lease_seconds=100, now=T0 + 1)
    for beat in range(31, 3600, 30):
        assert h.heartbeat(r.id, lease_seconds=100, now=T0 + beat) == T0 + beat + 100
        assert h.expire(now=T0 + beat + 90) == 0
    assert h.get_reservation(r.id).state == "in_flight"
    done = h.settle(r.id, 300, now=T0 + 3600)
    assert (done.state, done.charged_units) == ("settled", 300)
    assert units(h, w.stack.id) == (1000, 0, 300)


def test_a_lease_nobody_renews_expires_after_the_grace(h: LedgerHarness, w: World) -> None:
    """The gateway serving it is gone (crashed mid-request): its units must not stay pinned.
    Expiry is then final, for a late heartbeat and a late settle alike."""
    h.reopen(in_flight_grace=10.0)
    r = reserve(h, w, 300)
    h.claim(w.alice.id, w.stack.id, request_id="req-1", lease_seconds=100, now=T0)
    assert h.expire(now=T0 + 100 + 9) == 0
    assert units(h, w.stack.id) == (1000, 300, 0)
    assert h.expire(now=T0 + 100 + 10) == 1
    assert units(h, w.stack.id) == (1000, 0, 0)
    assert h.heartbeat(r.id, lease_seconds=100, now=T0 + 111) is None
    late = h.settle(r.id, 200)
    assert (late.state, late.charged_units) == ("expired", 0)
    assert units(h, w.stack.id) == (1000, 0, 0)


def test_a_claim_never_shortens_the_lock_and_heartbeats_touch_only_in_flight(
    h: LedgerHarness, w: World
) -> None:
    long_lock = reserve(h, w, 100, ttl_seconds=3600)
    claimed = h.claim(w.alice.id, w.stack.id, request_id="r", lease_seconds=100, now=T0 + 1)
    assert claimed.expires_at == T0 + 3600
    assert h.heartbeat(long_lock.id, lease_seconds=100, now=T0 + 2) == T0 + 3600
    held = reserve(h, w, 100)
    assert h.heartbeat(held.id, now=T0 + 1) is None  # not claimed: the lock's deadline stands
    assert h.get_reservation(held.id).expires_at == T0 + TTL
    h.settle(long_lock.id, 10)
    assert h.heartbeat(long_lock.id, now=T0 + 3) is None
    assert h.heartbeat("no-such-reservation", now=T0 + 3) is None
    with pytest.raises(ValueError):
        h.heartbeat(held.id, lease_seconds=0)


def test_in_flight_grace_is_configurable(h: LedgerHarness, w: World) -> None:
    h.reopen(in_flight_grace=10.0)
    reserve(h, w, 300)
    h.claim(w.alice.id, w.stack.id, request_id="req-1", now=T0)
    assert h.expire(now=T0 + DEFAULT_LEASE_SECONDS + 9) == 0
    assert h.expire(now=T0 + DEFAULT_LEASE_SECONDS + 10) == 1


def test_expiry_survives_a_gateway_restart(h: LedgerHarness, w: World) -> None:
    held = reserve(h, w, 300)
    flying = reserve(h, w, 200)
    h.claim(w.alice.id, w.stack.id, request_id="req-1", now=T0, reservation_id=flying.id)
    h.reopen()
    assert units(h, w.stack.id) == (1000, 500, 0)
    assert h.expire(now=T0 + TTL) == 1
    assert h.get_reservation(held.id).state == "expired"
    assert h.expire(now=T0 + DEFAULT_LEASE_SECONDS + h.ledger.in_flight_grace) == 1
    assert units(h, w.stack.id) == (1000, 0, 0)


def test_two_gateways_sweeping_at_once_release_each_reservation_once(
    h: LedgerHarness, w: World
) -> None:
    for _ in range(10):
        reserve(h, w, 50)
    second = h.open_another()

    async def sweep() -> list[int]:
        return list(
            await asyncio.gather(h.ledger.expire(now=T0 + TTL), second.expire(now=T0 + TTL))
        )

    assert sum(h.run(sweep())) == 10
    assert units(h, w.stack.id) == (1000, 0, 0)


def test_run_expiry_sweeps_at_once(h: LedgerHarness, w: World) -> None:
    reserve(h, w, 300, now=1_000.0)  # long past in real time
    stop = asyncio.Event()
    stop.set()
    h.run(h.ledger.run_expiry(3600, stop=stop))
    assert units(h, w.stack.id) == (1000, 0, 0)


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


# -- integer edges (issue 12 #6) -----------------------------------------------------------


def test_units_near_the_64_bit_edge_are_refused_not_overflowed(h: LedgerHarness, w: World) -> None:
    """A stack holding 2**63 - 1 units, most of them reserved: a reservation past what is free is
    a BalanceError on both backends (the guard once added reserved + used + units, which
    overflows BIGINT on PostgreSQL and turns into a float on SQLite)."""
    big = h.create_stack("alice", "edge-model", MAX_ID)
    first = reserve(h, w, MAX_ID - 10, model="edge-model", stack_id=big.id)
    for asked in (11, 2**62, MAX_ID):
        with pytest.raises(BalanceError, match="10 free units"):
            reserve(h, w, asked, model="edge-model", stack_id=big.id)
        with pytest.raises(BalanceError):
            reserve(h, w, asked, model="edge-model")
    last = reserve(h, w, 10, model="edge-model", stack_id=big.id)
    assert units(h, big.id) == (MAX_ID, MAX_ID, 0)
    h.claim(w.alice.id, big.id, request_id="edge", reservation_id=first.id, now=T0)
    done = h.settle(first.id, 2**64, prompt_tokens=MAX_ID, completion_tokens=0)
    assert done.charged_units == MAX_ID - 10  # capped at what was reserved
    h.release(last.id)
    assert units(h, big.id) == (MAX_ID, 0, MAX_ID - 10)


@pytest.mark.parametrize(
    "value", [2**63, 2**64, 2**1000, -(2**63) - 1], ids=["2^63", "2^64", "2^1000", "-2^63-1"]
)
def test_integers_past_64_bits_are_invalid_bodies_naming_the_field(
    h: LedgerHarness, w: World, value: int
) -> None:
    checks: list[tuple[str, Callable[[], object]]] = [
        ("units", lambda: reserve(h, w, value)),
        ("units", lambda: h.create_stack("alice", MODEL, value)),
        ("price_per_million", lambda: h.create_stack("alice", MODEL, 1, value)),
        ("units", lambda: h.top_up(w.stack.id, value)),
        ("stack id", lambda: h.top_up(value, 1)),
    ]
    for field, call in checks:
        with pytest.raises(InvalidBody, match=f"^{field} must be an integer"):
            call()
    r = reserve(h, w, 10)
    with pytest.raises(InvalidBody, match=r"^prompt_tokens must be an integer"):
        h.settle(r.id, 1, prompt_tokens=value)
    assert h.get_reservation(r.id).state == "held"
    assert units(h, w.stack.id) == (1000, 10, 0)
    h.release(r.id)


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


# -- users and API keys ----------------------------------------------------------------------


def test_api_keys_are_stored_only_as_hashes(h: LedgerHarness) -> None:
    user, key = h.create_user("alice")
    assert key.startswith("veil_") and len(key) == 48
    rows = h.sql("SELECT * FROM api_keys")
    assert len(rows) == 1
    row = rows[0]._mapping
    assert bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert row["prefix"] == key[:12]
    for value in row.values():
        assert key not in str(value)
        assert key.encode() not in (value if isinstance(value, bytes) else b"")
    assert h.authenticate(key) == user


def test_wrong_unknown_and_revoked_keys_are_refused(h: LedgerHarness) -> None:
    _, key = h.create_user("alice")
    same_prefix = key[:12] + ("A" if key[12] != "A" else "B") + key[13:]
    for bad in (same_prefix, "veil_" + "x" * 43, "", "Bearer nonsense", key + "x"):
        with pytest.raises(AuthError) as refused:
            h.authenticate(bad)
        assert key[5:] not in refused.value.message
    assert h.revoke_api_key(key[:12]) is True
    assert h.revoke_api_key(key) is False
    with pytest.raises(AuthError, match="revoked"):
        h.authenticate(key)
    with pytest.raises(NotFound):
        h.revoke_api_key("veil_zzzzzzz")
    with pytest.raises(NotFound):
        h.revoke_api_key(same_prefix)  # a whole key must match its hash, not only the prefix


def test_a_user_can_hold_several_keys(h: LedgerHarness) -> None:
    alice, first = h.create_user("alice")
    second = h.create_api_key("alice", admin=True)
    assert h.authenticate(first).is_admin is False
    assert h.authenticate(second).is_admin is True
    assert h.get_user("alice").is_admin is True
    h.revoke_api_key(second)
    assert h.get_user("alice").is_admin is False
    assert h.authenticate(first) == alice
    with pytest.raises(NotFound):
        h.create_api_key("nobody")
    with pytest.raises(InvalidBody):
        h.create_user("alice")


def test_admin_key_is_created_once(h: LedgerHarness) -> None:
    key = h.ensure_admin_key()
    assert key is not None
    admin = h.authenticate(key)
    assert admin.name == "admin" and admin.is_admin
    assert h.ensure_admin_key() is None
    h.reopen()
    assert h.ensure_admin_key() is None
    h.revoke_api_key(key)
    assert h.ensure_admin_key() is None


# -- stacks and nodes ------------------------------------------------------------------------


def test_stack_administration(h: LedgerHarness, w: World) -> None:
    priced = h.create_stack("alice", "other-model", 5, price_per_million=2_500_000)
    assert (priced.user, priced.model, priced.price, priced.state) == (
        "alice",
        "other-model",
        2_500_000,
        "active",
    )
    assert [s.id for s in h.list_stacks("alice")] == [w.stack.id, priced.id]
    assert [s.id for s in h.list_stacks()] == [w.stack.id, w.bobs.id, priced.id]
    assert h.top_up(priced.id, 10).total_units == 15
    for missing in (h.get_stack, lambda i: h.top_up(i, 1), lambda i: h.set_state(i, "locked")):
        with pytest.raises(NotFound):
            missing(999_999)
    with pytest.raises(NotFound):
        h.list_stacks("nobody")
    with pytest.raises(NotFound):
        h.create_stack("nobody", MODEL, 5)
    with pytest.raises(InvalidBody):
        h.top_up(priced.id, 0)
    with pytest.raises(InvalidBody):
        h.create_stack("alice", MODEL, -1)


def test_node_small_ids_are_stable_across_restarts_and_gateways(h: LedgerHarness) -> None:
    a = h.node_small_id("http://a:8081")
    b = h.node_small_id("http://b:8081")
    assert a != b and h.node_small_id("http://a:8081") == a
    h.reopen()
    assert h.node_small_id("http://b:8081") == b
    second = h.open_another()
    assert h.run(second.node_small_id("http://a:8081")) == a

    async def together() -> list[int]:
        return list(
            await asyncio.gather(
                *(ledger.node_small_id("http://c:8081") for ledger in [h.ledger, second] * 4)
            )
        )

    assert len(set(h.run(together()))) == 1
