"""The embedded chat engine on the real SmolLM2-135M-Instruct GGUF (shared session engine)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from veil.engines import CHAT_MODEL_SAMPLING, EngineFailure, LlamaCppChatEngine, SamplingDefaults
from veil.engines.llamacpp import _Sampling
from veil.wire.openai import ChatCompletionRequest

pytestmark = pytest.mark.slow  # real models or server processes

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ONE_WORD = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def chat(messages: list[dict[str, Any]] = QUESTION, **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "smollm2-135m-instruct", "messages": messages, **fields}
    )


async def collect(engine: LlamaCppChatEngine, request: ChatCompletionRequest, max_tokens: int):
    return [chunk async for chunk in engine.stream(request, max_tokens)]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def test_complete_returns_real_tokens_with_exact_usage(chat_engine: LlamaCppChatEngine) -> None:
    request = chat(temperature=0)
    answer = asyncio.run(chat_engine.complete(request, 8))

    assert answer["object"] == "chat.completion"
    assert answer["model"] == "smollm2-135m-instruct"
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["choices"][0]["message"]["content"].strip()
    usage = answer["usage"]
    assert usage["prompt_tokens"] == asyncio.run(chat_engine.count_prompt_tokens(request))
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_prompt_count_and_greedy_output_match_llama_cpp_python_itself(
    chat_engine: LlamaCppChatEngine,
) -> None:
    conversation = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one, in French?"},
    ]
    ours = asyncio.run(chat_engine.complete(chat(conversation, temperature=0), 12))
    with chat_engine._lock:  # the library's own chat completion, on the same loaded model
        theirs = chat_engine._llama.create_chat_completion(
            messages=conversation, temperature=0, max_tokens=12
        )

    assert ours["usage"] == theirs["usage"]
    assert ours["choices"][0]["message"]["content"] == theirs["choices"][0]["message"]["content"]


def test_stream_yields_chunks_as_generated_then_exact_usage(
    chat_engine: LlamaCppChatEngine,
) -> None:
    request = chat(temperature=0)
    chunks = asyncio.run(collect(chat_engine, request, 12))
    whole = asyncio.run(chat_engine.complete(request, 12))

    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) >= 3
    assert all(
        c["object"] == "chat.completion.chunk" and c["model"] == "smollm2-135m-instruct"
        for c in chunks
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    final = chunks[-1]
    assert final["choices"] == []
    assert final["usage"] == whole["usage"]
    assert streamed_text(chunks) == whole["choices"][0]["message"]["content"]
    assert len({c["id"] for c in chunks}) == 1


def test_max_tokens_is_respected_exactly(chat_engine: LlamaCppChatEngine) -> None:
    answer = asyncio.run(chat_engine.complete(chat(temperature=0), 3))
    assert answer["usage"]["completion_tokens"] == 3
    assert answer["choices"][0]["finish_reason"] == "length"

    chunks = asyncio.run(collect(chat_engine, chat(temperature=0), 3))
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_the_chat_template_is_applied_and_the_answer_makes_sense(
    chat_engine: LlamaCppChatEngine,
) -> None:
    # The GGUF's own template (ChatML, with SmolLM's default system turn) builds the prompt.
    request = chat(ONE_WORD, temperature=0)
    with chat_engine._count_lock:
        prompt = chat_engine._format(request, []).tokens
    text = chat_engine._llama.detokenize(prompt, special=True).decode()
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("Answer in one word.<|im_end|>\n<|im_start|>assistant\n")

    answer = asyncio.run(chat_engine.complete(request, 16))
    assert answer["choices"][0]["message"]["content"] == "The capital of France is Paris."
    assert answer["choices"][0]["finish_reason"] == "stop"  # the model ended its own turn


def test_stop_strings_end_generation_without_appearing(chat_engine: LlamaCppChatEngine) -> None:
    # Greedy SmolLM2 answers "The capital of France is Paris."
    request = chat(ONE_WORD, temperature=0, stop=[" Paris"])
    answer = asyncio.run(chat_engine.complete(request, 16))
    streamed = asyncio.run(collect(chat_engine, request, 16))

    assert answer["choices"][0]["message"]["content"] == "The capital of France is"
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert streamed_text(streamed) == "The capital of France is"
    assert streamed[-1]["usage"] == answer["usage"]


def test_fields_a_request_leaves_out_get_the_models_recommended_sampling(
    chat_engine: LlamaCppChatEngine,
) -> None:
    assert chat_engine.sampling_defaults == CHAT_MODEL_SAMPLING == SamplingDefaults(0.2, 0.9)
    left_out = _Sampling.from_request(chat(), CHAT_MODEL_SAMPLING)
    assert (left_out.temperature, left_out.top_p) == (0.2, 0.9)
    asked = _Sampling.from_request(chat(temperature=1.5, top_p=0.5), CHAT_MODEL_SAMPLING)
    assert (asked.temperature, asked.top_p) == (1.5, 0.5)
    assert _Sampling.from_request(chat(temperature=0), CHAT_MODEL_SAMPLING).temperature == 0.0
    openai = _Sampling.from_request(chat())  # an engine without its own: OpenAI's defaults
    assert (openai.temperature, openai.top_p) == (1.0, 1.0)

    # End to end: leaving the fields out samples exactly as asking for 0.2 / 0.9 does.
    implicit = asyncio.run(chat_engine.complete(chat(ONE_WORD, seed=7), 16))
    explicit = asyncio.run(
        chat_engine.complete(chat(ONE_WORD, seed=7, temperature=0.2, top_p=0.9), 16)
    )
    assert implicit["choices"][0]["message"] == explicit["choices"][0]["message"]
    assert "Paris" in implicit["choices"][0]["message"]["content"]


def test_same_seed_same_sample(chat_engine: LlamaCppChatEngine) -> None:
    request = chat(temperature=1.0, seed=1234)
    first = asyncio.run(chat_engine.complete(request, 8))
    second = asyncio.run(chat_engine.complete(request, 8))
    assert first["choices"][0]["message"] == second["choices"][0]["message"]


def test_abandoned_stream_stops_generating(chat_engine: LlamaCppChatEngine) -> None:
    async def abandon_then_ask_again() -> tuple[float, dict[str, Any]]:
        stream = chat_engine.stream(chat(temperature=0), 1500)
        async for chunk in stream:
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                break
        await stream.aclose()
        started = time.monotonic()
        answer = await chat_engine.complete(chat(temperature=0), 2)
        return time.monotonic() - started, answer

    waited, answer = asyncio.run(abandon_then_ask_again())
    # Finishing 1500 tokens would take a minute here; the next request waits a token at most.
    assert waited < 10
    assert answer["usage"]["completion_tokens"] == 2


def test_prompt_longer_than_context_fails_cleanly(chat_engine: LlamaCppChatEngine) -> None:
    secret = "confidential words " * 1500
    with pytest.raises(EngineFailure) as failure:
        asyncio.run(chat_engine.complete(chat([{"role": "user", "content": secret}]), 8))
    assert "confidential" not in str(failure.value)
    assert failure.value.usage is not None and failure.value.usage.prompt_tokens > 2048
