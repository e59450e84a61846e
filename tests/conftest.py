"""Fixtures the whole suite shares: the embedded models, prepared once, and their engines loaded
once per session (loading SmolLM2 and MiniLM dominates test time otherwise).

The models are prepared into ``VEIL_TEST_MODEL_DIR`` (default: ``.cache/test-models`` in the repo),
which later runs reuse. The engines are plain objects usable from any event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

# Nothing in the suite may fetch weights from a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Collateral the tests fetch (from loopback stand-ins) is cached per run, never in ~/.cache.
os.environ["VEIL_CACHE_DIR"] = tempfile.mkdtemp(prefix="veil-test-cache-")
# ... and the node keys clients remember (known_nodes.json) never land in the real home either.
os.environ.setdefault("VEIL_HOME", tempfile.mkdtemp(prefix="veil-test-home-"))

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

TEST_MODEL_DIR = Path(
    os.environ.get(
        "VEIL_TEST_MODEL_DIR", Path(__file__).resolve().parent.parent / ".cache/test-models"
    )
)


# --- databases: SQLite files and fresh PostgreSQL databases ----------------------------------
# PostgreSQL comes from VEIL_TEST_POSTGRES_URL (default below). With no user in the URL the OS
# user is tried, then ``postgres``. Unreachable: the postgres cases skip with a warning, except
# under CI, where they fail (CI must test PostgreSQL).

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://127.0.0.1:5432/test"


def _candidate_urls(raw: str) -> list[URL]:
    url = make_url(raw)
    if url.username:
        return [url]
    return [url, url.set(username="postgres")]


async def _probe(url: URL) -> None:
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 3})
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_admin_url() -> URL:
    """A working URL for the PostgreSQL maintenance database (skips or fails if there is none)."""
    raw = os.environ.get("VEIL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    errors: list[str] = []
    for url in _candidate_urls(raw):
        try:
            asyncio.run(_probe(url))
        except Exception as exc:
            errors.append(f"{url.render_as_string(hide_password=True)}: {exc!r}")
            continue
        return url
    message = (
        "PostgreSQL is unreachable, so the ledger was NOT tested on PostgreSQL "
        f"(set VEIL_TEST_POSTGRES_URL): {'; '.join(errors)}"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    warnings.warn(message, stacklevel=1)
    pytest.skip(message)


async def _admin(url: URL, statement: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@contextlib.contextmanager
def fresh_postgres_database(admin: URL) -> Iterator[str]:
    """An empty database ``veil_t_<random>`` on the server, dropped afterwards."""
    name = f"veil_t_{secrets.token_hex(6)}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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
