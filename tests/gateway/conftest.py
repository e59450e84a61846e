"""Gateway fixtures: a real ledger database for every test, on SQLite and on PostgreSQL.

``db_url`` is parametrized over both backends:

- ``sqlite``: a fresh file in ``tmp_path``.
- ``postgres``: a fresh database ``veil_t_<random>`` created through the maintenance database of
  ``VEIL_TEST_POSTGRES_URL`` (default ``postgresql+asyncpg://127.0.0.1:5432/test``) and dropped
  ``WITH (FORCE)`` afterwards. If that URL names no user, the current OS user is tried first, then
  ``postgres``. When no server answers, the postgres cases are skipped with a loud warning, unless
  ``CI`` is set: CI must test PostgreSQL, so there they fail.

Tests are synchronous (no pytest-asyncio): :class:`LedgerHarness` owns one event loop per test and
turns every coroutine method of the ledger into a plain call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import secrets
import warnings
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from veil.gateway.ledger import Ledger

T = TypeVar("T")

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


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of the parametrized backend, private to this test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    admin: URL = request.getfixturevalue("postgres_admin_url")
    name = f"veil_t_{secrets.token_hex(6)}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"


class LedgerHarness:
    """One event loop and one open ledger for a sync test.

    ``h.create_user("alice")`` runs ``ledger.create_user("alice")`` to completion; ``h.run(coro)``
    runs any coroutine (``asyncio.gather`` for concurrency); ``h.reopen()`` simulates a gateway
    restart; ``h.open_another()`` is a second gateway on the same database.
    """

    def __init__(self, runner: asyncio.Runner, url: str, ledger: Ledger) -> None:
        self.runner = runner
        self.url = url
        self.ledger = ledger
        self.others: list[Ledger] = []

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapper() -> T:
            return await awaitable

        return self.runner.run(wrapper())

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.ledger, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self.runner.run(attribute(*args, **kwargs))

        return call

    def reopen(self, **options: Any) -> None:
        self.run(self.ledger.close())
        self.ledger = self.run(Ledger.open(self.url, **options))

    def open_another(self, **options: Any) -> Ledger:
        other = self.run(Ledger.open(self.url, **options))
        self.others.append(other)
        return other

    def sql(self, statement: str, **params: Any) -> list[Any]:
        """Run raw SQL on the ledger's database (committed); the rows, if it returns any."""

        async def go() -> list[Any]:
            async with self.ledger.engine.begin() as conn:
                result = await conn.execute(text(statement), params)
                return list(result.all()) if result.returns_rows else []

        return self.run(go())

    def close(self) -> None:
        for ledger in [*self.others, self.ledger]:
            self.run(ledger.close())


@contextlib.contextmanager
def open_harness(url: str, **options: Any) -> Iterator[LedgerHarness]:
    with asyncio.Runner() as runner:
        harness = LedgerHarness(runner, url, runner.run(Ledger.open(url, **options)))
        try:
            yield harness
        finally:
            harness.close()


@pytest.fixture
def h(db_url: str) -> Iterator[LedgerHarness]:
    """An open ledger on a fresh database of each backend. After the test, whatever it did, the
    books must balance: ``reconcile()`` finds nothing."""
    with open_harness(db_url) as harness:
        yield harness
        assert harness.reconcile() == []
