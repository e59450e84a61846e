"""OpenAI-shaped request bodies, as the node validates them after decryption.

Only the fields Veil acts on are declared; everything else an OpenAI client may send is kept
(``extra="allow"``) and passed to the engine untouched, so upstream servers see what the client meant.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from veil.config import DEFAULT_CHAT_COMPLETION_TOKENS
from veil.wire.envelopes import MAX_REQUEST_UNITS, ModelName

# Token budgets are reserved in the ledger (plus the prompt's bytes): capped so the sum still fits
# a signed 64-bit column, or a huge value would be a database overflow rather than a 400.
PositiveCount = Annotated[StrictInt, Field(ge=1, le=MAX_REQUEST_UNITS)]
MAX_IMAGE_SIDE = 8192


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: ModelName


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text: a string, or the text parts of a content list."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            str(part.get("text", "")) for part in self.content if part.get("type") == "text"
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool | None = None


class ChatCompletionRequest(_Body):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: PositiveCount | None = None
    max_completion_tokens: PositiveCount | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[StrictInt, Field(ge=1, le=1)] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def chat_reservation(max_tokens: int | None, body_size: int) -> int:
    """Units to hold for a chat request whose body is ``body_size`` bytes: its ``max_tokens``
    (the one default completion budget when it names none) plus the body's size, an upper bound of
    its prompt's tokens for byte-level tokenizers. The client and the gateway both reserve this."""
    return (DEFAULT_CHAT_COMPLETION_TOKENS if max_tokens is None else max_tokens) + body_size


class EmbeddingRequest(_Body):
    input: str | Annotated[list[str], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


class ImageGenerationRequest(_Body):
    prompt: Annotated[str, Field(min_length=1)]
    n: Annotated[StrictInt, Field(ge=1, le=16)] = 1
    size: str | None = None
    width: Annotated[StrictInt, Field(ge=1, le=MAX_IMAGE_SIDE)] | None = None
    height: Annotated[StrictInt, Field(ge=1, le=MAX_IMAGE_SIDE)] | None = None
    response_format: Literal["url", "b64_json"] | None = None

    @field_validator("size")
    @classmethod
    def _size_shape(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = _SIZE.match(value)
        if match is None:
            raise ValueError("size must look like WIDTHxHEIGHT, e.g. 1024x1024")
        if max(int(match.group(1)), int(match.group(2))) > MAX_IMAGE_SIDE:
            raise ValueError(f"image sides are limited to {MAX_IMAGE_SIDE} pixels")
        return value

    def dimensions(self) -> tuple[int, int]:
        """(width, height): explicit fields win, then ``size``, then 1024x1024 (Atoma's default)."""
        width, height = 1024, 1024
        if self.size is not None:
            w, h = self.size.split("x")
            width, height = int(w), int(h)
        return self.width or width, self.height or height

    def compute_units(self) -> int:
        width, height = self.dimensions()
        return self.n * width * height
