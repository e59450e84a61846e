"""Node ids: the stable ``node_small_id`` of each node URL, shared by every gateway on the
database (a node keeps its id across restarts, so settled usage keeps pointing at it)."""

from __future__ import annotations

from typing import Final

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from veil.gateway.ledger.db import Database
from veil.gateway.ledger.schema import NodeRow
from veil.wire.errors import InvalidBody

MAX_URL: Final = 2000
"""Node URLs live in a VARCHAR(2000) column."""


class Nodes(Database):
    """The node ids part of :class:`~veil.gateway.ledger.Ledger`."""

    async def node_small_id(self, url: str) -> int:
        """The stable small id of a node URL, created on first sight (shared by all gateways)."""
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
