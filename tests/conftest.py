"""Fixtures the whole suite shares: the embedded models, prepared once, and their engines loaded
once per session (loading Gemma and MiniLM dominates test time otherwise).

The models are prepared into ``VEIL_TEST_MODEL_DIR`` (default: ``.cache/test-models`` in the repo),
which later runs reuse. The engines are plain objects usable from any event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Nothing in the suite may fetch weights from a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from veil.engines import (
    CHAT_MODEL_ID,
    EMBEDDINGS_MODEL_ID,
    EmbeddedModelPaths,
    LlamaCppChatEngine,
    SentenceTransformerEmbeddingEngine,
    prepare_embedded_models,
)
from veil.node.service import EngineRegistry

TEST_MODEL_DIR = Path(
    os.environ.get(
        "VEIL_TEST_MODEL_DIR", Path(__file__).resolve().parent.parent / ".cache/test-models"
    )
)


@pytest.fixture(scope="session")
def embedded_models() -> EmbeddedModelPaths:
    return prepare_embedded_models(TEST_MODEL_DIR, progress=False)


@pytest.fixture(scope="session")
def chat_engine(embedded_models: EmbeddedModelPaths) -> Iterator[LlamaCppChatEngine]:
    engine = LlamaCppChatEngine(CHAT_MODEL_ID, embedded_models.chat_gguf, n_ctx=2048)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


@pytest.fixture(scope="session")
def embedding_engine(
    embedded_models: EmbeddedModelPaths,
) -> Iterator[SentenceTransformerEmbeddingEngine]:
    engine = SentenceTransformerEmbeddingEngine(EMBEDDINGS_MODEL_ID, embedded_models.embeddings_dir)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


@pytest.fixture(scope="session")
def node_registry(
    chat_engine: LlamaCppChatEngine, embedding_engine: SentenceTransformerEmbeddingEngine
) -> EngineRegistry:
    """The embedded engines as a node serves them; shared by every node the tests start."""
    registry = EngineRegistry()
    registry.add(chat_engine)
    registry.add(embedding_engine)
    return registry
