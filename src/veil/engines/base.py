"""The one engine interface the node talks to.

An engine serves one model id for one kind of work. The node validates and budgets a request before
it reaches the engine; the engine runs it and reports usage counted with the model's own tokenizer.
Engines raise ``EngineFailure`` for anything that goes wrong while running (never a bare exception
with request text in it): the node turns it into ``ENGINE_ERROR`` without echoing details.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, ClassVar

from veil.wire.openai import ChatCompletionRequest, EmbeddingRequest, ImageGenerationRequest
from veil.wire.routes import Endpoint

#: A stream chunk may carry, under this key, the completion tokens produced so far (cumulative,
#: by the model's tokenizer or the upstream's usage). The node removes it before relaying the
#: chunk and signs it into its running receipts, so a disconnect pays the tokens produced up to
#: the last one.
TOKENS_SO_FAR = "x_veil_completion_tokens"


class UnpricedField(ValueError):
    """The request carries a field (named by ``field``) the engine can neither price nor honour.

    The node answers 400 INVALID_BODY naming the field; the message quotes no request content.
    """

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


class EngineFailure(Exception):
    """The backend failed. ``usage`` is what was already produced (streams), if known.

    The message must be safe to log: no prompt, no generated text.
    """

    def __init__(self, message: str, usage: TokenUsage | None = None) -> None:
        super().__init__(message)
        self.usage = usage


class Engine(ABC):
    kind: ClassVar[Endpoint]

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights or connect; called once before the node takes traffic."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called once at shutdown."""

    async def healthy(self) -> bool:
        return True


class ChatEngine(Engine):
    kind = "chat"

    @abstractmethod
    async def count_prompt_tokens(self, request: ChatCompletionRequest) -> int:
        """Tokens the whole request occupies as input: the messages after the chat template,
        and whatever else the engine sends to the model (tools, schemas, images), by the model's
        tokenizer.

        May over-estimate (never under-estimate) where the backend cannot tokenize exactly.
        Raises ``UnpricedField`` for a field the engine can neither price nor honour.
        """

    @abstractmethod
    async def complete(
        self, request: ChatCompletionRequest, max_tokens: int, *, deadline: float | None = None
    ) -> dict[str, Any]:
        """A full OpenAI ``chat.completion`` object whose ``usage`` is exact.

        ``deadline`` (``time.monotonic()``): stop generating there and answer what was produced,
        with ``finish_reason`` "length" (or raise ``EngineFailure`` if nothing can be answered).
        """

    @abstractmethod
    def stream(
        self, request: ChatCompletionRequest, max_tokens: int
    ) -> AsyncGenerator[dict[str, Any], None]:
        """OpenAI ``chat.completion.chunk`` objects as they are produced.

        The last item has ``choices: []`` and a ``usage`` object. On failure part way, raises
        ``EngineFailure`` carrying the usage so far.
        """


class EmbeddingEngine(Engine):
    kind = "embeddings"

    @abstractmethod
    async def count_tokens(self, request: EmbeddingRequest) -> int:
        """Input tokens the request will consume (all inputs together)."""

    @abstractmethod
    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        """An OpenAI embeddings ``list`` object with ``usage`` {prompt_tokens, total_tokens}."""


class ImageEngine(Engine):
    kind = "images"

    @abstractmethod
    async def generate(self, request: ImageGenerationRequest) -> dict[str, Any]:
        """An OpenAI images response: ``{"created": int, "data": [{"b64_json"|"url": ...}]}``."""
