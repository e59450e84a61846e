"""Two real nodes behind one gateway: selection, failover, and an unreachable node charges nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import CHAT, Deployment, deploy
from veil.hazmat import v1
from veil.node.service import EngineRegistry


@pytest.fixture
def two_nodes(tmp_path: Path, node_registry: EngineRegistry) -> Iterator[Deployment]:
    servers, deployed = deploy(tmp_path, [node_registry, node_registry])
    node0, node1, gateway = servers
    with node0, node1, gateway:
        yield deployed.started()


def test_each_node_has_its_own_key_and_locks_spread_over_both(two_nodes: Deployment) -> None:
    keys = {n.public_key for n in two_nodes.nodes}
    assert len(keys) == 2
    key, _ = two_nodes.new_user("spread", {CHAT: 10_000})
    locks = [two_nodes.lock(key, CHAT, max_num_tokens=10).json() for _ in range(4)]
    assert len({lock["node_small_id"] for lock in locks}) == 2
    assert {base64.b64decode(lock["public_key"]) for lock in locks} == keys


def test_lock_moves_to_the_other_node_when_one_is_down(two_nodes: Deployment) -> None:
    key, _stacks = two_nodes.new_user("failover", {CHAT: 10_000})
    two_nodes.servers["node0"].__exit__(None, None, None)
    for _ in range(3):
        lock = two_nodes.lock(key, CHAT, max_num_tokens=50)
        assert lock.status_code == 200, lock.text
        assert base64.b64decode(lock.json()["public_key"]) == two_nodes.nodes[1].public_key
    health = httpx.get(f"{two_nodes.url}/health").json()
    assert [n["healthy"] for n in health["nodes"]] == [False, True]
    response, _session, _ = two_nodes.sealed_request(
        key, {"model": CHAT, "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert response.status_code == 200, response.text


def test_unreachable_node_is_503_and_charges_nothing(two_nodes: Deployment) -> None:
    key, stacks = two_nodes.new_user("unreachable", {CHAT: 10_000})
    lock = two_nodes.lock(key, CHAT, max_num_tokens=100).json()
    target = next(
        i
        for i, n in enumerate(two_nodes.nodes)
        if n.public_key == base64.b64decode(lock["public_key"])
    )
    two_nodes.servers[f"node{target}"].__exit__(None, None, None)
    envelope, _ = v1.seal_request(
        base64.b64decode(lock["public_key"]),
        json.dumps(
            {"model": CHAT, "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]}
        ).encode(),
        model_name=CHAT,
        stack_small_id=lock["stack_small_id"],
    )
    response = two_nodes.post(key, "/v1/confidential/chat/completions", envelope)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    stack = two_nodes.stack(stacks[CHAT])
    assert stack["used_units"] == 0 and stack["reserved_units"] == 0
