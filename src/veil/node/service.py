"""What the pipeline does with a validated request: find the engine, hold it to its budget, run it.

Plaintext: part of the node's pipeline (``veil.node.pipeline``), for the confidential and the
plain routes alike, so both meter the same way. The budget rule: a request never spends more than
the units it carries (``num_compute_units``; the node's ``default_units`` when it carries none).
Chat: prompt + completion <= units, so ``max_tokens`` (``config.DEFAULT_CHAT_COMPLETION_TOKENS``
when the request names none, as at the client and the gateway) is capped to what is left after the
prompt, and a prompt that alone exceeds the units is refused with 402 before any generation. Embeddings: input tokens <= units. Images: n x width x height <= units.

The engine prices the whole request (messages, tools, schemas, images: ``count_prompt_tokens``), and
a request whose serialised size alone exceeds ``MAX_BYTES_PER_TOKEN`` bytes per unit is refused
(402) before any tokenizer runs, so an oversized prompt never ties up the model. With ``n`` > 1
the completion budget is shared: each choice may write ``(units - prompt) // n`` tokens.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from veil.config import DEFAULT_CHAT_COMPLETION_TOKENS
from veil.engines.base import (
    ChatEngine,
    EmbeddingEngine,
    Engine,
    EngineFailure,
    ImageEngine,
    UnpricedField,
)
from veil.wire.errors import BalanceError, EngineError, InvalidBody, NotFound
from veil.wire.openai import ChatCompletionRequest, EmbeddingRequest, ImageGenerationRequest
from veil.wire.routes import Endpoint

E = TypeVar("E", bound=Engine)

# No tokenizer of the usual kind (BPE, SentencePiece, WordPiece) makes a token of more than this
# many bytes of text: a request this many times larger than its units cannot fit them.
MAX_BYTES_PER_TOKEN = 32


@dataclass
class EngineRegistry:
    chat: dict[str, ChatEngine] = field(default_factory=dict)
    embeddings: dict[str, EmbeddingEngine] = field(default_factory=dict)
    images: dict[str, ImageEngine] = field(default_factory=dict)

    def add(self, engine: Engine) -> None:
        table: dict[str, Any] = getattr(self, engine.kind)
        if engine.model_id in self.model_ids():
            raise ValueError(f"model id {engine.model_id!r} is served twice")
        table[engine.model_id] = engine

    def all(self) -> list[Engine]:
        return [*self.chat.values(), *self.embeddings.values(), *self.images.values()]

    def model_ids(self) -> list[str]:
        return [engine.model_id for engine in self.all()]

    def get(self, endpoint: Endpoint, model: str) -> Engine:
        """The engine serving ``model`` for ``endpoint``, or 404 NOT_FOUND."""
        table: dict[str, Engine] = getattr(self, endpoint)
        return self._find(table, model, endpoint)

    def get_chat(self, model: str) -> ChatEngine:
        return self._find(self.chat, model, "chat")

    def get_embeddings(self, model: str) -> EmbeddingEngine:
        return self._find(self.embeddings, model, "embeddings")

    def get_images(self, model: str) -> ImageEngine:
        return self._find(self.images, model, "images")

    def _find(self, table: dict[str, E], model: str, kind: str) -> E:
        engine = table.get(model)
        if engine is not None:
            return engine
        if kind == "images" and not self.images:
            raise NotFound(
                "no images model is configured on this node; start it with "
                "--upstream images:MODEL=URL pointing at an OpenAI-compatible images server"
            )
        served = ", ".join(sorted(table)) or "none"
        raise NotFound(f"model {model!r} is not served here for {kind} (served: {served})")


def engine_failure_message(exc: EngineFailure) -> str:
    return f"the model backend failed: {exc}"


@dataclass(frozen=True)
class ChatPlan:
    engine: ChatEngine
    prompt_tokens: int
    max_tokens: int
    units: int  # the request's budget: prompt + completion never charge more


def _too_large(size: int, budget: int, what: str) -> BalanceError | None:
    if size <= budget * MAX_BYTES_PER_TOKEN:
        return None
    return BalanceError(
        f"the {what} is {size} bytes, more than {budget} compute units can hold "
        f"(at most {MAX_BYTES_PER_TOKEN} bytes a token)"
    )


class NodeService:
    def __init__(self, engines: EngineRegistry, default_units: int) -> None:
        self.engines = engines
        self.default_units = default_units

    def _units(self, units: int | None) -> int:
        return self.default_units if units is None else units

    async def plan_chat(self, request: ChatCompletionRequest, units: int | None) -> ChatPlan:
        engine = self.engines.get_chat(request.model)
        budget = self._units(units)
        if (refusal := _too_large(len(request.model_dump_json()), budget, "request")) is not None:
            raise refusal
        try:
            prompt_tokens = await engine.count_prompt_tokens(request)
        except UnpricedField as exc:
            raise InvalidBody(str(exc)) from None
        except EngineFailure as exc:
            raise EngineError(engine_failure_message(exc)) from None
        context = getattr(engine, "n_ctx", None)  # known for in-process engines
        if isinstance(context, int) and prompt_tokens >= context:
            # The caller's input, not a backend failure: 400, as OpenAI answers it.
            raise InvalidBody(
                f"the prompt takes {prompt_tokens} tokens; the model's context window is {context}"
            )
        if prompt_tokens >= budget:
            raise BalanceError(
                f"the prompt takes {prompt_tokens} tokens but the request carries {budget} "
                "compute units (prompt + completion must fit)"
            )
        left = (budget - prompt_tokens) // (request.n or 1)
        if left < 1:
            raise BalanceError(
                f"{request.n} choices leave no completion tokens in {budget} compute units"
            )
        wanted = request.requested_max_tokens()
        max_tokens = min(DEFAULT_CHAT_COMPLETION_TOKENS if wanted is None else wanted, left)
        return ChatPlan(engine, prompt_tokens, max_tokens, budget)

    async def chat(
        self, plan: ChatPlan, request: ChatCompletionRequest, deadline: float | None = None
    ) -> dict[str, Any]:
        """The whole completion. ``deadline`` (``time.monotonic()``): the engine stops there and
        answers what it produced (``finish_reason`` "length"), or fails if it produced nothing."""
        try:
            if deadline is None:
                return await plan.engine.complete(request, plan.max_tokens)
            return await plan.engine.complete(request, plan.max_tokens, deadline=deadline)
        except EngineFailure as exc:
            raise EngineError(engine_failure_message(exc)) from None

    def chat_stream(
        self, plan: ChatPlan, request: ChatCompletionRequest
    ) -> AsyncGenerator[dict[str, Any], None]:
        return plan.engine.stream(request, plan.max_tokens)

    async def embed(self, request: EmbeddingRequest, units: int | None) -> dict[str, Any]:
        engine = self.engines.get_embeddings(request.model)
        budget = self._units(units)
        size = sum(len(text.encode()) for text in request.texts())
        if (refusal := _too_large(size, budget, "input")) is not None:
            raise refusal
        try:
            tokens = await engine.count_tokens(request)
            if tokens > budget:
                raise BalanceError(
                    f"the input takes {tokens} tokens but the request carries {budget} compute units"
                )
            return await engine.embed(request)
        except EngineFailure as exc:
            raise EngineError(engine_failure_message(exc)) from None

    async def generate_images(
        self, request: ImageGenerationRequest, units: int | None
    ) -> dict[str, Any]:
        engine = self.engines.get_images(request.model)
        needed = request.compute_units()
        if units is not None and needed > units:
            raise BalanceError(
                f"{request.n} image(s) of {'x'.join(map(str, request.dimensions()))} need "
                f"{needed} compute units but the request carries {units}"
            )
        try:
            return await engine.generate(request)
        except EngineFailure as exc:
            raise EngineError(engine_failure_message(exc)) from None
