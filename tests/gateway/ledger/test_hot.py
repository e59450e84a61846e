"""The request path on the driver (``hot.py``): what only it can get wrong.

- SQLite: another process holding the write lock (``veil users`` writing, a second gateway) makes
  the event loop's attempt step aside to the thread, which waits for the lock while the loop keeps
  running; the operation then completes, exactly once.
- Both backends: a settle and a release racing for one reservation end it once, and the stack
  and the usage receipts say so (the one-statement settle of PostgreSQL included).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.gateway.conftest import LedgerHarness, open_harness
from tests.gateway.ledger.world import MODEL, T0, TTL, World, make_world, reserve, units

LOCK_WAIT = 30.0  # seconds: bound on waiting for the operation once the lock is free


def test_a_write_waits_on_the_thread_while_another_process_holds_the_sqlite_lock(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    with open_harness(url) as h:
        w = make_world(h)
        holder = sqlite3.connect(
            make_url(url).database or "", isolation_level=None, check_same_thread=False
        )
        holder.execute("BEGIN IMMEDIATE")  # what another process's write transaction holds

        async def go() -> tuple[bool, int]:
            pending = asyncio.create_task(
                h.ledger.reserve(
                    w.alice.id, MODEL, 10, node_small_id=w.node, ttl_seconds=TTL, now=T0
                )
            )
            loop_turns = 0
            for _ in range(100):  # the loop keeps running while the reserve waits for the lock
                await asyncio.sleep(0)
                loop_turns += 1
            waiting = not pending.done()
            holder.execute("COMMIT")
            held = await asyncio.wait_for(pending, LOCK_WAIT)
            return waiting, held.units + loop_turns

        waiting, total = h.run(go())
        holder.close()
        assert waiting, "a write finished while another connection held the write lock"
        assert total == 110
        assert units(h, w.stack.id) == (1000, 10, 0)


def test_settle_and_release_racing_end_a_reservation_once(h: LedgerHarness, w: World) -> None:
    for _ in range(5):
        r = reserve(h, w, 100)

        async def race(reservation_id: str = r.id) -> list[object]:
            return list(
                await asyncio.gather(
                    h.ledger.settle(reservation_id, 60, receipt=b"signed"),
                    h.ledger.release(reservation_id),
                    h.ledger.settle(reservation_id, 70, receipt=b"signed again"),
                )
            )

        h.run(race())
        final = h.get_reservation(r.id)
        assert final.state in ("settled", "released")
        receipts = h.sql(
            "SELECT compute_units FROM usage_receipts WHERE reservation_id = :r", r=r.id
        )
        assert receipts == [(final.charged_units,)]
    used = sum(int(row[0]) for row in h.sql("SELECT compute_units FROM usage_receipts"))
    assert units(h, w.stack.id) == (1000, 0, used)
