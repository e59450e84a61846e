"""reconcile(): the books are checked against the reservations behind every counter."""

from __future__ import annotations

from tests.gateway.conftest import LedgerHarness
from tests.gateway.ledger.world import World, reserve


def test_reconcile_reports_counters_that_disagree_with_reservations(
    h: LedgerHarness, w: World
) -> None:
    reserve(h, w, 100)
    h.sql("UPDATE stacks SET reserved_units = 90 WHERE id = :id", id=w.stack.id)
    problems = h.reconcile()
    assert len(problems) == 1 and "reserved_units=90" in problems[0]
    h.sql("UPDATE stacks SET reserved_units = 100 WHERE id = :id", id=w.stack.id)
