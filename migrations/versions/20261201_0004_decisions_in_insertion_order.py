"""Decisions in insertion order

The latest decision of a workload was the one with the newest ``decided_at``; after
the clock stepped back every reconcile pass found an older "latest" and recorded the
same decision again. ``decisions.seq`` (an auto-increment primary key; ``id`` stays
unique) orders them as recorded.

Existing decisions are numbered in the order revision 0003 read them (``decided_at``,
then ``id``), so each workload's latest decision is the same row before and after the
upgrade. Downgrading drops the numbering and keeps the decisions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    "id, workload, decided_at, snapshot_id, policy_revision, placed, usd_per_hour, "
    "carbon_g_per_hour, explanation"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot change a primary key in place: copy into a new table.
        _recreate_on_sqlite(with_seq=True)
        return
    op.add_column("decisions", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE decisions SET seq = numbered.n FROM ("
        " SELECT id, row_number() OVER (ORDER BY decided_at, id) AS n FROM decisions"
        ") AS numbered WHERE decisions.id = numbered.id"
    )
    # What BIGSERIAL creates, started after the numbered rows.
    op.execute("CREATE SEQUENCE decisions_seq_seq OWNED BY decisions.seq")
    op.execute(
        "SELECT setval('decisions_seq_seq', coalesce(max(seq), 0) + 1, false) FROM decisions"
    )
    op.alter_column(
        "decisions",
        "seq",
        nullable=False,
        server_default=sa.text("nextval('decisions_seq_seq'::regclass)"),
    )
    op.drop_constraint("pk_decisions", "decisions", type_="primary")
    op.create_primary_key("pk_decisions", "decisions", ["seq"])
    op.create_unique_constraint("uq_decisions_id", "decisions", ["id"])
    op.drop_index("ix_decisions_workload_decided_at", table_name="decisions")
    op.create_index("ix_decisions_workload_seq", "decisions", ["workload", "seq"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _recreate_on_sqlite(with_seq=False)
        return
    op.drop_index("ix_decisions_workload_seq", table_name="decisions")
    op.create_index("ix_decisions_workload_decided_at", "decisions", ["workload", "decided_at"])
    op.drop_constraint("uq_decisions_id", "decisions", type_="unique")
    op.drop_constraint("pk_decisions", "decisions", type_="primary")
    op.create_primary_key("pk_decisions", "decisions", ["id"])
    op.drop_column("decisions", "seq")  # and its sequence, which it owns


def _recreate_on_sqlite(*, with_seq: bool) -> None:
    """Copy ``decisions`` into a table of the target shape, in one transaction."""
    keys = (
        [
            sa.Column("seq", sa.Integer(), nullable=False),
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("seq", name="pk_decisions"),
            sa.UniqueConstraint("id", name="uq_decisions_id"),
        ]
        if with_seq
        else [
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("id", name="pk_decisions"),
        ]
    )
    op.create_table(
        "_decisions_new",
        *keys,
        sa.Column("workload", sa.String(length=63), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("snapshot_id", sa.String(length=64), nullable=False),
        sa.Column("policy_revision", sa.String(length=64), server_default="", nullable=False),
        sa.Column("placed", sa.Boolean(), nullable=False),
        sa.Column("usd_per_hour", sa.Float(), nullable=False),
        sa.Column("carbon_g_per_hour", sa.Float(), nullable=True),
        sa.Column(
            "explanation",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
    )
    if with_seq:
        op.execute(
            f"INSERT INTO _decisions_new (seq, {_COLUMNS}) "
            f"SELECT row_number() OVER (ORDER BY decided_at, id), {_COLUMNS} FROM decisions"
        )
    else:
        op.execute(f"INSERT INTO _decisions_new ({_COLUMNS}) SELECT {_COLUMNS} FROM decisions")
    op.drop_table("decisions")  # and its indexes
    op.rename_table("_decisions_new", "decisions")
    op.create_index("ix_decisions_decided_at", "decisions", ["decided_at"])
    if with_seq:
        op.create_index("ix_decisions_workload_seq", "decisions", ["workload", "seq"])
    else:
        op.create_index("ix_decisions_workload_decided_at", "decisions", ["workload", "decided_at"])
