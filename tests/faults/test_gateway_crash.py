"""A gateway killed (SIGKILL) while it holds reservations, restarted on the same ledger: every
unit comes back, the books balance, and the new gateway serves at once. SQLite and PostgreSQL."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.faults.conftest import (
    CHAT,
    EMBED,
    EMBED_PATH,
    GatewayProcess,
    auth,
    create_account,
    lock,
    reconcile,
    running,
    seal_v1,
    stacks,
)
from tests.node.conftest import start_node
from tests.servers import wait_until
from veil.gateway.identity import load_or_create_gateway_key, public_b64
from veil.node.service import EngineRegistry

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
