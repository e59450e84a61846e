"""Argument checks: integers past what the columns hold are refused, naming the field (issue 12 #6)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.gateway.conftest import LedgerHarness
from tests.gateway.ledger.world import MODEL, T0, World, reserve, units
from veil.wire.envelopes import MAX_ID
from veil.wire.errors import BalanceError, InvalidBody


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
