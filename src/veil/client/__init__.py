"""Veil's client: the SDK (``Client``, ``AsyncClient``), the ``openai`` drop-in
(``openai_http_client``, ``async_openai_http_client``) and the exceptions both raise (``errors``).

- ``errors``: the whole exception hierarchy, in its docstring.
- ``sdk``: lock, attest, seal (veil-v2 by default), send, verify, retry; OpenAI-shaped resources
  returning OpenAI types. ``Policy`` (from ``veil.attestation``) says which evidence is accepted.
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
    from veil.attestation.policy import Policy
    from veil.client.errors import (
        APIError,
        AttestationFailed,
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
    from veil.client.streaming import AsyncChatStream, AttestationVerdict, ChatStream, Receipt
    from veil.client.transport import async_openai_http_client, openai_http_client

_WHERE = {
    "APIError": "errors",
    "AttestationFailed": "errors",
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
    "Policy": "sdk",
    "AsyncChatStream": "streaming",
    "AttestationVerdict": "streaming",
    "ChatStream": "streaming",
    "Receipt": "streaming",
    "async_openai_http_client": "transport",
    "openai_http_client": "transport",
}

__all__ = [
    "APIError",
    "AsyncChatStream",
    "AsyncClient",
    "AttestationFailed",
    "AttestationVerdict",
    "BalanceError",
    "ChatStream",
    "Client",
    "DecryptionError",
    "IntegrityError",
    "Policy",
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
