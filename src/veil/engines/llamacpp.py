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
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.engines.base import TOKENS_SO_FAR, ChatEngine, EngineFailure, TokenUsage, UnpricedField
from veil.wire.openai import ChatCompletionRequest

log = logging.getLogger(__name__)

# Guards the process-wide patch in extra_buffer_types_disabled().
_PATCH_LOCK = threading.Lock()

# Chat formats for GGUFs that carry no chat template, by architecture. The default model
# (SmolLM2-135M-Instruct) carries its own template, which llama-cpp-python applies; for a GGUF
# without one llama-cpp-python would fall back to "llama-2", whose markers make Gemma end its turn
# at once.
_FORMATS_WITHOUT_TEMPLATE = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}


@contextmanager
def extra_buffer_types_disabled() -> Iterator[None]:
    """Load llama.cpp models without its "extra" CPU weight buffers (AMX and repacked layouts).

    llama.cpp built with ``-march=native`` on an AMX-capable Xeon uses AMX tiles for Q4_K matmuls,
    and that crashes the process (SIGSEGV in ``ldtilecfg``) in VMs that advertise AMX but do not
    enable its register state, such as Firecracker guests. The plain CPU path is correct
    everywhere. llama-cpp-python does not expose ``use_extra_bufts``, so the default model params
    are patched while a model loads.
    """
    import llama_cpp.llama_cpp as bindings

    with _PATCH_LOCK:
        original = bindings.llama_model_default_params

        def params_without_extra_buffers() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        bindings.llama_model_default_params = params_without_extra_buffers
        try:
            yield
        finally:
            bindings.llama_model_default_params = original


@dataclass(frozen=True)
class _Prompt:
    tokens: list[int]
    stops: list[str]


class _Captured(Exception):
    """Control flow, not an error: carries the prompt out of the chat handler."""

    def __init__(self, prompt: list[int], stop: Any) -> None:
        super().__init__()
        self.prompt = prompt
        self.stop = stop


class _PromptCapture:
    """Stands in for ``Llama`` inside a chat handler: the handler formats and tokenizes the
    conversation, then calls ``create_completion``, which hands back the prompt instead."""

    def __init__(self, llama: Any) -> None:
        self._llama = llama

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)

    def create_completion(self, *, prompt: list[int], stop: Any = None, **_: Any) -> Any:
        raise _Captured(list(prompt), stop)


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that leaves ``temperature`` or ``top_p`` out is sampled with.

    OpenAI's defaults (1.0 and 1.0: the model's whole distribution) suit large models. A small
    model sampled that way rambles: SmolLM2-135M-Instruct at temperature 1 answers "What is the
    capital of France?" with invented French words most of the time. So an engine can carry its
    model's recommended values; a request that sets a field always gets what it asked for."""

    temperature: float = 1.0
    top_p: float = 1.0


OPENAI_SAMPLING = SamplingDefaults()


@dataclass
class _Sampling:
    """OpenAI sampling fields, read leniently: a missing or wrongly typed field falls back to the
    engine's default and an out-of-range number is clamped (the protocol layer does not declare
    these fields)."""

    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    @classmethod
    def from_request(
        cls, request: ChatCompletionRequest, defaults: SamplingDefaults = OPENAI_SAMPLING
    ) -> _Sampling:
        extra = request.model_extra or {}
        stop = extra.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        seed = extra.get("seed")
        return cls(
            temperature=_number(extra.get("temperature"), defaults.temperature, 0.0, 2.0),
            top_p=_number(extra.get("top_p"), defaults.top_p, 0.0, 1.0),
            presence_penalty=_number(extra.get("presence_penalty"), 0.0, -2.0, 2.0),
            frequency_penalty=_number(extra.get("frequency_penalty"), 0.0, -2.0, 2.0),
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            stop=[s for s in stops if isinstance(s, str) and s][:4],
        )


