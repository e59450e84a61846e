"""Stacks: the operator's side (create, list, top up, switch state)."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import LedgerHarness
from tests.gateway.ledger.world import MODEL, World
from veil.wire.errors import InvalidBody, NotFound


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
