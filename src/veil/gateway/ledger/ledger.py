"""The stacks ledger: who may spend which prepaid units, and what each request actually cost.

The life of a request, in the ledger's words::

    reserve()   POST /v1/nodes/lock        stack.reserved += units      reservation 'held'
    claim()     the sealed request arrives (same user, same stack)     'held' -> 'in_flight'
                (its own lock's reservation when it names it)          expires_at = now + lease
    heartbeat() the node is still serving it                           expires_at = now + lease
    settle()    the node answered          reserved -= units,          -> 'settled'
                                           used += min(charged, units)
    release()   nothing to charge          reserved -= units           -> 'released'
    expire()    lock never used, or a      reserved -= units           -> 'expired'
                request lost mid-flight

The rules, and why each is enforced where it is:

1. **A stack never promises more than it holds**: ``reserved + used <= total``. Every write is one
   SQL ``UPDATE`` whose ``WHERE`` clause carries the guard, so two gateways sharing a PostgreSQL
   database cannot both take the last units (the row lock makes the second ``UPDATE`` re-check the
   guard against the first one's result). A CHECK constraint backs it up in the schema.
2. **Only the owner spends a stack.** Someone else's stack id answers exactly like a nonexistent
   one (``NotFound``), so ids cannot be probed, and their units are never touched.
3. **A request needs a live reservation of the same caller on the same stack** (``claim``);
   otherwise ``UnavailableStack`` (425). Each reservation serves one request. A request that
   names its lock's reservation (the lock's ``reservation_id``) takes exactly that one, so one
   caller's concurrent requests never take each other's units; one that names none (atoma-sdk)
   takes the caller's oldest held reservation on the stack.
4. **Settlement charges at most what was reserved** and gives the rest back, exactly once:
   the reservation leaves its live state in the same guarded ``UPDATE`` that computes the charge,
   so a second ``settle`` (a retry, another gateway) finds nothing to do and returns the first
   result.
5. **Nothing holds units forever, and nothing being served is forgiven.** Expiry is a column
   (``expires_at``), not a timer in memory, so it survives restarts and any gateway can sweep it.
   A claim turns the lock's deadline into a *lease* (``now + lease_seconds``, the node timeout)
   and the gateway serving the request renews it (``heartbeat``) for as long as the request
   runs, however long that is; an in-flight reservation expires only once its lease is a grace
   period old, i.e. when the gateway that served it is gone (crashed mid-request: it must not pin
   the units). Settling an in-flight reservation always charges, whatever its lock's timeout was.

Choices worth knowing:

- ``reserve`` without a stack id picks the caller's **best fit**: the active stack for the model
  with the fewest free units that still covers the request (ties: the oldest). Small leftovers get
  used up first and big stacks stay whole for big requests.
- A locked or settling stack takes no new reservations (``Locked``); reservations already on it
  may still be claimed and settled, or they expire.
- A reservation that expired is final: settling it later charges nothing (the units were already
  handed back and may have been reserved by someone else).
- Prices are stored, not applied: ``price`` is micro-units of currency per million compute units.

Times are float Unix seconds, and every method that depends on the clock takes ``now`` so tests
(and operators replaying history) can inject it. Results are small frozen dataclasses, never ORM
objects, so nothing outside this module holds a database session.

On SQLite (one gateway, ``veil serve``) writes are serialized: an in-process lock plus
``BEGIN IMMEDIATE`` and a busy timeout, with the database in WAL mode so reads never wait. On
PostgreSQL writes run concurrently under READ COMMITTED; the guarded ``UPDATE`` statements are what
keep them correct, and a deadlock or serialization failure is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Executable, RowMapping, case, event, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from veil.gateway.ledger.apikeys import (
    PREFIX_LENGTH,
    generate_api_key,
    hash_api_key,
    hashes_match,
    key_prefix,
    looks_like_api_key,
)
from veil.gateway.ledger.schema import (
    LIVE_STATES,
    STACK_STATES,
    ApiKeyRow,
    NodeRow,
    ReservationRow,
    StackRow,
    UsageReceiptRow,
    UserRow,
)
from veil.wire.envelopes import MAX_ID
from veil.wire.errors import (
    AuthError,
    BalanceError,
    InvalidBody,
    Locked,
    NotFound,
    UnavailableStack,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
DEFAULT_IN_FLIGHT_GRACE: Final = 300.0
"""Seconds an in-flight request's lease may be overdue (no heartbeat) before expiry."""
DEFAULT_LEASE_SECONDS: Final = 300.0
"""How long a claim or a heartbeat covers an in-flight request (the gateway's node timeout)."""
ADMIN_USER: Final = "admin"
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
# Compared against when a key's prefix is unknown, so unknown and wrong keys take the same path.
_DUMMY_HASH: Final = hash_api_key("veil_" + "0" * 43)

R = ReservationRow
S = StackRow


@dataclass(frozen=True)
class User:
    """A user. ``is_admin``: from :meth:`Ledger.authenticate`, whether the key used is an admin
    key; from :meth:`Ledger.get_user`, whether the user holds any unrevoked admin key."""

    id: int
    name: str
    is_admin: bool
    created_at: float
    # The user's own rate limits; None: the gateway's configured default.
    requests_per_minute: int | None = None
    concurrency: int | None = None


