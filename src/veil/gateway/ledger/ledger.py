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

Times are float Unix seconds from one clock, injected once (``Ledger(..., now=...)``, default
``time.time``); a method that stamps a time also takes ``now`` for that one call, so tests (and
operators replaying history) can set it. Results are small frozen dataclasses, never ORM objects,
so nothing outside the package holds a database session.

The ledger defines no exception classes of its own: a refusal is one of the wire's errors
(``veil.wire.errors``), which the gateway renders as they are::

    NotFound          404  no such user, stack (or someone else's), node, reservation, API key
    InvalidBody       400  a bad argument (named), a user name taken, a stack state unknown
    AuthError         401  an unknown, wrong or revoked API key
    BalanceError      402  no stack of the caller has the units free
    Locked            423  the stack (or every stack for the model) is locked or settling
    UnavailableStack  425  no live reservation for this request, or its request id was used

``ValueError``/``TypeError`` mean a caller's bug (a non-positive lease, a non-int charge), and a
database that cannot be reached surfaces as SQLAlchemy's errors, which
:func:`~veil.gateway.ledger.database_unavailable` tells from bugs.

The parts, one module each: ``db`` (engine, transactions, retries, migrations), ``accounts``,
``stacks``, ``nodes``, ``reservations`` (lock and claim), ``settlement``, ``expiry``, ``usage``,
``audit``; the states and their one transition table in ``state``; the tables in ``schema``. The
request path (authenticate, reserve, claim, settle/release) runs its statements (``statements``)
on the driver itself, one round trip each (``hot``); everything else goes through SQLAlchemy.
:class:`Ledger` is all of them on one database.
"""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncEngine

from veil.gateway.ledger.audit import Audit
from veil.gateway.ledger.db import Clock, create_engine
from veil.gateway.ledger.expiry import DEFAULT_IN_FLIGHT_GRACE, Expiry
from veil.gateway.ledger.nodes import Nodes
from veil.gateway.ledger.reservations import Reservations
from veil.gateway.ledger.settlement import Settling
from veil.gateway.ledger.stacks import Stacks
from veil.gateway.ledger.usage import Usage, UsageRecord

__all__ = ["Ledger", "UsageRecord"]


class Ledger(Stacks, Nodes, Reservations, Settling, Expiry, Usage, Audit):
    """The ledger on one database. Open with :meth:`open`, close with :meth:`close`.

    Its methods come from the parts it is made of (users and keys, stacks, node ids,
    reservations, settlement, expiry, usage, audit), all sharing one engine and one clock.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        in_flight_grace: float = DEFAULT_IN_FLIGHT_GRACE,
        now: Clock = time.time,
    ) -> None:
        super().__init__(engine, now=now)
        self.in_flight_grace = float(in_flight_grace)

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        in_flight_grace: float = DEFAULT_IN_FLIGHT_GRACE,
        now: Clock = time.time,
    ) -> Ledger:
        """Connect to ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...`` and bring the
        schema to the newest migration (on PostgreSQL under an advisory lock, so gateways
        starting together migrate one at a time).

        Opening does not sweep expired reservations: the gateway calls :meth:`expire` right
        after, then periodically (see ``expiry.py``).
        """
        engine = create_engine(database_url)
        ledger = cls(engine, in_flight_grace=in_flight_grace, now=now)
        try:
            await ledger._migrate()
        except BaseException:
            await engine.dispose()
            raise
        return ledger

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
