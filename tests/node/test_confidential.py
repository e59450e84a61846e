"""Confidential routes end to end: real models, real HTTP, every answer decrypted and verified."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.node.conftest import CHAT, EMBED, RunningNode
from veil.hazmat import v1
from veil.wire.envelopes import ConfidentialComputeResponse
from veil.wire.errors import DecryptionFailed
from veil.wire.tickets import UsageReceipt, verify_token

CHAT_ROUTE = "/v1/confidential/chat/completions"
EMBED_ROUTE = "/v1/confidential/embeddings"
IMAGES_ROUTE = "/v1/confidential/images/generations"


def chat_body(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "The capital of France is"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    body.update(extra)
    return body


def test_chat_round_trip_is_sealed_signed_and_metered(node: RunningNode) -> None:
    envelope, session = node.seal(chat_body(), units=512)
    response = node.post(CHAT_ROUTE, envelope)
    assert response.status_code == 200, response.text
    wire = response.json()
    answer = node.open(session, wire)
    assert answer["object"] == "chat.completion"
    assert answer["model"] == CHAT
    text = answer["choices"][0]["message"]["content"]
    assert isinstance(text, str)
    usage = answer["usage"]
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["prompt_tokens"] > 5
    # The clear usage the gateway will settle from equals what the model reported inside.
    assert wire["usage"] == usage
    # Nothing readable travels back: the answer text is not in the wire bytes.
    if len(text.strip()) > 3:
        assert text.strip() not in response.text


def test_response_nonce_is_fresh_and_not_the_request_nonce(node: RunningNode) -> None:
    envelope, _session = node.seal(chat_body(max_tokens=2), units=512)
    first = node.post(CHAT_ROUTE, envelope).json()
    again, _session2 = node.seal(chat_body(max_tokens=2), units=512)
    second = node.post(CHAT_ROUTE, again).json()
    nonces = {first["nonce"], second["nonce"], envelope.model_dump()["nonce"]}
    assert len(nonces) == 3


def test_stream_chunks_each_sealed_with_own_nonce_and_final_usage(node: RunningNode) -> None:
    envelope, session = node.seal(chat_body(stream=True, max_tokens=6), units=512, stream=True)
    with httpx.stream(
        "POST",
        f"{node.url}{CHAT_ROUTE}",
        content=envelope.model_dump_json(),
        headers={"content-type": "application/json"},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        everything = [line for line in response.iter_lines() if line]
    receipts = [line for line in everything if line.startswith(": veil-receipt ")]
    lines = [line for line in everything if not line.startswith(":")]
    assert all(line.startswith("data: ") for line in lines)
    # Running receipts at a bounded cadence (the first chunk always gets one), each right after
    # an event; the last is final and exact.
    signer = node.signing_key()
    signed = [verify_token(r[len(": veil-receipt ") :], UsageReceipt, [signer]) for r in receipts]
    last = signed[-1]
    assert 2 <= len(receipts) <= len(lines)
    assert everything[0].startswith("data: ") and everything[1] == receipts[0]
    assert all(everything[everything.index(r) - 1].startswith("data: ") for r in receipts)
    running = [r.compute_units for r in signed[:-1]]
    assert running == sorted(running) and running[-1] <= last.compute_units
    assert not any(r.final for r in signed[:-1])
    assert not any(line == "data: [DONE]" for line in lines), "v1 clients never get [DONE]"
    events = [json.loads(line[len("data: ") :]) for line in lines]
    assert len({e["nonce"] for e in events}) == len(events) >= 2
    chunks = [node.open(session, e) for e in events]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in e for e in events[:-1])
    final = events[-1]["usage"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == final
    assert last.final and last.compute_units == final["total_tokens"]
    assert 1 <= final["completion_tokens"] <= 6


def test_embeddings_round_trip(node: RunningNode) -> None:
    envelope, session = node.seal({"model": EMBED, "input": ["secret one", "secret two"]})
    response = node.post(EMBED_ROUTE, envelope)
    assert response.status_code == 200, response.text
    answer = node.open(session, response.json())
    assert [len(d["embedding"]) for d in answer["data"]] == [384, 384]
    assert response.json()["usage"]["prompt_tokens"] == answer["usage"]["prompt_tokens"] > 2


def test_chat_completion_is_capped_to_the_units_left_after_the_prompt(node: RunningNode) -> None:
    body = chat_body(max_tokens=64)
    envelope, session = node.seal(body, units=10_000)
    prompt_tokens = node.open(session, node.post(CHAT_ROUTE, envelope).json())["usage"][
        "prompt_tokens"
    ]
    envelope, session = node.seal(body, units=prompt_tokens + 3)
    usage = node.open(session, node.post(CHAT_ROUTE, envelope).json())["usage"]
    assert usage["completion_tokens"] <= 3
    assert usage["total_tokens"] <= prompt_tokens + 3


def test_prompt_larger_than_units_is_refused_before_generation(node: RunningNode) -> None:
    before = _tokens_metric(node)
    envelope, _ = node.seal(chat_body(), units=3)
    response = node.post(CHAT_ROUTE, envelope)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "BALANCE_ERROR"
    assert _tokens_metric(node) == before, "no tokens may be generated for a refused request"


def test_embedding_input_over_units_is_refused(node: RunningNode) -> None:
    envelope, _ = node.seal({"model": EMBED, "input": "word " * 50}, units=5)
    response = node.post(EMBED_ROUTE, envelope)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "BALANCE_ERROR"


def test_images_without_an_images_engine_say_so(node: RunningNode) -> None:
    envelope, _ = node.seal({"model": "any-image-model", "prompt": "a red square", "size": "64x64"})
    response = node.post(IMAGES_ROUTE, envelope)
    assert response.status_code == 404
    assert "no images model is configured" in response.json()["error"]["message"]


def test_open_response_rejects_a_swapped_hash(node: RunningNode) -> None:
    envelope, session = node.seal(chat_body(max_tokens=2), units=512)
    wire = node.post(CHAT_ROUTE, envelope).json()
    wire["response_hash"] = base64.b64encode(bytes(32)).decode()
    sealed = ConfidentialComputeResponse.model_validate(wire)
    with pytest.raises(DecryptionFailed, match="response_hash"):
        v1.open_response(session, sealed)


def _tokens_metric(node: RunningNode) -> float:
    text = httpx.get(f"{node.url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("veil_node_tokens_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
