"""The request path's ledger statements, on the database driver itself: one round trip each.

Every paid request checks an API key, holds units (the lock), claims them and settles them.
Through SQLAlchemy's pool each of those was a transaction of several trips (on PostgreSQL a pre-ping, ``BEGIN``, the
statement, ``COMMIT``; on SQLite as many hand-offs to aiosqlite's thread), plus the statement built
and compiled again on every call. Here the same rules are the same guarded SQL, written once per
dialect and sent straight to the driver:

- **PostgreSQL** (asyncpg, a small pool of its own next to SQLAlchemy's): each operation is one
  statement in autocommit, so one round trip, atomic by itself. Settling is one statement too: a
  data-modifying CTE leaves the reservation's live state, moves the stack's counters and writes the
  usage receipt, all or nothing (a second settle finds no live row and changes nothing); so is
  holding units (pick the stack, take the units, insert the reservation). A deadlock
  or serialization failure is retried, like :meth:`Database._write` does.
- **SQLite** (one ``sqlite3`` connection owned by one thread): an operation is one hand-off to that
  thread, which runs the whole transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) there; writes also
  hold the ledger's in-process write lock, so they queue behind SQLAlchemy's writers instead of
  polling SQLite's busy timeout.

The statements (``statements.py``) are the ones the ledger's modules describe (``accounts``,
``reservations``, ``settlement``), their states taken from the transition table. A lock this path
cannot give (no such node, no stack fits, a race lost) changes nothing here and is asked again on
the full path, which explains the refusal. What they return is shaped like a
SQLAlchemy row mapping (``row["column"]``), so the modules' converters read it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from sqlalchemy.engine import URL

from veil.gateway.ledger.state import Operation
from veil.gateway.ledger.statements import (
    AUTH_SQL,
    COLUMNS,
    SELECT_RESERVATION,
    SQLITE_MOVE_STACK,
    SQLITE_NODE,
    SQLITE_RECEIPT,
    SQLITE_RESERVE,
    claim_sql,
    finish_sql,
    pg_finish_sql,
    pg_reserve_sql,
    pick_stack_sql,
    take_sql,
)

T = TypeVar("T")
Row = Mapping[str, Any]

MAX_ATTEMPTS: Final = 5
RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01"})  # serialization failure, deadlock
SQLITE_BUSY_TIMEOUT_S: Final = 30.0
POOL_SIZE: Final = 8
CLOSE_TIMEOUT_S: Final = 5.0
CHECKPOINT_EVERY: Final = 200  # commits on the loop's connection between WAL checkpoints


class HotPath:
    """The three request-path operations on one backend (see the module)."""

    async def authenticate_row(self, prefix: str) -> Row | None:
        raise NotImplementedError

    async def claim(self, params: Sequence[Any], *, by_id: bool, by_model: bool) -> Row | None:
        raise NotImplementedError

    async def finish(self, operation: Operation, params: Sequence[Any]) -> tuple[Row | None, bool]:
        """(the reservation, whether this call ended it); ``None``: no such reservation.
        Parameters: id, units to charge, prompt tokens, completion tokens, receipt, now."""
        raise NotImplementedError

    async def reserve(self, params: Sequence[Any], *, by_stack: bool) -> Row | None:
        """Hold units: 1 user id, 2 model, 3 units, 4 node id, 5 the new reservation's id, 6 now,
        7 deadline, (8 the stack id). None: nothing held; the full path says why."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _Busy(Exception):
    """SQLite is locked by another connection: try again where waiting is allowed."""


def _unless_busy(attempt: Callable[[], T]) -> T:
    try:
        return attempt()
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (
            sqlite3.SQLITE_BUSY,
            sqlite3.SQLITE_LOCKED,
        ):
            raise _Busy from exc
        raise


