"""Veil's client: the SDK (``Client``, ``AsyncClient``), the ``openai`` drop-in
(``openai_http_client``, ``async_openai_http_client``) and the exceptions both raise (``errors``).

Layered from the bottom up (each module imports only the ones above it):

- ``errors``: the whole exception hierarchy, in its docstring.
- ``options``: ``ClientOptions``, the one frozen object of options (defaults in ``veil.config``).
- ``receipt``: the ``AttestationVerdict`` and ``Receipt`` of a request.
- ``lock``, ``plan``, ``opening``, ``streaming``: the lock and its attestation, the request
  planned and sealed, each answer opened and checked, a stream's events checked and re-framed.
- ``flow``: lock -> attest -> seal -> send -> open -> retry, one I/O-free generator, driven by
  ``run`` (sync) and ``arun`` (async).
- ``transport``: the httpx transports that run the flow for the official ``openai`` package.
- ``sdk``: ``Client`` / ``AsyncClient``, ``openai.OpenAI`` over that transport, answers with
  ``.veil``. ``Policy`` (from ``veil.attestation``) says which evidence is accepted.
- ``cli``: the ``veil chat``, ``veil embed``, ``veil models`` and ``veil usage`` commands;
  ``known_nodes`` and ``usage``: the attested signing keys, and the bill checked against them.

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
        NoPostQuantumKey,
        ResponseHashMismatch,
        SignatureInvalid,
        StreamCorrupt,
        StreamTruncated,
        TagMismatch,
        TransportError,
        VeilClientError,
    )
    from veil.client.receipt import AttestationVerdict, Receipt
    from veil.client.sdk import AsyncChatStream, AsyncClient, ChatStream, Client
    from veil.client.transport import async_openai_http_client, openai_http_client

_WHERE = {
    "APIError": "errors",
    "AttestationFailed": "errors",
    "BalanceError": "errors",
    "DecryptionError": "errors",
    "IntegrityError": "errors",
    "NoPostQuantumKey": "errors",
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
    "AsyncChatStream": "sdk",
    "ChatStream": "sdk",
    "AttestationVerdict": "receipt",
    "Receipt": "receipt",
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
    "NoPostQuantumKey",
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
