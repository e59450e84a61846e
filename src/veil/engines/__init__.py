"""Engines: what runs a model for the node, behind the one interface in ``base``.

- ``LlamaCppChatEngine`` (chat) and ``SentenceTransformerEmbeddingEngine`` (embeddings) run the
  embedded models in process; ``prepare_embedded_models`` puts those models on disk.
- ``UpstreamChatEngine``, ``UpstreamEmbeddingEngine`` and ``UpstreamImageEngine`` forward to an
  OpenAI-compatible server (vLLM, SGLang, TEI, llama.cpp's server, an images service).

Upstreams are configured with one spec each (CLI ``--upstream``, repeatable)::

    [KIND:]MODEL=URL        KIND is chat (the default), embeddings or images

e.g. ``llama-3.1-8b=http://10.0.0.5:8000``, ``embeddings:bge-m3=http://127.0.0.1:8080/v1``.
One model id maps to one engine of one kind, so a spec needs no second flag. The id is what
clients ask for and is also sent upstream as the model name. Only the three kind names above are
read as a prefix: ``llama3:8b=URL`` is the chat model ``llama3:8b``.
"""

from __future__ import annotations

import httpx

from veil.engines.base import (
    ChatEngine,
    EmbeddingEngine,
    Engine,
    EngineFailure,
    ImageEngine,
    TokenUsage,
)
from veil.engines.llamacpp import LlamaCppChatEngine, SamplingDefaults
from veil.engines.models import (
    CHAT_MODEL_ID,
    CHAT_MODEL_SAMPLING,
    EMBEDDINGS_MODEL_ID,
    EmbeddedModelPaths,
    ModelPreparationError,
    prepare_embedded_models,
)
from veil.engines.sentence import SentenceTransformerEmbeddingEngine
from veil.engines.upstream import (
    DEFAULT_TIMEOUT,
    UpstreamChatEngine,
    UpstreamEmbeddingEngine,
    UpstreamImageEngine,
)
from veil.wire.routes import ENDPOINTS, Endpoint

__all__ = [
    "CHAT_MODEL_ID",
    "CHAT_MODEL_SAMPLING",
    "EMBEDDINGS_MODEL_ID",
    "ChatEngine",
    "EmbeddedModelPaths",
    "EmbeddingEngine",
    "Engine",
    "EngineFailure",
    "ImageEngine",
    "LlamaCppChatEngine",
    "ModelPreparationError",
    "SamplingDefaults",
    "SentenceTransformerEmbeddingEngine",
    "TokenUsage",
    "UpstreamChatEngine",
    "UpstreamEmbeddingEngine",
    "UpstreamImageEngine",
    "make_upstream_engine",
    "parse_upstream_spec",
    "prepare_embedded_models",
]

_KINDS = ENDPOINTS
_SPEC_SHAPE = "[chat:|embeddings:|images:]MODEL=URL"


def parse_upstream_spec(spec: str) -> tuple[Endpoint, str, str]:
    """``[KIND:]MODEL=URL`` -> (kind, model id, url); ValueError says what is wrong."""
    left, sep, url = spec.strip().partition("=")
    if not sep:
        raise ValueError(f"upstream {spec!r} must look like {_SPEC_SHAPE}")
    kind: Endpoint = "chat"
    prefix, colon, rest = left.partition(":")
    for known in _KINDS:
        if colon and prefix == known:
            kind, left = known, rest
    model_id, url = left.strip(), url.strip()
    if not model_id:
        raise ValueError(f"upstream {spec!r} has no model id before '=' ({_SPEC_SHAPE})")
    if len(model_id) > 256:
        raise ValueError("an upstream model id is limited to 256 characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(
            f"upstream {model_id!r} needs an http:// or https:// URL with a host, got {url!r}"
        )
    return kind, model_id, url


def make_upstream_engine(
    kind: Endpoint,
    model_id: str,
    url: str,
    *,
    upstream_model: str | None = None,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> UpstreamChatEngine | UpstreamEmbeddingEngine | UpstreamImageEngine:
    """The upstream engine of ``kind`` serving ``model_id`` from the server at ``url``."""
    engine_class: type[UpstreamChatEngine | UpstreamEmbeddingEngine | UpstreamImageEngine]
    if kind == "chat":
        engine_class = UpstreamChatEngine
    elif kind == "embeddings":
        engine_class = UpstreamEmbeddingEngine
    elif kind == "images":
        engine_class = UpstreamImageEngine
    else:
        raise ValueError(f"unknown engine kind {kind!r}")
    return engine_class(
        model_id, url, upstream_model=upstream_model, api_key=api_key, timeout=timeout
    )
