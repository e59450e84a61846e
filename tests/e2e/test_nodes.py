"""Nodes managed while gateways run, with real nodes and the real model on loopback: a gateway
started with no node serves once one is added (``veil nodes add``), a drain lets the stream in
flight finish and be charged exactly while new locks get 503, a busy node is not removed, and two
gateways on one PostgreSQL database see each other's add and drain within seconds."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from tests.e2e.conftest import CHAT, Deployment
from tests.e2e.test_reservations import STORY, headers, reservation, sealed, signed
from tests.node.conftest import start_node
from tests.servers import ServerThread, wait_until
from veil.config import GatewaySettings
from veil.gateway.app import create_gateway_app
from veil.gateway.cli import nodes_app
from veil.gateway.identity import load_or_create_gateway_key, public_b64
from veil.node.service import EngineRegistry
from veil.wire.tickets import RECEIPT_COMMENT

# Every gateway here re-reads the node list this often.
SYNC = 0.5


@contextlib.contextmanager
def gateway_without_nodes(
    data_dir: Path, key: Ed25519PrivateKey, database_url: str | None = None
) -> Iterator[Deployment]:
    settings = GatewaySettings(
        data_dir=data_dir, database_url=database_url, nodes=[], expire_interval_seconds=SYNC
    )
    printed: list[str] = []
    with ServerThread(create_gateway_app(settings, key, on_admin_key=printed.append)) as server:
        yield Deployment(server.url, printed[0] if printed else "", [], key, printed_keys=printed)


def nodes(d: Deployment) -> list[dict[str, Any]]:
    response = d.admin("GET", "/admin/nodes")
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["nodes"]
    return listed


def test_a_gateway_started_with_no_node_serves_once_one_is_added(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    key = load_or_create_gateway_key(tmp_path / "gateway")
    node_server, node = start_node(tmp_path / "node", node_registry, gateway_keys=[public_b64(key)])
    with node_server, gateway_without_nodes(tmp_path / "gateway", key) as gw:
        user, stacks = gw.new_user("first", {CHAT: 5000})
        assert gw.lock(user, CHAT).status_code == 404  # no node behind it yet
        added = CliRunner().invoke(
            nodes_app, ["add", node.url, "--base-url", gw.url, "--api-key", gw.admin_key]
        )
        assert added.exit_code == 0, added.output
        (shown,) = nodes(gw)
        assert shown["healthy"] and shown["key_id"] == node.keyring.current.key_id
        assert shown["attestation"]["ok"] and shown["attestation"]["format"] == "none"
        assert CHAT in shown["models"]
        response, _, _ = gw.sealed_request(
            user, {"model": CHAT, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
        )
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        stack = gw.stack(stacks[CHAT])
        assert (stack["used_units"], stack["reserved_units"]) == (usage["total_tokens"], 0)


def test_a_drain_lets_the_stream_in_flight_finish_and_be_charged_exactly(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    key = load_or_create_gateway_key(tmp_path / "gateway")
    node_server, node = start_node(tmp_path / "node", node_registry, gateway_keys=[public_b64(key)])
    with node_server, gateway_without_nodes(tmp_path / "gateway", key) as gw:
        gw.gateway_dir = tmp_path / "gateway"
        assert gw.admin("POST", "/admin/nodes", json={"url": node.url}).status_code == 201
        user, stacks = gw.new_user("streamer", {CHAT: 100_000})
        lock = gw.lock(user, CHAT, max_num_tokens=5_000).json()
        body = {"model": CHAT, "max_tokens": 200, "stream": True, "messages": STORY}
        receipts: list[str] = []
        during: dict[str, Any] = {}
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/confidential/chat/completions",
            content=sealed(lock, body),
            headers=headers(user, lock),
            timeout=120,
        ) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith(RECEIPT_COMMENT.decode()):
                    receipts.append(line[len(RECEIPT_COMMENT) :])
                if not during and line.startswith("data: "):
                    drained = gw.admin("POST", "/admin/nodes/drain", json={"url": node.url})
                    during["drain"] = drained.status_code
                    during["lock"] = gw.lock(user, CHAT)
                    during["remove"] = gw.admin(
                        "POST", "/admin/nodes/remove", json={"url": node.url}
                    )
                    during["row"] = reservation(gw, lock["reservation_id"])
        assert during["drain"] == 200
        assert during["lock"].status_code == 503, during["lock"].text
        assert "draining" in during["lock"].json()["error"]["message"]
        assert during["remove"].status_code == 409  # a request is in flight on it
        assert during["remove"].json()["error"]["code"] == "CONFLICT"
        assert during["row"]["state"] == "in_flight"
        final = signed(lock, receipts[-1])
        assert final.final and final.compute_units > 0
        wait_until(
            lambda: reservation(gw, lock["reservation_id"])["state"] == "settled", 30, "settle"
        )
        row = reservation(gw, lock["reservation_id"])
        assert row["charged_units"] == final.compute_units
        stack = gw.stack(stacks[CHAT])
        assert (stack["used_units"], stack["reserved_units"]) == (final.compute_units, 0)
        # Drained and idle: now it may go, and the model is gone with it.
        removed = gw.admin("POST", "/admin/nodes/remove", json={"url": node.url})
        assert removed.status_code == 200, removed.text
        assert nodes(gw) == []
        assert gw.lock(user, CHAT).status_code == 404


def test_two_gateways_on_postgresql_see_an_add_and_a_drain_within_seconds(
    tmp_path: Path, node_registry: EngineRegistry, postgres_url: str
) -> None:
    keys = [load_or_create_gateway_key(tmp_path / f"gateway-{g}") for g in "ab"]
    node_server, node = start_node(
        tmp_path / "node", node_registry, gateway_keys=[public_b64(k) for k in keys]
    )
    with (
        node_server,
        gateway_without_nodes(tmp_path / "gateway-a", keys[0], postgres_url) as a,
        gateway_without_nodes(tmp_path / "gateway-b", keys[1], postgres_url) as b,
    ):
        b.admin_key = a.admin_key  # one ledger, one admin key (made by the first to start)
        user, _ = a.new_user("shared", {CHAT: 10_000})
        assert b.lock(user, CHAT).status_code == 404
        assert a.admin("POST", "/admin/nodes", json={"url": node.url}).status_code == 201
        added = time.monotonic()
        # B was told nothing: it reads the ledger's list on its own round.
        wait_until(lambda: b.lock(user, CHAT).status_code == 200, 10, "gateway B sees the add")
        assert time.monotonic() - added < 5
        health = httpx.get(f"{b.url}/health", timeout=10).json()
        assert [n["url"] for n in health["nodes"]] == [node.url]
        assert a.admin("POST", "/admin/nodes/drain", json={"url": node.url}).status_code == 200
        drained = time.monotonic()
        wait_until(lambda: b.lock(user, CHAT).status_code == 503, 10, "gateway B sees the drain")
        assert time.monotonic() - drained < 5
        (shown,) = nodes(b)
        assert shown["state"] == "draining" and shown["attestation"]["ok"]
