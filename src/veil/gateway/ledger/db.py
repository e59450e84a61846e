"""The ledger's database plumbing: engines, SQLite settings, transactions, retries, migrations.

On SQLite (one gateway, ``veil serve``) writes are serialized: an in-process lock plus
``BEGIN IMMEDIATE`` and a busy timeout, with the database in WAL mode so reads never wait. On
PostgreSQL writes run concurrently under READ COMMITTED; the guarded ``UPDATE`` statements of the
other modules are what keep them correct, and a deadlock or serialization failure is retried.

:class:`Database` is the base of :class:`~veil.gateway.ledger.Ledger`: it owns the engine, the
clock (``now``, injected once) and the ways in: :meth:`Database._write` and :meth:`Database._read`
through SQLAlchemy, and ``_hot`` (``hot.py``), the request path's statements on the driver itself,
under the same write lock on SQLite. :func:`database_unavailable` tells "the database is down" (a 503) from a
bug (a 500) for the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Executable, RowMapping, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from veil.gateway.ledger.hot import hot_path
from veil.wire.errors import InvalidBody

# One logger for the whole package, whichever module a record comes from.
logger = logging.getLogger("veil.gateway.ledger")

T = TypeVar("T")

Clock = Callable[[], float]
"""Where the ledger reads the time: float Unix seconds (``time.time`` unless a test says)."""

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
# pg_advisory_xact_lock key held while migrating ("veilledg" in ASCII): two gateways starting at
# once on one PostgreSQL database run the upgrade one after the other.
MIGRATION_LOCK_KEY: Final = 0x7665696C6C656467
# PostgreSQL SQLSTATEs after which the whole transaction can simply be run again.
RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01"})  # serialization failure, deadlock
MAX_ATTEMPTS: Final = 5
_WRITE_OPTION: Final = "veil_write"
_MIGRATION_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the ledger database cannot be reached right now (down, restarting,
    connection cut) rather than a bug: such a request fails with 503, never 500.

    PostgreSQL SQLSTATE classes 08 (connection exception) and 57P (admin or crash shutdown,
    cannot connect now), a connection SQLAlchemy invalidated, a DBAPI OperationalError
    (SQLAlchemy's, or sqlite3's from the request path of ``hot.py``), or an ``OSError`` (refused,
    reset, timed out, a connection ``hot.py`` lost) anywhere in the cause chain.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError | OperationalError | sqlite3.OperationalError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(("08", "57P")):
            return True
        orig = current.orig if isinstance(current, DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic ``Config`` for the ledger migrations, built in code (no ``alembic.ini``)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url is not None:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _upgrade_head(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transactions out of the driver's hands; _on_sqlite_begin emits BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # The busy timeout first: switching a new database to WAL takes its lock, and several
        # gateways opening it at once would otherwise fail at once with "database is locked".
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe in WAL mode
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Connection) -> None:
    # A write transaction takes the database write lock up front (waiting up to the busy timeout)
    # instead of upgrading a read lock later, which SQLite answers with "database is locked".
    immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_engine(database_url: str) -> AsyncEngine:
    """An engine for ``sqlite+aiosqlite:///path`` (with the settings above) or
    ``postgresql+asyncpg://...``; ``ValueError`` for anything else."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ValueError("the SQLite ledger needs a file path (sqlite+aiosqlite:///path)")
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
        return engine
    if backend == "postgresql":
        return create_async_engine(url, pool_pre_ping=True)
    raise ValueError(f"unsupported ledger database backend: {backend}")


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)


async def first_row(conn: AsyncConnection, statement: Executable) -> RowMapping | None:
    return (await conn.execute(statement)).mappings().first()


async def one_row(conn: AsyncConnection, statement: Executable) -> RowMapping:
    return (await conn.execute(statement)).mappings().one()


async def all_rows(conn: AsyncConnection, statement: Executable) -> Sequence[RowMapping]:
    return (await conn.execute(statement)).mappings().all()


class Database:
    """One engine, its transactions and the ledger's clock; the base of every ledger part."""

    def __init__(self, engine: AsyncEngine, *, now: Clock = time.time) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{_WRITE_OPTION: True})
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._is_postgres = engine.dialect.name == "postgresql"
        # Serializes this process's writes on SQLite (other processes wait on BEGIN IMMEDIATE).
        self._sqlite_writes = asyncio.Lock()
        # authenticate, claim and settle: one round trip each, on the driver (hot.py)
        self._hot = hot_path(engine.url, self._write_lock)
        self.now: Clock = now
        """The clock every timestamp comes from, unless a call passes its own ``now``."""

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for operators and tests that read tables directly)."""
        return self._engine

    def _when(self, now: float | None) -> float:
        """The time a call runs at: the one it was given, else the ledger's clock."""
        return self.now() if now is None else now

    async def close(self) -> None:
        await self._hot.close()
        await self._engine.dispose()

    async def _migrate(self) -> None:
        # Alembic's ``context`` and ``op`` are process-wide proxies, so two ledgers opened in one
        # process (tests, a CLI inside a running gateway) must not interleave their upgrades;
        # other processes are kept out by the advisory lock or SQLite's write lock.
        loop_lock = _MIGRATION_LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with loop_lock, self._write_lock(), self._writer.begin() as conn:
            if self._is_postgres:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            await conn.run_sync(_upgrade_head)

    def _write_lock(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._sqlite_writes if self._is_sqlite else contextlib.nullcontext()

    async def _write(self, body: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``body`` in one write transaction, retried on a PostgreSQL deadlock."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._write_lock(), self._writer.begin() as conn:
                    return await body(conn)
            except DBAPIError as exc:
                if attempt == MAX_ATTEMPTS or _sqlstate(exc) not in RETRYABLE_SQLSTATES:
                    raise
                logger.info("ledger transaction retried after SQLSTATE %s", _sqlstate(exc))
                await asyncio.sleep(0.005 * attempt * (1 + secrets.randbelow(8)))
        raise AssertionError("unreachable")

    async def _write_unique(
        self, body: Callable[[AsyncConnection], Awaitable[T]], message: str
    ) -> T:
        """:meth:`_write`, run again (up to 3 times) after a unique violation, then
        ``InvalidBody(message)``."""
        # A unique violation here is either a name taken by a concurrent writer (a check inside
        # body() reports it on the next attempt) or, with odds of 2**-42 per pair of keys, two
        # keys sharing a prefix (the next attempt draws a new key).
        for _ in range(3):
            try:
                return await self._write(body)
            except IntegrityError:
                continue
        raise InvalidBody(message)

    @contextlib.asynccontextmanager
    async def _read(self, *, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            if snapshot and self._is_postgres:
                # Several statements that must see one consistent state (reconcile()).
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            yield conn
