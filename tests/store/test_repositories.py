"""One contract for the store's repositories, run on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from arbiter.catalog import load_catalog
from arbiter.domain.decisions import Decision
from arbiter.domain.market import Market, Offer, PriceQuote, Provider
from arbiter.domain.migrations import Migration, MigrationState
from arbiter.domain.workloads import GpuOption, Placement, Workload
from arbiter.errors import LeaseHeld, StoreError
from arbiter.store.repositories import LastMigration, Store

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
H100_SPOT = Offer(
    provider=Provider.AWS,
    region="us-east-1",
    zone="use1-az4",
    instance_type="p5.48xlarge",
    market=Market.SPOT,
)
A100_OD = Offer(
    provider=Provider.GCP,
    region="europe-west4",
    instance_type="a2-highgpu-1g",
    market=Market.ON_DEMAND,
)


def quote(offer: Offer, price: float, minutes: int, source: str = "test") -> PriceQuote:
    return PriceQuote(
        offer=offer, usd_per_hour=price, observed_at=T0 + timedelta(minutes=minutes), source=source
    )


# -- regions -------------------------------------------------------------------


def test_region_sync_stores_the_whole_catalog(store: Store) -> None:
    catalog = load_catalog()
    assert store.regions.sync(catalog, now=T0) == len(catalog)
    stored = {r.key: r for r in store.regions.all()}
    assert set(stored) == {r.key for r in catalog}
    frankfurt = stored["aws:eu-central-1"]
    assert frankfurt.country == "DE"
    assert {"EU", "EEA"} <= frankfurt.groups


def test_region_sync_twice_leaves_one_copy(store: Store) -> None:
    catalog = load_catalog()
    store.regions.sync(catalog, now=T0)
    store.regions.sync(catalog, now=T0 + timedelta(hours=1))
    assert len(store.regions.all()) == len(catalog)


# -- prices --------------------------------------------------------------------


def test_unchanged_price_only_moves_last_seen(store: Store) -> None:
    store.prices.record([quote(H100_SPOT, 30.0, 0)])
    stats = store.prices.record([quote(H100_SPOT, 30.0, 5), quote(H100_SPOT, 30.0, 10)])
    assert (stats.inserted, stats.extended) == (0, 2)
    assert store.prices.history(H100_SPOT) == [(30.0, T0, T0 + timedelta(minutes=10))]


def test_changed_price_starts_a_new_change_point(store: Store) -> None:
    stats = store.prices.record(
        [quote(H100_SPOT, 30.0, 0), quote(H100_SPOT, 30.0, 5), quote(H100_SPOT, 28.5, 10)]
    )
    assert (stats.inserted, stats.extended) == (2, 1)
    assert store.prices.history(H100_SPOT) == [
        (30.0, T0, T0 + timedelta(minutes=5)),
        (28.5, T0 + timedelta(minutes=10), T0 + timedelta(minutes=10)),
    ]


def test_a_price_returning_to_an_old_value_is_a_new_change_point(store: Store) -> None:
    store.prices.record([quote(H100_SPOT, 30.0, 0), quote(H100_SPOT, 28.0, 5)])
    store.prices.record([quote(H100_SPOT, 30.0, 10)])
    assert [p for p, _, _ in store.prices.history(H100_SPOT)] == [30.0, 28.0, 30.0]


def test_a_quote_older_than_the_store_is_ignored_when_a_newer_one_comes_with_it(
    store: Store,
) -> None:
    store.prices.record([quote(H100_SPOT, 30.0, 10)])
    stats = store.prices.record([quote(H100_SPOT, 99.0, 0), quote(H100_SPOT, 30.0, 5)])
    assert (stats.ignored, stats.extended) == (1, 1)
    later = T0 + timedelta(minutes=10)
    assert store.prices.history(H100_SPOT) == [(30.0, later, later)]


def test_after_the_clock_stepped_back_a_changed_price_is_the_latest(store: Store) -> None:
    store.prices.record([quote(H100_SPOT, 1.0, 0), quote(H100_SPOT, 1.0, 10)])
    stats = store.prices.record([quote(H100_SPOT, 0.25, 1)])  # the clock went back 9 minutes
    assert stats.inserted == 1
    later = T0 + timedelta(minutes=10)
    (latest,) = store.prices.latest()
    assert (latest.usd_per_hour, latest.first_seen, latest.last_seen) == (0.25, later, later)
    assert [level.usd_per_hour for level in store.prices.newest_levels()] == [0.25]


def test_latest_gives_the_newest_level_per_offer_and_source(store: Store) -> None:
    store.prices.record(
        [quote(H100_SPOT, 30.0, 0), quote(H100_SPOT, 28.0, 5), quote(A100_OD, 3.67, 0)]
    )
    store.prices.record([quote(H100_SPOT, 31.0, 0, source="other")])
    latest = {(p.offer.key, p.source): p.usd_per_hour for p in store.prices.latest()}
    assert latest == {
        (H100_SPOT.key, "test"): 28.0,
        (H100_SPOT.key, "other"): 31.0,
        (A100_OD.key, "test"): 3.67,
    }
    gcp_only = store.prices.latest(provider="gcp")
    assert [p.offer for p in gcp_only] == [A100_OD]


def test_latest_returns_utc_aware_times(store: Store) -> None:
    store.prices.record([quote(A100_OD, 3.67, 0)])
    (latest,) = store.prices.latest()
    assert latest.last_seen == T0
    assert latest.last_seen.tzinfo is not None


def test_newest_levels_are_the_latest_levels_in_offer_then_source_order(store: Store) -> None:
    store.prices.record(
        [quote(H100_SPOT, 30.0, 0), quote(H100_SPOT, 28.0, 5), quote(A100_OD, 3.67, 0)]
    )
    store.prices.record([quote(H100_SPOT, 31.0, 7, source="other")])
    levels = store.prices.newest_levels()
    assert sorted(levels, key=lambda p: (p.offer.key, p.source)) == [
        (p.offer, p.source, p.usd_per_hour, p.last_seen) for p in store.prices.latest()
    ]
    # Each offer's levels together, its sources in order.
    offers = [p.offer for p in levels]
    assert offers in ([H100_SPOT, H100_SPOT, A100_OD], [A100_OD, H100_SPOT, H100_SPOT])
    assert [p.source for p in levels if p.offer == H100_SPOT] == ["other", "test"]
    assert all(p.last_seen.tzinfo is not None for p in levels)


def test_newest_levels_read_offers_stored_after_the_last_read(store: Store) -> None:
    store.prices.record([quote(H100_SPOT, 30.0, 0)])
    assert [p.offer for p in store.prices.newest_levels()] == [H100_SPOT]
    store.prices.record([quote(A100_OD, 3.67, 1), quote(H100_SPOT, 29.0, 1)])
    assert [(p.offer, p.usd_per_hour) for p in store.prices.newest_levels()] == [
        (H100_SPOT, 29.0),
        (A100_OD, 3.67),
    ]


# -- leases --------------------------------------------------------------------


def test_a_live_lease_cannot_be_taken_by_another_holder(store: Store) -> None:
    store.leases.acquire("leader", "a", now=T0, ttl=timedelta(seconds=30))
    with pytest.raises(LeaseHeld) as held:
        store.leases.acquire(
            "leader", "b", now=T0 + timedelta(seconds=10), ttl=timedelta(seconds=30)
        )
    assert held.value.holder == "a"


def test_the_holder_renews_its_lease(store: Store) -> None:
    store.leases.acquire("leader", "a", now=T0, ttl=timedelta(seconds=30))
    lease = store.leases.acquire(
        "leader", "a", now=T0 + timedelta(seconds=20), ttl=timedelta(seconds=30)
    )
    assert lease.acquired_at == T0
    assert lease.expires_at == T0 + timedelta(seconds=50)


def test_an_expired_lease_can_be_taken(store: Store) -> None:
    store.leases.acquire("leader", "a", now=T0, ttl=timedelta(seconds=30))
    lease = store.leases.acquire(
        "leader", "b", now=T0 + timedelta(seconds=31), ttl=timedelta(seconds=30)
    )
    assert lease.holder == "b"
    stored = store.leases.get("leader")
    assert stored is not None and stored.holder == "b"


def test_a_dead_holders_lease_can_be_stolen_by_name(store: Store) -> None:
    store.leases.acquire("leader", "a", now=T0, ttl=timedelta(seconds=30))
    lease = store.leases.acquire(
        "leader", "b", now=T0 + timedelta(seconds=1), ttl=timedelta(seconds=30), steal_from="a"
    )
    assert lease.holder == "b"


def test_only_the_holder_releases(store: Store) -> None:
    store.leases.acquire("leader", "a", now=T0, ttl=timedelta(seconds=30))
    assert store.leases.release("leader", "b") is False
    assert store.leases.release("leader", "a") is True
    assert store.leases.get("leader") is None


# -- workloads, migrations, decisions ------------------------------------------


def chat() -> Workload:
    return Workload(
        name="chat-api",
        data_class="personal-eu",
        gpu_options=(GpuOption(model="H100", tokens_per_second=2400),),
        replicas=2,
        labels={"tier": "prod"},
    )


def test_workloads_round_trip_and_upsert(store: Store) -> None:
    store.workloads.upsert(chat(), now=T0, source_file="workloads/chat.yaml")
    changed = chat().model_copy(update={"replicas": 3})
    store.workloads.upsert(changed, now=T0 + timedelta(minutes=1))
    assert store.workloads.all() == [changed]


def test_placements_are_replaced_whole(store: Store) -> None:
    store.workloads.upsert(chat(), now=T0)
    store.workloads.set_placements(
        "chat-api", [Placement(workload="chat-api", offer=H100_SPOT, replicas=2)], now=T0
    )
    store.workloads.set_placements(
        "chat-api", [Placement(workload="chat-api", offer=A100_OD, replicas=1)], now=T0
    )
    assert store.workloads.placements("chat-api") == [(A100_OD.key, 1)]


def migration() -> Migration:
    return Migration(
        id="m-1",
        workload="chat-api",
        source=(Placement(workload="chat-api", offer=H100_SPOT, replicas=2),),
        target=(Placement(workload="chat-api", offer=A100_OD, replicas=2),),
        reason="saves $41.20/h",
        created_at=T0,
        updated_at=T0,
    )


def test_a_migration_and_its_events_are_kept_in_order(store: Store) -> None:
    m = migration()
    store.migrations.create(m, actor="d1")
    m = store.migrations.advance(
        m, MigrationState.PROVISIONING, at=T0 + timedelta(seconds=1), reason="start", actor="d1"
    )
    m = store.migrations.advance(
        m, MigrationState.WARMING, at=T0 + timedelta(seconds=2), reason="capacity granted"
    )
    assert store.migrations.get("m-1") == m
    events = store.migrations.events("m-1")
    assert [(e.from_state, e.to_state) for e in events] == [
        (None, MigrationState.PLANNED),
        (MigrationState.PLANNED, MigrationState.PROVISIONING),
        (MigrationState.PROVISIONING, MigrationState.WARMING),
    ]
    assert [e.reason for e in events] == ["saves $41.20/h", "start", "capacity granted"]


def test_a_stale_actor_cannot_advance_a_migration_twice(store: Store) -> None:
    m = migration()
    store.migrations.create(m)
    store.migrations.advance(m, MigrationState.PROVISIONING, at=T0, reason="first actor")
    with pytest.raises(StoreError, match="another actor"):
        store.migrations.advance(m, MigrationState.PROVISIONING, at=T0, reason="second actor")
    assert len(store.migrations.events("m-1")) == 2


def test_unfinished_lists_only_migrations_in_flight(store: Store) -> None:
    m = migration()
    store.migrations.create(m)
    other = migration().model_copy(update={"id": "m-2"})
    store.migrations.create(other)
    store.migrations.advance(other, MigrationState.ROLLED_BACK, at=T0, reason="cancelled")
    assert [x.id for x in store.migrations.unfinished()] == ["m-1"]


def test_migrations_are_listed_in_the_order_started_even_when_the_clock_stepped_back(
    store: Store,
) -> None:
    first = migration()
    stepped_back = first.model_copy(
        update={
            "id": "m-0",
            "created_at": T0 - timedelta(minutes=10),
            "updated_at": T0 - timedelta(minutes=10),
        }
    )
    store.migrations.create(first)
    store.migrations.create(stepped_back)
    assert [m.id for m in store.migrations.recent()] == ["m-0", "m-1"], "last started first"
    assert [m.id for m in store.migrations.recent(limit=1)] == ["m-0"]
    assert [m.id for m in store.migrations.unfinished()] == ["m-1", "m-0"], "first started first"


def test_each_workloads_last_started_migration_is_read_in_one_query(store: Store) -> None:
    """By insertion order, not ``created_at`` (the last started carries the earlier
    time after the clock stepped back), in its current state, for every workload with a
    migration, however long ago it started."""
    first = migration()
    stepped_back = first.model_copy(
        update={
            "id": "m-0",
            "created_at": T0 - timedelta(minutes=10),
            "updated_at": T0 - timedelta(minutes=10),
        }
    )
    batch = first.model_copy(update={"id": "m-2", "workload": "batch", "reason": "place"})
    store.migrations.create(first)
    store.migrations.create(stepped_back)
    store.migrations.create(batch)
    store.migrations.advance(stepped_back, MigrationState.ROLLED_BACK, at=T0, reason="cancelled")
    assert store.migrations.latest_per_workload() == {
        "chat-api": LastMigration(
            id="m-0",
            workload="chat-api",
            state=MigrationState.ROLLED_BACK,
            reason="saves $41.20/h",
            created_at=T0 - timedelta(minutes=10),
        ),
        "batch": LastMigration(
            id="m-2",
            workload="batch",
            state=MigrationState.PLANNED,
            reason="place",
            created_at=T0,
        ),
    }


def test_no_workload_has_a_last_migration_in_an_empty_store(store: Store) -> None:
    assert store.migrations.latest_per_workload() == {}


# -- migration retention ---------------------------------------------------------

TO_DONE = (
    MigrationState.PROVISIONING,
    MigrationState.WARMING,
    MigrationState.SHIFTING,
    MigrationState.DRAINING,
    MigrationState.RELEASING,
    MigrationState.DONE,
)
PATHS = {
    MigrationState.DONE: TO_DONE,
    MigrationState.ROLLED_BACK: (MigrationState.ROLLED_BACK,),
    MigrationState.FAILED: (MigrationState.FAILED,),
    MigrationState.PROVISIONING: (MigrationState.PROVISIONING,),
    MigrationState.PLANNED: (),
}


def started(store: Store, key: str, workload: str, days: float, state: MigrationState) -> None:
    """Migration ``key`` of ``workload``, started ``days`` after T0 and brought to
    ``state`` then (every step an event)."""
    at = T0 + timedelta(days=days)
    m = migration().model_copy(
        update={"id": key, "workload": workload, "created_at": at, "updated_at": at}
    )
    store.migrations.create(m)
    for step in PATHS[state]:
        m = store.migrations.advance(m, step, at=at, reason=f"to {step}")


def test_retention_deletes_finished_migrations_and_their_events_but_never_a_workloads_last(
    store: Store,
) -> None:
    """Done, rolled back and failed migrations that finished before the cutoff go, with
    their events; an unfinished one stays however old, and so does each workload's last
    started one (cooldown, waves and ``arbiter status`` read it) and any finished since."""
    started(store, "chat-1", "chat-api", 0, MigrationState.DONE)
    started(store, "chat-2", "chat-api", 1, MigrationState.ROLLED_BACK)
    started(store, "chat-3", "chat-api", 2, MigrationState.FAILED)
    started(store, "chat-4", "chat-api", 3, MigrationState.DONE)  # its last: kept
    started(store, "train-1", "train", 0, MigrationState.PROVISIONING)  # unfinished: kept
    started(store, "train-2", "train", 4, MigrationState.DONE)  # its last: kept
    started(store, "batch-1", "batch", 150, MigrationState.DONE)  # finished since: kept
    started(store, "batch-2", "batch", 151, MigrationState.PLANNED)
    last = store.migrations.latest_per_workload()

    removed = store.migrations.prune(T0 + timedelta(days=100))

    assert removed == {"migrations": 3, "migration_events": 7 + 2 + 2}
    kept = ["batch-2", "batch-1", "train-2", "train-1", "chat-4"]
    assert [m.id for m in store.migrations.recent()] == kept
    for gone in ("chat-1", "chat-2", "chat-3"):
        assert store.migrations.get(gone) is None
        assert store.migrations.events(gone) == []
    assert len(store.migrations.events("chat-4")) == 7, "a kept migration keeps its events"
    assert store.migrations.latest_per_workload() == last
    assert [m.id for m in store.migrations.unfinished()] == ["train-1", "batch-2"]
    assert store.migrations.prune(T0 + timedelta(days=100)) == {
        "migrations": 0,
        "migration_events": 0,
    }


def test_retention_keeps_a_workloads_last_migration_however_old_whatever_its_state(
    store: Store,
) -> None:
    for state in (MigrationState.DONE, MigrationState.ROLLED_BACK, MigrationState.FAILED):
        started(store, f"{state}-1", str(state).replace("_", "-"), 0, state)
    removed = store.migrations.prune(T0 + timedelta(days=10_000))
    assert removed == {"migrations": 0, "migration_events": 0}
    assert len(store.migrations.recent()) == 3


def test_retention_deletes_migrations_in_bounded_batches(store: Store) -> None:
    """Each transaction deletes at most ``batch`` migrations, so a first prune of a
    table grown for years does not hold its locks for the whole of it."""
    for i in range(5):
        started(store, f"chat-{i}", "chat-api", i, MigrationState.ROLLED_BACK)
    started(store, "chat-last", "chat-api", 5, MigrationState.DONE)
    deleted: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM MIGRATIONS "):
            deleted.append(cursor.rowcount)

    event.listen(store.engine, "after_cursor_execute", count)
    try:
        removed = store.migrations.prune(T0 + timedelta(days=30), batch=2)
    finally:
        event.remove(store.engine, "after_cursor_execute", count)
    assert removed == {"migrations": 5, "migration_events": 10}
    assert deleted == [2, 2, 1]
    assert [m.id for m in store.migrations.recent()] == ["chat-last"]


def test_decisions_round_trip_with_their_explanation(store: Store) -> None:
    decision = Decision(
        id="d-1",
        workload="chat-api",
        decided_at=T0,
        snapshot_id="snap-1",
        placements=(Placement(workload="chat-api", offer=A100_OD, replicas=2),),
        usd_per_hour=7.34,
    )
    store.decisions.record(decision)
    later = decision.model_copy(update={"id": "d-2", "decided_at": T0 + timedelta(hours=1)})
    store.decisions.record(later)
    assert store.decisions.latest("chat-api") == later
    assert store.decisions.latest("nothing") is None


def test_the_latest_decision_is_the_last_recorded_even_when_the_clock_stepped_back(
    store: Store,
) -> None:
    first = Decision(
        id="d-1",
        workload="chat-api",
        decided_at=T0,
        snapshot_id="snap-1",
        placements=(Placement(workload="chat-api", offer=A100_OD, replicas=2),),
        usd_per_hour=7.34,
    )
    store.decisions.record(first)
    stepped_back = first.model_copy(
        update={"id": "d-0", "decided_at": T0 - timedelta(minutes=10), "usd_per_hour": 3.67}
    )
    store.decisions.record(stepped_back)
    assert store.decisions.latest("chat-api") == stepped_back
    assert store.decisions.latest_all() == {"chat-api": stepped_back}
    assert [d.id for d in store.decisions.recent()] == ["d-0", "d-1"], "newest recorded first"
    assert [d.id for d in store.decisions.recent(workload="chat-api", limit=1)] == ["d-0"]


def test_decisions_recorded_together_keep_the_order_they_were_given(store: Store) -> None:
    base = Decision(
        id="d-1",
        workload="chat-api",
        decided_at=T0,
        snapshot_id="snap-1",
        unplaceable_reasons=("no offer passes the policy",),
    )
    batch = [base.model_copy(update={"id": f"d-{n}"}) for n in (3, 1, 2)]
    store.decisions.record_many(batch)
    assert store.decisions.latest("chat-api") == batch[-1]
    assert store.decisions.latest_all() == {"chat-api": batch[-1]}
    assert [d.id for d in store.decisions.recent()] == ["d-2", "d-1", "d-3"]


# -- decision retention ----------------------------------------------------------


def decided(store: Store, key: str, workload: str, days: float) -> None:
    """Decision ``key`` of ``workload``, decided ``days`` after T0 (recorded now, so
    after every decision recorded before it whatever its date)."""
    store.decisions.record(
        Decision(
            id=key,
            workload=workload,
            decided_at=T0 + timedelta(days=days),
            snapshot_id=f"snap-{key}",
            placements=(Placement(workload=workload, offer=A100_OD, replicas=1),),
            usd_per_hour=3.67,
        )
    )


def test_retention_deletes_old_decisions_but_never_a_workloads_latest(store: Store) -> None:
    """Decisions decided before the cutoff go; each workload's latest stays however old
    (``arbiter decisions`` shows it, the reconciler's change detection compares with
    it), and so does every one decided since."""
    decided(store, "chat-1", "chat-api", 0)
    decided(store, "chat-2", "chat-api", 1)
    decided(store, "chat-3", "chat-api", 150)  # decided since: kept
    decided(store, "chat-4", "chat-api", 151)  # its latest: kept
    decided(store, "train-1", "train", 0)
    decided(store, "train-2", "train", 2)  # its latest, however old: kept
    decided(store, "batch-1", "batch", 3)  # its only one: kept
    latest = store.decisions.latest_all()

    removed = store.decisions.prune(T0 + timedelta(days=100))

    assert removed == {"decisions": 3}
    kept = ["batch-1", "train-2", "chat-4", "chat-3"]
    assert [d.id for d in store.decisions.recent()] == kept
    assert store.decisions.latest_all() == latest
    assert store.decisions.latest("train") == latest["train"]
    assert store.decisions.prune(T0 + timedelta(days=100)) == {"decisions": 0}


def test_retention_keeps_the_latest_recorded_decision_even_when_the_clock_stepped_back(
    store: Store,
) -> None:
    """The latest is the last recorded (``seq``), not the newest ``decided_at``: after a
    clock that stepped back, the one decided later but recorded earlier may go, the
    latest stays."""
    decided(store, "chat-1", "chat-api", 20)
    decided(store, "chat-0", "chat-api", 10)  # recorded last, decided earlier
    removed = store.decisions.prune(T0 + timedelta(days=30))
    assert removed == {"decisions": 1}
    assert [d.id for d in store.decisions.recent()] == ["chat-0"]
    assert store.decisions.latest("chat-api").id == "chat-0"  # type: ignore[union-attr]


def test_retention_keeps_every_workloads_only_decision_however_old(store: Store) -> None:
    for workload in ("chat-api", "train", "batch"):
        decided(store, f"{workload}-1", workload, 0)
    assert store.decisions.prune(T0 + timedelta(days=10_000)) == {"decisions": 0}
    assert len(store.decisions.recent()) == 3


def test_retention_deletes_decisions_in_bounded_batches(store: Store) -> None:
    """Each transaction deletes at most ``batch`` decisions, so a first prune of a table
    grown for years does not hold its locks for the whole of it."""
    for i in range(5):
        decided(store, f"chat-{i}", "chat-api", i)
    decided(store, "chat-last", "chat-api", 5)
    deleted: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM DECISIONS "):
            deleted.append(cursor.rowcount)

    event.listen(store.engine, "after_cursor_execute", count)
    try:
        removed = store.decisions.prune(T0 + timedelta(days=30), batch=2)
    finally:
        event.remove(store.engine, "after_cursor_execute", count)
    assert removed == {"decisions": 5}
    assert deleted == [2, 2, 1]
    assert [d.id for d in store.decisions.recent()] == ["chat-last"]


# -- capacity, carbon, instance types, source status ----------------------------

from arbiter.domain.market import (  # noqa: E402
    CapacityKind,
    CapacitySignal,
    CarbonReading,
    CarbonUnit,
    InstanceType,
)


def signal(
    value: float, minutes: int, kind: CapacityKind = CapacityKind.PLACEMENT_SCORE
) -> CapacitySignal:
    return CapacitySignal(
        provider=Provider.AWS,
        region="us-east-1",
        zone="use1-az4",
        instance_type="p5.48xlarge",
        kind=kind,
        value=value,
        observed_at=T0 + timedelta(minutes=minutes),
        source="test",
    )


def test_capacity_signals_are_change_point_encoded(store: Store) -> None:
    stats = store.capacity.record([signal(7, 0), signal(7, 5), signal(3, 10)])
    assert (stats.inserted, stats.extended) == (2, 1)
    (latest,) = store.capacity.latest()
    assert latest.signal == signal(3, 10)
    assert latest.first_seen == T0 + timedelta(minutes=10)


def test_after_the_clock_stepped_back_a_changed_capacity_signal_is_the_latest(
    store: Store,
) -> None:
    store.capacity.record([signal(7, 0), signal(7, 10)])
    stats = store.capacity.record([signal(2, 1)])  # the clock went back 9 minutes
    assert stats.inserted == 1
    (latest,) = store.capacity.latest()
    assert (latest.signal.value, latest.first_seen) == (2, T0 + timedelta(minutes=10))


def test_capacity_series_are_kept_apart_by_kind(store: Store) -> None:
    store.capacity.record([signal(7, 0), signal(2, 0, CapacityKind.INTERRUPTION_BUCKET)])
    kinds = sorted(c.signal.kind for c in store.capacity.latest())
    assert kinds == [CapacityKind.INTERRUPTION_BUCKET, CapacityKind.PLACEMENT_SCORE]


def reading(value: float, hour: int, source: str = "em") -> CarbonReading:
    return CarbonReading(
        zone="DE",
        valid_at=T0 + timedelta(hours=hour),
        value=value,
        basis="lifecycle",
        source=source,
    )


def test_carbon_readings_keep_one_value_per_hour_and_the_newest_wins(store: Store) -> None:
    store.carbon.record([reading(380, 0), reading(350, 1)], observed_at=T0)
    store.carbon.record([reading(352, 1)], observed_at=T0 + timedelta(minutes=30))
    latest = store.carbon.latest()
    assert [(r.value, r.valid_at, seen) for r, seen in latest] == [
        (352, T0 + timedelta(hours=1), T0 + timedelta(minutes=30))
    ]


def test_carbon_latest_keeps_sources_and_units_apart(store: Store) -> None:
    index = CarbonReading(
        zone="DE", valid_at=T0, value=40, unit=CarbonUnit.PERCENTILE, basis="marginal", source="wt"
    )
    store.carbon.record([reading(380, 0), index], observed_at=T0)
    assert {(r.source, r.unit) for r, _ in store.carbon.latest()} == {
        ("em", CarbonUnit.G_PER_KWH),
        ("wt", CarbonUnit.PERCENTILE),
    }


def test_instance_types_are_upserted(store: Store) -> None:
    h100 = InstanceType(
        provider="aws",
        name="p5.48xlarge",
        vcpus=192,
        memory_gib=2048,
        accelerator="H100",
        accelerator_count=8,
        accelerator_memory_gib=80,
    )
    store.instance_types.upsert([h100], now=T0)
    bigger = h100.model_copy(update={"memory_gib": 2049.0})
    store.instance_types.upsert([bigger], now=T0)
    assert store.instance_types.all() == [bigger]


def test_source_status_counts_a_failure_streak_and_a_success_resets_it(store: Store) -> None:
    store.sources.failed("aws", at=T0, error="HTTP 503")
    store.sources.failed("aws", at=T0 + timedelta(minutes=1), error="HTTP 503 again")
    (status,) = store.sources.all()
    assert status.consecutive_failures == 2 and status.last_error == "HTTP 503 again"
    assert status.last_success_at is None
    store.sources.succeeded("aws", at=T0 + timedelta(minutes=2))
    (status,) = store.sources.all()
    assert status.consecutive_failures == 0
    assert status.last_success_at == T0 + timedelta(minutes=2)
    assert status.last_error_at == T0 + timedelta(minutes=1)


def test_retention_drops_old_levels_but_keeps_the_newest_of_every_series(store: Store) -> None:
    store.prices.record([quote(H100_SPOT, 30.0, 0), quote(H100_SPOT, 28.0, 60)])
    store.prices.record([quote(A100_OD, 3.0, 0)])
    store.carbon.record([reading(380, 0), reading(350, 5)], observed_at=T0)
    removed = store.prune(T0 + timedelta(minutes=30))
    assert removed == {"prices": 1, "capacity": 0, "carbon": 1}
    assert store.prices.history(H100_SPOT) == [
        (28.0, T0 + timedelta(minutes=60), T0 + timedelta(minutes=60))
    ]
    assert store.prices.history(A100_OD) == [(3.0, T0, T0)]


def test_retention_keeps_the_newest_carbon_reading_of_every_series_however_old(
    store: Store,
) -> None:
    """Static annual factors are dated years back and are their zone's only reading:
    retention must not empty the zone (it would until the next poll)."""
    store.carbon.record([reading(380, 0), reading(350, 5)], observed_at=T0)
    store.carbon.record([reading(300, 0, source="static")], observed_at=T0)
    removed = store.prune(T0 + timedelta(days=400))
    assert removed["carbon"] == 1
    kept = {(r.source, r.value) for r, _ in store.carbon.latest()}
    assert kept == {("em", 350), ("static", 300)}


def test_the_planners_memories_are_each_replaced_whole_and_kept_apart(store: Store) -> None:
    """Sustained-for (pending) and drain_within (violations) times per workload."""
    store.pending.replace({"chat": T0})
    store.violations.replace({"chat": T0 - timedelta(hours=1), "batch": T0})
    assert store.pending.all() == {"chat": T0}
    assert store.violations.all() == {"chat": T0 - timedelta(hours=1), "batch": T0}
    store.violations.replace({"batch": T0})
    assert store.violations.all() == {"batch": T0}
    assert all(s.tzinfo is not None for s in store.violations.all().values())
    store.violations.replace({})
    assert store.violations.all() == {} and store.pending.all() == {"chat": T0}
