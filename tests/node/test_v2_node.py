"""veil-v2 through a real node: sealed both ways, ordered streams, replay refused, metadata bound,
and the replay cache shared through the real Redis by two node processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.node.conftest import CHAT, EMBED, RunningNode, start_node
from veil.hazmat import v2
from veil.node.service import EngineRegistry
from veil.wire.envelopes import ConfidentialComputeRequest, ConfidentialComputeResponse

CHAT_PATH = "/v1/confidential/chat/completions"
REDIS_URL = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def seal(
    node: RunningNode, body: dict[str, Any], path: str = CHAT_PATH, **kw: Any
) -> tuple[ConfidentialComputeRequest, v2.ClientSession]:
    return v2.seal_request(
        node.public_key,
        node.keyring.current.key_id,
        json.dumps(body).encode(),
        endpoint=path,
        model_name=body["model"],
        stack_small_id=1,
        num_compute_units=kw.pop("units", 1000),
        stream=body.get("stream"),
        **kw,
    )


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": CHAT,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }


def opened(node: RunningNode, session: v2.ClientSession, document: dict[str, Any]) -> Any:
    sealed = ConfidentialComputeResponse.model_validate(document)
    plaintext = session.open(sealed)
    v2.verify_signature(sealed, node.signing_key())
    return json.loads(plaintext)


def test_v2_chat_round_trip(node: RunningNode) -> None:
    envelope, session = seal(node, chat())
    response = node.post(CHAT_PATH, envelope)
    assert response.status_code == 200, response.text
    answer = opened(node, session, response.json())
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] >= 1
    session.finish()


def test_v2_embeddings_round_trip(node: RunningNode) -> None:
    path = "/v1/confidential/embeddings"
    envelope, session = seal(node, {"model": EMBED, "input": "secret"}, path)
    answer = opened(node, session, node.post(path, envelope).json())
    assert len(answer["data"][0]["embedding"]) == 384


def test_v2_stream_is_ordered_and_ends_with_done(node: RunningNode) -> None:
    envelope, session = seal(node, chat(stream=True, max_tokens=5))
    with httpx.stream(
        "POST", f"{node.url}{CHAT_PATH}", content=envelope.model_dump_json(), timeout=120
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert [e["index"] for e in events] == list(range(len(events)))
    assert [e["final"] for e in events] == [False] * (len(events) - 1) + [True]
    chunks = [opened(node, session, e) for e in events]
    session.finish()
    assert chunks[-1]["usage"] == events[-1]["usage"]


def test_v2_replay_is_refused(node: RunningNode) -> None:
    envelope, _ = seal(node, chat(max_tokens=1))
    assert node.post(CHAT_PATH, envelope).status_code == 200
    again = node.post(CHAT_PATH, envelope)
    assert again.status_code == 409 and again.json()["error"]["code"] == "REPLAYED"


def test_v2_stale_timestamp_is_refused(node: RunningNode) -> None:
    envelope, _ = seal(node, chat(max_tokens=1), now=time.time() - 3600)
    response = node.post(CHAT_PATH, envelope)
    assert response.status_code == 409 and "window" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("model_name", EMBED), ("stack_small_id", 2), ("num_compute_units", 10**6), ("stream", True)],
)
def test_v2_metadata_swapped_by_the_gateway_fails(
    node: RunningNode, field: str, value: Any
) -> None:
    envelope, _ = seal(node, chat(max_tokens=1))
    document = json.loads(envelope.model_dump_json())
    document[field] = value
    response = node.post(CHAT_PATH, document)
    assert response.status_code in (404, 422), response.text
    if field != "model_name":  # an unservable model may be refused before opening
        assert response.json()["error"]["code"] == "DECRYPTION_FAILED"


def test_v2_envelope_for_another_route_fails(node: RunningNode) -> None:
    envelope, _ = seal(node, {"model": CHAT, "input": "x"}, "/v1/confidential/embeddings")
    response = node.post(CHAT_PATH, envelope)
    assert response.status_code == 422


def test_replay_cache_in_redis_is_shared_by_node_processes(
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
        envelope, _ = seal(first, chat(max_tokens=1))
        assert first.post(CHAT_PATH, envelope).status_code == 200
        replayed = second.post(CHAT_PATH, envelope)  # same node identity, other process
        assert replayed.status_code == 409


def test_unreachable_replay_cache_fails_closed(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    server, node = start_node(tmp_path, node_registry, replay_cache="redis://127.0.0.1:1/0")
    with server:
        envelope, _ = seal(node, chat(max_tokens=1))
        response = node.post(CHAT_PATH, envelope)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        # v1 has no replay protection to fail: it still works (atoma compatibility).
        v1_envelope, _ = node.seal(chat(max_tokens=1), units=500)
        assert node.post(CHAT_PATH, v1_envelope).status_code == 200
