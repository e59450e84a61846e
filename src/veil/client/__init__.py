"""Veil's client: the SDK (``Client``, ``AsyncClient``), the ``openai`` drop-in
(``openai_http_client``, ``async_openai_http_client``) and the exceptions both raise (``errors``).

- ``errors``: the whole exception hierarchy, in its docstring.
- ``sdk``: lock, seal, send, verify, retry; OpenAI-shaped resources returning OpenAI types.
- ``streaming``: opening and verifying answers and streams; the ``Receipt`` of a request.
- ``transport``: an httpx transport that makes the official ``openai`` package confidential.
- ``cli``: the ``veil chat``, ``veil embed`` and ``veil models`` commands.

Names are imported on first use, so ``veil.client.cli`` and ``veil.client.errors`` stay cheap
to import (``openai`` takes about half a second).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_WHERE = {
    "APIError": "errors",
    "BalanceError": "errors",
    "DecryptionError": "errors",
    "IntegrityError": "errors",
    "ResponseHashMismatch": "errors",
    "SignatureInvalid": "errors",
    "StreamCorrupt": "errors",
    "StreamTruncated": "errors",
    "TagMismatch": "errors",
    "TransportError": "errors",
    "VeilClientError": "errors",
    "AsyncClient": "sdk",
    "Client": "sdk",
    "AsyncChatStream": "streaming",
    "ChatStream": "streaming",
    "Receipt": "streaming",
    "async_openai_http_client": "transport",
    "openai_http_client": "transport",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'veil.client' has no attribute {name!r}")
    return getattr(import_module(f"veil.client.{module}"), name)
