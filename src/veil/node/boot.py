"""Turning settings into engines: prepare the embedded models, configure upstreams."""

from __future__ import annotations

from veil.config import NodeSettings
from veil.engines import (
    LlamaCppChatEngine,
    ModelPreparationError,
    SentenceTransformerEmbeddingEngine,
    make_upstream_engine,
    parse_upstream_spec,
    prepare_embedded_models,
)
from veil.engines.models import CHAT_MODEL_ID, CHAT_MODEL_SAMPLING, EMBEDDINGS_MODEL_ID
from veil.node.service import EngineRegistry


class BootError(RuntimeError):
    """The node cannot start as configured; the message is one line a person can act on."""


def build_engines(settings: NodeSettings, *, progress: bool = True) -> EngineRegistry:
    registry = EngineRegistry()
    try:
        for spec in settings.upstreams:
            kind, model_id, url = parse_upstream_spec(spec)
            registry.add(make_upstream_engine(kind, model_id, url))
        if settings.embedded:
            paths = prepare_embedded_models(settings.resolved_models_dir, progress=progress)
            if CHAT_MODEL_ID not in registry.model_ids():
                registry.add(
                    LlamaCppChatEngine(
                        CHAT_MODEL_ID,
                        paths.chat_gguf,
                        n_ctx=settings.chat_context_tokens,
                        sampling_defaults=CHAT_MODEL_SAMPLING,
                    )
                )
            if EMBEDDINGS_MODEL_ID not in registry.model_ids():
                registry.add(
                    SentenceTransformerEmbeddingEngine(EMBEDDINGS_MODEL_ID, paths.embeddings_dir)
                )
    except (ValueError, ModelPreparationError) as exc:
        raise BootError(str(exc)) from None
    if not registry.all():
        raise BootError("no models to serve: drop --no-embedded or add --upstream MODEL=URL")
    return registry
