"""Users, their API keys and their rate limits (how keys are made and stored: ``apikeys.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from veil.gateway.ledger.apikeys import (
    PREFIX_LENGTH,
    generate_api_key,
    hash_api_key,
    hashes_match,
    key_prefix,
    looks_like_api_key,
)
from veil.gateway.ledger.checks import check_limit, check_name
from veil.gateway.ledger.db import Database, first_row, one_row
from veil.gateway.ledger.schema import ApiKeyRow, UserRow
from veil.wire.errors import AuthError, InvalidBody, NotFound

ADMIN_USER: Final = "admin"
# Compared against when a key's prefix is unknown, so unknown and wrong keys take the same path.
_DUMMY_HASH: Final = hash_api_key("veil_" + "0" * 43)


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


def _to_user(row: Mapping[Any, Any], *, is_admin: bool) -> User:
    return User(
        id=row["id"],
        name=row["name"],
        is_admin=is_admin,
        created_at=row["created_at"],
        requests_per_minute=row.get("requests_per_minute"),
        concurrency=row.get("concurrency"),
    )


class Accounts(Database):
    """The users and API keys part of :class:`~veil.gateway.ledger.Ledger`."""

    async def _insert_key(self, conn: AsyncConnection, user_id: int, admin: bool) -> str:
        api_key = generate_api_key()
        await conn.execute(
            insert(ApiKeyRow).values(
                user_id=user_id,
                prefix=key_prefix(api_key),
                key_hash=hash_api_key(api_key),
                is_admin=admin,
                created_at=self.now(),
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
        check_name(name, "user name")
        limits = {
            "requests_per_minute": check_limit(requests_per_minute, "requests_per_minute"),
            "concurrency": check_limit(concurrency, "concurrency"),
        }

        async def body(conn: AsyncConnection) -> tuple[User, str]:
            exists = await conn.execute(select(UserRow.id).where(UserRow.name == name))
            if exists.first() is not None:
                raise InvalidBody(f"a user named {name!r} already exists")
            row = await one_row(
                conn,
                insert(UserRow)
                .values(name=name, created_at=self.now(), **limits)
                .returning(*UserRow.__table__.c),
            )
            api_key = await self._insert_key(conn, row["id"], admin)
            return _to_user(row, is_admin=admin), api_key

        return await self._write_unique(body, f"a user named {name!r} already exists")

    async def create_api_key(self, user_name: str, admin: bool = False) -> str:
        """A new API key for an existing user (returned once, stored only as a hash)."""

        async def body(conn: AsyncConnection) -> str:
            return await self._insert_key(conn, await self._user_id(conn, user_name), admin)

        return await self._write_unique(body, "could not create an API key")

    async def authenticate(self, api_key: str) -> User:
        """The user an API key belongs to; ``AuthError`` for an unknown, wrong or revoked key.

        The key is found by its prefix, then its SHA-256 is compared in constant time. An unknown
        prefix is compared against a dummy hash so it takes the same path. Messages never contain
        the key.
        """
        if not isinstance(api_key, str) or not looks_like_api_key(api_key):
            raise AuthError("invalid API key")
        presented = hash_api_key(api_key)
        row = await self._hot.authenticate_row(key_prefix(api_key))
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
        when = self._when(now)
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
            row = await first_row(conn, select(*UserRow.__table__.c).where(UserRow.name == name))
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
                values[column] = None if value == 0 else check_limit(value, column)

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
                    .values(name=ADMIN_USER, created_at=self.now())
                    .returning(UserRow.id)
                )
            ).scalar_one()
            return await self._insert_key(conn, user_id, True)

        try:
            return await self._write(body)
        except IntegrityError:
            return None
