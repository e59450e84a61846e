"""Node ids (one stable small id per node URL, shared by every gateway) and the node list the
operator manages (add, drain, undrain, remove)."""

from __future__ import annotations

import asyncio

import pytest

from tests.gateway.conftest import LedgerHarness
from tests.gateway.ledger.world import World, reserve
from veil.gateway.ledger import NodeState
from veil.wire.errors import Conflict, InvalidBody, NotFound


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


# -- the node list: add, drain, remove (veil nodes) ---------------------------------------------


def test_added_nodes_are_listed_active_and_a_second_add_conflicts(h: LedgerHarness) -> None:
    added = h.add_node("http://10.0.0.5:8081/")
    assert (added.url, added.state) == ("http://10.0.0.5:8081", NodeState.ACTIVE)
    assert [n.url for n in h.list_nodes()] == ["http://10.0.0.5:8081"]
    with pytest.raises(Conflict, match="already listed"):
        h.add_node("http://10.0.0.5:8081")
    # A --node flag's URL joins the same list, with the same id for the same URL.
    assert h.node_small_id("http://10.0.0.5:8081") == added.id
    flagged = h.node_small_id("http://10.0.0.6:8081")
    assert [(n.id, n.state) for n in h.list_nodes()] == [
        (added.id, NodeState.ACTIVE),
        (flagged, NodeState.ACTIVE),
    ]


@pytest.mark.parametrize(
    "url",
    [
        "",
        "10.0.0.5:8081",
        "ftp://x",
        "http://",
        "http://u:p@x:1",
        "http://x:99999",
        "http://x/?a=1",
    ],
)
def test_a_malformed_node_url_is_an_invalid_body(h: LedgerHarness, url: str) -> None:
    with pytest.raises(InvalidBody, match="node url"):
        h.add_node(url)
    assert h.list_nodes() == []


def test_unknown_urls_are_not_found_for_drain_and_remove(h: LedgerHarness) -> None:
    with pytest.raises(NotFound):
        h.drain_node("http://nowhere:8081")
    with pytest.raises(NotFound):
        h.remove_node("http://nowhere:8081", force=True)


def test_remove_needs_a_drained_idle_node_unless_forced(h: LedgerHarness, w: World) -> None:
    url = "http://127.0.0.1:8081"  # the world's node, made by node_small_id: active
    with pytest.raises(Conflict, match="drain it first"):
        h.remove_node(url)
    held = reserve(h, w, 100)
    assert h.drain_node(url).state is NodeState.DRAINING
    assert h.live_reservations_on(w.node) == 1
    with pytest.raises(Conflict, match="1 lock"):
        h.remove_node(url)
    assert h.get_node(url).state is NodeState.DRAINING  # the refusal changed nothing
    h.release(held.id)
    assert h.live_reservations_on(w.node) == 0
    removed = h.remove_node(url)
    assert removed.state is NodeState.REMOVED and h.list_nodes() == []
    assert [n.state for n in h.list_nodes(include_removed=True)] == [NodeState.REMOVED]
    with pytest.raises(NotFound):
        h.drain_node(url)
    # Added again: the same id, so its settled usage still points at it.
    again = h.add_node(url)
    assert (again.id, again.state) == (w.node, NodeState.ACTIVE)
    reserve(h, w, 10)
    assert h.remove_node(url, force=True).state is NodeState.REMOVED


def test_a_drained_node_can_be_undrained_and_every_gateway_sees_the_moves(
    h: LedgerHarness,
) -> None:
    other = h.open_another()
    url = "http://10.0.0.7:8081"
    h.add_node(url)
    assert [n.state for n in h.run(other.list_nodes())] == [NodeState.ACTIVE]
    h.drain_node(url)
    assert [n.state for n in h.run(other.list_nodes())] == [NodeState.DRAINING]
    assert h.run(other.undrain_node(url)).state is NodeState.ACTIVE
    assert h.get_node(url).state is NodeState.ACTIVE
    assert h.get_node(url).state_changed_at is not None


def test_two_gateways_adding_the_same_node_at_once_list_it_once(h: LedgerHarness) -> None:
    other = h.open_another()
    url = "http://10.0.0.8:8081"

    async def together() -> list[object]:
        return list(
            await asyncio.gather(
                h.ledger.add_node(url), other.add_node(url), return_exceptions=True
            )
        )

    outcomes = h.run(together())
    assert sum(isinstance(o, Conflict) for o in outcomes) == 1
    assert [n.url for n in h.list_nodes()] == [url]
