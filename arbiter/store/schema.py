"""Tables of the store. Alembic migrations in ``migrations/`` create exactly these
(a test runs autogenerate against a migrated database and expects no difference).

Price history and capacity signals are change-point encoded: a new row only when the
value changes; otherwise ``last_seen`` moves, so freshness is always known.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

from arbiter.store import db

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# The Alembic head these tables correspond to: bump it in arbiter/store/db.py (which
# read-only commands import without SQLAlchemy) with every migration.
SCHEMA_REVISION = db.SCHEMA_REVISION


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no such type, so values are stored
    as naive UTC and made aware again on the way out. Naive input is refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored; use UTC-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def json_type() -> Any:
    return JSON().with_variant(JSONB(), "postgresql")


Id = BigInteger().with_variant(Integer(), "sqlite")
"""Auto-increment ids: BIGINT on PostgreSQL; INTEGER PRIMARY KEY (rowid) on SQLite."""

regions = Table(
    "regions",
    metadata,
    Column("provider", String(16), primary_key=True),
    Column("region", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("country", String(2), nullable=False),
    Column("city", String(128), nullable=False),
    Column("latitude", Float, nullable=False),
    Column("longitude", Float, nullable=False),
    Column("grid_zone", String(64), nullable=False),
    Column("groups", String(512), nullable=False, server_default=""),
    Column("updated_at", UtcDateTime, nullable=False),
)

instance_types = Table(
    "instance_types",
    metadata,
    Column("provider", String(16), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("vcpus", Integer, nullable=False),
    Column("memory_gib", Float, nullable=False),
    Column("accelerator", String(64)),
    Column("accelerator_count", Float, nullable=False, server_default="0"),
    Column("accelerator_memory_gib", Float),
    Column("updated_at", UtcDateTime, nullable=False),
)

offers = Table(
    "offers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key", String(400), nullable=False, unique=True),
    Column("provider", String(16), nullable=False),
    Column("region", String(64), nullable=False),
    Column("zone", String(64)),
    Column("instance_type", String(128), nullable=False),
    Column("market", String(16), nullable=False),
    Index(None, "provider", "region", "instance_type"),
)

price_history = Table(
    "price_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("offer_id", Id, ForeignKey("offers.id", ondelete="CASCADE"), nullable=False),
    Column("source", String(64), nullable=False),
    Column("usd_per_hour", Float, nullable=False),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    # "latest per offer" and time-range scans per offer. Deliberately no index on
    # last_seen: every poll moves last_seen on most rows, and an index on it would rule
    # out PostgreSQL's heap-only (HOT) updates; retention scans the table instead.
    Index(None, "offer_id", "source", "first_seen"),
    postgresql_with={"fillfactor": 80},
)

capacity_signals = Table(
    "capacity_signals",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # provider:region:zone:instance_type:kind — the series a signal belongs to.
    Column("key", String(400), nullable=False),
    Column("provider", String(16), nullable=False),
    Column("region", String(64), nullable=False),
    Column("zone", String(64)),
    Column("instance_type", String(128)),
    Column("kind", String(32), nullable=False),
    Column("source", String(64), nullable=False),
    Column("value", Float, nullable=False),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Index(None, "key", "source", "first_seen"),
    postgresql_with={"fillfactor": 80},
)

carbon_readings = Table(
    "carbon_readings",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("zone", String(64), nullable=False),
    Column("valid_at", UtcDateTime, nullable=False),
    Column("value", Float, nullable=False),
    Column("unit", String(16), nullable=False),
    Column("basis", String(16), nullable=False),
    Column("source", String(64), nullable=False),
    Column("forecast", Boolean, nullable=False, server_default="0"),
    Column("observed_at", UtcDateTime, nullable=False),
    UniqueConstraint("zone", "source", "basis", "forecast", "valid_at"),
    Index(None, "zone", "valid_at"),
)

source_status = Table(
    "source_status",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("last_attempt_at", UtcDateTime),
    Column("last_success_at", UtcDateTime),
    Column("last_error_at", UtcDateTime),
    Column("last_error", Text),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
)

workloads = Table(
    "workloads",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("data_class", String(64), nullable=False),
    Column("spec", json_type(), nullable=False),
    Column("source_file", String(1024)),
    Column("revision", String(64)),
    # Per-workload mode override (observe / recommend / enforce); NULL = global mode.
    Column("mode", String(16)),
    Column("updated_at", UtcDateTime, nullable=False),
)

placements = Table(
    "placements",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "workload",
        String(63),
        ForeignKey("workloads.name", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("offer_key", String(400), nullable=False),
    Column("replicas", Integer, nullable=False),
    Column("since", UtcDateTime, nullable=False),
    UniqueConstraint("workload", "offer_key"),
)

migrations = Table(
    "migrations",
    metadata,
    # Insertion order: the last migration is the last one started, whatever the clock
    # read (created_at goes back when the clock steps back).
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("workload", String(63), nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("urgent", Boolean, nullable=False, server_default="0"),
    Column("source_placements", json_type(), nullable=False),
    Column("target_placements", json_type(), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index(None, "state"),
    Index(None, "workload", "seq"),
)

migration_events = Table(
    "migration_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "migration_id",
        String(64),
        ForeignKey("migrations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("at", UtcDateTime, nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", String(128), nullable=False, server_default=""),
    Index(None, "migration_id", "at"),
)

decisions = Table(
    "decisions",
    metadata,
    # Insertion order: the latest decision is the last one recorded, whatever the clock
    # read (decided_at goes back when the clock steps back).
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("workload", String(63), nullable=False),
    Column("decided_at", UtcDateTime, nullable=False),
    Column("snapshot_id", String(64), nullable=False),
    Column("policy_revision", String(64), nullable=False, server_default=""),
    Column("placed", Boolean, nullable=False),
    Column("usd_per_hour", Float, nullable=False),
    Column("carbon_g_per_hour", Float),
    Column("explanation", json_type(), nullable=False),
    Index(None, "workload", "seq"),
    Index(None, "decided_at"),
)

offer_blocklist = Table(
    "offer_blocklist",
    metadata,
    # An offer that failed with a capacity error is not planned on again until
    # ``until``; one row per offer, the latest failure wins.
    Column("offer_key", String(400), primary_key=True),
    Column("until", UtcDateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Column("added_at", UtcDateTime, nullable=False),
)

planner_pending = Table(
    "planner_pending",
    metadata,
    # Since when each workload's better placement has been seen (sustained-for), so a
    # restarted or new leader does not restart the clock.
    Column("workload", String(63), primary_key=True),
    Column("since", UtcDateTime, nullable=False),
)

planner_violations = Table(
    "planner_violations",
    metadata,
    # Since when each workload's placements have broken an enforced rule, so a restarted
    # or new leader does not restart on_hard_violation.drain_within.
    Column("workload", String(63), primary_key=True),
    Column("since", UtcDateTime, nullable=False),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("acquired_at", UtcDateTime, nullable=False),
    Column("renewed_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)