@dataclass(frozen=True)
class UsageRecord:
    """One settled request as the caller may check it (``GET /v1/usage``): what was charged, and
    the node's signed usage receipt it was charged from (``receipt``: the signed token as the node
    sent it; None if the node sent none). ``id`` orders the records and pages through them."""

    id: int
    created_at: float
    request_id: str | None
    reservation_id: str
    stack_id: int
    model: str
    node_small_id: int
    reserved_units: int
    charged_units: int
    prompt_tokens: int
    completion_tokens: int
    receipt: str | None


@dataclass(frozen=True)
class Stack:
    """A stack of prepaid units (``id`` is the wire's ``stack_small_id``).

    ``price`` is micro-units of currency per one million compute units.
    """

    id: int
    user_id: int
    user: str
    model: str
    total_units: int
    reserved_units: int
    used_units: int
    price: int
    state: str
    created_at: float

    @property
    def free_units(self) -> int:
        return self.total_units - self.reserved_units - self.used_units


@dataclass(frozen=True)
class Reservation:
    """Units held on a stack for one request.

    ``charged_units`` is None while the reservation is live ('held' or 'in_flight') and the number
    of units actually charged once it is final ('settled'; 0 when 'released' or 'expired').
    """

    id: str
    stack_id: int
    user_id: int
    node_small_id: int
    units: int
    state: str
    created_at: float
    expires_at: float
    charged_units: int | None
    request_id: str | None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def released_units(self) -> int:
        """Units handed back to the stack when the reservation ended (0 while still live)."""
        return 0 if self.charged_units is None else self.units - self.charged_units


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
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe in WAL mode
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Connection) -> None:
    # A write transaction takes the database write lock up front (waiting up to the busy timeout)
    # instead of upgrading a read lock later, which SQLite answers with "database is locked".
    immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)


async def _first(conn: AsyncConnection, statement: Executable) -> RowMapping | None:
    return (await conn.execute(statement)).mappings().first()


async def _one(conn: AsyncConnection, statement: Executable) -> RowMapping:
    return (await conn.execute(statement)).mappings().one()


async def _all(conn: AsyncConnection, statement: Executable) -> Sequence[RowMapping]:
    return (await conn.execute(statement)).mappings().all()


def _to_user(row: RowMapping, *, is_admin: bool) -> User:
    return User(
        id=row["id"],
        name=row["name"],
        is_admin=is_admin,
        created_at=row["created_at"],
        requests_per_minute=row.get("requests_per_minute"),
        concurrency=row.get("concurrency"),
    )


def _receipt_text(value: Any) -> str | None:
    """A stored receipt as text (a BLOB written by the ledger; TEXT if someone else wrote it)."""
    if value is None or isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "replace")


MAX_LIMIT: Final = 2**31 - 1
"""Rate limits live in 32-bit INTEGER columns."""


