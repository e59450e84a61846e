"""Veil's client: the SDK (``Client``, ``AsyncClient``), the ``openai`` drop-in
(``openai_http_client``, ``async_openai_http_client``) and the exceptions both raise (``errors``).

- ``sdk``: lock, seal, send, verify, retry; OpenAI-shaped resources returning OpenAI types.
- ``streaming``: opening and verifying answers and streams; the ``Receipt`` of a request.
- ``transport``: an httpx transport that makes the official ``openai`` package confidential.
- ``cli``: the ``veil chat``, ``veil embed`` and ``veil models`` commands.
"""

from veil.client.errors import (
    APIError,
    BalanceError,
    DecryptionError,
    IntegrityError,
    ResponseHashMismatch,
    SignatureInvalid,
    StreamCorrupt,
    StreamTruncated,
    TagMismatch,
    TransportError,
    VeilClientError,
)
from veil.client.sdk import AsyncClient, Client
from veil.client.streaming import AsyncChatStream, ChatStream, Receipt
from veil.client.transport import async_openai_http_client, openai_http_client

__all__ = [
    "APIError",
    "AsyncChatStream",
    "AsyncClient",
    "BalanceError",
    "ChatStream",
    "Client",
    "DecryptionError",
    "IntegrityError",
    "Receipt",
    "ResponseHashMismatch",
    "SignatureInvalid",
    "StreamCorrupt",
    "StreamTruncated",
    "TagMismatch",
    "TransportError",
    "VeilClientError",
    "async_openai_http_client",
    "openai_http_client",
]
