"""Offer blocklist (capacity errors) and the planner's sustained-for memory

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 09:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "offer_blocklist",
        sa.Column("offer_key", sa.String(length=400), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("offer_key", name=op.f("pk_offer_blocklist")),
    )
    op.create_table(
        "planner_pending",
        sa.Column("workload", sa.String(length=63), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workload", name=op.f("pk_planner_pending")),
    )


def downgrade() -> None:
    op.drop_table("planner_pending")
    op.drop_table("offer_blocklist")
