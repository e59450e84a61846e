"""A node in front of real OpenAI-compatible upstreams: a stream whose backend dies part way, and
images from the loopback images stand-in."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engines.openai_stand_in import create_openai_stand_in
from tests.engines.test_upstream import start_llama_server
from tests.node.conftest import RunningNode, start_node
from tests.servers import ServerThread, stop_process
from veil.engines import make_upstream_engine
from veil.engines.models import EmbeddedModelPaths
from veil.node.service import EngineRegistry

ROUTE = "/v1/confidential/chat/completions"


def test_backend_dying_mid_stream_ends_with_a_sealed_error_and_usage_so_far(
    tmp_path: Path, embedded_models: EmbeddedModelPaths
) -> None:
    process, url = start_llama_server(embedded_models.chat_gguf, tmp_path / "llama.log")
    registry = EngineRegistry()
    registry.add(
        make_upstream_engine("chat", "upstream-chat", url, upstream_model="smollm2-upstream")
    )
    server, node = start_node(tmp_path / "node", registry)
    try:
        with server:
            body = {
                "model": "upstream-chat",
                "max_tokens": 1500,
                "stream": True,
                "messages": [{"role": "user", "content": "Write a very long story"}],
            }
            envelope, session = node.seal(body, units=4000, stream=True)
            events: list[dict[str, Any]] = []
            with httpx.stream(
                "POST", f"{node.url}{ROUTE}", content=envelope.model_dump_json(), timeout=120
            ) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if len(events) == 4:
                            process.kill()
                last = events[-1]
                error = node.open(session, last)
                chunks = [node.open(session, e) for e in events[:-1]]
    finally:
        stop_process(process)
    assert error["error"]["code"] == "ENGINE_ERROR"
    assert "Write a very long story" not in json.dumps(error)
    assert last["usage"]["completion_tokens"] >= 3
    assert last["usage"]["prompt_tokens"] > 0
    # Every earlier event is a proper sealed chunk.
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)


@pytest.fixture(scope="module")
def images_node(
    tmp_path_factory: pytest.TempPathFactory, chat_engine: Any, embedding_engine: Any
) -> Iterator[RunningNode]:
    with ServerThread(create_openai_stand_in(chat_engine, embedding_engine)) as upstream:
        registry = EngineRegistry()
        registry.add(make_upstream_engine("images", "stand-in-images", upstream.url))
        server, node = start_node(tmp_path_factory.mktemp("images-node"), registry)
        with server:
            yield node


def test_confidential_images_round_trip(images_node: RunningNode) -> None:
    body = {"model": "stand-in-images", "prompt": "a red square", "n": 2, "size": "32x16"}
    envelope, session = images_node.seal(body, units=2 * 32 * 16)
    response = images_node.post("/v1/confidential/images/generations", envelope)
    assert response.status_code == 200, response.text
    wire = response.json()
    assert "usage" not in wire  # v1 carries no usage for images
    answer = images_node.open(session, wire)
    pngs = [base64.b64decode(d["b64_json"]) for d in answer["data"]]
    assert len(pngs) == 2 and all(p.startswith(b"\x89PNG") for p in pngs)
    assert "a red square" not in response.text


def test_images_over_the_units_are_402(images_node: RunningNode) -> None:
    body = {"model": "stand-in-images", "prompt": "big", "n": 1, "size": "1024x1024"}
    envelope, _ = images_node.seal(body, units=1000)
    response = images_node.post("/v1/confidential/images/generations", envelope)
    assert response.status_code == 402
    assert "1048576" in response.json()["error"]["message"]


def test_bad_image_size_is_400(images_node: RunningNode) -> None:
    envelope, _ = images_node.seal({"model": "stand-in-images", "prompt": "x", "size": "huge"})
    response = images_node.post("/v1/confidential/images/generations", envelope)
    assert response.status_code == 400
