"""Leases and expiry: nothing holds units forever, and nothing being served is forgiven."""

from __future__ import annotations

import asyncio

import pytest

from tests.gateway.conftest import LedgerHarness
from tests.gateway.ledger.world import T0, TTL, World, reserve, units
from veil.gateway.ledger import DEFAULT_LEASE_SECONDS
from veil.wire.errors import UnavailableStack


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


def test_orphans_are_exactly_what_the_next_sweep_would_release_from_flight(
    h: LedgerHarness, w: World
) -> None:
    """``orphans`` lists the in-flight reservations whose lease is the grace overdue (what a
    sweeping gateway asks the nodes' receipts for), by lease, page by page; never a held one,
    one still leased or one already final; and settling an orphan charges it (the sweep then
    finds nothing to release)."""
    h.reopen(in_flight_grace=10.0)
    held = reserve(h, w, 50)
    flying = [reserve(h, w, 100) for _ in range(3)]
    for i, r in enumerate(flying):  # leases ending at T0+100, T0+101, T0+102
        h.claim(w.alice.id, w.stack.id, request_id=f"req-{i}", lease_seconds=100,
                now=T0 + i, reservation_id=r.id)  # fmt: skip
    assert h.orphans(now=T0 + 100 + 9.9) == []
    found = h.orphans(now=T0 + 100 + 11)
    assert [(o.id, o.request_id) for o in found] == [
        (flying[0].id, "req-0"),
        (flying[1].id, "req-1"),
    ]
    assert all(o.node_small_id == w.node for o in found)
    first = h.orphans(now=T0 + 200, limit=2)
    rest = h.orphans(now=T0 + 200, limit=2, after=first[-1])
    assert [o.id for o in first + rest] == [r.id for r in flying]
    assert h.orphans(now=T0 + 200, after=rest[-1]) == []

    h.settle(flying[0].id, 70, now=T0 + 200)  # what recovery does with a node's receipt
    assert [o.id for o in h.orphans(now=T0 + 200)] == [flying[1].id, flying[2].id]
    assert h.expire(now=T0 + 200) == 3  # the other two orphans and the held one
    assert h.get_reservation(held.id).state == "expired"
    assert h.get_reservation(flying[0].id).charged_units == 70
    assert units(h, w.stack.id) == (1000, 0, 70)
    assert h.orphans(now=T0 + 300) == []
