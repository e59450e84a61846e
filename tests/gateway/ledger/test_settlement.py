"""Settlement: a live reservation ends exactly once, charging at most what it held."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.gateway.conftest import LedgerHarness
from tests.gateway.ledger.world import T0, TTL, World, reserve, units
from veil.wire.errors import NotFound


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
