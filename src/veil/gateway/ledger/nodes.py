"""Nodes: the list every gateway on the database routes to, and each URL's stable
``node_small_id`` (a node keeps its id across restarts, so settled usage keeps pointing at it).

The operator's moves (``veil nodes``), and what each needs::

    add      (none) or removed  -> active      a URL already active or draining: Conflict (409)
    drain    active or draining -> draining    no new locks; in flight finishes and settles
    undrain  draining or active -> active
    remove   draining           -> removed     refused (Conflict) while a live reservation
                                               (held or in flight, on any gateway) is on it;
                                               ``force`` skips both conditions

A removed node's row stays: reservations and usage records point at its id, and adding the URL
again brings the same id back. Every gateway reloads the list on its maintenance interval, so a
move made through one gateway reaches the others within seconds; the removal check reads the
shared reservations, so it holds whichever gateway served them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from sqlalchemy import Row, Select, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from veil.gateway.ledger.db import Database
from veil.gateway.ledger.schema import NodeRow, ReservationRow
from veil.gateway.ledger.state import LIVE_STATES, NodeState
from veil.wire.errors import Conflict, InvalidBody, NotFound

__all__ = ["MAX_URL", "NodeRecord", "Nodes", "node_url"]

MAX_URL: Final = 2000
"""Node URLs live in a VARCHAR(2000) column."""


@dataclass(frozen=True)
class NodeRecord:
    """One row of the node list."""

    id: int
    url: str
    state: NodeState
    created_at: float
    state_changed_at: float | None

    @property
    def routed(self) -> bool:
        """Whether gateways keep it at all (removed ones are dropped)."""
        return self.state is not NodeState.REMOVED


def node_url(url: object) -> str:
    """``url`` as nodes are stored: ``http(s)://host[:port][/path]``, no trailing slash.
    Anything else is ``InvalidBody`` naming what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidBody("node url: a non-empty string is required")
    url = url.strip().rstrip("/")
    if len(url) > MAX_URL:
        raise InvalidBody(f"node url: at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError:
        raise InvalidBody("node url: not a valid URL (check the port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidBody("node url: must be http://HOST[:PORT] or https://HOST[:PORT]")
    if parts.username is not None or parts.password is not None:
        raise InvalidBody("node url: must not carry credentials")
    if parts.query or parts.fragment or any(c.isspace() for c in url):
        raise InvalidBody("node url: must not carry a query, fragment or spaces")
    del port
    return url


COLUMNS = tuple(NodeRow.__table__.c)
_SELECT = select(*COLUMNS)


def _record(row: Row[Any]) -> NodeRecord:
    return NodeRecord(
        id=int(row.id),
        url=row.url,
        state=NodeState(row.state),
        created_at=float(row.created_at),
        state_changed_at=None if row.state_changed_at is None else float(row.state_changed_at),
    )


def _live_on(node_small_id: int) -> Select[int]:
    return select(func.count()).where(
        ReservationRow.node_small_id == node_small_id,
        ReservationRow.state.in_([s.value for s in LIVE_STATES]),
    )


class Nodes(Database):
    """The node part of :class:`~veil.gateway.ledger.Ledger`."""

    async def node_small_id(self, url: str) -> int:
        """The stable small id of a node URL, created (``active``) on first sight and left in
        whatever state it is otherwise (a gateway's ``--node`` flags call this at start)."""
        if not isinstance(url, str) or not url or len(url) > MAX_URL:
            raise InvalidBody(
                f"node url must be a non-empty string of at most {MAX_URL} characters"
            )
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
                insert(NodeRow).values(url=url, created_at=self.now()).returning(NodeRow.id)
            )
            return int(created.scalar_one())

        try:
            return await self._write(body)
        except IntegrityError:  # another gateway registered it between our read and insert
            async with self._read() as conn:
                return int((await conn.execute(query)).scalar_one())

    async def list_nodes(self, *, include_removed: bool = False) -> list[NodeRecord]:
        """The node list, oldest first (what every gateway routes to: the non-removed ones)."""
        query = _SELECT.order_by(NodeRow.id)
        if not include_removed:
            query = query.where(NodeRow.state != NodeState.REMOVED.value)
        async with self._read() as conn:
            return [_record(row) for row in (await conn.execute(query)).all()]

    async def get_node(self, url: str) -> NodeRecord:
        """A listed (not removed) node by URL, else ``NotFound``."""
        url = node_url(url)
        async with self._read() as conn:
            row = (await conn.execute(_SELECT.where(NodeRow.url == url))).one_or_none()
        if row is None or row.state == NodeState.REMOVED.value:
            raise NotFound(f"no node {url} behind these gateways")
        return _record(row)

    async def add_node(self, url: str) -> NodeRecord:
        """List ``url`` as ``active`` (a removed URL comes back with its old id); ``Conflict``
        if it is already listed."""
        url = node_url(url)

        async def body(conn: AsyncConnection) -> NodeRecord:
            row = (await conn.execute(_SELECT.where(NodeRow.url == url))).one_or_none()
            now = self.now()
            if row is None:
                created = await conn.execute(
                    insert(NodeRow)
                    .values(url=url, created_at=now, state_changed_at=now)
                    .returning(*COLUMNS)
                )
                return _record(created.one())
            if row.state != NodeState.REMOVED.value:
                raise Conflict(f"node {url} is already listed ({row.state})")
            return await self._move(conn, row.id, (NodeState.REMOVED,), NodeState.ACTIVE, url)

        try:
            return await self._write(body)
        except IntegrityError:  # another gateway added it between our read and insert
            raise Conflict(f"node {url} is already listed (active)") from None

    async def drain_node(self, url: str) -> NodeRecord:
        """Stop new locks to ``url`` on every gateway; what is in flight finishes."""
        return await self._set_state(
            url, (NodeState.ACTIVE, NodeState.DRAINING), NodeState.DRAINING
        )

    async def undrain_node(self, url: str) -> NodeRecord:
        """Send new locks to a drained ``url`` again."""
        return await self._set_state(url, (NodeState.ACTIVE, NodeState.DRAINING), NodeState.ACTIVE)

    async def live_reservations_on(self, node_small_id: int) -> int:
        """Reservations held or in flight on a node, whichever gateway made them."""
        async with self._read() as conn:
            return int((await conn.execute(_live_on(node_small_id))).scalar_one())

    async def remove_node(self, url: str, *, force: bool = False) -> NodeRecord:
        """Take ``url`` off every gateway. Only a drained, idle node, unless ``force``: then a
        request still in flight on it finishes on the gateway serving it and settles from the
        node's signed receipt, and held locks on it expire (clients lock again)."""
        url = node_url(url)

        async def body(conn: AsyncConnection) -> NodeRecord:
            row = (await conn.execute(_SELECT.where(NodeRow.url == url))).one_or_none()
            if row is None or row.state == NodeState.REMOVED.value:
                raise NotFound(f"no node {url} behind these gateways")
            if not force:
                if row.state != NodeState.DRAINING.value:
                    raise Conflict(
                        f"node {url} is {row.state}: drain it first (veil nodes drain), wait "
                        "for its requests to finish, then remove it (or pass force)"
                    )
                live = (await conn.execute(_live_on(row.id))).scalar_one()
                if live:
                    raise Conflict(
                        f"node {url} still has {live} lock(s) or request(s) in flight: wait "
                        "for them to finish (locks expire), or pass force"
                    )
            return await self._move(conn, row.id, tuple(NodeState), NodeState.REMOVED, url)

        return await self._write(body)

    async def _set_state(
        self, url: str, sources: tuple[NodeState, ...], target: NodeState
    ) -> NodeRecord:
        url = node_url(url)

        async def body(conn: AsyncConnection) -> NodeRecord:
            row = (await conn.execute(_SELECT.where(NodeRow.url == url))).one_or_none()
            if row is None or row.state == NodeState.REMOVED.value:
                raise NotFound(f"no node {url} behind these gateways")
            return await self._move(conn, row.id, sources, target, url)

        return await self._write(body)

    async def _move(
        self,
        conn: AsyncConnection,
        node_id: int,
        sources: tuple[NodeState, ...],
        target: NodeState,
        url: str,
    ) -> NodeRecord:
        """One guarded UPDATE: the state moves only from ``sources`` (a concurrent move by
        another gateway makes this match nothing, which is reported, never overwritten)."""
        moved = await conn.execute(
            update(NodeRow)
            .where(NodeRow.id == node_id, NodeRow.state.in_([s.value for s in sources]))
            .values(state=target.value, state_changed_at=self.now())
            .returning(*COLUMNS)
        )
        row = moved.one_or_none()
        if row is None:
            raise Conflict(f"node {url} changed state meanwhile; look again (veil nodes list)")
        return _record(row)