def _quietly(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failed checkpoint is retried with the next one


class ConnectionLost(ConnectionError):
    """The database connection broke mid-operation (a restart, a failover): an outage, which
    ``database_unavailable`` reports as such (an ``OSError``), never a bug."""


def _connection_gone(conn: Any, exc: Exception) -> bool:
    """Whether ``exc`` came from the connection itself breaking, whatever asyncpg called it: the
    connection is closed, or its protocol was left mid-operation by the cut."""
    from asyncpg.exceptions import InterfaceError, InternalClientError

    if isinstance(exc, (InternalClientError, InterfaceError, OSError)):
        return True
    try:
        return bool(conn.is_closed())
    except InterfaceError:  # the connection was already taken back from us: it is gone too
        return True


async def _keep_session(conn: Any) -> None:
    """A pool connection handed back: asyncpg has already rolled back any open transaction; the
    default reset (``RESET ALL``, ``UNLISTEN *``, advisory unlocks, ``CLOSE ALL``) would add a
    round trip to every ledger operation, and these single statements change no session state."""


class PostgresHot(HotPath):
    def __init__(self, url: URL) -> None:
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening = asyncio.Lock()
        self._claims: dict[tuple[bool, bool], str] = {}
        self._finishes = {op: pg_finish_sql(op) for op in (Operation.SETTLE, Operation.RELEASE)}
        self._reserves = {named: pg_reserve_sql(by_stack=named) for named in (False, True)}

    async def _get_pool(self) -> Any:
        import asyncpg  # the gateway extra; a client install never opens a ledger

        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._pool is not None:  # opened on another event loop: unusable here
            self._pool.terminate()
            self._pool, self._opening = None, asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=0, max_size=POOL_SIZE, timeout=10, reset=_keep_session
                )
                self._loop = loop
        return self._pool

    async def _run(self, call: Callable[[Any], Awaitable[T]]) -> T:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            pool = await self._get_pool()
            try:
                async with pool.acquire() as conn:
                    try:
                        return await call(conn)
                    except Exception as exc:
                        if _connection_gone(conn, exc):
                            raise ConnectionLost("the ledger database connection broke") from exc
                        raise
            except Exception as exc:
                if attempt == MAX_ATTEMPTS or getattr(exc, "sqlstate", None) not in (
                    RETRYABLE_SQLSTATES
                ):
                    raise
                await asyncio.sleep(0.005 * attempt * (1 + secrets.randbelow(8)))
        raise AssertionError("unreachable")

    async def authenticate_row(self, prefix: str) -> Row | None:
        sql = AUTH_SQL.format("$1")
        row: Row | None = await self._run(lambda conn: conn.fetchrow(sql, prefix))
        return row

    async def claim(self, params: Sequence[Any], *, by_id: bool, by_model: bool) -> Row | None:
        sql = self._claims.get((by_id, by_model))
        if sql is None:
            sql = self._claims[by_id, by_model] = claim_sql("$", by_id=by_id, by_model=by_model)
        row: Row | None = await self._run(lambda conn: conn.fetchrow(sql, *params))
        return row

    async def finish(self, operation: Operation, params: Sequence[Any]) -> tuple[Row | None, bool]:
        sql = self._finishes[operation]

        async def call(conn: Any) -> tuple[Row | None, bool]:
            row = await conn.fetchrow(sql, *params)
            if row is not None:
                return row, True
            return await conn.fetchrow(SELECT_RESERVATION.format("$1"), params[0]), False

        return await self._run(call)

    async def reserve(self, params: Sequence[Any], *, by_stack: bool) -> Row | None:
        sql = self._reserves[by_stack]
        row: Row | None = await self._run(lambda conn: conn.fetchrow(sql, *params))
        return row

    async def close(self) -> None:
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if self._loop is asyncio.get_running_loop():
            try:  # waits for connections still in use: bounded, then cut
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
                return
            except TimeoutError:
                pass
        pool.terminate()


