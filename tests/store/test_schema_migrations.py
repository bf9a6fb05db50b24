"""The Alembic migrations: they run both ways on both backends, and they create
exactly the tables the code declares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from arbiter.domain.decisions import Decision
from arbiter.domain.market import Offer
from arbiter.domain.migrations import Migration, MigrationState
from arbiter.domain.workloads import Placement
from arbiter.store import db
from arbiter.store.repositories import Store
from arbiter.store.schema import UtcDateTime, metadata


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trips(empty_store_url: str) -> None:
    db.upgrade(empty_store_url)
    assert _tables(empty_store_url) == set(metadata.tables)
    db.downgrade(empty_store_url, "base")
    assert _tables(empty_store_url) == set()
    db.upgrade(empty_store_url)
    assert _tables(empty_store_url) == set(metadata.tables)


def test_upgrade_is_idempotent(empty_store_url: str) -> None:
    db.upgrade(empty_store_url)
    db.upgrade(empty_store_url)
    engine = db.make_engine(empty_store_url)
    try:
        with engine.connect() as conn:
            assert db.current_revision(conn) == db.head_revision()
    finally:
        engine.dispose()


def test_models_match_migrations(store_url: str) -> None:
    engine = db.make_engine(store_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_check_current_refuses_an_old_schema(empty_store_url: str) -> None:
    import pytest

    from arbiter.errors import StoreError

    engine = db.make_engine(empty_store_url)
    try:
        with pytest.raises(StoreError, match="arbiter db upgrade"):
            db.check_current(engine)
    finally:
        engine.dispose()


def test_the_schema_revision_constant_is_the_newest_migration() -> None:
    from arbiter.store.schema import SCHEMA_REVISION

    assert db.head_revision() == SCHEMA_REVISION


# -- upgrading a store that holds data -------------------------------------------------

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
L4 = Offer(provider="gcp", region="europe-west4", instance_type="g2-standard-4", market="spot")


def _decision(id: str, workload: str, at: datetime) -> Decision:
    return Decision(
        id=id,
        workload=workload,
        decided_at=at,
        snapshot_id="snap-1",
        unplaceable_reasons=(f"{id}: no offer passes the policy",),
    )


def _insert_as_of_0003(url: str, decisions: list[Decision]) -> None:
    """Rows written the way revision 0003's table takes them (no insertion order)."""
    engine = db.make_engine(url)
    table = sa.table(
        "decisions",
        *(sa.column(c) for c in ("id", "workload", "snapshot_id", "placed", "usd_per_hour")),
        sa.column("decided_at", UtcDateTime),
        sa.column("explanation", sa.JSON),
    )
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(table),
                [
                    {
                        "id": d.id,
                        "workload": d.workload,
                        "decided_at": d.decided_at,
                        "snapshot_id": d.snapshot_id,
                        "placed": d.placed,
                        "usd_per_hour": d.usd_per_hour,
                        "explanation": d.model_dump(mode="json"),
                    }
                    for d in decisions
                ],
            )
    finally:
        engine.dispose()


def test_upgrading_a_store_with_decisions_keeps_each_workloads_latest_and_orders_new_ones_after(
    empty_store_url: str,
) -> None:
    """0004 numbers the existing decisions in the order 0003 read them (decided_at, then
    id), so the latest of each workload is the same row before and after the upgrade;
    a decision recorded afterwards is the latest even if the clock had stepped back."""
    db.upgrade(empty_store_url, "0003")
    old = [
        _decision("d-b", "chat", T0 + timedelta(hours=1)),
        _decision("d-a", "chat", T0),
        _decision("d-c", "batch", T0),
        _decision("d-d", "batch", T0),
    ]
    _insert_as_of_0003(empty_store_url, old)
    db.upgrade(empty_store_url)
    engine = db.make_engine(empty_store_url)
    try:
        store = Store(engine)
        assert store.decisions.latest_all() == {"chat": old[0], "batch": old[3]}
        assert [d.id for d in store.decisions.recent()] == ["d-b", "d-d", "d-c", "d-a"]
        stepped_back = _decision("d-e", "chat", T0 - timedelta(minutes=10))
        store.decisions.record(stepped_back)
        assert store.decisions.latest("chat") == stepped_back
        assert store.decisions.recent(limit=1) == [stepped_back]
    finally:
        engine.dispose()


