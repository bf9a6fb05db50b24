"""Room for heap-only updates of last_seen

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 14:39:27.619903
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every poll moves last_seen on most rows: without an index on it, and with free
    # space left in each page, PostgreSQL can update those rows in place (HOT).
    with op.batch_alter_table("capacity_signals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_capacity_signals_last_seen"))

    with op.batch_alter_table("price_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_price_history_last_seen"))

    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE price_history SET (fillfactor = 80)")
        op.execute("ALTER TABLE capacity_signals SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE price_history RESET (fillfactor)")
        op.execute("ALTER TABLE capacity_signals RESET (fillfactor)")
    with op.batch_alter_table("price_history", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_price_history_last_seen"), ["last_seen"], unique=False)

    with op.batch_alter_table("capacity_signals", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_capacity_signals_last_seen"), ["last_seen"], unique=False
        )
