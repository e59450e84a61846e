"""Fixtures the whole suite shares: the embedded models, prepared once, and their engines loaded
once per session (loading SmolLM2 and MiniLM dominates test time otherwise).

The models are prepared into ``VEIL_TEST_MODEL_DIR`` (default: ``.cache/test-models`` in the repo),
which later runs reuse. The engines are plain objects usable from any event loop.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

# Nothing in the suite may fetch weights from a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Collateral the tests fetch (from loopback stand-ins) is cached per run, never in ~/.cache.
os.environ["VEIL_CACHE_DIR"] = tempfile.mkdtemp(prefix="veil-test-cache-")
# ... and the node keys clients remember (known_nodes.json) never land in the real home either.
os.environ.setdefault("VEIL_HOME", tempfile.mkdtemp(prefix="veil-test-home-"))

from tests.harness import (  # TEST_MODEL_DIR and fresh_postgres_database: re-exported
    TEST_MODEL_DIR,
    find_postgres_admin,
    fresh_postgres_database,
    postgres_url_setting,
)
from veil.engines import (
    CHAT_MODEL_ID,
    CHAT_MODEL_SAMPLING,
    EMBEDDINGS_MODEL_ID,
    EmbeddedModelPaths,
    LlamaCppChatEngine,
    SentenceTransformerEmbeddingEngine,
    prepare_embedded_models,
)
from veil.node.service import EngineRegistry

__all__ = ["TEST_MODEL_DIR", "fresh_postgres_database"]

# --- databases: SQLite files and fresh PostgreSQL databases ----------------------------------
# PostgreSQL comes from VEIL_TEST_POSTGRES_URL (``tests.harness``). Unreachable: the postgres cases
# skip with a warning, except under CI, where they fail (CI must test PostgreSQL).


@pytest.fixture(scope="session")
def postgres_admin_url() -> URL:
    """A working URL for the PostgreSQL maintenance database (skips or fails if there is none)."""
    url, errors = find_postgres_admin(postgres_url_setting())
    if url is not None:
        return url
    message = (
        "PostgreSQL is unreachable, so the ledger was NOT tested on PostgreSQL "
        f"(set VEIL_TEST_POSTGRES_URL): {'; '.join(errors)}"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    warnings.warn(message, stacklevel=1)
    pytest.skip(message)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of the parametrized backend, private to this test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_admin_url")) as url:
        yield url


@pytest.fixture
def postgres_url(postgres_admin_url: URL) -> Iterator[str]:
    """An empty PostgreSQL database private to this test (skips or fails like ``db_url``)."""
    with fresh_postgres_database(postgres_admin_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"


# --- models and engines ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def embedded_models() -> EmbeddedModelPaths:
    return prepare_embedded_models(TEST_MODEL_DIR, progress=False)


@pytest.fixture(scope="session")
def chat_engine(embedded_models: EmbeddedModelPaths) -> Iterator[LlamaCppChatEngine]:
    engine = LlamaCppChatEngine(
        CHAT_MODEL_ID, embedded_models.chat_gguf, n_ctx=2048, sampling_defaults=CHAT_MODEL_SAMPLING
    )
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
