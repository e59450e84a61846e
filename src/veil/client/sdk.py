"""``veil.Client`` and ``veil.AsyncClient``: the official ``openai`` client over Veil's transport.

::

    veil.Client(GATEWAY, KEY)
      .openai = openai.OpenAI(base_url=GATEWAY/v1, max_retries=0,
                              http_client=httpx.Client(transport=VeilTransport(options)))

Every confidential call is ``openai``'s own method (``chat.completions.create``,
``embeddings.create``, ``images.generate``): ``openai`` encodes the request and parses the answer,
and the transport (``veil.client.transport``) locks, attests, seals, verifies and retries in
between (``veil.client.flow`` says how). What ``Client`` adds is ``.veil`` on every answer, the
request's ``Receipt``, read from the transport's response, and Veil's own exceptions
(``veil.client.errors``) in place of openai's: the transport raises them itself, and an error a
pass-through request (``models.list()``) met is mapped by its wire code.

Options are ``ClientOptions.resolve``'s (``veil.client.options``): ``protocol`` (default
``"veil-v3"``, post-quantum; or ``"atoma-v1"``), ``policy``,
``insecure_no_tee`` (a local demo only), ``timeout``, ``max_attempts``, ``backoff``; ``transport``
is what talks to the network (default ``httpx.HTTPTransport()``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar, Unpack, overload

import httpx
import openai
import openai.types
import openai.types.chat
from openai.types.chat import ChatCompletionChunk
from pydantic import PrivateAttr

from veil.attestation.policy import Policy
from veil.client.errors import api_error
from veil.client.known_nodes import KnownNodes
from veil.client.options import ClientArguments, ClientOptions, ProtocolName
from veil.client.receipt import Receipt
from veil.client.transport import NO_API_KEY, AsyncVeilTransport, VeilTransport, receipt_of

__all__ = [
    "AsyncChatStream",
    "AsyncClient",
    "ChatCompletion",
    "ChatStream",
    "Client",
    "CreateEmbeddingResponse",
    "ImagesResponse",
]


# -- answers, with their receipt ------------------------------------------------------------
class _WithReceipt(openai.BaseModel):
    _veil: Receipt | None = PrivateAttr(default=None)

    @property
    def veil(self) -> Receipt:
        """The request's receipt: what was checked, and what it cost."""
        assert self._veil is not None
        return self._veil


class ChatCompletion(_WithReceipt, openai.types.chat.ChatCompletion):
    """OpenAI's ``ChatCompletion``, verified; ``veil`` is the request's receipt."""


class CreateEmbeddingResponse(_WithReceipt, openai.types.CreateEmbeddingResponse):
    """OpenAI's ``CreateEmbeddingResponse``, verified; ``veil`` is the request's receipt."""


class ImagesResponse(_WithReceipt, openai.types.ImagesResponse):
    """OpenAI's ``ImagesResponse``, verified; ``veil`` is the request's receipt."""


Result = TypeVar("Result", ChatCompletion, CreateEmbeddingResponse, ImagesResponse)


def _verified(raw: Any, result: type[Result]) -> Result:
    """``openai``'s parse of a raw answer, as ``result``, carrying the transport's receipt."""
    parsed: Result = raw.parse(to=result)
    parsed._veil = receipt_of(raw.http_response)
    return parsed


class _StreamReceipt:
    response: Any

    @property
    def veil(self) -> Receipt:
        """The request's receipt: complete (signed usage, units charged) after the last chunk."""
        return receipt_of(self.response)

    @property
    def usage(self) -> Any:
        return self.veil.usage


class ChatStream(_StreamReceipt, openai.Stream[ChatCompletionChunk]):
    """openai's stream of ``ChatCompletionChunk``s, every one verified before it is parsed.

    The last chunk is the usage chunk (``choices == []``), as OpenAI sends with
    ``stream_options.include_usage``. Close it (or use ``with``) to stop early."""


class AsyncChatStream(_StreamReceipt, openai.AsyncStream[ChatCompletionChunk]):
    """``ChatStream`` for ``AsyncClient``."""

    async def aclose(self) -> None:
        await self.close()


@contextmanager
def _veil_errors() -> Iterator[None]:
    """An error status a pass-through request met, as Veil's ``APIError`` of its wire code."""
    try:
        yield
    except openai.APIStatusError as exc:
        try:
            body = exc.response.json()
        except ValueError:
            body = None
        raise api_error(exc.status_code, body) from None


def _stream_flag(stream: bool) -> dict[str, Any]:
    # Sent only when set, as the OpenAI SDK does.
    return {"stream": True} if stream else {}


# -- the resources --------------------------------------------------------------------------
class Completions:
    def __init__(self, client: openai.OpenAI) -> None:
        self._openai = client

    @overload
    def create(self, *, stream: Literal[False] = False, **body: Any) -> ChatCompletion: ...
    @overload
    def create(self, *, stream: Literal[True], **body: Any) -> ChatStream: ...
    def create(self, *, stream: bool = False, **body: Any) -> ChatCompletion | ChatStream:
        """A confidential chat completion (or a stream of verified chunks)."""
        raw = self._openai.chat.completions.with_raw_response.create(**_stream_flag(stream), **body)
        if stream:
            return ChatStream(
                cast_to=ChatCompletionChunk, response=raw.http_response, client=self._openai
            )
        return _verified(raw, ChatCompletion)


class Chat:
    def __init__(self, client: openai.OpenAI) -> None:
        self.completions = Completions(client)


