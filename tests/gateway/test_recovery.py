"""A gateway recovering orphans (``veil.gateway.recovery``): an in-flight reservation nobody
serves any more is charged from the receipt its node kept, and only a receipt that node signed for
that very ticket counts; whatever else the node answers (another ticket's receipt, another key's,
an error, too much, garbage, nothing) leaves the orphan to be released, as before.

A real gateway app on loopback, a real SQLite ledger, and a stand-in node on loopback
(``tests.gateway.node_stand_in``, scripted to answer as a hostile or broken node would). The orphan
is made the way a dead gateway leaves one: locked through the gateway, claimed straight in the
ledger under a ticket id, and never settled. ``tests/faults/test_gateway_crash.py`` does it with a
real node and a gateway killed mid-stream.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.gateway.node_stand_in import CHAT
from tests.gateway.served import Served, serve_gateway
from tests.servers import wait_until
from veil.gateway.ledger import Ledger
from veil.wire.tickets import UsageReceipt, sign_token

RESERVED = 300


def orphan(served: Served, key: str, data_dir: Path) -> tuple[str, str]:
    """A reservation left in flight by a gateway that died: (reservation id, ticket id)."""
    locked = served.lock(key, max_num_tokens=RESERVED, timeout=1)
    assert locked.status_code == 200, locked.text
    reservation_id = locked.json()["reservation_id"]
    ticket_id = uuid.uuid4().hex

    async def claim() -> None:
        ledger = await Ledger.open(f"sqlite+aiosqlite:///{data_dir / 'ledger.db'}")
        try:
            user = await ledger.authenticate(key)
            stack = locked.json()["stack_small_id"]
            await ledger.claim(user.id, stack, request_id=ticket_id, reservation_id=reservation_id,
                               model=CHAT, lease_seconds=0.01)  # fmt: skip
        finally:
            await ledger.close()

    asyncio.run(claim())
    return reservation_id, ticket_id


def settled(served: Served, stack_id: int) -> dict[str, int]:
    wait_until(lambda: served.stack(stack_id)["reserved_units"] == 0, 30, "the orphan swept")
    return served.stack(stack_id)


def test_an_orphan_is_charged_the_receipt_its_node_kept(tmp_path: Path) -> None:
    with serve_gateway(tmp_path, in_flight_grace_seconds=0) as served:
        key, stack_id = served.new_user("alice")
        reservation_id, ticket_id = orphan(served, key, tmp_path)
        kept = served.node.receipt(ticket_id, 120, final=False)
        served.node.kept[ticket_id] = kept
        stack = settled(served, stack_id)
        assert stack["used_units"] == 120
        usage = served.call("GET", "/v1/usage", key).json()["usage"]
        assert [(u["reservation_id"], u["charged_units"], u["receipt"]) for u in usage] == [
            (reservation_id, 120, kept)
        ]
        assert [ticket_id] in served.node.queries  # asked for exactly its ticket
        assert served.metric("veil_gateway_reservations_recovered_total") == 1


def test_a_receipt_is_capped_at_what_the_orphan_held(tmp_path: Path) -> None:
    with serve_gateway(tmp_path, in_flight_grace_seconds=0) as served:
        key, stack_id = served.new_user("alice")
        _, ticket_id = orphan(served, key, tmp_path)
        served.node.kept[ticket_id] = served.node.receipt(ticket_id, 10**9)
        assert settled(served, stack_id)["used_units"] == RESERVED


@pytest.mark.parametrize(
    "hostile",
    ["another ticket", "another key", "status", "huge", "garbage", "nothing kept"],
)
def test_an_orphan_is_released_unless_its_node_signed_a_receipt_for_it(
    tmp_path: Path, hostile: str
) -> None:
    with serve_gateway(tmp_path, in_flight_grace_seconds=0) as served:
        key, stack_id = served.new_user("alice")
        reservation_id, ticket_id = orphan(served, key, tmp_path)
        node = served.node
        if hostile == "another ticket":  # validly signed, for some other request
            node.kept[ticket_id] = node.receipt(uuid.uuid4().hex, 120)
        elif hostile == "another key":
            forged = UsageReceipt(ticket_id=ticket_id, model=CHAT, compute_units=120)
            node.kept[ticket_id] = sign_token(forged, Ed25519PrivateKey.generate())
        elif hostile in ("status", "huge", "garbage"):
            node.kept[ticket_id] = node.receipt(ticket_id, 120)
            node.receipts = hostile
        stack = settled(served, stack_id)
        assert stack["used_units"] == 0 and stack["reserved_units"] == 0
        assert served.call("GET", "/v1/usage", key).json()["usage"] == []
        assert node.queries and all(q == [ticket_id] for q in node.queries)
        assert served.metric("veil_gateway_reservations_recovered_total") == 0
        assert reservation_id not in served.call("GET", "/v1/usage", key).text
