"""Veil: confidential AI inference."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "__version__", "async_openai_http_client", "openai_http_client"]

if TYPE_CHECKING:
    from veil.client import AsyncClient, Client, async_openai_http_client, openai_http_client

_CLIENT_EXPORTS = frozenset(
    {"AsyncClient", "Client", "async_openai_http_client", "openai_http_client"}
)


def __getattr__(name: str) -> Any:
    # Lazy: `import veil` stays cheap for the server side, which never needs the client.
    if name in _CLIENT_EXPORTS:
        import veil.client

        return getattr(veil.client, name)
    raise AttributeError(f"module 'veil' has no attribute {name!r}")
