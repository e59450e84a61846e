"""The ledger's tables, as SQLAlchemy 2 declarative models.

Conventions, chosen so the same rows mean the same thing on SQLite and PostgreSQL:

- Every timestamp (``created_at``, ``expires_at``, ``revoked_at``) is a float of Unix seconds
  (``DOUBLE PRECISION`` on PostgreSQL, ``REAL`` on SQLite). No time zones, no driver conversions,
  and the ``now`` a test injects compares directly with what is stored.
- Units are ``BIGINT`` counts of compute units (tokens for chat, pixels for images).
- ``stacks.price_per_million_units`` is a ``BIGINT`` of micro-units of currency (1e-6) per one
  million compute units: integers, so no rounding ever happens inside the database.
- States are short strings guarded by CHECK constraints rather than database enums, so adding a
  state later is a one-line migration on both backends. The CHECK text and the defaults are built
  from the enums in ``state.py``; the migrations keep the literal SQL they were written with.
- The rules that keep money consistent are CHECK constraints, not only Python: a stack can never
  hold more reserved + used units than it has, whichever gateway writes.

The Alembic migrations (``0001_initial``, ``0002_user_limits``, ``0003_node_states``, ...) create
exactly these tables; a test compares the two.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from veil.gateway.ledger.state import INITIAL, NodeState, ReservationState, StackState, check_in

# SQLite only auto-increments a column declared exactly "INTEGER PRIMARY KEY" (the rowid alias), so
# 64-bit ids are BIGINT on PostgreSQL and INTEGER (which is 64-bit anyway) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STACK_STATES: Final = tuple(StackState)
RESERVATION_STATES: Final = tuple(ReservationState)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UserRow(Base):
    """A person or service that owns stacks and API keys."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(
            "requests_per_minute IS NULL OR requests_per_minute >= 1", name="rpm_positive"
        ),
        CheckConstraint("concurrency IS NULL OR concurrency >= 1", name="concurrency_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[float] = mapped_column(Double)
    # Rate limits (migration 0002); NULL: the gateway's configured default.
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ApiKeyRow(Base):
    """An API key, stored only as its SHA-256 plus a short lookup prefix (never the key)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(12), unique=True)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class StackRow(Base):
    """Prepaid compute units owned by one user for one model; ``id`` is the ``stack_small_id``."""

    __tablename__ = "stacks"
    __table_args__ = (
        CheckConstraint("total_units >= 0", name="total_nonnegative"),
        CheckConstraint("reserved_units >= 0", name="reserved_nonnegative"),
        CheckConstraint("used_units >= 0", name="used_nonnegative"),
        CheckConstraint("reserved_units + used_units <= total_units", name="units_fit"),
        CheckConstraint("price_per_million_units >= 0", name="price_nonnegative"),
        CheckConstraint(check_in("state", StackState), name="state_valid"),
        Index("ix_stacks_user_id_model", "user_id", "model"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    model: Mapped[str] = mapped_column(String(200))
    total_units: Mapped[int] = mapped_column(BigInteger)
    reserved_units: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    used_units: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    price_per_million_units: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    state: Mapped[str] = mapped_column(
        String(16), default=StackState.ACTIVE.value, server_default=StackState.ACTIVE.value
    )
    created_at: Mapped[float] = mapped_column(Double)


class NodeRow(Base):
    """A node URL and its stable ``node_small_id`` (shared by every gateway on the database), and
    the operator's state for it (migration 0003): every gateway routes to the active ones."""

    __tablename__ = "nodes"
    __table_args__ = (CheckConstraint(check_in("state", NodeState), name="state_valid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(String(2000), unique=True)
    created_at: Mapped[float] = mapped_column(Double)
    state: Mapped[str] = mapped_column(
        String(16), default=NodeState.ACTIVE.value, server_default=NodeState.ACTIVE.value
    )
    # When the state last changed (NULL: never since the row was made).
    state_changed_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class ReservationRow(Base):
    """Units held on a stack for one request, from ``/v1/nodes/lock`` until settlement or expiry."""

    __tablename__ = "reservations"
    __table_args__ = (
        CheckConstraint("units > 0", name="units_positive"),
        CheckConstraint("charged_units IS NULL OR charged_units >= 0", name="charged_nonnegative"),
        CheckConstraint("charged_units IS NULL OR charged_units <= units", name="charged_fits"),
        CheckConstraint(check_in("state", ReservationState), name="state_valid"),
        # claim(): the oldest live held reservation of a user on a stack.
        Index("ix_reservations_stack_id_user_id_state", "stack_id", "user_id", "state"),
        # expire(): live reservations by deadline.
        Index("ix_reservations_state_expires_at", "state", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    stack_id: Mapped[int] = mapped_column(BigId, ForeignKey("stacks.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    node_small_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    units: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(
        String(16), default=INITIAL.value, server_default=INITIAL.value
    )
    created_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    charged_units: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)


class UsageReceiptRow(Base):
    """What a settlement charged and why: the token counts and the node's receipt, if any."""

    __tablename__ = "usage_receipts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    reservation_id: Mapped[str] = mapped_column(ForeignKey("reservations.id"), unique=True)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    compute_units: Mapped[int] = mapped_column(BigInteger)
    receipt: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[float] = mapped_column(Double)


metadata = Base.metadata
