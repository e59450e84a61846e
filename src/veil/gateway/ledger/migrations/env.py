"""Alembic environment for the ledger.

Normally run by :meth:`veil.gateway.ledger.Ledger.open`, which hands over an open connection that
is already inside a transaction (and, on PostgreSQL, holds the migration advisory lock) through
``config.attributes["connection"]``; Alembic then runs every pending migration inside that one
transaction. Without a connection (a developer running Alembic by hand with a ``Config`` built by
:func:`veil.gateway.ledger.alembic_config`), it connects to ``sqlalchemy.url`` itself.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from veil.gateway.ledger.schema import metadata

config = context.config


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection handed over and no sqlalchemy.url configured")
    asyncio.run(run_standalone(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
