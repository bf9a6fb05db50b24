"""A SQLite store whose disk runs out of space, then gets some back.

The disk is emulated inside SQLite: every connection gets ``PRAGMA max_page_count`` at
the number of pages in use, and a ``ballast`` table is filled until SQLite answers
SQLITE_FULL ("database or disk is full"). Freeing space is deleting the ballast. The
store, the poller, the reconciler and the daemon's own jobs run on it unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from arbiter.config import Settings, SourceConfig
from arbiter.daemon import Daemon
from arbiter.domain.market import PriceQuote
from arbiter.errors import StoreError
from arbiter.polling import DEGRADED_AFTER, ConfiguredSource, Poller, RetryPolicy
from arbiter.ports import FakeMarket
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store
from tests.reliability.world import CATALOG, NOW, World, assert_steps_once_in_order, offer

OUT_OF_SPACE = "out of disk space"


class Disk:
    """A SQLite file on a 'disk' that :meth:`fill` fills and :meth:`free` empties."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        upgrade(self.url)
        self.engine: Engine = make_engine(self.url)
        self.pages: int | None = None
        event.listen(self.engine, "connect", self._cap)
        with self.engine.begin() as conn:
            conn.execute(text("CREATE TABLE ballast (b BLOB NOT NULL)"))

    def _cap(self, dbapi_connection: Any, _record: Any) -> None:
        if self.pages is not None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA max_page_count = {self.pages}")
            cursor.close()

    def fill(self, headroom: int = 256) -> None:
        """No page left: the file may grow by ``headroom`` pages (1 MiB), and the ballast
        takes them and every free byte of the pages it has."""
        with self.engine.connect() as conn:
            self.pages = int(conn.execute(text("PRAGMA page_count")).scalar_one()) + headroom
        self.engine.dispose()  # every new connection gets the cap
        for size in (65536, 4096, 512, 64, 8, 1):
            for _ in range(10_000):
                try:
                    with self.engine.begin() as conn:
                        conn.execute(text("INSERT INTO ballast VALUES (zeroblob(:n))"), {"n": size})
                except OperationalError as exc:
                    assert "full" in str(exc.orig)
                    break
            else:
                raise AssertionError("the disk never filled up")

    def free(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM ballast"))

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every arbiter table (not the ballast)."""
        with self.engine.connect() as conn:
            tables = [
                r[0]
                for r in conn.execute(
                    text("SELECT name FROM sqlite_master WHERE type='table' AND name != 'ballast'")
                )
            ]
            return {
                t: sorted(map(tuple, conn.execute(text(f'SELECT * FROM "{t}"'))), key=repr)
                for t in tables
            }


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    d = Disk(tmp_path / "arbiter.db")
    yield d
    d.engine.dispose()


def quotes(count: int, price: float, world_clock: Any) -> list[PriceQuote]:
    """``count`` spot offers in europe-west regions' zones, all at ``price``."""
    from arbiter.domain.market import Offer

    return [
        PriceQuote(
            offer=Offer(
                provider="gcp",
                region="europe-west4",
                zone=f"europe-west4-{i}",
                instance_type="g2-standard-4",
                market="spot",
            ),
            usd_per_hour=price,
            observed_at=world_clock.now(),
            source="fake",
        )
        for i in range(count)
    ]


def make_poller(store: Store, market: FakeMarket, clock: Any) -> Poller:
    source = ConfiguredSource("fake", SourceConfig(kind="replay"), market)
    return Poller(
        store,
        {"fake": source},
        CATALOG,
        clock,
        retry=RetryPolicy(attempts=1),
        sleep=lambda _: None,
    )


def test_a_write_to_a_full_store_fails_with_a_store_error_saying_the_disk_is_full(
    disk: Disk,
) -> None:
    from arbiter.ports import FakeClock

    store = Store(disk.engine)
    disk.fill()
    with pytest.raises(StoreError) as caught:
        store.prices.record(quotes(200, 1.0, FakeClock(NOW)))
    assert str(caught.value).startswith(f"recording prices: the database is {OUT_OF_SPACE}")
    assert "unreachable" not in str(caught.value)


def test_a_poll_into_a_full_store_is_refused_whole_keeps_what_was_stored_and_degrades_the_source(
    disk: Disk,
) -> None:
    from arbiter.ports import FakeClock

    store, clock, market = Store(disk.engine), FakeClock(NOW), FakeMarket()
    poller = make_poller(store, market, clock)
    market.prices = quotes(20, 1.0, clock)
    assert poller.poll("fake").ok
    disk.fill()
    before = disk.dump()
    for _ in range(DEGRADED_AFTER):
        clock.advance(timedelta(minutes=5))
        market.prices = quotes(500, 0.5, clock)  # 480 new offers and 20 new prices
        with capture_logs() as logs:
            result = poller.poll("fake")
        assert not result.ok and OUT_OF_SPACE in (result.error or "")
        assert any(e["event"] == "poll failed; stored data kept" for e in logs)
    after = disk.dump()
    assert after.pop("source_status") != before.pop("source_status")
    assert after == before, "nothing stored before the disk filled changed or went missing"
    (status,) = store.sources.all()
    assert status.consecutive_failures == DEGRADED_AFTER  # degraded, with the reason
    assert OUT_OF_SPACE in (status.last_error or "")
    assert {p.usd_per_hour for p in store.prices.latest()} == {1.0}


def test_writes_succeed_again_once_space_is_freed_and_the_source_recovers(disk: Disk) -> None:
    from arbiter.ports import FakeClock

    store, clock, market = Store(disk.engine), FakeClock(NOW), FakeMarket()
    poller = make_poller(store, market, clock)
    market.prices = quotes(20, 1.0, clock)
    poller.poll("fake")
    disk.fill()
    clock.advance(timedelta(minutes=5))
    market.prices = quotes(500, 0.5, clock)
    assert not poller.poll("fake").ok
    disk.free()
    clock.advance(timedelta(minutes=5))
    market.prices = quotes(500, 0.5, clock)
    assert poller.poll("fake").ok
    assert len(store.prices.latest()) == 500
    assert {p.usd_per_hour for p in store.prices.latest()} == {0.5}
    (status,) = store.sources.all()
    assert status.consecutive_failures == 0 and status.last_success_at == clock.now()


def test_the_daemons_jobs_keep_running_on_a_full_disk_and_pick_up_when_it_is_freed(
    disk: Disk, tmp_path: Path
) -> None:
    """tick (lease), poll, reconcile and retention on a full disk: errors are logged,
    nothing raises, and once space is back the workload is placed."""
    store = Store(disk.engine)
    world = World(store, tmp_path)
    settings = Settings.model_validate({"daemon": {"lease_seconds": 60}})
    daemon = Daemon(settings, disk.engine, CATALOG, database_url=disk.url, clock=world.clock)
    daemon.prepare_store()
    assert daemon.try_lead()
    market = FakeMarket()
    daemon.poller = make_poller(store, market, world.clock)
    daemon.reconciler = world.reconciler
    disk.fill()
    before = disk.dump()
    with capture_logs() as logs:
        for _ in range(8):
            market.prices = quotes(300, 5.0, world.clock) + [
                PriceQuote(
                    offer=offer(region),
                    usd_per_hour=price,
                    observed_at=world.clock.now(),
                    source="test",
                )
                for region, price in (("europe-west4", 1.0), ("europe-west1", 1.5))
            ]
            daemon.tick()
            daemon.poll("fake")
            daemon.reconcile()
            daemon.prune()
            world.clock.advance(timedelta(seconds=15))
    assert not daemon.stopping.is_set()
    errors = [e for e in logs if e["log_level"] == "error"]
    assert errors and any(OUT_OF_SPACE in json.dumps(e) for e in errors)
    assert all(OUT_OF_SPACE in json.dumps(e) for e in errors if "error" in e), errors
    kept = disk.dump()
    for table in ("price_history", "offers", "regions", "instance_types", "alembic_version"):
        assert kept[table] == before[table], f"{table} changed on a full disk"

    disk.free()
    for _ in range(8):
        daemon.tick()
        daemon.poll("fake")
        daemon.reconcile()
        world.clock.advance(timedelta(seconds=15))
    assert daemon.is_leader
    assert world.placements() == [(offer("europe-west4").key, 2)]
    assert store.sources.all()[0].consecutive_failures == 0


def pack_migration_events(disk: Disk, store: Store) -> None:
    """Fill what room the migration event log has left (its table and index pages) with
    the events of an old, finished migration, so that recording any step needs a page
    the full disk does not have."""
    from arbiter.domain.migrations import Migration, MigrationState

    old = Migration(
        id="m-old-padding",
        workload="old",
        source=(),
        target=(),
        state=MigrationState.DONE,
        reason="an old migration",
        created_at=NOW - timedelta(days=30),
        updated_at=NOW - timedelta(days=30),
    )
    store.migrations.create(old)
    for size in (512, 64, 8, 1):
        for i in range(10_000):
            try:
                with disk.engine.begin() as conn:
                    conn.execute(
                        text(
                            "INSERT INTO migration_events "
                            "(migration_id, at, from_state, to_state, reason, actor) "
                            "VALUES (:m, :at, NULL, 'planned', :reason, '')"
                        ),
                        {
                            "m": old.id,
                            "at": old.created_at + timedelta(seconds=i),
                            "reason": "x" * size,
                        },
                    )
            except OperationalError:
                break


def test_a_migration_caught_by_a_full_disk_waits_then_finishes_without_repeating_a_step(
    disk: Disk, tmp_path: Path
) -> None:
    store = Store(disk.engine)
    world = World(store, tmp_path, warmup=timedelta(seconds=40))
    world.prices({offer("europe-west4"): 1.0})
    world.tick(2)  # planned → provisioning → warming (replicas take 40 s)
    (m,) = world.migrations()
    assert m.state.value == "warming"
    disk.fill()
    pack_migration_events(disk, store)
    with capture_logs() as logs:
        world.tick(6)  # the replicas become ready meanwhile; the step cannot be recorded
    refused = [e for e in logs if e["event"] == "migration step not recorded"]
    assert refused and all(OUT_OF_SPACE in e["error"] for e in refused)
    assert store.migrations.get(m.id).state.value == "warming"  # type: ignore[union-attr]
    disk.free()
    world.prices({offer("europe-west4"): 1.0})
    world.tick(3)
    m = next(x for x in world.migrations() if x.id == m.id)
    assert m.state.value == "done"
    assert_steps_once_in_order(world.events(m))
    assert world.placements() == [(offer("europe-west4").key, 2)]
    assert world.orphans() == []
