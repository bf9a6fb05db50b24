"""The planner's hard-violation memory (on_hard_violation.drain_within)

Since when each workload's running placements have broken an enforced rule, so the
``drain_within`` deadline survives a restart or a change of leader, as the sustained-for
memory (``planner_pending``, revision 0003) does.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "planner_violations",
        sa.Column("workload", sa.String(length=63), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workload", name=op.f("pk_planner_violations")),
    )


def downgrade() -> None:
    op.drop_table("planner_violations")
