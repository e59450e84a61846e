"""Chat on llama.cpp, in process, through llama-cpp-python.

The prompt is built exactly as ``Llama.create_chat_completion`` builds it (same chat handler, same
tokenization), so ``count_prompt_tokens`` and the reported usage agree with llama-cpp-python's own.
Generation runs its own loop over the low-level ``Llama.generate`` token iterator instead of the
high-level streaming API: that is what makes the completion token count exact in streams (the
high-level stream reports no usage and may merge several tokens into one chunk) and lets a
disconnected client stop generation at the next token.

llama.cpp contexts are not thread-safe, so every generation holds one lock; the lock is a
``threading.Lock`` taken inside worker threads, which keeps the engine usable from any event loop.
Counting a prompt's tokens needs only the vocabulary (read-only once loaded), not the context, so it
takes its own lock: pricing a request never waits for another request's generation.

The engine prompts with message text only. Fields it would silently drop, and so could neither price
nor honour (``tools``, ``response_format`` schemas, images and other non-text parts, assistant
``tool_calls``), are refused with ``UnpricedField`` (400 naming the field).

``llamacpp_model`` loads the GGUF and builds prompts; ``llamacpp_request`` reads sampling fields and
refuses unpriced ones; this module runs generations.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.engines.base import TOKENS_SO_FAR, ChatEngine, EngineFailure, TokenUsage
from veil.engines.llamacpp_model import (
    Prompt,
    extra_buffer_types_disabled,
    format_prompt,
    load_gguf,
)
from veil.engines.llamacpp_request import (
    OPENAI_SAMPLING,
    Sampling,
    SamplingDefaults,
    StopScanner,
    refuse_unpriced,
)
from veil.wire.openai import ChatCompletionRequest

__all__ = [
    "OPENAI_SAMPLING",
    "LlamaCppChatEngine",
    "SamplingDefaults",
    "extra_buffer_types_disabled",
    "refuse_unpriced",
]

log = logging.getLogger(__name__)
_Sampling = Sampling  # its name before the split (tests read it from here)


@dataclass
class _Tally:
    generated: int = 0


@dataclass
class _Outcome:
    usage: TokenUsage
    finish_reason: str | None  # None: the consumer went away before the end


class _Cancelled(Exception):
    """Control flow, not an error: the stream's consumer went away."""


