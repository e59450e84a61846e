"""Counting tokens on an OpenAI-compatible upstream, which has no standard tokenize endpoint.

Each server family has its own (checked against their sources):

- vLLM: ``POST /tokenize`` with ``messages`` applies the chat template; with ``prompt`` tokenizes
  text. Answers ``{"count", "tokens", ...}``. SGLang answers the ``prompt`` form the same way.
- llama.cpp ``llama-server``: ``POST /apply-template`` renders the chat template, ``POST /tokenize``
  with ``content`` tokenizes. Answers ``{"tokens": [...]}`` (and ``[]`` to bodies it can't read).
- llama-cpp-python ``llama_cpp.server``: ``POST /extras/tokenize/count`` with ``input``, text only
  (always with BOS). It has no way to apply the chat template.
- TEI: ``POST /tokenize`` with ``inputs`` answers one token list per input.

The first form that answers is remembered. Where only text can be tokenized, a chat prompt is
counted message by message plus an allowance for the template's markers; where nothing can, every
UTF-8 byte counts as a token (byte-level BPE and SentencePiece with byte fallback never produce
more tokens than bytes) plus the same allowances. Both err high, as ``count_prompt_tokens`` must,
for templates of the usual shape (ChatML, Llama 3, Gemma, Mistral); a template that injects a long
default system prompt needs a server that tokenizes chats.

The upstream receives the whole body, so the whole body is priced, not just the message text:

- every top-level field not in ``NEUTRAL_FIELDS`` (``tools``, ``tool_choice``, ``functions``,
  ``response_format`` schemas, and any field Veil does not know, which a server may render into
  the prompt) counts as the tokens of its compact JSON, plus ``FIELD_ALLOWANCE`` for the template's
  framing of it;
- in each message, every field but ``role`` and ``content`` (``tool_calls``, ``name``,
  ``tool_call_id``, ...) counts as its JSON, as do content parts that are neither text nor images;
- each image part (``image_url``, ``input_image``) costs a fixed ``IMAGE_PART_TOKENS``, whatever its
  size: the node cannot see what a vision encoder will make of it. The upstream's reported usage is
  what is charged afterwards, capped at the request's units.

JSON is counted like text: exactly where the server tokenizes text, one token a byte otherwise.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx

from veil.wire.openai import ChatCompletionRequest

MESSAGE_ALLOWANCE = 8  # role markers and separators around one message
PROMPT_ALLOWANCE = 32  # BOS, the generation prompt, a short default system line
TEXT_ALLOWANCE = 4  # special tokens around one tokenized text ([CLS]/[SEP], BOS/EOS)
FIELD_ALLOWANCE = 64  # a template's framing of tools or a schema ("You may call these tools...")
IMAGE_PART_TOKENS = 2048  # one image part, any size (documented in the README's Ledger rules)
IMAGE_PART_TYPES = frozenset({"image_url", "input_image"})

# Top-level chat fields that steer sampling or the response but put nothing into the prompt.
NEUTRAL_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "n",
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "stop",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "user",
        "parallel_tool_calls",
        "store",
        "metadata",
        "service_tier",
    }
)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def priced_parts(request: ChatCompletionRequest) -> tuple[list[str], int]:
    """What the upstream receives beyond message text: (JSON texts to count, image parts)."""
    body = request.model_dump(exclude_none=True)
    texts = [_compact(value) for name, value in body.items() if name not in NEUTRAL_FIELDS]
    images = 0
    for message in body.get("messages", []):
        rest = {k: v for k, v in message.items() if k not in ("role", "content")}
        if rest:
            texts.append(_compact(rest))
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in IMAGE_PART_TYPES:
                    images += 1
                elif kind != "text":
                    texts.append(_compact(part))
    return texts, images


class UpstreamServer(Protocol):
    @property
    def client(self) -> httpx.AsyncClient: ...

    @property
    def model_name(self) -> str: ...


class _Unavailable(Exception):
    """The server could not answer now (down, 5xx): use the bound, remember nothing."""


class UpstreamTokenizer:
    def __init__(self, server: UpstreamServer) -> None:
        self._server = server
        self._chat_form: str | None = None  # "messages", "apply-template", "text", "bound"
        self._text_form: str | None = None  # "tei", "prompt", "content", "extras", "bound"

    async def count_chat(self, request: ChatCompletionRequest) -> int:
        """Input tokens of the whole request: the messages after the chat template (exact where
        the server renders templates) plus every other part the upstream receives (see the
        module docstring)."""
        extra_texts, images = priced_parts(request)
        extra = images * IMAGE_PART_TOKENS
        if extra_texts:
            extra += await self.count_texts(extra_texts, special=False)
            extra += FIELD_ALLOWANCE * len(extra_texts)
        return await self._count_messages_text(request) + extra

    async def _count_messages_text(self, request: ChatCompletionRequest) -> int:
        # As the chat request will be sent, less non-text parts; "developer" as "system", since
        # chat templates know only the latter and a template error would lose the exact count.
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in request.messages
        ]
        texts = [m["content"] for m in messages]
        bound = sum(len(t.encode()) + MESSAGE_ALLOWANCE for t in texts) + PROMPT_ALLOWANCE
        forms: dict[str, Callable[[], Awaitable[int | None]]] = {
            "messages": lambda: self._count_messages(messages),
            "apply-template": lambda: self._count_rendered(messages),
            "text": lambda: self._count_each_message(texts),
        }
        return await self._first_answer(forms, "_chat_form", bound)

    @property
    def tokenizes_text(self) -> bool:
        """Whether the server has been found to tokenize text (not just the byte bound)."""
        return self._text_form not in (None, "bound")

    @property
    def single_request(self) -> bool:
        """Whether the server is llama-cpp-python's, which interrupts a running generation when
        another request arrives: never ask it anything while it streams."""
        return self._text_form == "extras"

    async def learn_text_form(self) -> None:
        """Find out (once) whether and how the server tokenizes text."""
        if self._text_form is None:
            await self.count_texts(["Veil"], special=False)

    async def count_generated(self, text: str) -> int | None:
        """Tokens of a piece of generated text (no specials), or None where the server cannot
        tokenize text."""
        counted = await self.count_texts([text], special=False)
        if not self.tokenizes_text:
            return None
        if self._text_form == "extras":
            counted -= 1  # llama_cpp.server always counts a BOS
        return max(1, counted)

    async def count_texts(self, texts: list[str], special: bool) -> int:
        """Tokens of plain texts (``special``: with BOS/CLS/SEP as the model adds them)."""
        bound = sum(len(t.encode()) + TEXT_ALLOWANCE for t in texts)
        if not any(texts):
            return bound  # nothing to probe with: an empty answer would prove nothing
        forms: dict[str, Callable[[], Awaitable[int | None]]] = {
            "tei": lambda: self._count_tei(texts, special),
            "prompt": lambda: self._count_each(texts, self._count_prompt, special),
            "content": lambda: self._count_each(texts, self._count_content, special),
            "extras": lambda: self._count_each(texts, self._count_extras, special),
        }
        return await self._first_answer(forms, "_text_form", bound)

    async def _first_answer(
        self, forms: dict[str, Callable[[], Awaitable[int | None]]], memo: str, bound: int
    ) -> int:
        known = getattr(self, memo)
        if known == "bound":
            return bound
        try:
            for name in [known] if known else list(forms):
                answer = await forms[name]()
                if answer is not None:
                    setattr(self, memo, name)
                    return answer
        except _Unavailable:
            return bound
        if known is None:  # a known form that declines one request (too long, say) stays known
            setattr(self, memo, "bound")
        return bound

    # --- chat forms ---------------------------------------------------------------------------

    async def _count_messages(self, messages: list[dict[str, str]]) -> int | None:
        body = {"model": self._server.model_name, "messages": messages}
        return _token_count(await self._post("/tokenize", {**body, "add_generation_prompt": True}))

    async def _count_rendered(self, messages: list[dict[str, str]]) -> int | None:
        rendered = await self._post("/apply-template", {"messages": messages})
        prompt = rendered.get("prompt") if isinstance(rendered, dict) else None
        if not isinstance(prompt, str):
            return None
        body = {"content": prompt, "add_special": True, "parse_special": True}
        return _token_count(await self._post("/tokenize", body))

    async def _count_each_message(self, texts: list[str]) -> int | None:
        if not any(texts):
            raise _Unavailable  # nothing to probe with: use the bound, learn nothing
        counted = await self.count_texts(texts, special=True)
        if self._text_form in (None, "bound"):
            return None  # the server tokenizes nothing: count_chat's own bound applies
        return counted + MESSAGE_ALLOWANCE * len(texts) + PROMPT_ALLOWANCE

    # --- text forms ---------------------------------------------------------------------------

    async def _count_tei(self, texts: list[str], special: bool) -> int | None:
        answer = await self._post("/tokenize", {"inputs": texts, "add_special_tokens": special})
        if not isinstance(answer, list) or len(answer) != len(texts):
            return None
        if not all(isinstance(tokens, list) for tokens in answer):
            return None
        return _nonzero(sum(len(tokens) for tokens in answer))

    async def _count_prompt(self, text: str, special: bool) -> int | None:
        body = {"model": self._server.model_name, "prompt": text, "add_special_tokens": special}
        return _token_count(await self._post("/tokenize", body))

    async def _count_content(self, text: str, special: bool) -> int | None:
        body = {"content": text, "add_special": special}
        return _token_count(await self._post("/tokenize", body))

    async def _count_extras(self, text: str, special: bool) -> int | None:
        body = {"model": self._server.model_name, "input": text}
        answer = await self._post("/extras/tokenize/count", body)
        count = answer.get("count") if isinstance(answer, dict) else None
        return _nonzero(count) if isinstance(count, int) else None

    async def _count_each(
        self,
        texts: list[str],
        count_one: Callable[[str, bool], Awaitable[int | None]],
        special: bool,
    ) -> int | None:
        # One text first, so that a server without this form costs one request, not one per text.
        nonempty = [t for t in texts if t]
        first = await count_one(nonempty[0], special)
        if first is None:
            return None
        rest = await asyncio.gather(*(count_one(t, special) for t in nonempty[1:]))
        if any(c is None for c in rest):
            raise _Unavailable  # the form answered once, then declined: don't trust either way
        empty = (len(texts) - len(nonempty)) * TEXT_ALLOWANCE
        return first + sum(c for c in rest if c is not None) + empty

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        """The JSON answer, or None when the server has no such endpoint or form."""
        try:
            response = await self._server.client.post(path, json=body)
        except httpx.HTTPError:
            raise _Unavailable from None
        if response.status_code >= 500:
            raise _Unavailable
        if response.status_code != 200:
            return None
        try:
            return response.json()
        except ValueError:
            return None


def _token_count(answer: Any) -> int | None:
    if not isinstance(answer, dict):
        return None
    count = answer.get("count")
    if isinstance(count, int) and not isinstance(count, bool):
        return _nonzero(count)
    tokens = answer.get("tokens")
    return _nonzero(len(tokens)) if isinstance(tokens, list) else None


def _nonzero(count: int) -> int | None:
    # Non-empty text is at least one token: a zero means the server ignored the body's fields.
    return count if count > 0 else None
