"""The one route table: every inference endpoint, its paths and its OpenAI body type.

Client, gateway, node and engines all name an endpoint with ``Endpoint`` and look its paths up
here, so adding a surface is one row in ``ROUTES``.

    endpoint     plain route                   confidential route
    chat         /v1/chat/completions          /v1/confidential/chat/completions
    embeddings   /v1/embeddings                /v1/confidential/embeddings
    images       /v1/images/generations        /v1/confidential/images/generations

The confidential path is also what veil-v3 binds into a request's HPKE ``info``, so a
sealed request cannot be replayed against another endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel

from veil.wire.openai import ChatCompletionRequest, EmbeddingRequest, ImageGenerationRequest

__all__ = [
    "ENDPOINTS",
    "ROUTES",
    "Endpoint",
    "Route",
    "confidential_path",
    "endpoint_for_path",
    "plain_path",
]

Endpoint = Literal["chat", "embeddings", "images"]
ENDPOINTS: tuple[Endpoint, ...] = get_args(Endpoint)

CONFIDENTIAL_PREFIX = "/v1/confidential/"
PLAIN_PREFIX = "/v1/"


@dataclass(frozen=True)
class Route:
    """One inference endpoint: the tail of its paths and the OpenAI body it takes."""

    endpoint: Endpoint
    tail: str  # "chat/completions": both paths end with it
    request_model: type[BaseModel]

    @property
    def plain(self) -> str:
        return PLAIN_PREFIX + self.tail

    @property
    def confidential(self) -> str:
        return CONFIDENTIAL_PREFIX + self.tail


ROUTES: dict[Endpoint, Route] = {
    "chat": Route("chat", "chat/completions", ChatCompletionRequest),
    "embeddings": Route("embeddings", "embeddings", EmbeddingRequest),
    "images": Route("images", "images/generations", ImageGenerationRequest),
}


def confidential_path(endpoint: Endpoint) -> str:
    """``/v1/confidential/...`` for ``endpoint``."""
    return ROUTES[endpoint].confidential


def plain_path(endpoint: Endpoint) -> str:
    """``/v1/...`` for ``endpoint``."""
    return ROUTES[endpoint].plain


def endpoint_for_path(path: str) -> tuple[Endpoint, bool] | None:
    """``(endpoint, confidential)`` for an inference path (a trailing ``/`` is ignored), or None
    for any other path."""
    path = path.rstrip("/")
    for route in ROUTES.values():
        if path == route.plain:
            return route.endpoint, False
        if path == route.confidential:
            return route.endpoint, True
    return None
