"""Node ids: one stable small id per node URL, shared by every gateway."""

from __future__ import annotations

import asyncio

from tests.gateway.conftest import LedgerHarness


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