def _number(value: Any, default: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return min(max(float(value), low), high)


class _StopScanner:
    """Finds stop strings in streamed text, holding back any tail that could start one."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached)."""
        pending = self._held + text
        hits = [i for i in (pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return pending[: min(hits)], True
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(pending)), hold, -1):
                if pending.endswith(stop[:size]):
                    hold = size
                    break
        self._held = pending[len(pending) - hold :]
        return pending[: len(pending) - hold], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


@dataclass
class _Tally:
    generated: int = 0


@dataclass
class _Outcome:
    usage: TokenUsage
    finish_reason: str | None  # None: the consumer went away before the end


class _Cancelled(Exception):
    """Control flow, not an error: the stream's consumer went away."""


# Top-level fields that change what the model reads or must produce; this engine honours none.
_UNHONOURED_FIELDS = ("tools", "tool_choice", "functions", "function_call", "prediction")


def refuse_unpriced(request: ChatCompletionRequest) -> None:
    """Raise ``UnpricedField`` for what this engine would drop from the prompt unseen."""
    extra = request.model_extra or {}
    for name in _UNHONOURED_FIELDS:
        if extra.get(name) not in (None, [], "none"):
            raise UnpricedField(name, "not supported by this model's engine")
    response_format = extra.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise UnpricedField("response_format", 'only {"type": "text"} is supported here')
    for i, message in enumerate(request.messages):
        if (message.model_extra or {}).get("tool_calls"):
            raise UnpricedField(f"messages[{i}].tool_calls", "not supported by this engine")
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if part.get("type") != "text":
                    raise UnpricedField(
                        f"messages[{i}].content[{j}]", "only text parts are supported here"
                    )


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
        its architecture's family where known (see ``_FORMATS_WITHOUT_TEMPLATE``).

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
        from llama_cpp import Llama

        if not self.gguf_path.is_file():
            raise EngineFailure(f"model file not found: {self.gguf_path}")
        with extra_buffer_types_disabled():
            llama = Llama(
                model_path=str(self.gguf_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                chat_format=self.chat_format,
                verbose=False,
            )
        if self.chat_format is None and "tokenizer.chat_template" not in llama.metadata:
            family = llama.metadata.get("general.architecture", "")
            llama.chat_format = _FORMATS_WITHOUT_TEMPLATE.get(family, llama.chat_format)
        return llama

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

    def _format(self, request: ChatCompletionRequest, stop: list[str]) -> _Prompt:
        """The prompt tokens and stop strings ``create_chat_completion`` would use.

        Hold the lock."""
        from llama_cpp import llama_chat_format

        llama = self._require_model()
        # OpenAI's "developer" role is its newer name for "system"; templates know only "system".
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in request.messages
        ]
        handler: Any = (
            llama.chat_handler
            or llama._chat_handlers.get(llama.chat_format)
            or llama_chat_format.get_chat_completion_handler(llama.chat_format)
        )
        try:
            handler(llama=_PromptCapture(llama), messages=messages, stop=list(stop))
        except _Captured as captured:
            stops = captured.stop or []
            return _Prompt(captured.prompt, [stops] if isinstance(stops, str) else list(stops))
        except Exception as exc:
            # Template errors can quote the conversation: keep only the exception type.
            log.warning("chat template failed: %s", type(exc).__name__)
            raise EngineFailure("the model's chat template rejected the conversation") from None
        raise EngineFailure("the chat handler did not build a prompt")

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
        sampling = _Sampling.from_request(request, self.sampling_defaults)
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
        prompt: _Prompt,
        budget: int,
        sampling: _Sampling,
        on_text: Callable[[str], None],
        cancelled: threading.Event,
        tally: _Tally,
    ) -> str | None:
        """Runs one generation, counting tokens in ``tally``; returns the finish reason.

        Hold the lock. Raises ``_Cancelled`` (or returns None) when the consumer went away."""
        import llama_cpp

        llama = self._llama
        llama.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(32))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        scanner = _StopScanner(prompt.stops)
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
