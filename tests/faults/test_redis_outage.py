"""The replay cache's Redis goes away while the node runs: veil-v3 requests (whose request ids it
holds) are refused with 503 (never accepted unchecked) until Redis is back, then work again without
restarting the node."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.faults.conftest import CHAT, CHAT_PATH, PrivateRedis
from tests.node.conftest import RunningNode, start_node
from tests.servers import wait_until
from veil.hazmat import v3
from veil.node.service import EngineRegistry
from veil.wire.envelopes import ConfidentialComputeRequest


def sealed_v3(node: RunningNode) -> ConfidentialComputeRequest:
    body = {"model": CHAT, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
    hybrid = node.keyring.current.hybrid
    assert hybrid is not None
    envelope, _ = v3.seal_request(
        hybrid.public_key,
        hybrid.key_id,
        json.dumps(body).encode(),
        node_signing_key=node.keyring.signing_public_key,
        endpoint=CHAT_PATH,
        model_name=CHAT,
        stack_small_id=1,
        num_compute_units=200,
    )
    return envelope


def code_of(response: httpx.Response) -> str:
    return "OK" if response.status_code == 200 else response.json()["error"]["code"]


def test_redis_dying_mid_operation_fails_closed_and_recovers(
    tmp_path: Path, node_registry: EngineRegistry, private_redis: PrivateRedis
) -> None:
    server, node = start_node(tmp_path / "node", node_registry, replay_cache=private_redis.url)
    with server:
        accepted = sealed_v3(node)
        assert code_of(node.post(CHAT_PATH, accepted)) == "OK"
        assert code_of(node.post(CHAT_PATH, accepted)) == "REPLAYED"

        private_redis.kill()
        refused = sealed_v3(node)
        for envelope in (refused, accepted, sealed_v3(node)):
            response = node.post(CHAT_PATH, envelope)
            assert response.status_code == 503, response.text
            assert code_of(response) == "SERVICE_UNAVAILABLE"
        # atoma-v1 carries no replay protection, so it has nothing to fail closed on (atoma compatible).
        v1_envelope, _ = node.seal(
            {"model": CHAT, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]},
            units=200,
        )
        assert code_of(node.post(CHAT_PATH, v1_envelope)) == "OK"

        private_redis.start()  # same port, empty (no persistence)
        wait_until(
            lambda: code_of(node.post(CHAT_PATH, sealed_v3(node))) == "OK",
            15,
            "v3 requests after Redis came back",
        )
        # The request refused while Redis was down was never run: it may be sent again, once.
        assert code_of(node.post(CHAT_PATH, refused)) == "OK"
        assert code_of(node.post(CHAT_PATH, refused)) == "REPLAYED"
