"""A gateway killed (SIGKILL) while it holds reservations, restarted on the same ledger: every
unit comes back, the books balance, and the new gateway serves at once. SQLite and PostgreSQL."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.faults.conftest import (
    CHAT,
    CHAT_PATH,
    EMBED,
    EMBED_PATH,
    GatewayProcess,
    auth,
    create_account,
    lock,
    receipt_from,
    reconcile,
    reserved,
    running,
    seal_v1,
    seal_v3,
    stacks,
)
from tests.node.conftest import start_node
from tests.servers import ServerThread, wait_until
from veil.gateway.identity import load_or_create_gateway_key, public_b64
from veil.node.service import EngineRegistry
from veil.wire.tickets import RECEIPT_COMMENT, UsageReceipt

HELD = [(CHAT, 300), (CHAT, 200), (EMBED, 100)]  # (model, units) locked before the crash
TTL = 2  # seconds


def test_gateway_killed_with_live_reservations_restarts_clean(
    tmp_path: Path, node_registry: EngineRegistry, db_url: str
) -> None:
    key, stack_ids = create_account(db_url, "crashy", {CHAT: 10_000, EMBED: 10_000})
    gateway_key = public_b64(load_or_create_gateway_key(tmp_path / "gateway"))
    node_server, node = start_node(tmp_path / "node", node_registry, gateway_keys=[gateway_key])
    gateway = GatewayProcess(tmp_path / "gateway", [node.url], database_url=db_url)
    with node_server, running(gateway.start()):
        gateway.wait_ready(CHAT, EMBED)
        for model, units in HELD:
            locked = lock(gateway.url, key, model, max_num_tokens=units, timeout=TTL)
            assert locked.status_code == 200, locked.text
        held = {stack_ids[CHAT]: 500, stack_ids[EMBED]: 100}
        assert {i: s.reserved_units for i, s in stacks(db_url).items()} == held

        gateway.kill()
        assert gateway.proc is not None and gateway.proc.returncode == -signal.SIGKILL
        # Nobody released anything on the way down.
        assert {i: s.reserved_units for i, s in stacks(db_url).items()} == held

        gateway.start()  # same port, same data dir, same database
        gateway.wait_ready(CHAT, EMBED)
        wait_until(
            lambda: all(s.reserved_units == 0 for s in stacks(db_url).values()),
            TTL + 15,
            "release of the crashed gateway's reservations",
        )
        assert reconcile(db_url) == []
        assert all(s.used_units == 0 for s in stacks(db_url).values())

        # The restarted gateway serves, and charges exactly what the answer says.
        locked = lock(gateway.url, key, EMBED, max_num_tokens=64)
        assert locked.status_code == 200, locked.text
        envelope, _ = seal_v1(locked.json(), {"model": EMBED, "input": "after the crash"})
        answer = httpx.post(
            f"{gateway.url}{EMBED_PATH}",
            content=envelope.model_dump_json(),
            headers=auth(key),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert stacks(db_url)[stack_ids[EMBED]].used_units == answer.json()["usage"]["total_tokens"]
        assert reconcile(db_url) == []


def quick_orphans(
    tmp_path: Path, node_registry: EngineRegistry, db_url: str, *, node_timeout: int
) -> tuple[ServerThread, GatewayProcess]:
    """A real node and a gateway (not started) whose in-flight reservations are orphans soon:
    leased for ``node_timeout`` and its margin, with no grace. Its locks should be short (1 s):
    a claim never shortens a lock's deadline."""
    gateway_dir = tmp_path / "gateway"
    signer = load_or_create_gateway_key(gateway_dir)
    node_server, node = start_node(
        tmp_path / "node", node_registry, gateway_keys=[public_b64(signer)]
    )
    quick = {"VEIL_NODE_TIMEOUT_SECONDS": str(node_timeout), "VEIL_IN_FLIGHT_GRACE_SECONDS": "0"}
    return node_server, GatewayProcess(gateway_dir, [node.url], database_url=db_url, env=quick)


# A base model keeps counting for a long time: far more than the chunks read before the kill.
COUNTING = [{"role": "user", "content": "Count to one thousand: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"}]


def test_gateway_killed_mid_stream_is_charged_from_the_nodes_kept_receipt(
    tmp_path: Path, node_registry: EngineRegistry, db_url: str
) -> None:
    """The gateway dies while it relays a stream: the caller has had part of an answer, and the
    reservation is left in flight with no ledger write. Once its lease and grace have run out, the
    restarted gateway asks the node for the receipt it kept for that ticket, checks it against
    the node's key, and charges it, instead of handing every unit back (before the node kept its
    receipts, this stream was free)."""
    key, stack_ids = create_account(db_url, "streamer", {CHAT: 10_000})
    # A 1 s node timeout leases a request for 2 s: orphaned 2 s after the last beat.
    node_server, gateway = quick_orphans(tmp_path, node_registry, db_url, node_timeout=1)
    with node_server, running(gateway.start()):
        gateway.wait_ready(CHAT)
        locked = lock(gateway.url, key, CHAT, max_num_tokens=2000, timeout=1).json()
        body = {"model": CHAT, "max_tokens": 1500, "stream": True, "messages": COUNTING}
        envelope, _ = seal_v3(locked, body, CHAT_PATH)
        seen: list[UsageReceipt] = []
        events = 0
        with httpx.stream(
            "POST", f"{gateway.url}{CHAT_PATH}", content=envelope.model_dump_json(),
            headers=reserved(key, locked), timeout=30,
        ) as response:  # fmt: skip
            assert response.status_code == 200
            try:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events += 1
                    elif line.startswith(RECEIPT_COMMENT.decode()):
                        seen.append(receipt_from(line[len(RECEIPT_COMMENT) :], locked))
                    if seen and events >= 3 and gateway.alive():
                        gateway.kill()
            except httpx.HTTPError:
                pass  # the connection died with the gateway
        assert not gateway.alive() and seen
        assert stacks(db_url)[stack_ids[CHAT]].reserved_units == 2000  # in flight, unwritten

        gateway.start()
        gateway.wait_ready(CHAT)
        gateway.wait_for(
            lambda: stacks(db_url)[stack_ids[CHAT]].reserved_units == 0,
            30,
            "the orphaned stream settled by the restarted gateway",
        )
        charged = stacks(db_url)[stack_ids[CHAT]].used_units
        # What the node kept is what was charged: its newest signed receipt for the ticket, at
        # least the last one the caller saw before the crash, and far less than was reserved.
        usage = httpx.get(f"{gateway.url}/v1/usage", headers=auth(key), timeout=30).json()
        (record,) = usage["usage"]
        kept = receipt_from(record["receipt"], locked)
        assert record["reservation_id"] == locked["reservation_id"]
        assert charged == record["charged_units"] == kept.compute_units
        assert kept.compute_units >= seen[-1].compute_units > 0
        assert charged < 2000
        assert reconcile(db_url) == []
        metrics = httpx.get(f"{gateway.url}/metrics", timeout=30).text
        assert "veil_gateway_reservations_recovered_total 1.0" in metrics
