"""Settlement on the paths that are not plain success: a client that leaves mid-stream, a
gateway that restarts with live reservations, and the same rules on PostgreSQL."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx

from tests.e2e.conftest import CHAT, Deployment, deploy
from tests.servers import wait_until
from veil.hazmat import v1
from veil.node.service import EngineRegistry


def stream_envelope(d: Deployment, key: str, max_tokens: int) -> bytes:
    lock = d.lock(key, CHAT, max_num_tokens=2000).json()
    envelope, _ = v1.seal_request(
        base64.b64decode(lock["public_key"]),
        json.dumps(
            {
                "model": CHAT,
                "max_tokens": max_tokens,
                "stream": True,
                "messages": [{"role": "user", "content": "Tell a long story"}],
            }
        ).encode(),
        model_name=CHAT,
        stack_small_id=lock["stack_small_id"],
        stream=True,
    )
    return envelope.model_dump_json().encode()


def test_client_leaving_mid_stream_pays_only_what_was_produced(deployment: Deployment) -> None:
    key, stacks = deployment.new_user("leaver", {CHAT: 10_000})
    body = stream_envelope(deployment, key, max_tokens=400)
    received = 0
    with httpx.stream(
        "POST",
        f"{deployment.url}/v1/confidential/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                received += 1
            if received == 3:
                break  # the client hangs up
    wait_until(lambda: deployment.stack(stacks[CHAT])["reserved_units"] == 0, 30, "settlement")
    stack = deployment.stack(stacks[CHAT])
    # Charged: the prompt plus the tokens produced before the hang-up, far below the 2000 held.
    assert 3 <= stack["used_units"] < 200


def test_restarted_gateway_releases_reservations_of_the_previous_run(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    servers, first = deploy(tmp_path, [node_registry])
    node, gateway = servers
    with node:
        with gateway:
            first.started()
            key, stacks = first.new_user("crashy", {CHAT: 1000})
            assert first.lock(key, CHAT, max_num_tokens=300, timeout=1).status_code == 200
            assert first.stack(stacks[CHAT])["reserved_units"] == 300
        # The gateway is gone with the reservation live; a new one on the same ledger starts.
        again_servers, again = deploy(tmp_path, [])
        again.nodes = first.nodes
        with again_servers[0]:
            again.admin_key = first.admin_key
            wait_until(lambda: again.stack(stacks[CHAT])["reserved_units"] == 0, 15, "expiry")


def test_gateway_on_postgresql_settles_exactly(
    tmp_path: Path, node_registry: EngineRegistry, postgres_url: str
) -> None:
    servers, deployed = deploy(tmp_path, [node_registry], database_url=postgres_url)
    with servers[0], servers[1]:
        deployed.started()
        key, stacks = deployed.new_user("pg-user", {CHAT: 5000})
        response, _session, _ = deployed.sealed_request(
            key, {"model": CHAT, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
        )
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        stack = deployed.stack(stacks[CHAT])
        assert stack["used_units"] == usage["total_tokens"] and stack["reserved_units"] == 0
