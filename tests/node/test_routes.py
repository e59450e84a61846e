"""Plain OpenAI routes, read-only routes, and key rotation seen over HTTP."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import httpx
import pytest

from tests.node.conftest import CHAT, EMBED, RunningNode, start_node
from veil.node.keyring import Keyring
from veil.node.service import EngineRegistry

CHAT_ROUTE = "/v1/confidential/chat/completions"


def test_plain_chat(node: RunningNode) -> None:
    response = httpx.post(
        f"{node.url}/v1/chat/completions",
        timeout=120,
        json={
            "model": CHAT,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4,
        },
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert 1 <= answer["usage"]["completion_tokens"] <= 4


def test_plain_chat_stream_ends_with_done(node: RunningNode) -> None:
    with httpx.stream(
        "POST",
        f"{node.url}/v1/chat/completions",
        timeout=120,
        json={
            "model": CHAT,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4,
            "stream": True,
        },
    ) as response:
        lines = [line for line in response.iter_lines() if line and not line.startswith(":")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] >= 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_plain_embeddings(node: RunningNode) -> None:
    response = httpx.post(
        f"{node.url}/v1/embeddings", json={"model": EMBED, "input": "hi"}, timeout=60
    )
    assert response.status_code == 200
    assert len(response.json()["data"][0]["embedding"]) == 384


def test_plain_unknown_model(node: RunningNode) -> None:
    response = httpx.post(f"{node.url}/v1/embeddings", json={"model": "nope", "input": "hi"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


def test_models_health_keys_metrics(node: RunningNode) -> None:
    models = httpx.get(f"{node.url}/v1/models").json()
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == {CHAT, EMBED}
    assert all(
        m["object"] == "model" and "created" in m and "owned_by" in m for m in models["data"]
    )
    health = httpx.get(f"{node.url}/health").json()
    assert health["status"] == "ok" and health["key_id"] == node.keyring.current.key_id
    keys = httpx.get(f"{node.url}/v1/keys").json()
    assert keys["keys"][0]["key_id"] == node.keyring.current.key_id
    assert base64.b64decode(keys["keys"][0]["public_key"]) == node.public_key
    assert len(base64.b64decode(keys["signing_public_key"])) == 32
    metrics = httpx.get(f"{node.url}/metrics").text
    assert "veil_node_requests_total" in metrics


def test_metrics_count_requests_by_code(node: RunningNode) -> None:
    node.post(CHAT_ROUTE, b"{bad")
    metrics = httpx.get(f"{node.url}/metrics").text
    assert (
        'veil_node_requests_total{code="INVALID_BODY",route="confidential_chat_completions"}'
        in metrics
    )


def _chat(node: RunningNode, key: bytes) -> httpx.Response:
    envelope, _ = node.seal(
        {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
        units=256,
        node_key=key,
    )
    return node.post(CHAT_ROUTE, envelope)


def test_rotation_keeps_previous_key_inside_grace(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    server, running = start_node(tmp_path, node_registry)
    with server:
        old = running.public_key
        Keyring(tmp_path).rotate()  # another process, as `veil node rotate-key` does
        keys = httpx.get(f"{running.url}/v1/keys").json()["keys"]
        assert [k["status"] for k in keys] == ["current", "previous"]
        assert _chat(running, old).status_code == 200
        assert _chat(running, base64.b64decode(keys[0]["public_key"])).status_code == 200


def test_previous_key_is_stale_after_grace(tmp_path: Path, node_registry: EngineRegistry) -> None:
    server, running = start_node(tmp_path, node_registry, key_grace_seconds=0)
    with server:
        old = running.public_key
        Keyring(tmp_path).rotate()
        response = _chat(running, old)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "STALE_NODE_KEY"


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/confidential/chat/completions"])
def test_declared_oversize_body_is_refused_without_reading_it(
    node: RunningNode, route: str
) -> None:
    # A raw socket: announce 10 MiB, send 2 bytes, and expect the answer without sending more.
    port = int(node.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10 * 1024 * 1024}\r\n\r\n{{}}".encode()
        )
        answer = b""
        while b"PAYLOAD_TOO_LARGE" not in answer and len(answer) < 65536:
            part = conn.recv(65536)
            if not part:
                break
            answer += part
    text = answer.decode(errors="replace")
    assert text.startswith("HTTP/1.1 413"), text[:80]
    assert "PAYLOAD_TOO_LARGE" in text
