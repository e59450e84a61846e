"""Database plumbing: migrations (once, however many gateways start), the schema's own guards."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.gateway.conftest import LedgerHarness
from tests.gateway.ledger.world import MODEL, World, units
from veil.gateway.ledger import Ledger, alembic_config, database_unavailable
from veil.gateway.ledger.schema import metadata


def test_migrated_schema_matches_the_models(h: LedgerHarness) -> None:
    async def diff() -> Any:
        async with h.ledger.engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )

    assert h.run(diff()) == []
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    assert h.sql("SELECT version_num FROM alembic_version") == [(head,)]


def test_gateways_starting_together_migrate_once(db_url: str) -> None:
    async def start_three() -> list[str]:
        ledgers = await asyncio.gather(*(Ledger.open(db_url) for _ in range(3)))
        try:
            await ledgers[0].create_user("alice")
            await ledgers[1].create_stack("alice", MODEL, 10)
            return [s.user for s in await ledgers[2].list_stacks()]
        finally:
            for ledger in ledgers:
                await ledger.close()

    assert asyncio.run(start_three()) == ["alice"]


GATEWAY_PROCESS = """
import asyncio, sys
from veil.gateway.ledger import Ledger

async def main() -> None:
    print("ready", flush=True)
    sys.stdin.readline()  # everyone starts at once
    ledger = await Ledger.open(sys.argv[1])
    await ledger.close()

asyncio.run(main())
"""


def test_gateway_processes_starting_together_migrate_once(db_url: str) -> None:
    gateways = [
        subprocess.Popen(
            [sys.executable, "-c", GATEWAY_PROCESS, db_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for gateway in gateways:
        assert gateway.stdout is not None and gateway.stdout.readline() == "ready\n"
    for gateway in gateways:
        assert gateway.stdin is not None
        gateway.stdin.write("go\n")
        gateway.stdin.flush()
    for gateway in gateways:
        _, stderr = gateway.communicate(timeout=60)
        assert gateway.returncode == 0, stderr

    async def version() -> Any:
        ledger = await Ledger.open(db_url)
        try:
            async with ledger.engine.connect() as conn:
                return (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        finally:
            await ledger.close()

    assert asyncio.run(version()) == [
        (ScriptDirectory.from_config(alembic_config()).get_current_head(),)
    ]


def test_check_constraint_rejects_overcommitting_a_stack(h: LedgerHarness, w: World) -> None:
    with pytest.raises(IntegrityError):
        h.sql(
            "UPDATE stacks SET reserved_units = 600, used_units = 401 WHERE id = :id", id=w.stack.id
        )
    with pytest.raises(IntegrityError):
        h.sql("UPDATE stacks SET used_units = -1 WHERE id = :id", id=w.stack.id)
    assert units(h, w.stack.id) == (1000, 0, 0)


# -- telling an outage from a bug ------------------------------------------------------------


def test_a_database_nobody_answers_is_unavailable() -> None:
    """Port 1 on loopback refuses: what opening a ledger there raises is an outage (503)."""

    async def open_nowhere() -> BaseException:
        try:
            await Ledger.open("postgresql+asyncpg://veil@127.0.0.1:1/test")
        except Exception as exc:
            return exc
        raise AssertionError("a ledger opened on a closed port")

    assert database_unavailable(asyncio.run(open_nowhere()))


def test_a_constraint_violation_is_a_bug_not_an_outage(h: LedgerHarness) -> None:
    h.node_small_id("http://a:8081")
    with pytest.raises(IntegrityError) as duplicate:
        h.sql("INSERT INTO nodes (url, created_at) VALUES ('http://a:8081', 0)")
    assert not database_unavailable(duplicate.value)


class WithSqlstate(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def test_sqlstates_and_causes_are_followed_down_the_chain() -> None:
    def caused_by(cause: BaseException) -> BaseException:
        try:
            raise RuntimeError("wrapped") from cause
        except RuntimeError as exc:
            return exc

    assert database_unavailable(caused_by(WithSqlstate("57P01")))  # admin shutdown
    assert database_unavailable(caused_by(WithSqlstate("08006")))  # connection failure
    assert database_unavailable(caused_by(ConnectionResetError()))
    assert not database_unavailable(caused_by(WithSqlstate("23505")))  # unique violation
    assert not database_unavailable(ValueError("a bug"))
    looped = RuntimeError("a cause chain that loops")
    looped.__cause__ = caused_by(looped)
    assert not database_unavailable(looped)
