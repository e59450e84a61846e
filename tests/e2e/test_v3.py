"""veil-v3 end to end: a real gateway in front of two real nodes, the request sealed with the
hybrid KEM to the key the lock names (``veil.hazmat.v3`` directly, as a client does), answered
whole and streamed, chat and embeddings, and charged exactly the usage the node signed."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import CHAT, EMBED, Deployment, deploy
from tests.harness import wait_until
from veil.attestation.evidence import Evidence
from veil.attestation.policy import Policy
from veil.attestation.report import verify_evidence
from veil.hazmat import v3
from veil.node.service import EngineRegistry
from veil.wire.envelopes import RESERVATION_HEADER, ConfidentialComputeResponse
from veil.wire.routes import Endpoint, confidential_path
from veil.wire.tickets import RECEIPT_COMMENT


@pytest.fixture(scope="module")
def two_nodes(
    tmp_path_factory: pytest.TempPathFactory, node_registry: EngineRegistry
) -> Iterator[Deployment]:
    servers, deployed = deploy(
        tmp_path_factory.mktemp("v3"), [node_registry, node_registry], insecure_nodes_no_tee=True
    )
    node0, node1, gateway = servers
    with node0, node1, gateway:
        yield deployed.started()


class V3Request:
    """One lock and the v3 request sealed to it (what HB's client does, spelled out)."""

    def __init__(self, deployment: Deployment, key: str, body: dict[str, Any], endpoint: Endpoint):
        self.deployment, self.key, self.endpoint = deployment, key, endpoint
        nonce = os.urandom(32)
        locked = deployment.lock(
            key,
            body["model"],
            max_num_tokens=400,
            attestation_nonce=base64.b64encode(nonce).decode(),
        )
        assert locked.status_code == 200, locked.text
        self.lock = lock = locked.json()
        assert lock["kem"] == "mlkem768-x25519"
        kem_public_key = base64.b64decode(lock["kem_public_key"])
        evidence = Evidence.model_validate(lock["evidence"])
        report = verify_evidence(
            evidence, Policy(allow_no_tee=True),
            expect_x25519=base64.b64decode(lock["public_key"]),
            expect_ed25519=base64.b64decode(lock["node_signing_public_key"]),
            expect_nonce=nonce, expect_kem_public_key=kem_public_key,
        )  # fmt: skip
        assert report.ok, report.to_text()
        self.envelope, self.session = v3.seal_request(
            kem_public_key,
            lock["kem_key_id"],
            json.dumps(body).encode(),
            node_signing_key=base64.b64decode(lock["node_signing_public_key"]),
            endpoint=confidential_path(endpoint),
            model_name=body["model"],
            stack_small_id=lock["stack_small_id"],
            num_compute_units=lock["reserved_units"],
            stream=body.get("stream"),
            reservation_id=lock["reservation_id"],
        )
        self.content = self.envelope.model_dump_json().encode()

    @property
    def headers(self) -> dict[str, str]:
        return {
            "authorization": f"Bearer {self.key}",
            "content-type": "application/json",
            RESERVATION_HEADER: self.lock["reservation_id"],
        }

    def send(self) -> httpx.Response:
        return httpx.post(
            f"{self.deployment.url}{confidential_path(self.endpoint)}",
            content=self.content,
            headers=self.headers,
            timeout=120,
        )

    def open(self, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code == 200, response.text
        sealed = ConfidentialComputeResponse.model_validate(response.json())
        answer: dict[str, Any] = json.loads(self.session.open(sealed))
        self.session.finish()
        return answer


def signed_units(request: V3Request) -> int:
    usage = request.session.usage
    assert usage is not None, "the answer's signed usage"
    if request.endpoint == "embeddings":
        return usage.prompt_tokens
    return usage.prompt_tokens + usage.completion_tokens


def settled(deployment: Deployment, stack_id: int) -> dict[str, Any]:
    wait_until(lambda: deployment.stack(stack_id)["reserved_units"] == 0, 30, "settlement")
    return deployment.stack(stack_id)


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": CHAT,
        "max_tokens": 6,
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }


def test_a_whole_chat_answer_is_charged_exactly_its_signed_usage(two_nodes: Deployment) -> None:
    key, stacks = two_nodes.new_user("v3-whole", {CHAT: 5000})
    request = V3Request(two_nodes, key, chat(), "chat")
    answer = request.open(request.send())
    assert answer["object"] == "chat.completion"
    assert request.session.usage is not None
    assert request.session.usage.model_dump() == answer["usage"]
    assert settled(two_nodes, stacks[CHAT])["used_units"] == signed_units(request)


def test_embeddings_are_charged_exactly_their_signed_usage(two_nodes: Deployment) -> None:
    key, stacks = two_nodes.new_user("v3-embed", {EMBED: 5000})
    request = V3Request(
        two_nodes, key, {"model": EMBED, "input": "a secret sentence"}, "embeddings"
    )
    answer = request.open(request.send())
    assert len(answer["data"][0]["embedding"]) == 384
    assert settled(two_nodes, stacks[EMBED])["used_units"] == signed_units(request) > 0


def test_a_stream_is_opened_in_order_and_charged_exactly_its_signed_usage(
    two_nodes: Deployment,
) -> None:
    key, stacks = two_nodes.new_user("v3-stream", {CHAT: 5000})
    request = V3Request(two_nodes, key, chat(stream=True, max_tokens=8), "chat")
    text = []
    with httpx.stream(
        "POST",
        f"{two_nodes.url}{confidential_path('chat')}",
        content=request.content,
        headers=request.headers,
        timeout=120,
    ) as response:
        assert response.status_code == 200
        blocks = [b for b in response.read().decode().split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]"
    for block in blocks[:-1]:
        if block.startswith(RECEIPT_COMMENT.decode()):
            continue  # the gateway settles from these; the client needs only the signed usage
        sealed = ConfidentialComputeResponse.model_validate_json(block.removeprefix("data: "))
        chunk = json.loads(request.session.open(sealed))
        for choice in chunk.get("choices", []):
            text.append(choice.get("delta", {}).get("content") or "")
    request.session.finish()
    assert "".join(text)
    assert settled(two_nodes, stacks[CHAT])["used_units"] == signed_units(request)


def test_each_envelope_reaches_the_node_of_its_kem_key(two_nodes: Deployment) -> None:
    key, _ = two_nodes.new_user("v3-routes", {CHAT: 20_000})
    served_by = set()
    # Four locks held at once: the gateway spreads them over both nodes (least busy first).
    for request in [V3Request(two_nodes, key, chat(max_tokens=2), "chat") for _ in range(4)]:
        node = two_nodes.nodes[request.lock["node_small_id"] - 1]
        hybrid = node.keyring.current.hybrid
        assert hybrid is not None
        assert base64.b64decode(request.lock["kem_public_key"]) == hybrid.public_key
        # Routed by node_dh_public_key, the X25519 part of the kem key (not the generation's
        # own X25519 key, which atoma-v1 seals to).
        assert request.envelope.node_dh_public_key == hybrid.x25519_public_key
        assert request.envelope.node_dh_public_key != node.keyring.current.public_key
        request.open(request.send())  # the answer verifies under that node's signing key
        served_by.add(request.lock["node_small_id"])
    assert served_by == {1, 2}


def test_a_replayed_v3_envelope_is_refused_and_charged_once(two_nodes: Deployment) -> None:
    key, stacks = two_nodes.new_user("v3-replay", {CHAT: 5000})
    request = V3Request(two_nodes, key, chat(max_tokens=2), "chat")
    request.open(request.send())
    assert request.session.usage is not None  # the genuine answer, signed and verified
    used = settled(two_nodes, stacks[CHAT])["used_units"]
    # Its lock is spent; the gateway holds a fresh reservation for the victim and sends the same
    # envelope again under it. The node checks its replay cache before the reservation binding,
    # so the replay is a 409 REPLAYED whichever reservation is claimed for it.
    relock = two_nodes.lock(key, CHAT, max_num_tokens=100, timeout=1).json()
    again = httpx.post(
        f"{two_nodes.url}{confidential_path('chat')}",
        content=request.content,
        headers={**request.headers, RESERVATION_HEADER: relock["reservation_id"]},
        timeout=120,
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "REPLAYED", again.text
    without_handle = httpx.post(
        f"{two_nodes.url}{confidential_path('chat')}",
        content=request.content,
        headers={k: v for k, v in request.headers.items() if k != RESERVATION_HEADER},
        timeout=120,
    )
    assert without_handle.status_code >= 400, without_handle.text
    # A gateway claiming the caller's oldest held reservation (no handle, as for atoma-sdk) on a
    # fresh lock reaches the node all the same, and the node refuses the replay.
    assert two_nodes.lock(key, CHAT, max_num_tokens=100, timeout=1).status_code == 200
    unnamed = httpx.post(
        f"{two_nodes.url}{confidential_path('chat')}",
        content=request.content,
        headers={k: v for k, v in request.headers.items() if k != RESERVATION_HEADER},
        timeout=120,
    )
    assert unnamed.status_code == 409 and unnamed.json()["error"]["code"] == "REPLAYED", (
        unnamed.text
    )
    assert settled(two_nodes, stacks[CHAT])["used_units"] == used
