"""Node states: the operator's switch on each node (``veil nodes add / drain / remove``).

Revision ID: 0003
Revises: 0002
Created: 2027-01-10

``nodes`` becomes the list every gateway on the database routes to, not only the id of each URL a
gateway was started with. ``state`` is ``active`` (locks go to it), ``draining`` (no new locks;
requests in flight finish) or ``removed`` (gone from every gateway; the row stays, because
reservations and usage point at its id). Rows from before this migration were all nodes some
gateway routed to, so they start ``active``. ``state_changed_at`` records the operator's last move.

SQLite cannot add a constraint to an existing table (see 0002), so there the CHECK rides on the
``ADD COLUMN`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK = "ck_nodes_state_valid"
RULE = "state IN ('active', 'draining', 'removed')"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE nodes ADD COLUMN state VARCHAR(16) DEFAULT 'active' NOT NULL "
            f"CONSTRAINT {CHECK} CHECK ({RULE})"
        )
    else:
        op.add_column(
            "nodes",
            sa.Column("state", sa.String(16), server_default="active", nullable=False),
        )
        op.create_check_constraint(op.f(CHECK), "nodes", RULE)
    op.add_column("nodes", sa.Column("state_changed_at", sa.Double(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE nodes DROP COLUMN state_changed_at")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f(CHECK), "nodes", type_="check")
    op.execute("ALTER TABLE nodes DROP COLUMN state")
