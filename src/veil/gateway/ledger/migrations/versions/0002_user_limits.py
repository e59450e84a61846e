"""Per-user rate limits: requests per minute and concurrent requests.

Revision ID: 0002
Revises: 0001
Created: 2026-12-02

Both columns are nullable: NULL means "the gateway's configured default" (``GatewaySettings``), so
changing a default reaches every user who was never given a limit of their own, and an operator
can tell the two apart. A set limit is at least 1, guarded by a CHECK constraint so that a writer
other than the CLI cannot store a zero that would lock the user out silently.

SQLite cannot add a constraint to an existing table, and Alembic's batch mode would rebuild
``users`` (dropping a table other tables point at, which ``PRAGMA foreign_keys=ON`` forbids), so
there the CHECK rides on the ``ADD COLUMN`` itself, which SQLite does allow.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIMITS = (
    ("requests_per_minute", "ck_users_rpm_positive"),
    ("concurrency", "ck_users_concurrency_positive"),
)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for column, check in LIMITS:
        rule = f"{column} IS NULL OR {column} >= 1"
        if sqlite:
            op.execute(
                f"ALTER TABLE users ADD COLUMN {column} INTEGER CONSTRAINT {check} CHECK ({rule})"
            )
        else:
            op.add_column("users", sa.Column(column, sa.Integer(), nullable=True))
            op.create_check_constraint(op.f(check), "users", rule)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for column, check in reversed(LIMITS):
        if not sqlite:
            op.drop_constraint(op.f(check), "users", type_="check")
        # SQLite (3.35+) drops a column whose only constraint is its own column CHECK.
        op.execute(f"ALTER TABLE users DROP COLUMN {column}")
