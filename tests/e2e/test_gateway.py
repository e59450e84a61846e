"""The gateway in front of a real node: lock, forward, settle; every rule of the ledger seen from
outside, over HTTP."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.e2e.conftest import CHAT, EMBED, Deployment
from tests.servers import wait_until
from veil.hazmat import v1
from veil.wire.tickets import TICKET_HEADER, Ticket, envelope_digest, sign_token


def chat(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": CHAT,
        "max_tokens": 6,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello"}],
    }
    body.update(extra)
    return body


def test_lock_reserves_on_the_callers_stack(deployment: Deployment) -> None:
    key, stacks = deployment.new_user("lock-alice", {CHAT: 5000})
    response = deployment.lock(key, CHAT, max_num_tokens=300)
    assert response.status_code == 200, response.text
    lock = response.json()
    assert base64.b64decode(lock["public_key"]) == deployment.nodes[0].public_key
    assert lock["stack_small_id"] == stacks[CHAT]
    assert lock["reserved_units"] == 300
    assert lock["key_id"] == deployment.nodes[0].keyring.current.key_id
    assert deployment.stack(stacks[CHAT])["reserved_units"] == 300


def test_confidential_chat_charges_the_signed_usage_and_releases_the_rest(
    deployment: Deployment,
) -> None:
    key, stacks = deployment.new_user("chat-bob", {CHAT: 5000})
    response, session, _ = deployment.sealed_request(
        key, chat(), lock_extra={"max_num_tokens": 400}
    )
    assert response.status_code == 200, response.text
    answer = json.loads(v1.open_response(session, v1_response(response)))
    usage = answer["usage"]
    stack = deployment.stack(stacks[CHAT])
    assert stack["reserved_units"] == 0
    assert stack["used_units"] == usage["total_tokens"] > 0


def test_streamed_chat_passes_through_and_settles(deployment: Deployment) -> None:
    key, stacks = deployment.new_user("stream-carol", {CHAT: 5000})
    locked = deployment.lock(key, CHAT, max_num_tokens=400).json()
    envelope, session = v1.seal_request(
        base64.b64decode(locked["public_key"]),
        json.dumps(chat(stream=True)).encode(),
        model_name=CHAT,
        stack_small_id=locked["stack_small_id"],
        stream=True,
    )
    with httpx.stream(
        "POST",
        f"{deployment.url}/v1/confidential/chat/completions",
        content=envelope.model_dump_json(),
        timeout=120,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    final = json.loads(lines[-1][6:])
    assert final["usage"]["total_tokens"] > 0
    for line in lines:
        v1.open_response(session, v1_response_from(json.loads(line[6:])))
    stack = deployment.stack(stacks[CHAT])
    assert stack == {**stack, "reserved_units": 0, "used_units": final["usage"]["total_tokens"]}


def test_embeddings_through_the_gateway(deployment: Deployment) -> None:
    key, stacks = deployment.new_user("embed-dan", {EMBED: 1000})
    response, session, _ = deployment.sealed_request(
        key, {"model": EMBED, "input": "a private sentence"}, route="embeddings"
    )
    assert response.status_code == 200, response.text
    answer = json.loads(v1.open_response(session, v1_response(response)))
    assert len(answer["data"][0]["embedding"]) == 384
    assert deployment.stack(stacks[EMBED])["used_units"] == answer["usage"]["prompt_tokens"]


def test_request_without_a_lock_is_425(deployment: Deployment) -> None:
    key, stacks = deployment.new_user("nolock-erin", {CHAT: 1000})
    envelope, _ = v1.seal_request(
        deployment.nodes[0].public_key,
        json.dumps(chat()).encode(),
        model_name=CHAT,
        stack_small_id=stacks[CHAT],
    )
    response = deployment.post(key, "/v1/confidential/chat/completions", envelope)
    assert response.status_code == 425
    assert response.json()["error"]["code"] == "UNAVAILABLE_STACK"


def test_someone_elses_stack_gets_nothing(deployment: Deployment) -> None:
    owner_key, owner_stacks = deployment.new_user("owner-fay", {CHAT: 1000})
    thief_key, _ = deployment.new_user("thief-gus", {})
    assert deployment.lock(owner_key, CHAT, max_num_tokens=100).status_code == 200
    envelope, _ = v1.seal_request(
        deployment.nodes[0].public_key,
        json.dumps(chat()).encode(),
        model_name=CHAT,
        stack_small_id=owner_stacks[CHAT],
    )
    response = deployment.post(thief_key, "/v1/confidential/chat/completions", envelope)
    assert response.status_code in (401, 404, 425)
    stack = deployment.stack(owner_stacks[CHAT])
    assert stack["used_units"] == 0 and stack["reserved_units"] == 100
    assert deployment.lock(thief_key, CHAT).status_code == 402


def test_exhausted_stack_is_402(deployment: Deployment) -> None:
    key, _ = deployment.new_user("poor-hal", {CHAT: 50})
    response = deployment.lock(key, CHAT, max_num_tokens=51)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "BALANCE_ERROR"


def test_bad_api_key_is_401(deployment: Deployment) -> None:
    response = deployment.lock("veil_not-a-real-key", CHAT)
    assert response.status_code == 401
    assert "veil_not-a-real-key" not in response.text
    assert httpx.post(f"{deployment.url}/v1/nodes/lock", json={"model": CHAT}).status_code == 401


def test_unknown_model_lock_is_404(deployment: Deployment) -> None:
    key, _ = deployment.new_user("lost-ivy", {CHAT: 50})
    assert deployment.lock(key, "no-such-model").status_code == 404


def test_node_refuses_requests_without_a_valid_ticket(deployment: Deployment) -> None:
    node = deployment.nodes[0]
    envelope, _ = node.seal(chat(), units=100)
    raw = envelope.model_dump_json().encode()
    route = f"{node.url}/v1/confidential/chat/completions"
    assert httpx.post(route, content=raw).status_code == 401

    def ticket(body: bytes, ticket_id: str) -> str:
        import time

        return sign_token(
            Ticket(
                ticket_id=ticket_id,
                stack_small_id=1,
                node_small_id=1,
                units=100,
                expires_at=time.time() + 60,
                envelope_sha256=envelope_digest(body),
            ),
            deployment.gateway_key,
        )

    good = ticket(raw, "a" * 32)
    assert (
        httpx.post(route, content=raw, headers={TICKET_HEADER: good}, timeout=60).status_code == 200
    )
    replay = httpx.post(route, content=raw, headers={TICKET_HEADER: good}, timeout=60)
    assert replay.status_code == 409 and replay.json()["error"]["code"] == "REPLAYED"
    other = ticket(b"another body", "b" * 32)
    assert httpx.post(route, content=raw, headers={TICKET_HEADER: other}).status_code == 401


def test_expired_lock_is_released(deployment: Deployment) -> None:
    key, stacks = deployment.new_user("slow-jo", {CHAT: 1000})
    assert deployment.lock(key, CHAT, max_num_tokens=200, timeout=1).status_code == 200
    assert deployment.stack(stacks[CHAT])["reserved_units"] == 200
    wait_until(
        lambda: deployment.stack(stacks[CHAT])["reserved_units"] == 0,
        15,
        "expiry of the reservation",
    )


def test_models_health_metrics(deployment: Deployment) -> None:
    models = httpx.get(f"{deployment.url}/v1/models").json()
    assert {m["id"] for m in models["data"]} == {CHAT, EMBED}
    assert httpx.get(f"{deployment.url}/health").json()["status"] == "ok"
    assert "veil_gateway_requests_total" in httpx.get(f"{deployment.url}/metrics").text


def test_plain_chat_route_is_metered(deployment: Deployment) -> None:
    key, stacks = deployment.new_user("plain-kim", {CHAT: 5000})
    response = httpx.post(
        f"{deployment.url}/v1/chat/completions",
        json=chat(),
        timeout=120,
        headers={"authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    stack = deployment.stack(stacks[CHAT])
    assert stack["used_units"] == usage["total_tokens"] and stack["reserved_units"] == 0


@pytest.mark.parametrize("body", [b"{", b"[]", json.dumps({"model": 5}).encode()])
def test_lock_bad_bodies_are_400(deployment: Deployment, body: bytes) -> None:
    key, _ = deployment.new_user(f"bad-{abs(hash(body))}", {})
    response = httpx.post(
        f"{deployment.url}/v1/nodes/lock", content=body, headers={"authorization": f"Bearer {key}"}
    )
    assert response.status_code == 400


def v1_response(response: httpx.Response) -> v1.ConfidentialComputeResponse:
    return v1_response_from(response.json())


def v1_response_from(document: dict[str, object]) -> v1.ConfidentialComputeResponse:
    return v1.ConfidentialComputeResponse.model_validate(document)


def test_lock_relays_evidence_bound_to_the_node_keys_and_the_nonce(deployment: Deployment) -> None:
    import os

    from veil.attestation.evidence import Evidence
    from veil.attestation.policy import Policy
    from veil.attestation.report import verify_evidence

    key, _ = deployment.new_user("attest-lee", {CHAT: 1000})
    nonce = os.urandom(32)
    lock = deployment.lock(
        key, CHAT, max_num_tokens=10, attestation_nonce=base64.b64encode(nonce).decode()
    ).json()
    evidence = Evidence.model_validate(lock["evidence"])
    assert evidence.format == "none" and evidence.warning  # no TEE on this machine, said plainly
    public, signing = (base64.b64decode(lock[k]) for k in ("public_key", "node_signing_public_key"))
    strict = verify_evidence(
        evidence, Policy(), expect_x25519=public, expect_ed25519=signing, expect_nonce=nonce
    )
    assert not strict.ok  # a client in strict mode refuses a node without a TEE
    demo = verify_evidence(
        evidence,
        Policy(allow_no_tee=True),
        expect_x25519=public,
        expect_ed25519=signing,
        expect_nonce=nonce,
    )
    assert demo.ok, demo.to_dict()
    other = verify_evidence(
        evidence,
        Policy(allow_no_tee=True),
        expect_x25519=public,
        expect_ed25519=signing,
        expect_nonce=os.urandom(32),
    )
    assert not other.ok  # evidence made for another nonce is refused


@pytest.mark.parametrize("nonce", ["", "short", base64.b64encode(b"x" * 8).decode(), "%%%"])
def test_node_attestation_route_checks_the_nonce(deployment: Deployment, nonce: str) -> None:
    response = httpx.get(f"{deployment.nodes[0].url}/v1/attestation", params={"nonce": nonce})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_BODY"