def test_downgrading_to_0003_keeps_the_decisions(empty_store_url: str) -> None:
    db.upgrade(empty_store_url, "0003")
    old = [_decision("d-a", "chat", T0), _decision("d-b", "chat", T0 + timedelta(hours=1))]
    _insert_as_of_0003(empty_store_url, old)
    db.upgrade(empty_store_url)
    db.downgrade(empty_store_url, "0003")
    engine = db.make_engine(empty_store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id FROM decisions ORDER BY id")).scalars().all()
            assert rows == ["d-a", "d-b"]
            assert db.current_revision(conn) == "0003"
    finally:
        engine.dispose()
    db.upgrade(empty_store_url)


def _migration(id: str, workload: str, at: datetime, state: MigrationState) -> Migration:
    return Migration(
        id=id,
        workload=workload,
        source=(),
        target=(Placement(workload=workload, offer=L4, replicas=1),),
        state=state,
        reason=f"{id}: new workload: place it",
        created_at=at,
        updated_at=at,
    )


def _insert_as_of_0004(url: str, migrations: list[Migration]) -> None:
    """Migrations, each with its first event, written the way revision 0004's tables take
    them (no insertion order)."""
    engine = db.make_engine(url)
    table = sa.table(
        "migrations",
        *(sa.column(c) for c in ("id", "workload", "state", "reason", "urgent")),
        sa.column("source_placements", sa.JSON),
        sa.column("target_placements", sa.JSON),
        sa.column("created_at", UtcDateTime),
        sa.column("updated_at", UtcDateTime),
    )
    events = sa.table(
        "migration_events",
        *(sa.column(c) for c in ("migration_id", "from_state", "to_state", "reason", "actor")),
        sa.column("at", UtcDateTime),
    )
    try:
        with engine.begin() as conn:
            for m in migrations:
                conn.execute(
                    sa.insert(table).values(
                        id=m.id,
                        workload=m.workload,
                        state=m.state.value,
                        reason=m.reason,
                        urgent=m.urgent,
                        source_placements=[p.model_dump(mode="json") for p in m.source],
                        target_placements=[p.model_dump(mode="json") for p in m.target],
                        created_at=m.created_at,
                        updated_at=m.updated_at,
                    )
                )
                conn.execute(
                    sa.insert(events).values(
                        migration_id=m.id,
                        at=m.created_at,
                        from_state=None,
                        to_state=m.state.value,
                        reason=m.reason,
                        actor="d1",
                    )
                )
    finally:
        engine.dispose()


def _old_migrations() -> list[Migration]:
    done, planned = MigrationState.DONE, MigrationState.PLANNED
    return [
        _migration("m-b", "chat", T0 + timedelta(hours=1), done),
        _migration("m-a", "chat", T0, done),
        _migration("m-c", "batch", T0, planned),
        _migration("m-d", "batch", T0, planned),
    ]


def test_upgrading_a_store_with_migrations_keeps_their_order_and_events_and_orders_new_ones_after(
    empty_store_url: str,
) -> None:
    """0005 numbers the existing migrations in the order 0004 read them (created_at,
    then id), so the last migration of each workload is the same row before and after
    the upgrade; one started afterwards is the last even if the clock had stepped back."""
    db.upgrade(empty_store_url, "0004")
    old = _old_migrations()
    _insert_as_of_0004(empty_store_url, old)
    db.upgrade(empty_store_url)
    engine = db.make_engine(empty_store_url)
    try:
        store = Store(engine)
        assert [m.id for m in store.migrations.recent()] == ["m-b", "m-d", "m-c", "m-a"]
        assert [m.id for m in store.migrations.unfinished()] == ["m-c", "m-d"]
        last = store.migrations.latest_per_workload()
        assert {w: m.id for w, m in last.items()} == {"chat": "m-b", "batch": "m-d"}
        assert [e.reason for e in store.migrations.events("m-a")] == [old[1].reason]
        stepped_back = _migration("m-e", "chat", T0 - timedelta(minutes=10), MigrationState.PLANNED)
        store.migrations.create(stepped_back)
        assert store.migrations.recent(limit=1) == [stepped_back]
        assert [m.id for m in store.migrations.unfinished()] == ["m-c", "m-d", "m-e"]
        store.migrations.advance(
            stepped_back, MigrationState.ROLLED_BACK, at=T0, reason="cancelled"
        )
        assert len(store.migrations.events("m-e")) == 2
    finally:
        engine.dispose()


def test_downgrading_to_0004_keeps_the_migrations_and_their_events(empty_store_url: str) -> None:
    db.upgrade(empty_store_url, "0004")
    _insert_as_of_0004(empty_store_url, _old_migrations())
    db.upgrade(empty_store_url)
    db.downgrade(empty_store_url, "0004")
    engine = db.make_engine(empty_store_url)
    try:
        with engine.connect() as conn:
            ids = conn.execute(sa.text("SELECT id FROM migrations ORDER BY id")).scalars().all()
            assert ids == ["m-a", "m-b", "m-c", "m-d"]
            events = conn.execute(
                sa.text("SELECT migration_id FROM migration_events ORDER BY migration_id")
            )
            assert events.scalars().all() == ["m-a", "m-b", "m-c", "m-d"]
            assert db.current_revision(conn) == "0004"
    finally:
        engine.dispose()
    db.upgrade(empty_store_url)
