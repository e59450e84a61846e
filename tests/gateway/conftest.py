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
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest
from sqlalchemy import text

from veil.gateway.ledger import Ledger

T = TypeVar("T")


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
