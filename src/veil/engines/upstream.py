"""Engines that forward to an OpenAI-compatible server: vLLM, SGLang, TEI, llama.cpp's
``llama-server``, llama-cpp-python's ``python -m llama_cpp.server``, or an images service.

The node has already decrypted and validated the request; these engines pass it on (with the
upstream's own model name and the node's ``max_tokens`` cap), relay the answer with ``model``
rewritten to the id Veil serves, and make sure usage is always reported. Where the upstream does
not report usage, the fallbacks below are documented where they are used.

Failures (unreachable server, HTTP errors, malformed bodies, a stream cut short) become
``EngineFailure`` carrying only the HTTP status or the failure kind: an upstream's error body can
quote the prompt, so it is never copied into a message or a log.

``base_url`` is the server's root, with or without a trailing ``/v1``.

Streams count the completion tokens relayed so far (``TOKENS_SO_FAR`` on each chunk): the
upstream's own running usage where a chunk carries it (vLLM's continuous usage stats), else the
relayed text through the upstream's tokenizer in batches of ``veil.config.RUNNING_RECEIPT_CHUNKS``
content chunks (the node's receipt cadence) plus one a content chunk not yet tokenized: never
fewer than the chunks, never more than the ``max_tokens`` cap. One ``/tokenize`` round trip per
chunk capped a node at about a thousand chunks a second; a batch costs one per 32. Where the
server has no tokenizer, or asking it would interrupt the stream (llama-cpp-python's server drops
a running generation when another request arrives; it streams token by token anyway), it is one a
content chunk. The node signs that count into its running receipts, so a disconnect pays the
tokens produced up to its last receipt, not the chunks. The final usage is the upstream's own
(``stream_options.include_usage``, which vLLM honours) wherever it sends one; otherwise the
count above with the last batch tokenized once the stream has ended.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

from veil import config
from veil.engines.base import (
    TOKENS_SO_FAR,
    ChatEngine,
    EmbeddingEngine,
    EngineFailure,
    ImageEngine,
    TokenUsage,
)
from veil.engines.upstream_tokens import UpstreamTokenizer
from veil.wire.openai import ChatCompletionRequest, EmbeddingRequest, ImageGenerationRequest

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0  # seconds between bytes: a CPU server may think long before a token
UPSTREAM_HEALTHY_SECONDS = 1.0  # how long a healthy answer of the upstream is taken as still true


class _Upstream:
    """HTTP plumbing shared by the three upstream engines."""

    model_id: str

    def __init__(
        self,
        base_url: str,
        upstream_model: str | None,
        api_key: str | None,
        timeout: float,
    ) -> None:
        root = base_url.rstrip("/")
        self.base_url = root[: -len("/v1")] if root.endswith("/v1") else root
        self.upstream_model = upstream_model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._client: httpx.AsyncClient | None = None
        self._healthy_at = -math.inf  # time.monotonic() of the last healthy answer
        self.tokenizer = UpstreamTokenizer(self)

    @property
    def client(self) -> httpx.AsyncClient:
        # Created on first use so it belongs to the event loop that uses it.
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=self._headers,
                timeout=self._timeout,
                # as many idle connections kept as may be busy: no reconnect per stream
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
            )
        return self._client

    @property
    def model_name(self) -> str:
        """The model name the upstream knows."""
        return self.upstream_model or self.model_id

    def _body(self, request: Any) -> dict[str, Any]:
        body: dict[str, Any] = request.model_dump(exclude_none=True)
        body["model"] = self.model_name
        return body

    async def start(self) -> None:
        _ = self.client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def healthy(self) -> bool:
        """Whether the upstream answers ``/v1/models`` (or ``/health``). A yes is kept for
        ``UPSTREAM_HEALTHY_SECONDS``: the gateway's lock probes the node's ``/health``, which
        asks this, and should not cost an upstream round trip a lock. A no is never kept."""
        if time.monotonic() - self._healthy_at < UPSTREAM_HEALTHY_SECONDS:
            return True
        for path in ("/v1/models", "/health"):
            try:
                response = await self.client.get(path)
            except httpx.HTTPError:
                self._healthy_at = -math.inf
                return False
            if response.status_code == 200:
                self._healthy_at = time.monotonic()
                return True
        self._healthy_at = -math.inf
        return False

    async def post_json(
        self, path: str, body: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """POST and decode a JSON object; any failure is an ``EngineFailure`` naming its kind.

        ``timeout``: the whole call's limit in seconds (the request's deadline), if any."""
        try:
            if timeout is None:
                response = await self.client.post(path, json=body)
            else:
                response = await self.client.post(path, json=body, timeout=timeout)
        except httpx.TimeoutException:
            raise EngineFailure("the upstream server timed out") from None
        except httpx.HTTPError as exc:
            log.warning("upstream %s unreachable: %s", self.base_url, type(exc).__name__)
            raise EngineFailure("the upstream server is unreachable") from None
        _check_status(response)
        try:
            answer = response.json()
        except ValueError:
            raise _malformed() from None
        if not isinstance(answer, dict):
            raise _malformed()
        return answer


def _check_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise EngineFailure(f"the upstream server answered HTTP {response.status_code}")


def _malformed() -> EngineFailure:
    return EngineFailure("the upstream server sent a malformed response")


def _usage(value: Any) -> TokenUsage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int | None):
        return None
    return TokenUsage(prompt_tokens=prompt, completion_tokens=completion or 0)


class UpstreamChatEngine(_Upstream, ChatEngine):
    def __init__(
        self,
        model_id: str,
        base_url: str,
        upstream_model: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        ChatEngine.__init__(self, model_id)
        _Upstream.__init__(self, base_url, upstream_model, api_key, timeout)

    def _chat_body(self, request: ChatCompletionRequest, max_tokens: int) -> dict[str, Any]:
        body = self._body(request)
        # Some servers (llama_cpp.server) ignore max_completion_tokens: send the cap one way.
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = max_tokens
        return body

    async def count_prompt_tokens(self, request: ChatCompletionRequest) -> int:
        return await self.tokenizer.count_chat(request)

    async def complete(
        self, request: ChatCompletionRequest, max_tokens: int, *, deadline: float | None = None
    ) -> dict[str, Any]:
        body = self._chat_body(request, max_tokens)
        body["stream"] = False
        body.pop("stream_options", None)
        timeout = None if deadline is None else max(0.001, deadline - time.monotonic())
        answer = await self.post_json("/v1/chat/completions", body, timeout=timeout)
        if not isinstance(answer.get("choices"), list):
            raise _malformed()
        usage = _usage(answer.get("usage"))
        if usage is None:
            # No usage from the upstream: prompt by count_prompt_tokens, completion by
            # tokenizing the returned text (both upper bounds when the server cannot tokenize).
            texts = [
                str((c.get("message") or {}).get("content") or "")
                for c in answer["choices"]
                if isinstance(c, dict)
            ]
            usage = TokenUsage(
                prompt_tokens=await self.count_prompt_tokens(request),
                completion_tokens=await self.tokenizer.count_texts(texts, special=False),
            )
        answer["model"] = self.model_id
        answer["usage"] = usage.as_dict()
        return answer

    async def stream(
        self, request: ChatCompletionRequest, max_tokens: int
    ) -> AsyncGenerator[dict[str, Any], None]:
        body = self._chat_body(request, max_tokens)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        # Learn how the server tokenizes text now (once per engine), not while it streams: a
        # probe mid-stream would interrupt llama-cpp-python's server.
        await self.tokenizer.learn_text_form()
        reported: TokenUsage | None = None
        accepted = False
        content_chunks = 0
        counted = 0  # completion tokens of the tokenized batches (see the docstring)
        counted_chunks = 0  # the content chunks those batches held
        batch: list[str] = []  # text of the content chunks since, not yet tokenized

        async def count_batch() -> None:
            nonlocal counted, counted_chunks
            chunks = content_chunks - counted_chunks
            counted += max(await self._count_completion("".join(batch)), chunks)
            counted_chunks = content_chunks
            batch.clear()

        last: dict[str, Any] = {}

        async def usage_so_far(finished: bool = False) -> TokenUsage | None:
            if not accepted:
                return None  # refused or unreachable: nothing was produced
            if reported is not None:
                return reported
            # The upstream sent no usage (llama_cpp.server never does): prompt tokens come from
            # count_prompt_tokens, completion tokens are the relayed text through the upstream's
            # tokenizer (the last batch too once the stream has ended well), or one a content
            # chunk where it has none.
            prompt = await self.count_prompt_tokens(request)
            if finished and batch:
                await count_batch()
            so_far = counted + content_chunks - counted_chunks
            completion = max(min(so_far, max_tokens), content_chunks)
            return TokenUsage(prompt_tokens=prompt, completion_tokens=completion)

        try:
            async with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
                _check_status(response)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    raise _malformed()
                accepted = True
                finished = False
                async for data in _sse_data(response):
                    if data == "[DONE]":
                        finished = True
                        break
                    chunk = _json_object(data)
                    if "error" in chunk:
                        raise EngineFailure("the upstream server failed mid-stream")
                    reported = _usage(chunk.pop("usage", None)) or reported
                    choices = chunk.get("choices")
                    if not isinstance(choices, list):
                        raise _malformed()
                    if not choices:
                        continue  # the upstream's usage chunk: Veil sends its own below
                    with_content = sum(1 for c in choices if _has_content(c))
                    content_chunks += with_content
                    if with_content and reported is None:
                        batch.append("".join(_chunk_text(c) for c in choices))
                        if content_chunks - counted_chunks >= config.RUNNING_RECEIPT_CHUNKS:
                            await count_batch()
                    # An estimate never passes the cap (only the upstream's own count may: the
                    # node stops a stream whose reported usage passes its budget).
                    so_far = min(counted + content_chunks - counted_chunks, max_tokens)
                    if reported is not None and reported.completion_tokens:
                        so_far = reported.completion_tokens  # the upstream's own running count
                    chunk["model"] = self.model_id
                    chunk[TOKENS_SO_FAR] = so_far
                    last = chunk
                    yield chunk
                if not finished:
                    raise EngineFailure("the upstream stream ended before its end marker")
        except EngineFailure as failure:
            failure.usage = failure.usage or await usage_so_far()
            raise
        except httpx.TimeoutException:
            raise EngineFailure("the upstream server timed out", await usage_so_far()) from None
        except httpx.HTTPError as exc:
            log.warning("upstream stream from %s broke: %s", self.base_url, type(exc).__name__)
            raise EngineFailure("the upstream stream broke", await usage_so_far()) from None
        usage = await usage_so_far(finished=True) or TokenUsage()
        last.pop(TOKENS_SO_FAR, None)
        yield {
            "id": last.get("id", "chatcmpl-upstream"),
            "object": "chat.completion.chunk",
            "created": last.get("created", int(time.time())),
            "model": self.model_id,
            "choices": [],
            "usage": usage.as_dict(),
        }

    async def _count_completion(self, text: str) -> int:
        """Completion tokens of a whole streamed text by the upstream's tokenizer, 0 where it has
        none or streams token by token anyway (llama-cpp-python's: the caller takes the content
        chunks then)."""
        if not text or self.tokenizer.single_request or not self.tokenizer.tokenizes_text:
            return 0  # never probe the server: stream() learned its form before it streamed
        tokens = await self.tokenizer.count_generated(text)
        return 0 if tokens is None else tokens


def _chunk_text(choice: Any) -> str:
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        return ""
    parts = [delta.get("content"), delta.get("reasoning_content")]
    text = "".join(p for p in parts if isinstance(p, str))
    if delta.get("tool_calls"):
        text += json.dumps(delta["tool_calls"], separators=(",", ":"), ensure_ascii=False)
    return text


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data:`` payloads of a server-sent event stream (one line each, as OpenAI sends)."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield line[len("data:") :].strip()


def _json_object(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise _malformed() from None
    if not isinstance(value, dict):
        raise _malformed()
    return value


def _has_content(choice: Any) -> bool:
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        return False
    return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"))


class UpstreamEmbeddingEngine(_Upstream, EmbeddingEngine):
    def __init__(
        self,
        model_id: str,
        base_url: str,
        upstream_model: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        EmbeddingEngine.__init__(self, model_id)
        _Upstream.__init__(self, base_url, upstream_model, api_key, timeout)

    async def count_tokens(self, request: EmbeddingRequest) -> int:
        return await self.tokenizer.count_texts(request.texts(), special=True)

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        answer = await self.post_json("/v1/embeddings", self._body(request))
        data = answer.get("data")
        if not isinstance(data, list) or len(data) != len(request.texts()):
            raise _malformed()
        usage = _usage(answer.get("usage"))
        # No usage from the upstream: count_tokens, exact or an upper bound.
        prompt = usage.prompt_tokens if usage else await self.count_tokens(request)
        answer["model"] = self.model_id
        answer["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return answer


class UpstreamImageEngine(_Upstream, ImageEngine):
    def __init__(
        self,
        model_id: str,
        base_url: str,
        upstream_model: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        ImageEngine.__init__(self, model_id)
        _Upstream.__init__(self, base_url, upstream_model, api_key, timeout)

    async def generate(self, request: ImageGenerationRequest) -> dict[str, Any]:
        answer = await self.post_json("/v1/images/generations", self._body(request))
        data = answer.get("data")
        if not isinstance(data, list) or not all(
            isinstance(item, dict) and ("b64_json" in item or "url" in item) for item in data
        ):
            raise _malformed()
        answer.setdefault("created", int(time.time()))
        return answer