def _check_limit(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidBody(f"{what} must be an integer from 1 to {MAX_LIMIT}")
    return value


def _to_stack(row: RowMapping) -> Stack:
    return Stack(
        id=row["id"],
        user_id=row["user_id"],
        user=row["user_name"],
        model=row["model"],
        total_units=row["total_units"],
        reserved_units=row["reserved_units"],
        used_units=row["used_units"],
        price=row["price_per_million_units"],
        state=row["state"],
        created_at=row["created_at"],
    )


def _to_reservation(row: RowMapping) -> Reservation:
    return Reservation(
        id=row["id"],
        stack_id=row["stack_id"],
        user_id=row["user_id"],
        node_small_id=row["node_small_id"],
        units=row["units"],
        state=row["state"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        charged_units=row["charged_units"],
        request_id=row["request_id"],
    )


_RESERVATION_COLUMNS = tuple(R.__table__.c)
_STACK_SELECT = select(*S.__table__.c, UserRow.name.label("user_name")).join(
    UserRow, UserRow.id == S.user_id
)


def _check_count(value: int, what: str, *, minimum: int, maximum: int = MAX_ID) -> int:
    """Counts live in signed 64-bit columns: anything outside ``minimum..maximum`` is refused
    here, naming the field, before a driver could overflow binding it."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidBody(f"{what} must be an integer from {minimum} to {maximum}")
    return value


def _check_seconds(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 10**9:
        raise ValueError(f"{what} must be a positive number of seconds")
    return float(value)


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InvalidBody(f"{what} must be a non-empty string of at most 200 characters")
    return value


class Ledger:
    """The ledger on one database. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(
        self, engine: AsyncEngine, *, in_flight_grace: float = DEFAULT_IN_FLIGHT_GRACE
    ) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{_WRITE_OPTION: True})
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._is_postgres = engine.dialect.name == "postgresql"
        # Serializes this process's writes on SQLite (other processes wait on BEGIN IMMEDIATE).
        self._sqlite_writes = asyncio.Lock()
        self.in_flight_grace = float(in_flight_grace)

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, database_url: str, *, in_flight_grace: float = DEFAULT_IN_FLIGHT_GRACE
    ) -> Ledger:
        """Connect to ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...`` and bring the
        schema to the newest migration (on PostgreSQL under an advisory lock, so gateways
        starting together migrate one at a time).

        Opening does not sweep expired reservations; the gateway runs :meth:`run_expiry` (which
        sweeps at once, then periodically).
        """
        url = make_url(database_url)
        backend = url.get_backend_name()
        if backend == "sqlite":
            if not url.database or url.database == ":memory:":
                raise ValueError("the SQLite ledger needs a file path (sqlite+aiosqlite:///path)")
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(url)
            event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
            event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
        elif backend == "postgresql":
            engine = create_async_engine(url, pool_pre_ping=True)
        else:
            raise ValueError(f"unsupported ledger database backend: {backend}")
        ledger = cls(engine, in_flight_grace=in_flight_grace)
        try:
            await ledger._migrate()
        except BaseException:
            await engine.dispose()
            raise
        return ledger

    async def close(self) -> None:
        await self._engine.dispose()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for operators and tests that read tables directly)."""
        return self._engine

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

    # -- transactions ----------------------------------------------------------------------------

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

    @contextlib.asynccontextmanager
    async def _read(self, *, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            if snapshot and self._is_postgres:
                # Several statements that must see one consistent state (reconcile()).
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            yield conn

    # -- users and API keys ----------------------------------------------------------------------

    async def _insert_key(self, conn: AsyncConnection, user_id: int, admin: bool) -> str:
        api_key = generate_api_key()
        await conn.execute(
            insert(ApiKeyRow).values(
                user_id=user_id,
                prefix=key_prefix(api_key),
                key_hash=hash_api_key(api_key),
                is_admin=admin,
                created_at=time.time(),
            )
        )
        return api_key

    async def _user_id(self, conn: AsyncConnection, name: str) -> int:
        user_id = (
            await conn.execute(select(UserRow.id).where(UserRow.name == name))
        ).scalar_one_or_none()
        if user_id is None:
            raise NotFound(f"no user named {name!r}")
        return int(user_id)

    async def create_user(
        self,
        name: str,
        *,
        admin: bool = False,
        requests_per_minute: int | None = None,
        concurrency: int | None = None,
    ) -> tuple[User, str]:
        """Create a user and their first API key. The key is returned here, once, and never
        stored: show it to the user and forget it. Limits left None follow the gateway's
        defaults."""
        _check_name(name, "user name")
        limits = {
            "requests_per_minute": _check_limit(requests_per_minute, "requests_per_minute"),
            "concurrency": _check_limit(concurrency, "concurrency"),
        }

        async def body(conn: AsyncConnection) -> tuple[User, str]:
            exists = await conn.execute(select(UserRow.id).where(UserRow.name == name))
            if exists.first() is not None:
                raise InvalidBody(f"a user named {name!r} already exists")
            row = await _one(
                conn,
                insert(UserRow)
                .values(name=name, created_at=time.time(), **limits)
                .returning(*UserRow.__table__.c),
            )
            api_key = await self._insert_key(conn, row["id"], admin)
            return _to_user(row, is_admin=admin), api_key

        return await self._retry_integrity(body, f"a user named {name!r} already exists")

    async def create_api_key(self, user_name: str, admin: bool = False) -> str:
        """A new API key for an existing user (returned once, stored only as a hash)."""

        async def body(conn: AsyncConnection) -> str:
            return await self._insert_key(conn, await self._user_id(conn, user_name), admin)

        return await self._retry_integrity(body, "could not create an API key")

    async def _retry_integrity(
        self, body: Callable[[AsyncConnection], Awaitable[T]], message: str
    ) -> T:
        # A unique violation here is either a name taken by a concurrent writer (a check inside
        # body() reports it on the next attempt) or, with odds of 2**-42 per pair of keys, two
        # keys sharing a prefix (the next attempt draws a new key).
        for _ in range(3):
            try:
                return await self._write(body)
            except IntegrityError:
                continue
        raise InvalidBody(message)

    async def authenticate(self, api_key: str) -> User:
        """The user an API key belongs to; ``AuthError`` for an unknown, wrong or revoked key.

        The key is found by its prefix, then its SHA-256 is compared in constant time. An unknown
        prefix is compared against a dummy hash so it takes the same path. Messages never contain
        the key.
        """
        if not isinstance(api_key, str) or not looks_like_api_key(api_key):
            raise AuthError("invalid API key")
        presented = hash_api_key(api_key)
        async with self._read() as conn:
            row = await _first(
                conn,
                select(
                    ApiKeyRow.key_hash,
                    ApiKeyRow.is_admin,
                    ApiKeyRow.revoked_at,
                    UserRow.id,
                    UserRow.name,
                    UserRow.created_at,
                    UserRow.requests_per_minute,
                    UserRow.concurrency,
                )
                .join(UserRow, UserRow.id == ApiKeyRow.user_id)
                .where(ApiKeyRow.prefix == key_prefix(api_key)),
            )
        if row is None:
            hashes_match(presented, _DUMMY_HASH)
            raise AuthError("invalid API key")
        if not hashes_match(presented, bytes(row["key_hash"])):
            raise AuthError("invalid API key")
        if row["revoked_at"] is not None:
            raise AuthError("API key revoked")
        return _to_user(row, is_admin=bool(row["is_admin"]))

    async def revoke_api_key(self, prefix_or_key: str, *, now: float | None = None) -> bool:
        """Revoke a key, named by its 12-character prefix or by the whole key.

        Returns True if the key was live and is now revoked, False if it was already revoked;
        ``NotFound`` if there is no such key (a whole key must also match its stored hash).
        """
        if not isinstance(prefix_or_key, str) or len(prefix_or_key) < PREFIX_LENGTH:
            raise NotFound("no such API key")
        when = time.time() if now is None else now
        match = [ApiKeyRow.prefix == key_prefix(prefix_or_key)]
        if looks_like_api_key(prefix_or_key):
            match.append(ApiKeyRow.key_hash == hash_api_key(prefix_or_key))
        elif len(prefix_or_key) != PREFIX_LENGTH:
            raise NotFound("no such API key")

        async def body(conn: AsyncConnection) -> bool:
            revoked = await conn.execute(
                update(ApiKeyRow)
                .where(*match, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=when)
                .returning(ApiKeyRow.id)
            )
            if revoked.first() is not None:
                return True
            if (await conn.execute(select(ApiKeyRow.id).where(*match))).first() is None:
                raise NotFound("no such API key")
            return False

        return await self._write(body)

    async def get_user(self, name: str) -> User:
        async with self._read() as conn:
            row = await _first(conn, select(*UserRow.__table__.c).where(UserRow.name == name))
            if row is None:
                raise NotFound(f"no user named {name!r}")
            admin_key = await conn.execute(
                select(ApiKeyRow.id).where(
                    ApiKeyRow.user_id == row["id"],
                    ApiKeyRow.is_admin.is_(True),
                    ApiKeyRow.revoked_at.is_(None),
                )
            )
            return _to_user(row, is_admin=admin_key.first() is not None)

    async def set_limits(
        self,
        name: str,
        *,
        requests_per_minute: int | None = None,
        concurrency: int | None = None,
    ) -> User:
        """Set a user's rate limits: None leaves a limit as it is, 0 returns it to the gateway's
        default, 1..2**31-1 sets it. Takes effect with the user's next request, on every gateway
        (limits are read when the API key is checked)."""
        values: dict[str, int | None] = {}
        for column, value in (
            ("requests_per_minute", requests_per_minute),
            ("concurrency", concurrency),
        ):
            if value is not None:
                values[column] = None if value == 0 else _check_limit(value, column)

        async def body(conn: AsyncConnection) -> None:
            user_id = await self._user_id(conn, name)
            if values:
                await conn.execute(update(UserRow).where(UserRow.id == user_id).values(**values))

        await self._write(body)
        return await self.get_user(name)

    async def ensure_admin_key(self) -> str | None:
        """On the very first start, create the ``admin`` user with an admin key and return the
        key (print it once); on every later start, and if any admin key was ever made, None.

        Two gateways starting together cannot both create one: the user name is unique, and the
        loser of that race gets None.
        """

        async def body(conn: AsyncConnection) -> str | None:
            any_admin = await conn.execute(
                select(ApiKeyRow.id).where(ApiKeyRow.is_admin.is_(True)).limit(1)
            )
            if any_admin.first() is not None:
                return None
            taken = await conn.execute(select(UserRow.id).where(UserRow.name == ADMIN_USER))
            if taken.first() is not None:
                return None
            user_id = (
                await conn.execute(
                    insert(UserRow)
                    .values(name=ADMIN_USER, created_at=time.time())
                    .returning(UserRow.id)
                )
            ).scalar_one()
            return await self._insert_key(conn, user_id, True)

        try:
            return await self._write(body)
        except IntegrityError:
            return None

    # -- stacks ----------------------------------------------------------------------------------

    async def _stack(self, conn: AsyncConnection, stack_id: int) -> Stack:
        row = await _first(conn, _STACK_SELECT.where(S.id == stack_id))
        if row is None:
            raise NotFound(f"no stack {stack_id}")
        return _to_stack(row)

    async def create_stack(
        self, user_name: str, model: str, units: int, price_per_million: int = 0
    ) -> Stack:
        """A new active stack of ``units`` for ``model`` owned by ``user_name``.
        ``price_per_million`` is micro-units of currency per million units (stored, not applied).
        """
        _check_count(units, "units", minimum=0)
        _check_count(price_per_million, "price_per_million", minimum=0)
        _check_name(model, "model")

        async def body(conn: AsyncConnection) -> Stack:
            user_id = await self._user_id(conn, user_name)
            stack_id = (
                await conn.execute(
                    insert(S)
                    .values(
                        user_id=user_id,
                        model=model,
                        total_units=units,
                        reserved_units=0,
                        used_units=0,
                        price_per_million_units=price_per_million,
                        state="active",
                        created_at=time.time(),
                    )
                    .returning(S.id)
                )
            ).scalar_one()
            return await self._stack(conn, stack_id)

        return await self._write(body)

    async def list_stacks(self, user_name: str | None = None) -> list[Stack]:
        """Every stack, or every stack of one user, oldest first."""
        async with self._read() as conn:
            query = _STACK_SELECT.order_by(S.id)
            if user_name is not None:
                query = query.where(S.user_id == await self._user_id(conn, user_name))
            rows = await _all(conn, query)
        return [_to_stack(row) for row in rows]

    async def get_stack(self, stack_id: int, *, user_id: int | None = None) -> Stack:
        """One stack; with ``user_id``, someone else's stack is ``NotFound`` like a missing one."""
        async with self._read() as conn:
            stack = await self._stack(conn, stack_id)
        if user_id is not None and stack.user_id != user_id:
            raise NotFound(f"no stack {stack_id}")
        return stack

    async def top_up(self, stack_id: int, units: int) -> Stack:
        """Add ``units`` to a stack's total (an atomic increment). Totals live in signed 64-bit
        columns: a top-up that would pass ``MAX_ID`` is refused (``InvalidBody``) in the same
        guarded statement, so concurrent top-ups cannot overflow it either."""
        _check_count(units, "units", minimum=1)
        _check_count(stack_id, "stack id", minimum=0)

        async def body(conn: AsyncConnection) -> Stack:
            done = await conn.execute(
                update(S)
                .where(S.id == stack_id, S.total_units <= MAX_ID - units)
                .values(total_units=S.total_units + units)
                .returning(S.id)
            )
            if done.first() is None:
                await self._stack(conn, stack_id)  # NotFound for an unknown stack
                raise InvalidBody(f"a stack holds at most {MAX_ID} units in total")
            return await self._stack(conn, stack_id)

        return await self._write(body)

    async def set_state(self, stack_id: int, state: str) -> Stack:
        """Set a stack 'active', 'locked' or 'settling'. Only 'active' stacks take new
        reservations; live reservations finish or expire whatever the state."""
        if state not in STACK_STATES:
            raise InvalidBody(f"stack state must be one of {', '.join(STACK_STATES)}")

        async def body(conn: AsyncConnection) -> Stack:
            done = await conn.execute(
                update(S).where(S.id == stack_id).values(state=state).returning(S.id)
            )
            if done.first() is None:
                raise NotFound(f"no stack {stack_id}")
            return await self._stack(conn, stack_id)

        return await self._write(body)

    # -- nodes -----------------------------------------------------------------------------------

    async def node_small_id(self, url: str) -> int:
        """The stable small id of a node URL, created on first sight (shared by all gateways)."""
        if not isinstance(url, str) or not url or len(url) > 2000:
            raise InvalidBody("node url must be a non-empty string of at most 2000 characters")
        query = select(NodeRow.id).where(NodeRow.url == url)
        async with self._read() as conn:
            found = (await conn.execute(query)).scalar_one_or_none()
        if found is not None:
            return int(found)

        async def body(conn: AsyncConnection) -> int:
            existing = (await conn.execute(query)).scalar_one_or_none()
            if existing is not None:
                return int(existing)
            created = await conn.execute(
                insert(NodeRow).values(url=url, created_at=time.time()).returning(NodeRow.id)
            )
            return int(created.scalar_one())

        try:
            return await self._write(body)
        except IntegrityError:  # another gateway registered it between our read and insert
            async with self._read() as conn:
                return int((await conn.execute(query)).scalar_one())

    # -- reservations ----------------------------------------------------------------------------

    async def reserve(
        self,
        user_id: int,
        model: str,
        units: int,
        *,
        node_small_id: int,
        ttl_seconds: float,
        stack_id: int | None = None,
        now: float | None = None,
    ) -> Reservation:
        """Hold ``units`` on a stack of ``user_id`` for ``model`` until ``now + ttl_seconds``.

        With ``stack_id``: that stack, which must be the caller's (else ``NotFound``), for this
        model (else ``NotFound``), active (else ``Locked``) and have the units free (else
        ``BalanceError``). Without: the caller's best-fit active stack for the model (fewest free
        units that still fit, then oldest); ``BalanceError`` saying the most units free on any
        one stack if none fits, ``Locked`` if the caller's stacks for the model are all inactive.
        """
        _check_count(units, "units", minimum=1)
        _check_seconds(ttl_seconds, "ttl_seconds")
        start = time.time() if now is None else now

        def take(candidate: int) -> Any:
            # The whole rule in one statement: re-checked by PostgreSQL after any row lock wait.
            # Written as "units fit in what is free" (a subtraction of counters whose sum never
            # passes the total) so no intermediate value can leave the signed 64-bit range.
            return (
                update(S)
                .where(
                    S.id == candidate,
                    S.user_id == user_id,
                    S.model == model,
                    S.state == "active",
                    S.total_units - S.reserved_units - S.used_units >= units,
                )
                .values(reserved_units=S.reserved_units + units)
                .returning(S.id)
            )

        async def body(conn: AsyncConnection) -> Reservation:
            node = await conn.execute(select(NodeRow.id).where(NodeRow.id == node_small_id))
            if node.first() is None:
                raise NotFound(f"no node {node_small_id}")
            chosen: int | None = None
            if stack_id is not None:
                if (await conn.execute(take(stack_id))).first() is None:
                    await self._explain_refusal(conn, user_id, model, units, stack_id)
                chosen = stack_id
            else:
                for _ in range(MAX_ATTEMPTS):
                    candidates = await self._best_fit(conn, user_id, model, units)
                    if not candidates:
                        await self._explain_refusal(conn, user_id, model, units, None)
                    for candidate in candidates:
                        if (await conn.execute(take(candidate))).first() is not None:
                            chosen = candidate
                            break
                    if chosen is not None:
                        break
                if chosen is None:  # lost every race MAX_ATTEMPTS times: report the state now
                    await self._explain_refusal(conn, user_id, model, units, None)
            row = await _one(
                conn,
                insert(R)
                .values(
                    id=secrets.token_hex(16),
                    stack_id=chosen,
                    user_id=user_id,
                    node_small_id=node_small_id,
                    units=units,
                    state="held",
                    created_at=start,
                    expires_at=start + ttl_seconds,
                )
                .returning(*_RESERVATION_COLUMNS),
            )
            return _to_reservation(row)

        return await self._write(body)

    async def _best_fit(
        self, conn: AsyncConnection, user_id: int, model: str, units: int
    ) -> Sequence[int]:
        free = S.total_units - S.reserved_units - S.used_units
        rows = await conn.execute(
            select(S.id)
            .where(S.user_id == user_id, S.model == model, S.state == "active", free >= units)
            .order_by(free, S.id)
        )
        return [int(r) for r in rows.scalars()]

    async def _explain_refusal(
        self, conn: AsyncConnection, user_id: int, model: str, units: int, stack_id: int | None
    ) -> None:
        """Raise the error that says why ``units`` could not be reserved (always raises)."""
        free = S.total_units - S.reserved_units - S.used_units
        if stack_id is not None:
            row = await _first(
                conn,
                select(S.user_id, S.model, S.state, free.label("free")).where(S.id == stack_id),
            )
            if row is None or row["user_id"] != user_id:
                raise NotFound(f"no stack {stack_id}")
            if row["model"] != model:
                raise NotFound(f"stack {stack_id} is not for model {model!r}")
            if row["state"] != "active":
                raise Locked(f"stack {stack_id} is {row['state']}")
            raise BalanceError(f"stack {stack_id} has {row['free']} free units, {units} requested")
        rows = await _all(
            conn, select(S.state, free.label("free")).where(S.user_id == user_id, S.model == model)
        )
        active = [int(r["free"]) for r in rows if r["state"] == "active"]
        if rows and not active:
            raise Locked(f"every stack for model {model!r} is locked or settling")
        raise BalanceError(
            f"not enough free units for model {model!r}: {units} requested, "
            f"at most {max(active, default=0)} free on one stack"
        )

    async def claim(
        self,
        user_id: int,
        stack_id: int,
        *,
        request_id: str,
        reservation_id: str | None = None,
        model: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: float | None = None,
    ) -> Reservation:
        """Attach an arriving request to a live 'held' reservation of this user on this stack,
        moving it to 'in_flight' and covering it until ``now + lease_seconds`` (never shortening
        the lock's deadline); the gateway renews that with :meth:`heartbeat` while it serves it.

        With ``reservation_id`` (the handle the lock returned, or the gateway's own reservation)
        exactly that reservation, else the caller's oldest held one on the stack (what atoma-sdk,
        which knows no handle, gets). With ``model``, the stack must be for that model.
        ``UnavailableStack`` if there is none (no lock, someone else's reservation or stack,
        another stack or model, expired, already used) or if ``request_id`` was already used."""
        _check_seconds(lease_seconds, "lease_seconds")
        when = time.time() if now is None else now
        lease_end = when + lease_seconds
        wanted = [R.id == reservation_id] if reservation_id is not None else []
        if model is not None:
            stack_model = select(S.model).where(S.id == stack_id).scalar_subquery()
            wanted.append(stack_model == model)
        oldest_held = (
            select(R.id)
            .where(
                *wanted,
                R.user_id == user_id,
                R.stack_id == stack_id,
                R.state == "held",
                R.expires_at > when,
            )
            .order_by(R.created_at, R.id)
            .limit(1)
            # PostgreSQL: concurrent claims pass over each other's rows instead of queueing on
            # the same one (SQLite serializes writers and renders nothing here).
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        claim = (
            update(R)
            .where(R.id == oldest_held, R.state == "held", R.expires_at > when)
            .values(
                state="in_flight",
                request_id=request_id,
                expires_at=case((R.expires_at < lease_end, lease_end), else_=R.expires_at),
            )
            .returning(*_RESERVATION_COLUMNS)
        )

        async def body(conn: AsyncConnection) -> Reservation | None:
            row = await _first(conn, claim)
            return None if row is None else _to_reservation(row)

        try:
            claimed = await self._write(body)
        except IntegrityError as exc:
            raise UnavailableStack("this request id was already used") from exc
        if claimed is None:
            if reservation_id is not None:
                raise UnavailableStack(
                    f"the reservation this request names is not a live lock of this caller on "
                    f"stack {stack_id}{'' if model is None else f' for model {model!r}'}: "
                    "lock again"
                )
            raise UnavailableStack(
                f"no live reservation on stack {stack_id} for this caller: lock first"
            )
        return claimed

    async def heartbeat(
        self,
        reservation_id: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: float | None = None,
    ) -> float | None:
        """The request is still being served: extend its in-flight reservation to
        ``now + lease_seconds`` (never shortening it). Returns the new deadline, or None when the
        reservation is no longer in flight (already settled, or expired by a sweep)."""
        _check_seconds(lease_seconds, "lease_seconds")
        when = time.time() if now is None else now
        lease_end = when + lease_seconds
        renew = (
            update(R)
            .where(R.id == reservation_id, R.state == "in_flight")
            .values(expires_at=case((R.expires_at < lease_end, lease_end), else_=R.expires_at))
            .returning(R.expires_at)
        )

        async def body(conn: AsyncConnection) -> float | None:
            row = (await conn.execute(renew)).first()
            return None if row is None else float(row[0])

        return await self._write(body)

    async def settle(
        self,
        reservation_id: str,
        charged_units: int,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        receipt: bytes | str | None = None,
        now: float | None = None,
    ) -> Reservation:
        """Charge ``min(charged_units, reserved)`` and hand the rest back to the stack, recording
        a usage receipt. Idempotent: on a reservation already final, changes nothing and returns
        it as it is (so a retry sees the first result). ``NotFound`` for an unknown id."""
        if isinstance(charged_units, bool) or not isinstance(charged_units, int):
            raise TypeError("charged_units must be an int")
        if charged_units < 0:
            raise ValueError("charged_units must be >= 0")
        # More than the column holds is more than any reservation: the charge is capped anyway.
        charged_units = min(charged_units, MAX_ID)
        _check_count(prompt_tokens, "prompt_tokens", minimum=0)
        _check_count(completion_tokens, "completion_tokens", minimum=0)
        return await self._finish(
            reservation_id,
            charged_units,
            "settled",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            receipt=receipt,
            now=now,
        )

    async def release(self, reservation_id: str, *, now: float | None = None) -> Reservation:
        """Hand every reserved unit back, charging nothing (state 'released'); idempotent."""
        return await self._finish(reservation_id, 0, "released", now=now)

    async def _finish(
        self,
        reservation_id: str,
        charged_units: int,
        final_state: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        receipt: bytes | str | None = None,
        now: float | None = None,
    ) -> Reservation:
        when = time.time() if now is None else now
        blob = receipt.encode("utf-8") if isinstance(receipt, str) else receipt
        # Leaving the live state and computing the charge is one guarded statement: exactly one
        # caller can move a reservation out of 'held'/'in_flight'.
        finish = (
            update(R)
            .where(R.id == reservation_id, R.state.in_(LIVE_STATES))
            .values(
                state=final_state,
                charged_units=case((R.units < charged_units, R.units), else_=charged_units),
            )
            .returning(*_RESERVATION_COLUMNS)
        )

        async def body(conn: AsyncConnection) -> Reservation:
            row = await _first(conn, finish)
            if row is None:
                existing = await _first(
                    conn, select(*_RESERVATION_COLUMNS).where(R.id == reservation_id)
                )
                if existing is None:
                    raise NotFound("no such reservation")
                return _to_reservation(existing)
            done = _to_reservation(row)
            charged = int(done.charged_units or 0)
            await conn.execute(
                update(S)
                .where(S.id == done.stack_id)
                .values(
                    reserved_units=S.reserved_units - done.units,
                    used_units=S.used_units + charged,
                )
            )
            await conn.execute(
                insert(UsageReceiptRow).values(
                    reservation_id=done.id,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    compute_units=charged,
                    receipt=blob,
                    created_at=when,
                )
            )
            return done

        return await self._write(body)

    async def expire(self, now: float | None = None) -> int:
        """Release every 'held' reservation whose ``expires_at`` has passed and every
        'in_flight' one whose lease (renewed by :meth:`heartbeat` while a gateway serves it) is
        more than the grace period overdue; returns how many expired.

        Safe to run from several gateways at once: a reservation leaves its live state in one
        guarded statement, so its units are handed back exactly once.
        """
        when = time.time() if now is None else now
        stale = (
            update(R)
            .where(
                or_(
                    (R.state == "held") & (R.expires_at <= when),
                    (R.state == "in_flight") & (R.expires_at <= when - self.in_flight_grace),
                )
            )
            .values(state="expired", charged_units=0)
            .returning(R.stack_id, R.units)
        )

        async def body(conn: AsyncConnection) -> int:
            expired = (await conn.execute(stale)).all()
            per_stack: dict[int, int] = defaultdict(int)
            for stack_id, units in expired:
                per_stack[int(stack_id)] += int(units)
            for stack_id in sorted(per_stack):  # one lock order for every writer
                await conn.execute(
                    update(S)
                    .where(S.id == stack_id)
                    .values(reserved_units=S.reserved_units - per_stack[stack_id])
                )
            return len(expired)

        count = await self._write(body)
        if count:
            logger.info("ledger: %d reservation(s) expired", count)
        return count

    async def run_expiry(
        self, interval_seconds: float = 30.0, *, stop: asyncio.Event | None = None
    ) -> None:
        """Sweep expired reservations now and then every ``interval_seconds`` until ``stop`` is
        set or the task is cancelled. A failed sweep is logged and tried again next time."""
        stop = stop or asyncio.Event()
        while True:
            try:
                await self.expire()
            except Exception:
                logger.exception("ledger: expiry sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_seconds)
            if stop.is_set():
                return

    async def get_reservation(self, reservation_id: str) -> Reservation:
        async with self._read() as conn:
            row = await _first(conn, select(*_RESERVATION_COLUMNS).where(R.id == reservation_id))
        if row is None:
            raise NotFound("no such reservation")
        return _to_reservation(row)

    # -- usage: what a user can check -------------------------------------------------------------

    async def usage(
        self,
        user_id: int,
        *,
        since: float | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[UsageRecord]:
        """The user's charged requests (reservations settled from a node's answer), oldest
        first: at most ``limit``, with a usage receipt id above ``after_id`` (page on with the last
        id returned), settled at or after ``since`` (Unix seconds) if given."""
        _check_count(limit, "limit", minimum=1)
        _check_count(after_id, "after_id", minimum=0)
        U = UsageReceiptRow
        query = (
            select(
                U.id,
                U.created_at,
                U.prompt_tokens,
                U.completion_tokens,
                U.receipt,
                R.id.label("reservation_id"),
                R.request_id,
                R.stack_id,
                R.node_small_id,
                R.units,
                R.charged_units,
                S.model,
            )
            .join(R, R.id == U.reservation_id)
            .join(S, S.id == R.stack_id)
            .where(
                R.user_id == user_id,
                U.id > min(after_id, MAX_ID),
                or_(R.state == "settled", R.charged_units > 0),
            )
            .order_by(U.id)
            .limit(limit)
        )
        if since is not None:
            query = query.where(U.created_at >= since)
        async with self._read() as conn:
            rows = await _all(conn, query)
        return [
            UsageRecord(
                id=int(r["id"]),
                created_at=float(r["created_at"]),
                request_id=r["request_id"],
                reservation_id=r["reservation_id"],
                stack_id=int(r["stack_id"]),
                model=r["model"],
                node_small_id=int(r["node_small_id"]),
                reserved_units=int(r["units"]),
                charged_units=int(r["charged_units"] or 0),
                prompt_tokens=int(r["prompt_tokens"]),
                completion_tokens=int(r["completion_tokens"]),
                receipt=_receipt_text(r["receipt"]),
            )
            for r in rows
        ]

    # -- audit -----------------------------------------------------------------------------------

    async def reconcile(self) -> list[str]:
        """Check every stack's counters against its reservations; the discrepancies found, as
        sentences (an empty list means the books balance).

        - ``reserved_units`` == sum of units of its 'held' and 'in_flight' reservations;
        - ``used_units`` == sum of ``charged_units`` of its final reservations (the ledger has no
          other way to charge a stack);
        - ``reserved_units + used_units <= total_units``;
        - every final reservation has ``charged_units`` (0 unless 'settled'), every live one none;
          every 'in_flight' one has a request id;
        - every settled or released reservation has exactly one usage receipt with
          ``compute_units`` equal to its charge.
        """
        live = (
            select(func.coalesce(func.sum(R.units), 0))
            .where(R.stack_id == S.id, R.state.in_(LIVE_STATES))
            .scalar_subquery()
        )
        charged = (
            select(func.coalesce(func.sum(R.charged_units), 0))
            .where(R.stack_id == S.id, R.charged_units.is_not(None))
            .scalar_subquery()
        )
        stacks = select(
            S.id,
            S.total_units,
            S.reserved_units,
            S.used_units,
            live.label("live"),
            charged.label("charged"),
        ).order_by(S.id)
        receipts = (
            select(
                R.id,
                R.state,
                R.charged_units,
                R.request_id,
                UsageReceiptRow.compute_units,
                UsageReceiptRow.id.label("receipt_id"),
            )
            .outerjoin(UsageReceiptRow, UsageReceiptRow.reservation_id == R.id)
            .order_by(R.created_at, R.id)
        )
        problems: list[str] = []
        async with self._read(snapshot=True) as conn:
            stack_rows = await _all(conn, stacks)
            reservation_rows = await _all(conn, receipts)
        for s in stack_rows:
            if s["reserved_units"] != s["live"]:
                problems.append(
                    f"stack {s['id']}: reserved_units={s['reserved_units']} but live "
                    f"reservations hold {s['live']}"
                )
            if s["used_units"] != s["charged"]:
                problems.append(
                    f"stack {s['id']}: used_units={s['used_units']} but reservations were "
                    f"charged {s['charged']}"
                )
            if s["reserved_units"] + s["used_units"] > s["total_units"]:
                problems.append(f"stack {s['id']}: reserved + used exceeds total_units")
        for r in reservation_rows:
            name, state, charge = f"reservation {r['id']}", r["state"], r["charged_units"]
            if state in LIVE_STATES:
                if charge is not None:
                    problems.append(f"{name}: {state} but already charged {charge}")
                if state == "in_flight" and r["request_id"] is None:
                    problems.append(f"{name}: in_flight without a request id")
                continue
            if charge is None:
                problems.append(f"{name}: {state} without charged_units")
            elif state != "settled" and charge != 0:
                problems.append(f"{name}: {state} but charged {charge}")
            if state in ("settled", "released"):
                if r["receipt_id"] is None:
                    problems.append(f"{name}: {state} without a usage receipt")
                elif r["compute_units"] != charge:
                    problems.append(
                        f"{name}: receipt says {r['compute_units']} units, charged {charge}"
                    )
        return problems
