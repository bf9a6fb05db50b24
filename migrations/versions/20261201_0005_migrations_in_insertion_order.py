"""Migrations in insertion order

A workload's last migration was the one with the newest ``created_at``; after the clock
stepped back, the migration started next carried an earlier time than the one before
it, so the reconciler took the previous migration for the last: its cooldown, and
whether it was one wave of a larger move. ``migrations.seq`` (an auto-increment primary
key; ``id`` stays unique, and ``migration_events.migration_id`` now refers to it through
that unique constraint) orders them as started.

Existing migrations are numbered in the order revision 0004 read them (``created_at``,
then ``id``), so each workload's last migration is the same row before and after the
upgrade. Downgrading drops the numbering and keeps the migrations and their events.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    "id, workload, state, reason, urgent, source_placements, target_placements, "
    "created_at, updated_at"
)
_EVENTS_FK = "fk_migration_events_migration_id_migrations"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot change a primary key in place: copy into a new table.
        _recreate_on_sqlite(with_seq=True)
        return
    op.add_column("migrations", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE migrations SET seq = numbered.n FROM ("
        " SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM migrations"
        ") AS numbered WHERE migrations.id = numbered.id"
    )
    # What BIGSERIAL creates, started after the numbered rows.
    op.execute("CREATE SEQUENCE migrations_seq_seq OWNED BY migrations.seq")
    op.execute(
        "SELECT setval('migrations_seq_seq', coalesce(max(seq), 0) + 1, false) FROM migrations"
    )
    op.alter_column(
        "migrations",
        "seq",
        nullable=False,
        server_default=sa.text("nextval('migrations_seq_seq'::regclass)"),
    )
    # The events' foreign key depends on the primary key's index: it moves to the
    # unique constraint on id.
    op.drop_constraint(_EVENTS_FK, "migration_events", type_="foreignkey")
    op.create_unique_constraint("uq_migrations_id", "migrations", ["id"])
    op.drop_constraint("pk_migrations", "migrations", type_="primary")
    op.create_primary_key("pk_migrations", "migrations", ["seq"])
    _events_fk()
    op.drop_index("ix_migrations_workload_created_at", table_name="migrations")
    op.create_index("ix_migrations_workload_seq", "migrations", ["workload", "seq"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _recreate_on_sqlite(with_seq=False)
        return
    op.drop_index("ix_migrations_workload_seq", table_name="migrations")
    op.create_index("ix_migrations_workload_created_at", "migrations", ["workload", "created_at"])
    op.drop_constraint(_EVENTS_FK, "migration_events", type_="foreignkey")
    op.drop_constraint("pk_migrations", "migrations", type_="primary")
    op.create_primary_key("pk_migrations", "migrations", ["id"])
    op.drop_constraint("uq_migrations_id", "migrations", type_="unique")
    _events_fk()
    op.drop_column("migrations", "seq")  # and its sequence, which it owns


def _events_fk() -> None:
    op.create_foreign_key(
        _EVENTS_FK, "migration_events", "migrations", ["migration_id"], ["id"], ondelete="CASCADE"
    )


def _recreate_on_sqlite(*, with_seq: bool) -> None:
    """Copy ``migrations`` into a table of the target shape, in one transaction.

    ``migration_events`` keeps its rows and its foreign key, which names the table, not
    the copy. This relies on foreign keys being off on Alembic's connection (SQLite's
    default; ``env.py`` makes its own engine without arbiter's pragmas): with them on,
    dropping the old table would delete every event through ``ON DELETE CASCADE``.
    """
    bind = op.get_bind()
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            "revision 0005 recreates the migrations table and needs SQLite's foreign keys "
            "off (PRAGMA foreign_keys=OFF, outside a transaction): with them on, its "
            "migration events would be deleted"
        )
    keys = (
        [
            sa.Column("seq", sa.Integer(), nullable=False),
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("seq", name="pk_migrations"),
            sa.UniqueConstraint("id", name="uq_migrations_id"),
        ]
        if with_seq
        else [
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("id", name="pk_migrations"),
        ]
    )
    json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "_migrations_new",
        *keys,
        sa.Column("workload", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("urgent", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("source_placements", json, nullable=False),
        sa.Column("target_placements", json, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    if with_seq:
        op.execute(
            f"INSERT INTO _migrations_new (seq, {_COLUMNS}) "
            f"SELECT row_number() OVER (ORDER BY created_at, id), {_COLUMNS} FROM migrations"
        )
    else:
        op.execute(f"INSERT INTO _migrations_new ({_COLUMNS}) SELECT {_COLUMNS} FROM migrations")
    op.drop_table("migrations")  # and its indexes
    op.rename_table("_migrations_new", "migrations")
    op.create_index("ix_migrations_state", "migrations", ["state"])
    if with_seq:
        op.create_index("ix_migrations_workload_seq", "migrations", ["workload", "seq"])
    else:
        op.create_index(
            "ix_migrations_workload_created_at", "migrations", ["workload", "created_at"]
        )