class Embeddings:
    def __init__(self, client: openai.OpenAI) -> None:
        self._openai = client

    def create(self, **body: Any) -> CreateEmbeddingResponse:
        raw = self._openai.embeddings.with_raw_response.create(**body)
        return _verified(raw, CreateEmbeddingResponse)


class Images:
    def __init__(self, client: openai.OpenAI) -> None:
        self._openai = client

    def generate(self, **body: Any) -> ImagesResponse:
        return _verified(self._openai.images.with_raw_response.generate(**body), ImagesResponse)


class Models:
    def __init__(self, client: openai.OpenAI) -> None:
        self._openai = client

    def list(self) -> list[openai.types.Model]:
        with _veil_errors():
            return list(self._openai.models.list())


class AsyncCompletions:
    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._openai = client

    @overload
    async def create(self, *, stream: Literal[False] = False, **body: Any) -> ChatCompletion: ...
    @overload
    async def create(self, *, stream: Literal[True], **body: Any) -> AsyncChatStream: ...
    async def create(
        self, *, stream: bool = False, **body: Any
    ) -> ChatCompletion | AsyncChatStream:
        completions = self._openai.chat.completions.with_raw_response
        raw = await completions.create(**_stream_flag(stream), **body)
        if not stream:
            return _verified(raw, ChatCompletion)
        return AsyncChatStream(
            cast_to=ChatCompletionChunk, response=raw.http_response, client=self._openai
        )


class AsyncChat:
    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.completions = AsyncCompletions(client)


class AsyncEmbeddings:
    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._openai = client

    async def create(self, **body: Any) -> CreateEmbeddingResponse:
        return _verified(
            await self._openai.embeddings.with_raw_response.create(**body), CreateEmbeddingResponse
        )


class AsyncImages:
    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._openai = client

    async def generate(self, **body: Any) -> ImagesResponse:
        raw = await self._openai.images.with_raw_response.generate(**body)
        return _verified(raw, ImagesResponse)


class AsyncModels:
    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._openai = client

    async def list(self) -> list[openai.types.Model]:
        with _veil_errors():
            return [model async for model in self._openai.models.list()]


# -- the clients ----------------------------------------------------------------------------
def _openai_arguments(veil: VeilTransport | AsyncVeilTransport) -> dict[str, Any]:
    """``openai.OpenAI``'s (or ``AsyncOpenAI``'s) arguments over ``veil``: no retries of its own
    (the flow retries what it may), and ``NO_API_KEY`` when there is no API key (``openai``
    requires one; the transport drops it)."""
    options = veil.options
    http: httpx.Client | httpx.AsyncClient
    if isinstance(veil, VeilTransport):
        http = httpx.Client(transport=veil, timeout=options.timeout)
    else:
        http = httpx.AsyncClient(transport=veil, timeout=options.timeout)
    return {
        "base_url": f"{options.base_url}/v1",
        "api_key": options.api_key or NO_API_KEY,
        "max_retries": 0,
        "timeout": options.timeout,
        # openai accepts an httpx client as well as an httpx2 one; its types name only httpx2.
        "http_client": http,
    }


class _Facade:
    """What both clients share: their options, resolved once, and the transport under openai.

    ``transport`` is what talks to the network: an ``httpx.BaseTransport`` for ``Client``, an
    ``httpx.AsyncBaseTransport`` for ``AsyncClient`` (default: httpx's own)."""

    options: ClientOptions
    transport: VeilTransport | AsyncVeilTransport

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        transport: Any = None,
        **options: Unpack[ClientArguments],
    ) -> None:
        self.options = ClientOptions.resolve(base_url, api_key, **options)
        self._connect(transport)

    def _connect(self, transport: Any) -> None:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return self.options.base_url

    @property
    def api_key(self) -> str | None:
        return self.options.api_key

    @property
    def policy(self) -> Policy:
        return self.options.policy

    @property
    def protocol(self) -> ProtocolName:
        return self.options.protocol

    @property
    def max_attempts(self) -> int:
        return self.options.max_attempts

    @property
    def backoff(self) -> float:
        return self.options.backoff

    @property
    def known_nodes(self) -> KnownNodes | None:
        """Where signing keys of attested nodes are recorded (None: nowhere)."""
        return self.transport.known_nodes

    @known_nodes.setter
    def known_nodes(self, value: KnownNodes | None) -> None:
        self.transport.known_nodes = value


class Client(_Facade):
    """Synchronous Veil client: ``openai.OpenAI`` (``.openai``) made confidential."""

    transport: VeilTransport

    def _connect(self, transport: httpx.BaseTransport | None) -> None:
        self.transport = VeilTransport(self.options, transport, raise_errors=True)
        self.openai = openai.OpenAI(**_openai_arguments(self.transport))
        self.chat, self.embeddings = Chat(self.openai), Embeddings(self.openai)
        self.images, self.models = Images(self.openai), Models(self.openai)

    def close(self) -> None:
        self.openai.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Facade):
    """``Client`` for asyncio: ``openai.AsyncOpenAI`` (``.openai``) made confidential."""

    transport: AsyncVeilTransport

    def _connect(self, transport: httpx.AsyncBaseTransport | None) -> None:
        self.transport = AsyncVeilTransport(self.options, transport, raise_errors=True)
        self.openai = openai.AsyncOpenAI(**_openai_arguments(self.transport))
        self.chat, self.embeddings = AsyncChat(self.openai), AsyncEmbeddings(self.openai)
        self.images, self.models = AsyncImages(self.openai), AsyncModels(self.openai)

    async def aclose(self) -> None:
        await self.openai.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
