"""The initial ledger: users, API keys, stacks, nodes, reservations and usage receipts.

Revision ID: 0001
Revises:
Created: 2025-07-01

Constraint names are written out in full (``op.f``) so they do not depend on the naming
convention of the metadata Alembic is configured with. Mirrors ``veil.gateway.ledger.schema`` (a test compares the migrated database with the models).
Timestamps are float Unix seconds; units are BIGINT; the CHECK constraints on ``stacks`` are what
make "never reserve or charge more than the stack holds" true for every writer, not only Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# INTEGER on SQLite so the column is the auto-incrementing rowid; BIGINT elsewhere.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(12), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_api_keys_user_id_users"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_table(
        "stacks",
        sa.Column("id", BigId, autoincrement=True),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("total_units", sa.BigInteger(), nullable=False),
        sa.Column("reserved_units", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("used_units", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("price_per_million_units", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("state", sa.String(16), server_default="active", nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stacks"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_stacks_user_id_users"),
        sa.CheckConstraint("total_units >= 0", name=op.f("ck_stacks_total_nonnegative")),
        sa.CheckConstraint("reserved_units >= 0", name=op.f("ck_stacks_reserved_nonnegative")),
        sa.CheckConstraint("used_units >= 0", name=op.f("ck_stacks_used_nonnegative")),
        sa.CheckConstraint(
            "reserved_units + used_units <= total_units", name=op.f("ck_stacks_units_fit")
        ),
        sa.CheckConstraint(
            "price_per_million_units >= 0", name=op.f("ck_stacks_price_nonnegative")
        ),
        sa.CheckConstraint(
            "state IN ('active', 'locked', 'settling')", name=op.f("ck_stacks_state_valid")
        ),
    )
    op.create_index("ix_stacks_user_id_model", "stacks", ["user_id", "model"])
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), autoincrement=True),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_nodes"),
        sa.UniqueConstraint("url", name="uq_nodes_url"),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("stack_id", BigId, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("node_small_id", sa.Integer(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), server_default="held", nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("charged_units", sa.BigInteger(), nullable=True),
        sa.Column("request_id", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reservations"),
        sa.ForeignKeyConstraint(
            ["stack_id"], ["stacks.id"], name="fk_reservations_stack_id_stacks"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_reservations_user_id_users"),
        sa.ForeignKeyConstraint(
            ["node_small_id"], ["nodes.id"], name="fk_reservations_node_small_id_nodes"
        ),
        sa.UniqueConstraint("request_id", name="uq_reservations_request_id"),
        sa.CheckConstraint("units > 0", name=op.f("ck_reservations_units_positive")),
        sa.CheckConstraint(
            "charged_units IS NULL OR charged_units >= 0",
            name=op.f("ck_reservations_charged_nonnegative"),
        ),
        sa.CheckConstraint(
            "charged_units IS NULL OR charged_units <= units",
            name=op.f("ck_reservations_charged_fits"),
        ),
        sa.CheckConstraint(
            "state IN ('held', 'in_flight', 'settled', 'released', 'expired')",
            name=op.f("ck_reservations_state_valid"),
        ),
    )
    op.create_index(
        "ix_reservations_stack_id_user_id_state", "reservations", ["stack_id", "user_id", "state"]
    )
    op.create_index("ix_reservations_state_expires_at", "reservations", ["state", "expires_at"])
    op.create_table(
        "usage_receipts",
        sa.Column("id", BigId, autoincrement=True),
        sa.Column("reservation_id", sa.String(32), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("compute_units", sa.BigInteger(), nullable=False),
        sa.Column("receipt", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage_receipts"),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["reservations.id"],
            name="fk_usage_receipts_reservation_id_reservations",
        ),
        sa.UniqueConstraint("reservation_id", name="uq_usage_receipts_reservation_id"),
    )


def downgrade() -> None:
    op.drop_table("usage_receipts")
    op.drop_index("ix_reservations_state_expires_at", table_name="reservations")
    op.drop_index("ix_reservations_stack_id_user_id_state", table_name="reservations")
    op.drop_table("reservations")
    op.drop_table("nodes")
    op.drop_index("ix_stacks_user_id_model", table_name="stacks")
    op.drop_table("stacks")
    op.drop_index("ix_api_keys_user_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("users")