class LlamaCppChatEngine(ChatEngine):
    def __init__(
        self,
        model_id: str,
        gguf_path: Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        chat_format: str | None = None,
        sampling_defaults: SamplingDefaults = OPENAI_SAMPLING,
    ) -> None:
        """``chat_format`` names a llama-cpp-python chat format ("gemma", "chatml", ...). None uses
        the GGUF's own template, as llama-cpp-python does, or for a GGUF without one the format of
        its architecture's family where known (see ``llamacpp_model._FORMATS_WITHOUT_TEMPLATE``).

        ``n_threads`` None keeps llama-cpp-python's default, half the cores. Not all of them: ggml's
        threads spin at barriers, so one that shares its core with the event loop or another
        process slows every token down (20x measured on 2 cores with one other busy process).

        ``sampling_defaults``: see ``SamplingDefaults``; the embedded model's are
        ``veil.engines.models.CHAT_MODEL_SAMPLING``."""
        super().__init__(model_id)
        self.gguf_path = Path(gguf_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.chat_format = chat_format
        self.sampling_defaults = sampling_defaults
        self._lock = threading.Lock()  # generation (the context)
        self._count_lock = threading.Lock()  # tokenization for pricing (the vocabulary only)
        self._llama: Any = None

    async def start(self) -> None:
        if self._llama is None:
            self._llama = await asyncio.to_thread(self._load)

    def _load(self) -> Any:
        return load_gguf(self.gguf_path, self.n_ctx, self.n_threads, self.chat_format)

    async def close(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:

            def release() -> None:
                with self._lock:
                    llama.close()

            await asyncio.to_thread(release)

    async def healthy(self) -> bool:
        return self._llama is not None

    async def count_prompt_tokens(self, request: ChatCompletionRequest) -> int:
        refuse_unpriced(request)

        def count() -> int:
            with self._count_lock:  # not the generation lock: see the module docstring
                return len(self._format(request, []).tokens)

        return await asyncio.to_thread(count)

    async def count_text_tokens(self, text: str, special: bool = False) -> int:
        """Tokens of plain ``text`` by the model's tokenizer (``special``: with BOS)."""

        def count() -> int:
            with self._count_lock:
                llama = self._require_model()
                return len(llama.tokenize(text.encode(), add_bos=special, special=False))

        return await asyncio.to_thread(count)

    async def complete(
        self, request: ChatCompletionRequest, max_tokens: int, *, deadline: float | None = None
    ) -> dict[str, Any]:
        refuse_unpriced(request)
        pieces: list[str] = []
        cancelled = threading.Event()
        timer = None
        if deadline is not None:
            # At the deadline the generation stops at its next token and answers what it wrote.
            delay = max(0.0, deadline - time.monotonic())
            timer = asyncio.get_running_loop().call_later(delay, cancelled.set)
        try:
            outcome = await asyncio.to_thread(
                self._generate, request, max_tokens, pieces.append, cancelled
            )
        except asyncio.CancelledError:
            cancelled.set()  # the caller went away: free the model at the next token
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces)},
                    "logprobs": None,
                    "finish_reason": outcome.finish_reason or "length",  # None: deadline
                }
            ],
            "usage": outcome.usage.as_dict(),
        }

    async def stream(
        self, request: ChatCompletionRequest, max_tokens: int
    ) -> AsyncGenerator[dict[str, Any], None]:
        refuse_unpriced(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()
        tally = _Tally()

        def post(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the consumer's loop is gone
                cancelled.set()

        def on_text(text: str) -> None:
            if cancelled.is_set():
                raise _Cancelled
            post("text", (text, tally.generated))  # tokens generated so far, this one included

        def work() -> None:
            try:
                post("done", self._generate(request, max_tokens, on_text, cancelled, tally))
            except EngineFailure as failure:
                post("failed", failure)
            except Exception as exc:  # a bug here must not leave the consumer waiting forever
                log.warning("chat stream worker failed: %s", type(exc).__name__)
                post("failed", EngineFailure("the chat engine failed"))

        chunk_id, created = _completion_id(), int(time.time())

        def chunk(choices: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
            return {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model_id,
                "choices": choices,
                **more,
            }

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        worker = loop.run_in_executor(None, work)
        try:
            yield chunk([choice({"role": "assistant", "content": ""})])
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    text, generated = value
                    yield chunk([choice({"content": text})], **{TOKENS_SO_FAR: generated})
                elif kind == "failed":
                    raise value
                else:
                    yield chunk([choice({}, value.finish_reason)])
                    yield chunk([], usage=value.usage.as_dict())
                    return
        finally:
            # Reached on normal end, failure, or the consumer abandoning the stream: in the last
            # case the worker sees the flag at the next token and releases the model.
            cancelled.set()
            if worker.done() and not worker.cancelled():
                worker.exception()  # retrieved, so asyncio does not warn about it

    # --- worker-thread side: everything below runs holding no event loop -------------------

    def _format(self, request: ChatCompletionRequest, stop: list[str]) -> Prompt:
        """The prompt tokens and stop strings ``create_chat_completion`` would use.

        Hold the lock."""
        return format_prompt(self._require_model(), request, stop)

    def _require_model(self) -> Any:
        if self._llama is None:
            raise EngineFailure("the chat model is not loaded")
        return self._llama

    def _generate(
        self,
        request: ChatCompletionRequest,
        max_tokens: int,
        on_text: Callable[[str], None],
        cancelled: threading.Event,
        tally: _Tally | None = None,
    ) -> _Outcome:
        sampling = Sampling.from_request(request, self.sampling_defaults)
        with self._lock:
            prompt = self._format(request, sampling.stop)
            budget = min(max_tokens, self.n_ctx - len(prompt.tokens))
            if budget <= 0:
                raise EngineFailure(
                    "the prompt does not fit the model's context window",
                    TokenUsage(prompt_tokens=len(prompt.tokens)),
                )
            tally = tally if tally is not None else _Tally()
            finish: str | None
            try:
                finish = self._sample(prompt, budget, sampling, on_text, cancelled, tally)
            except _Cancelled:
                finish = None
            except Exception as exc:
                # llama.cpp errors carry no request text, but keep only the type to be sure.
                log.warning("llama.cpp failed while generating: %s", type(exc).__name__)
                usage = TokenUsage(len(prompt.tokens), tally.generated)
                raise EngineFailure("the model failed while generating", usage) from None
            return _Outcome(TokenUsage(len(prompt.tokens), tally.generated), finish)

    def _sample(
        self,
        prompt: Prompt,
        budget: int,
        sampling: Sampling,
        on_text: Callable[[str], None],
        cancelled: threading.Event,
        tally: _Tally,
    ) -> str | None:
        """Runs one generation, counting tokens in ``tally``; returns the finish reason.

        Hold the lock. Raises ``_Cancelled`` (or returns None) when the consumer went away."""
        import llama_cpp

        llama = self._llama
        llama.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(32))
        if sampling.seed is not None:
            # llama-cpp-python reuses the cached prompt and re-decodes only its last token, whose
            # logits then differ in the last bits from a whole-prompt decode: at temperature > 0
            # the same seed would sample differently. A seeded request decodes its prompt afresh.
            llama.reset()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        scanner = StopScanner(prompt.stops)
        previous = prompt.tokens[-1]
        finish = "length"
        tokens = llama.generate(
            prompt.tokens,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,  # 0 and the two below switch llama.cpp's extra samplers off, as OpenAI has
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
        )
        try:
            for token in tokens:
                if cancelled.is_set():
                    return None
                if llama_cpp.llama_vocab_is_eog(llama._model.vocab, token):
                    finish = "stop"
                    break
                tally.generated += 1
                # The piece in context: detokenizing a lone token can drop its leading space.
                before = llama.detokenize([previous])
                piece = llama.detokenize([previous, token])[len(before) :]
                previous = token
                text, stopped = scanner.feed(decoder.decode(piece))
                if text:
                    on_text(text)
                if stopped:
                    return "stop"
                if tally.generated >= budget:
                    break
        finally:
            tokens.close()
        text, stopped = scanner.feed(decoder.decode(b"", final=True))
        tail = text if stopped else text + scanner.flush()
        if tail:
            on_text(tail)
        return "stop" if stopped else finish


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
