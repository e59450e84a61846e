"""A TEST SERVER: a small OpenAI-compatible server on loopback, standing in for the remote
services Veil's upstream engines talk to.

- chat and embeddings are served by Veil's own embedded engines, so answers are real model output
  with real usage (the way vLLM or TEI report it, including streamed usage on request);
- ``/tokenize`` answers the vLLM way (``messages`` or ``prompt``, with the tokenizer of the model the
  body names), unless built without it;
- ``merge=N`` streams N tokens a chunk, as servers that batch their output do (and, with
  ``continuous_usage_stats`` in ``stream_options`` or ``continuous_usage=True``, usage in every
  chunk, as vLLM does);
- ``ignore_max_tokens=True`` is an upstream that overruns the ``max_tokens`` it is sent (up to 400
  tokens), reporting honestly what it produced;
- images stand in for a remote images service, since no small text-to-image model ships on PyPI:
  each PNG is drawn procedurally from the prompt's hash (stdlib zlib + struct).

Two model names misbehave on purpose: ``always-500`` answers HTTP 500 (with the prompt in the
error body, as some servers do) and ``malformed`` answers 200 with a body that is not JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from veil.engines.base import ChatEngine, EmbeddingEngine
from veil.wire.openai import ChatCompletionRequest, EmbeddingRequest, ImageGenerationRequest


def create_openai_stand_in(
    chat: ChatEngine,
    embeddings: EmbeddingEngine,
    *,
    tokenize: bool = True,
    merge: int = 1,
    continuous_usage: bool = False,
    ignore_max_tokens: bool = False,
) -> FastAPI:
    app = FastAPI()

    def misbehave(body: dict[str, Any]) -> Response | None:
        if body.get("model") == "always-500":
            error = {"error": {"message": f"internal error while handling {body!r}"}}
            return JSONResponse(error, status_code=500)
        if body.get("model") == "malformed":
            return PlainTextResponse("<html>not json</html>")
        return None

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = [chat.model_id, embeddings.model_id, "stand-in-images"]
        return {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        if (failure := misbehave(body)) is not None:
            return failure
        parsed = ChatCompletionRequest.model_validate(body)
        max_tokens = parsed.requested_max_tokens() or 16
        if ignore_max_tokens:
            max_tokens = 400
        if not parsed.stream:
            return JSONResponse(await chat.complete(parsed, max_tokens))
        options = parsed.stream_options
        include_usage = bool(options and options.include_usage)
        asked = bool(options and (options.model_extra or {}).get("continuous_usage_stats"))
        continuous = continuous_usage or asked
        prompt_tokens = await chat.count_prompt_tokens(parsed) if continuous else 0

        async def events() -> AsyncIterator[str]:
            held: list[dict[str, Any]] = []  # content chunks not sent yet (merge > 1)
            produced = 0

            def merged() -> str:
                first = dict(held[0])
                text = "".join(c["choices"][0]["delta"].get("content") or "" for c in held)
                first["choices"] = [{**held[0]["choices"][0], "delta": {"content": text}}]
                if continuous:
                    first["usage"] = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": produced,
                        "total_tokens": prompt_tokens + produced,
                    }
                held.clear()
                return f"data: {json.dumps(first)}\n\n"

            async for chunk in chat.stream(parsed, max_tokens):
                # Veil's own running count: the stand-in's source of truth, not sent upstream-style
                produced = chunk.pop("x_veil_completion_tokens", produced)
                delta = chunk["choices"][0].get("delta", {}) if chunk["choices"] else {}
                if delta.get("content"):
                    held.append(chunk)
                    if len(held) >= merge:
                        yield merged()
                    continue
                if held:
                    yield merged()
                if chunk["choices"] or include_usage:
                    yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/embeddings")
    async def embed(request: Request) -> Response:
        body = await request.json()
        if (failure := misbehave(body)) is not None:
            return failure
        return JSONResponse(await embeddings.embed(EmbeddingRequest.model_validate(body)))

    @app.post("/tokenize")
    async def count_tokens(request: Request) -> Response:
        body = await request.json()
        if not tokenize:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if "messages" in body:
            parsed = ChatCompletionRequest.model_validate({"model": chat.model_id, **body})
            count = await chat.count_prompt_tokens(parsed)
        elif isinstance(body.get("prompt"), str) and body.get("model") == chat.model_id:
            special = bool(body.get("add_special_tokens", True))
            count = await chat.count_text_tokens(body["prompt"], special)  # type: ignore[attr-defined]
        elif isinstance(body.get("prompt"), str):
            parsed_input = EmbeddingRequest(model=embeddings.model_id, input=body["prompt"])
            count = await embeddings.count_tokens(parsed_input)
        else:
            return JSONResponse({"detail": "prompt or messages required"}, status_code=422)
        return JSONResponse({"count": count, "max_model_len": 2048, "tokens": list(range(count))})

    @app.post("/v1/images/generations")
    async def images(request: Request) -> Response:
        body = await request.json()
        if (failure := misbehave(body)) is not None:
            return failure
        parsed = ImageGenerationRequest.model_validate(body)
        width, height = parsed.dimensions()
        seed = hashlib.sha256(parsed.prompt.encode()).digest()
        data = [
            {"b64_json": base64.b64encode(draw_png(width, height, seed[i:])).decode()}
            for i in range(parsed.n)
        ]
        return JSONResponse({"created": int(time.time()), "data": data})

    return app


def draw_png(width: int, height: int, seed: bytes) -> bytes:
    """An RGB gradient whose base colour comes from ``seed``."""
    red, green, blue = seed[0], seed[1], seed[2]
    rows = b"".join(
        b"\x00"  # filter type "none" for each scanline
        + bytes(
            value
            for x in range(width)
            for value in (
                (red + x * 255 // width) % 256,
                (green + y * 255 // height) % 256,
                blue,
            )
        )
        for y in range(height)
    )

    def chunk(tag: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(tag + payload)
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
