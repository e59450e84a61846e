"""veil-v3 through a real node behind gateway tickets: the post-quantum key at /v1/keys and in the
evidence, sealed both ways (whole and streamed, chat and embeddings) with receipts for the signed
usage, and a hostile gateway's swaps (model, stack, units, stream, reservation), replays, stale
timestamps and disallowed KEMs refused; the replay cache shared through the real Redis by two node
processes, and failing closed when it is unreachable."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.node.conftest import CHAT, EMBED, RunningNode, start_node
from veil.attestation.evidence import Evidence, report_data
from veil.attestation.policy import Policy
from veil.attestation.report import verify_evidence
from veil.gateway.identity import public_b64
from veil.hazmat import v3
from veil.node.service import EngineRegistry
from veil.wire.envelopes import ConfidentialComputeRequest, ConfidentialComputeResponse
from veil.wire.keyid import key_id
from veil.wire.routes import confidential_path
from veil.wire.tickets import (
    RECEIPT_COMMENT,
    RECEIPT_HEADER,
    TICKET_HEADER,
    Ticket,
    UsageReceipt,
    envelope_digest,
    sign_token,
    verify_token,
)

GATEWAY = Ed25519PrivateKey.generate()
RESERVATION = "ab" * 16
CHAT_PATH = confidential_path("chat")
EMBED_PATH = confidential_path("embeddings")
REDIS_URL = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, node_registry: EngineRegistry
) -> Iterator[RunningNode]:
    server, running = start_node(
        tmp_path_factory.mktemp("v3-node"), node_registry, gateway_keys=[public_b64(GATEWAY)]
    )
    with server:
        yield running


def kem_key(node: RunningNode) -> tuple[bytes, str]:
    """The current post-quantum key and its id, as a client learns them (``/v1/keys``)."""
    current = httpx.get(f"{node.url}/v1/keys").json()["keys"][0]
    return base64.b64decode(current["kem_public_key"]), current["kem_key_id"]


def seal(
    node: RunningNode,
    body: dict[str, Any],
    path: str = CHAT_PATH,
    *,
    kem: v3.Kem = v3.Kem.HYBRID,
    units: int = 1000,
    reservation_id: str | None = RESERVATION,
    **kw: Any,
) -> tuple[ConfidentialComputeRequest, v3.ClientSession]:
    if kem is v3.Kem.HYBRID:
        public, kid = kem_key(node)
    else:
        public, kid = node.keyring.current.public_key, node.keyring.current.key_id
    return v3.seal_request(
        public,
        kid,
        json.dumps(body).encode(),
        node_signing_key=node.keyring.signing_public_key,
        endpoint=path,
        model_name=body["model"],
        stack_small_id=1,
        kem=kem,
        num_compute_units=units,
        stream=body.get("stream"),
        reservation_id=reservation_id,
        **kw,
    )


def ticket_for(
    content: bytes, *, stack: int = 1, units: int = 1000, reservation_id: str | None = RESERVATION
) -> str:
    ticket = Ticket(
        ticket_id=uuid.uuid4().hex,
        stack_small_id=stack,
        node_small_id=1,
        units=units,
        expires_at=time.time() + 60,
        envelope_sha256=envelope_digest(content),
        reservation_id=reservation_id,
    )
    return sign_token(ticket, GATEWAY)


def post(
    node: RunningNode,
    envelope: ConfidentialComputeRequest,
    path: str = CHAT_PATH,
    **ticket: Any,
) -> httpx.Response:
    content = envelope.model_dump_json().encode()
    return httpx.post(
        f"{node.url}{path}",
        content=content,
        timeout=120,
        headers={"content-type": "application/json", TICKET_HEADER: ticket_for(content, **ticket)},
    )


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": CHAT,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }


def receipt_of(node: RunningNode, token: str) -> UsageReceipt:
    return verify_token(token, UsageReceipt, [node.keyring.signing_key.public_key()])


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def test_keys_and_evidence_name_the_post_quantum_key(node: RunningNode) -> None:
    public, kid = kem_key(node)
    assert len(public) == 1216 and kid == key_id(public)
    hybrid = node.keyring.current.hybrid
    assert hybrid is not None and public == hybrid.public_key
    nonce = os.urandom(32)
    document = httpx.get(
        f"{node.url}/v1/attestation", params={"nonce": base64.b64encode(nonce).decode()}
    ).json()
    evidence = Evidence.model_validate(document)
    assert evidence.kem_public_key == public
    x25519, ed25519 = node.keyring.current.public_key, node.keyring.signing_public_key
    bound = report_data(x25519, ed25519, nonce, evidence.gpus_digest(), kem_public_key=public)
    assert evidence.report_data == bound
    report = verify_evidence(
        evidence, Policy(allow_no_tee=True), expect_x25519=x25519, expect_ed25519=ed25519,
        expect_nonce=nonce, expect_kem_public_key=public,
    )  # fmt: skip
    assert report.ok, report.to_text()


def test_a_whole_chat_answer_is_sealed_signed_once_and_receipted_for_its_usage(
    node: RunningNode,
) -> None:
    envelope, session = seal(node, chat())
    response = post(node, envelope)
    assert response.status_code == 200, response.text
    sealed = ConfidentialComputeResponse.model_validate(response.json())
    answer = json.loads(session.open(sealed))
    session.finish()
    assert answer["object"] == "chat.completion"
    assert session.usage is not None
    assert session.usage.model_dump() == answer["usage"]
    receipt = receipt_of(node, response.headers[RECEIPT_HEADER])
    assert receipt.compute_units == session.usage.prompt_tokens + session.usage.completion_tokens
    assert receipt.request_id == base64.b64encode(envelope.request_id or b"").decode()
    assert receipt.response_hash == base64.b64encode(sealed.response_hash or b"").decode()


def test_embeddings_round_trip(node: RunningNode) -> None:
    envelope, session = seal(node, {"model": EMBED, "input": "secret"}, EMBED_PATH)
    response = post(node, envelope, EMBED_PATH)
    assert response.status_code == 200, response.text
    answer = json.loads(session.open(ConfidentialComputeResponse.model_validate(response.json())))
    assert len(answer["data"][0]["embedding"]) == 384
    assert session.usage is not None and session.usage.prompt_tokens >= 1
    receipt = receipt_of(node, response.headers[RECEIPT_HEADER])
    assert receipt.compute_units == session.usage.prompt_tokens


def test_a_stream_is_ordered_signed_on_its_final_chunk_and_ends_with_done(
    node: RunningNode,
) -> None:
    envelope, session = seal(node, chat(stream=True, max_tokens=5))
    content = envelope.model_dump_json().encode()
    headers = {"content-type": "application/json", TICKET_HEADER: ticket_for(content)}
    with httpx.stream(
        "POST", f"{node.url}{CHAT_PATH}", content=content, headers=headers, timeout=120
    ) as response:
        assert response.status_code == 200
        blocks = [b for b in response.read().decode().split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]"
    receipts: list[tuple[bytes | None, UsageReceipt]] = []
    last_hash: bytes | None = None
    events = []
    for block in blocks[:-1]:
        if block.startswith(RECEIPT_COMMENT.decode()):
            receipts.append((last_hash, receipt_of(node, block[len(RECEIPT_COMMENT) :].strip())))
            continue
        sealed = ConfidentialComputeResponse.model_validate_json(block.removeprefix("data: "))
        session.open(sealed)
        last_hash = sealed.response_hash
        events.append(sealed)
    session.finish()
    assert [e.index for e in events] == list(range(len(events)))
    assert [e.signature is not None for e in events] == [False] * (len(events) - 1) + [True]
    # Each running receipt vouches for the running hash of the chunks sent before it.
    for hash_before, receipt in receipts:
        assert receipt.response_hash == base64.b64encode(hash_before or b"").decode()
    final = receipts[-1][1]
    assert final.final and session.usage is not None
    assert final.compute_units == session.usage.prompt_tokens + session.usage.completion_tokens


def swapped(envelope: ConfidentialComputeRequest, **update: Any) -> ConfidentialComputeRequest:
    return ConfidentialComputeRequest.model_validate(
        {**json.loads(envelope.model_dump_json()), **update}
    )


def test_a_gateway_swapping_what_it_sees_is_refused_and_burns_nothing(node: RunningNode) -> None:
    envelope, session = seal(node, chat(stream=False), units=900)
    refused = {
        "model": (post(node, swapped(envelope, model_name=EMBED)), (404, 422)),
        "stack": (post(node, swapped(envelope, stack_small_id=2), stack=2), (422,)),
        "units": (post(node, swapped(envelope, num_compute_units=5000)), (422,)),
        "stream": (post(node, swapped(envelope, stream=True)), (422,)),
        "kem name": (post(node, swapped(envelope, kem="x25519")), (400,)),
        "endpoint": (post(node, envelope, EMBED_PATH), (404, 422)),
    }
    for what, (response, statuses) in refused.items():
        assert response.status_code in statuses, (what, response.status_code, response.text)
        assert RECEIPT_HEADER not in response.headers, what
        if what in ("stack", "units", "stream"):  # swaps only the HPKE info gives away
            assert error_code(response) == "DECRYPTION_FAILED", what
        if what == "kem name":
            assert error_code(response) == "INVALID_BODY", what
    # Nothing was remembered for a refused request: the genuine one is still served once.
    genuine = post(node, envelope, units=900)
    assert genuine.status_code == 200, genuine.text
    session.open(ConfidentialComputeResponse.model_validate(genuine.json()))
    replayed = post(node, envelope, units=900)
    assert replayed.status_code == 409 and error_code(replayed) == "REPLAYED"


def test_a_ticket_claiming_another_reservation_is_refused(node: RunningNode) -> None:
    other_reservation = "cd" * 16
    envelope, _ = seal(node, chat())
    # The envelope's own reservation swapped (and a ticket to match): its HPKE info fails.
    rebound = post(
        node, swapped(envelope, reservation_id=other_reservation), reservation_id=other_reservation
    )
    assert rebound.status_code == 422 and error_code(rebound) == "DECRYPTION_FAILED"
    # The ticket claims another reservation than the one the client sealed the request to.
    claimed = post(node, envelope, reservation_id=other_reservation)
    assert claimed.status_code == 422 and error_code(claimed) == "DECRYPTION_FAILED"
    assert "another reservation" in claimed.json()["error"]["message"]
    assert RECEIPT_HEADER not in claimed.headers
    # It was an authentic request all the same: sent again, under any reservation, a replay.
    again = post(node, envelope)
    assert again.status_code == 409 and error_code(again) == "REPLAYED"
    fresh, session = seal(node, chat())
    served = post(node, fresh)
    assert served.status_code == 200, served.text
    session.open(ConfidentialComputeResponse.model_validate(served.json()))


def test_a_kem_the_node_does_not_allow_is_400_and_an_allowed_one_is_served(
    node: RunningNode, tmp_path: Path, node_registry: EngineRegistry
) -> None:
    envelope, _ = seal(node, chat(), kem=v3.Kem.X25519)
    refused = post(node, envelope)
    assert refused.status_code == 400 and error_code(refused) == "INVALID_BODY"
    assert "x25519" in refused.json()["error"]["message"]

    server, classical = start_node(
        tmp_path, node_registry, gateway_keys=[public_b64(GATEWAY)], kems=["x25519"]
    )
    with server:
        envelope, session = seal(classical, chat(), kem=v3.Kem.X25519)
        served = post(classical, envelope)
        assert served.status_code == 200, served.text
        session.open(ConfidentialComputeResponse.model_validate(served.json()))
        hybrid, _ = seal(classical, chat())
        assert post(classical, hybrid).status_code == 400  # and now the hybrid one is not allowed


def test_a_key_retired_past_its_grace_is_409_stale(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    server, short = start_node(
        tmp_path, node_registry, gateway_keys=[public_b64(GATEWAY)], key_grace_seconds=0
    )
    with server:
        envelope, _ = seal(short, chat())
        short.keyring.rotate(now=time.time() - 10)
        stale = post(short, envelope)
        assert stale.status_code == 409 and error_code(stale) == "STALE_NODE_KEY"
        fresh, session = seal(short, chat())
        served = post(short, fresh)
        assert served.status_code == 200, served.text
        session.open(ConfidentialComputeResponse.model_validate(served.json()))


def test_a_stale_timestamp_is_refused(node: RunningNode) -> None:
    envelope, _ = seal(node, chat(max_tokens=1), now=time.time() - 3600)
    response = post(node, envelope)
    assert response.status_code == 409 and error_code(response) == "REPLAYED"
    assert "window" in response.json()["error"]["message"]
    assert RECEIPT_HEADER not in response.headers


def test_the_replay_cache_in_redis_is_shared_by_node_processes(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis unreachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis unreachable at {REDIS_URL}: {exc}")
    first_server, first = start_node(tmp_path, node_registry, replay_cache=REDIS_URL)
    second_server, second = start_node(tmp_path, node_registry, replay_cache=REDIS_URL)
    with first_server, second_server:
        envelope, session = seal(first, chat(max_tokens=1), reservation_id=None)
        served = first.post(CHAT_PATH, envelope)
        assert served.status_code == 200, served.text
        session.open(ConfidentialComputeResponse.model_validate(served.json()))
        replayed = second.post(CHAT_PATH, envelope)  # same node identity, other process
        assert replayed.status_code == 409 and error_code(replayed) == "REPLAYED"


def test_an_unreachable_replay_cache_fails_closed(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    server, direct = start_node(tmp_path, node_registry, replay_cache="redis://127.0.0.1:1/0")
    with server:
        envelope, _ = seal(direct, chat(max_tokens=1), reservation_id=None)
        response = direct.post(CHAT_PATH, envelope)
        assert response.status_code == 503 and error_code(response) == "SERVICE_UNAVAILABLE"
        assert RECEIPT_HEADER not in response.headers
        # atoma-v1 has no replay protection to fail: it still works (Atoma compatibility).
        v1_envelope, _ = direct.seal(chat(max_tokens=1), units=500)
        assert direct.post(CHAT_PATH, v1_envelope).status_code == 200
