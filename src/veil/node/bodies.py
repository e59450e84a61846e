"""OpenAI bodies inside the pipeline: parse a plaintext request, encode an answer, read usage.

Plaintext: only the pipeline's modules (``pipeline``, ``sealing``, ``frames``, ``streams``,
``service``) import this, never ``app``.
"""

from __future__ import annotations

import json
from typing import Any

from veil.web import parse_model
from veil.wire.openai import ChatCompletionRequest, EmbeddingRequest, ImageGenerationRequest
from veil.wire.routes import ROUTES, Endpoint

OpenAIRequest = ChatCompletionRequest | EmbeddingRequest | ImageGenerationRequest


def parse_openai_request(endpoint: Endpoint, raw: bytes) -> OpenAIRequest:
    """Validate an OpenAI-style body for ``endpoint`` (400 INVALID_BODY if it is not one)."""
    parsed = parse_model(raw, ROUTES[endpoint].request_model, f"{endpoint} request")
    assert isinstance(parsed, ChatCompletionRequest | EmbeddingRequest | ImageGenerationRequest)
    return parsed


def encode_json(payload: Any) -> bytes:
    """Compact JSON: the exact bytes that are hashed, signed and sealed."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def wire_usage(usage: Any) -> dict[str, int] | None:
    """The three standard counters of an engine's usage object, or None."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens", 0) or 0)
    completion = int(usage.get("completion_tokens", 0) or 0)
    total = int(usage.get("total_tokens", prompt + completion) or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def has_content(chunk: dict[str, Any]) -> bool:
    """Whether a stream chunk carries generated output (text, reasoning or tool calls)."""
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and (
            delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")
        ):
            return True
    return False
