"""Upstream engines against real OpenAI-compatible servers on loopback.

- llama-cpp-python's own server (``python -m llama_cpp.server``) on the embedded SmolLM2 GGUF: a
  real third-party server that reports no usage in streams and tokenizes only plain text, so it
  exercises the fallbacks;
- the stand-in server of ``openai_stand_in`` over Veil's embedded engines: usage reported the
  vLLM way, exact chat-template token counts, embeddings, and images.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engines.openai_stand_in import create_openai_stand_in
from tests.servers import ServerThread, free_port, http_ok, stop_process, wait_until
from veil.engines import (
    EmbeddedModelPaths,
    EngineFailure,
    LlamaCppChatEngine,
    SentenceTransformerEmbeddingEngine,
    UpstreamChatEngine,
    UpstreamEmbeddingEngine,
    UpstreamImageEngine,
)
from veil.engines.upstream import UPSTREAM_HEALTHY_SECONDS
from veil.engines.upstream_tokens import MESSAGE_ALLOWANCE, PROMPT_ALLOWANCE
from veil.wire.openai import ChatCompletionRequest, EmbeddingRequest, ImageGenerationRequest

pytestmark = pytest.mark.slow  # real models or server processes

LAUNCHER = Path(__file__).with_name("llama_server_launcher.py")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "veil-chat", "messages": QUESTION, "temperature": 0, **fields}
    )


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def start_llama_server(gguf: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    # No --chat_format: the server applies the GGUF's own chat template, as the engine does.
    command = [
        sys.executable, str(LAUNCHER), "--model", str(gguf), "--model_alias", "smollm2-upstream",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is None and http_ok(f"{url}/v1/models"), 120, "server")
    except TimeoutError:
        stop_process(process)
        raise AssertionError(log.read_text(errors="replace")[-2000:]) from None
    return process, url


@pytest.fixture(scope="module")
def llama_server(
    embedded_models: EmbeddedModelPaths, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    process, url = start_llama_server(embedded_models.chat_gguf, log)
    yield url
    stop_process(process)


@pytest.fixture(scope="module")
def stand_in(
    chat_engine: LlamaCppChatEngine, embedding_engine: SentenceTransformerEmbeddingEngine
) -> Iterator[str]:
    with ServerThread(create_openai_stand_in(chat_engine, embedding_engine)) as server:
        yield server.url


async def run_chat(engine: UpstreamChatEngine, request: ChatCompletionRequest, max_tokens: int):
    try:
        whole = await engine.complete(request, max_tokens)
        chunks = [chunk async for chunk in engine.stream(request, max_tokens)]
        counted = await engine.count_prompt_tokens(request)
        return whole, chunks, counted
    finally:
        await engine.close()


async def health(engine: UpstreamChatEngine | UpstreamImageEngine) -> bool:
    try:
        return await engine.healthy()
    finally:
        await engine.close()


# --- llama_cpp.server: no streamed usage, text-only tokenization ------------------------------


def test_llama_server_chat_with_usage_in_both_modes(llama_server: str) -> None:
    engine = UpstreamChatEngine(
        "veil-chat", f"{llama_server}/v1", upstream_model="smollm2-upstream"
    )
    whole, chunks, counted = asyncio.run(run_chat(engine, chat(), 8))

    assert whole["model"] == "veil-chat"
    assert whole["choices"][0]["message"]["content"]
    assert 0 < whole["usage"]["completion_tokens"] <= 8
    assert all(c["model"] == "veil-chat" for c in chunks)
    assert content_of(chunks) == whole["choices"][0]["message"]["content"]
    # The server reports no usage when streaming: one token per relayed chunk (it streams token
    # by token), and the prompt counted by count_prompt_tokens.
    final = chunks[-1]
    assert final["choices"] == []
    assert final["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    assert final["usage"]["prompt_tokens"] == counted
    assert final["usage"]["total_tokens"] == counted + final["usage"]["completion_tokens"]


def test_llama_server_prompt_count_is_an_upper_bound_from_its_tokenizer(
    llama_server: str,
) -> None:
    engine = UpstreamChatEngine("veil-chat", llama_server, upstream_model="smollm2-upstream")
    whole, _, counted = asyncio.run(run_chat(engine, chat(), 2))

    # /extras/tokenize/count: "What is the capital of France?" is 7 tokens (SmolLM2 adds no BOS).
    assert engine.tokenizer._chat_form == "text"
    assert counted == 7 + MESSAGE_ALLOWANCE + PROMPT_ALLOWANCE
    assert counted >= whole["usage"]["prompt_tokens"]


def test_killing_the_server_mid_stream_fails_with_partial_usage(
    embedded_models: EmbeddedModelPaths, tmp_path: Path
) -> None:
    process, url = start_llama_server(embedded_models.chat_gguf, tmp_path / "server.log")
    engine = UpstreamChatEngine("veil-chat", url, upstream_model="smollm2-upstream")
    relayed: list[dict[str, Any]] = []

    async def stream_until_killed() -> None:
        try:
            async for chunk in engine.stream(chat(), 1500):
                relayed.append(chunk)
                if len(relayed) == 4:
                    process.kill()
        finally:
            await engine.close()

    try:
        with pytest.raises(EngineFailure) as failure:
            asyncio.run(stream_until_killed())
    finally:
        stop_process(process)
    usage = failure.value.usage
    assert usage is not None
    assert usage.completion_tokens >= 3  # the role chunk carries no content
    assert usage.prompt_tokens > 0
    assert asyncio.run(health(engine)) is False


# --- the stand-in: usage reported upstream, exact counts ---------------------------------------


def test_streamed_usage_from_the_upstream_is_relayed_exactly(
    stand_in: str, chat_engine: LlamaCppChatEngine
) -> None:
    engine = UpstreamChatEngine("veil-chat", stand_in, upstream_model="smollm2-135m-instruct")
    whole, chunks, counted = asyncio.run(run_chat(engine, chat(), 8))
    direct = asyncio.run(chat_engine.complete(chat(), 8))

    assert engine.tokenizer._chat_form == "messages"
    assert counted == direct["usage"]["prompt_tokens"]
    assert whole["usage"] == direct["usage"]
    assert chunks[-1]["usage"] == direct["usage"]
    assert [c for c in chunks if c["choices"] == []] == [chunks[-1]]  # one usage chunk, last
    assert content_of(chunks) == direct["choices"][0]["message"]["content"]


def test_without_a_tokenize_endpoint_the_count_is_a_byte_bound(
    stand_in: str,
    chat_engine: LlamaCppChatEngine,
    embedding_engine: SentenceTransformerEmbeddingEngine,
) -> None:
    app = create_openai_stand_in(chat_engine, embedding_engine, tokenize=False)
    with ServerThread(app) as server:
        engine = UpstreamChatEngine("veil-chat", server.url, upstream_model="smollm2-135m-instruct")
        counted = asyncio.run(engine.count_prompt_tokens(chat()))
        exact = asyncio.run(chat_engine.count_prompt_tokens(chat()))

    question = QUESTION[0]["content"]
    assert counted == len(question.encode()) + MESSAGE_ALLOWANCE + PROMPT_ALLOWANCE
    assert counted >= exact
    assert engine.tokenizer._chat_form == "bound"


def test_embeddings_through_the_upstream_match_the_model(
    stand_in: str, embedding_engine: SentenceTransformerEmbeddingEngine
) -> None:
    request = EmbeddingRequest(model="veil-embed", input=["first text", "second, longer text"])
    engine = UpstreamEmbeddingEngine("veil-embed", stand_in, upstream_model="all-minilm-l6-v2")

    async def run() -> tuple[dict[str, Any], int]:
        try:
            return await engine.embed(request), await engine.count_tokens(request)
        finally:
            await engine.close()

    answer, counted = asyncio.run(run())
    direct = asyncio.run(embedding_engine.embed(request))

    assert answer["model"] == "veil-embed"
    assert [len(item["embedding"]) for item in answer["data"]] == [384, 384]
    assert answer["data"][1]["embedding"] == pytest.approx(direct["data"][1]["embedding"])
    assert answer["usage"] == direct["usage"]
    assert counted == direct["usage"]["prompt_tokens"]


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def test_images_come_back_as_pngs(stand_in: str) -> None:
    engine = UpstreamImageEngine("veil-images", stand_in, upstream_model="stand-in-images")
    request = ImageGenerationRequest(model="veil-images", prompt="a red boat", n=2, size="48x32")

    async def run() -> dict[str, Any]:
        try:
            return await engine.generate(request)
        finally:
            await engine.close()

    answer = asyncio.run(run())
    images = [base64.b64decode(item["b64_json"]) for item in answer["data"]]
    assert [png_size(image) for image in images] == [(48, 32), (48, 32)]
    assert images[0] != images[1]
    assert isinstance(answer["created"], int)


@pytest.mark.parametrize(
    ("upstream_model", "complaint"),
    [("always-500", "HTTP 500"), ("malformed", "malformed")],
)
def test_upstream_errors_are_engine_failures_that_echo_nothing(
    stand_in: str, upstream_model: str, complaint: str
) -> None:
    secret = "a secret prompt about the merger"
    requests = [
        (UpstreamImageEngine, ImageGenerationRequest(model="m", prompt=secret)),
        (UpstreamEmbeddingEngine, EmbeddingRequest(model="m", input=secret)),
        (UpstreamChatEngine, chat(messages=[{"role": "user", "content": secret}])),
    ]
    for engine_class, request in requests:
        engine = engine_class("m", stand_in, upstream_model=upstream_model)

        async def call(engine: Any = engine, request: Any = request) -> Any:
            try:
                if isinstance(engine, UpstreamImageEngine):
                    return await engine.generate(request)
                if isinstance(engine, UpstreamEmbeddingEngine):
                    return await engine.embed(request)
                return [chunk async for chunk in engine.stream(request, 4)]
            finally:
                await engine.close()

        with pytest.raises(EngineFailure, match=complaint) as failure:
            asyncio.run(call())
        assert "secret" not in str(failure.value)


def test_an_unreachable_upstream_is_an_engine_failure() -> None:
    engine = UpstreamChatEngine("m", f"http://127.0.0.1:{free_port()}")

    async def run() -> None:
        try:
            assert await engine.healthy() is False
            await engine.complete(chat(), 4)
        finally:
            await engine.close()

    with pytest.raises(EngineFailure, match="unreachable"):
        asyncio.run(run())


def test_health_follows_the_server(stand_in: str) -> None:
    assert asyncio.run(health(UpstreamImageEngine("m", stand_in))) is True


def test_a_healthy_upstream_is_asked_again_only_after_its_window_and_a_no_is_never_kept() -> None:
    # A scripted transport (not a server) in place of the upstream: what is tested is which
    # health requests the engine makes.
    asked: list[str] = []
    status = [200]

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(status[0], json={"object": "list", "data": []})

    engine = UpstreamChatEngine("m", "http://upstream.invalid")
    engine._client = httpx.AsyncClient(
        base_url=engine.base_url, transport=httpx.MockTransport(answer)
    )

    async def run() -> None:
        try:
            assert await engine.healthy() and asked == ["/v1/models"]
            assert await engine.healthy() and len(asked) == 1  # within its window: not asked
            engine._healthy_at -= UPSTREAM_HEALTHY_SECONDS
            status[0] = 503
            assert not await engine.healthy() and asked[1:] == ["/v1/models", "/health"]
            assert not await engine.healthy() and len(asked) == 5  # a no is asked again
            status[0] = 200
            assert await engine.healthy() and len(asked) == 6
        finally:
            await engine.close()

    asyncio.run(run())