class SqliteHot(HotPath):
    """First on the event loop itself, on a connection that never waits for a lock (busy timeout
    0): an operation is a few tens of microseconds of SQLite work on pages in memory, far less
    than handing it to a thread and back on a busy machine. Should the database be locked by
    another process (``veil users`` writing, a second gateway), the operation runs again on the
    thread instead, which waits up to the busy timeout without blocking the loop. The loop's
    connection leaves WAL checkpoints to the thread (every ``CHECKPOINT_EVERY`` commits), so a
    commit never waits for one."""

    def __init__(self, path: str, write_lock: Callable[[], Any]) -> None:
        self._path = path
        self._write_lock = write_lock
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="veil-ledger")
        self._conn: sqlite3.Connection | None = None  # the thread's
        self._now: sqlite3.Connection | None = None  # the event loop's
        self._commits = 0
        self._claims: dict[tuple[bool, bool], str] = {}

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
            conn.execute(f"PRAGMA {pragma}")
        return conn

    def _connection(self) -> sqlite3.Connection:  # in the thread
        if self._conn is None:
            self._conn = self._open(SQLITE_BUSY_TIMEOUT_S)
        return self._conn

    def _loop_connection(self) -> sqlite3.Connection:
        if self._now is None:
            self._now = self._open(0.0)
            self._now.execute("PRAGMA wal_autocheckpoint=0")
        return self._now

    @staticmethod
    def _transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _checkpoint(self) -> None:  # in the thread
        self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def _in_thread(self, work: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        loop = asyncio.get_running_loop()

        def run() -> T:
            conn = self._connection()
            return self._transaction(conn, work) if write else work(conn)

        if not write:
            with contextlib.suppress(_Busy):  # locked elsewhere: on the thread
                return _unless_busy(lambda: work(self._loop_connection()))
            return await loop.run_in_executor(self._thread, run)
        async with self._write_lock():
            with contextlib.suppress(_Busy):
                result = _unless_busy(lambda: self._transaction(self._loop_connection(), work))
                self._commits += 1
                if self._commits % CHECKPOINT_EVERY == 0:
                    loop.run_in_executor(self._thread, self._checkpoint).add_done_callback(_quietly)
                return result
            # Once handed to the thread the transaction runs to its end: a caller cancelled
            # meanwhile still holds the write lock until it has.
            done = loop.run_in_executor(self._thread, run)
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await done
                raise

    async def authenticate_row(self, prefix: str) -> Row | None:
        sql = AUTH_SQL.format("?")
        names = ("key_hash", "is_admin", "revoked_at", "id", "name", "created_at",
                 "requests_per_minute", "concurrency")  # fmt: skip

        def work(conn: sqlite3.Connection) -> Row | None:
            row = conn.execute(sql, (prefix,)).fetchone()
            return None if row is None else dict(zip(names, row, strict=True))

        return await self._in_thread(work, write=False)

    async def claim(self, params: Sequence[Any], *, by_id: bool, by_model: bool) -> Row | None:
        sql = self._claims.get((by_id, by_model))
        if sql is None:
            sql = self._claims[by_id, by_model] = claim_sql("?", by_id=by_id, by_model=by_model)

        def work(conn: sqlite3.Connection) -> Row | None:
            row = conn.execute(sql, tuple(params)).fetchone()
            return None if row is None else dict(zip(COLUMNS, row, strict=True))

        return await self._in_thread(work, write=True)

    async def finish(self, operation: Operation, params: Sequence[Any]) -> tuple[Row | None, bool]:
        reservation_id, charge, prompt, completion, blob, now = params
        finish = finish_sql("?", operation)

        def work(conn: sqlite3.Connection) -> tuple[Row | None, bool]:
            row = conn.execute(finish, (reservation_id, charge)).fetchone()
            if row is None:
                found = conn.execute(SELECT_RESERVATION.format("?"), (reservation_id,)).fetchone()
                return (None if found is None else dict(zip(COLUMNS, found, strict=True))), False
            done = dict(zip(COLUMNS, row, strict=True))
            conn.execute(
                SQLITE_MOVE_STACK, (done["units"], done["charged_units"], done["stack_id"])
            )
            conn.execute(
                SQLITE_RECEIPT,
                (done["id"], prompt, completion, done["charged_units"], blob, now),
            )
            return done, True

        return await self._in_thread(work, write=True)

    async def reserve(self, params: Sequence[Any], *, by_stack: bool) -> Row | None:
        pick = pick_stack_sql("?", by_stack=by_stack)
        take = take_sql("?", "?1")
        user, model, units, node = params[:4]

        def work(conn: sqlite3.Connection) -> Row | None:
            if conn.execute(SQLITE_NODE, (node,)).fetchone() is None:
                return None
            chosen = conn.execute(pick, tuple(params) if by_stack else (user, model, units))
            found = chosen.fetchone()
            if found is None:
                return None
            conn.execute(take, (found[0], None, units))
            row = conn.execute(SQLITE_RESERVE, (*params[:7], None, found[0])).fetchone()
            return dict(zip(COLUMNS, row, strict=True))

        return await self._in_thread(work, write=True)

    async def close(self) -> None:
        if self._now is not None:
            self._now.close()
            self._now = None

        def shut() -> None:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._conn.close()
                self._conn = None

        with contextlib.suppress(RuntimeError):  # already shut down
            await asyncio.get_running_loop().run_in_executor(self._thread, shut)
        self._thread.shutdown(wait=False)


def hot_path(engine_url: URL, write_lock: Callable[[], Any]) -> HotPath:
    """The request path for the ledger's engine (the backends ``db.create_engine`` takes)."""
    backend = engine_url.get_backend_name()
    if backend == "postgresql":
        return PostgresHot(engine_url)
    if backend == "sqlite" and engine_url.database:
        return SqliteHot(engine_url.database, write_lock)
    raise ValueError(f"unsupported ledger database backend: {backend}")
