"""An in-process arbiter on a real store: FakeClock, FakeExecutor (also the router), a
Migrator and a Reconciler reading policy and workload files from a directory — the
daemon's reconcile pass without the scheduler, as tests/test_reconcile.py drives it."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from arbiter.catalog import load_catalog
from arbiter.config import Mode, Settings
from arbiter.domain.market import InstanceType, Offer, PriceQuote
from arbiter.domain.migrations import Migration, MigrationEvent, MigrationState
from arbiter.migrator import Migrator, placements_from_store
from arbiter.ports import FakeClock, FakeExecutor
from arbiter.reconcile import Reconciler, TickResult
from arbiter.store.repositories import Store

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
CATALOG = load_catalog()
SOURCE = "test"

POLICY = """\
apiVersion: arbiter/v1
kind: PlacementPolicy
metadata: {{name: eu}}
select: {{data_classes: [internal]}}
constraints:
  - id: eu-residency
    sovereignty: {{data_classes: [internal], jurisdictions: [EU]}}
migration:
  min_saving: {{pct: 10}}
  sustained_for: {sustained_for}
  cooldown: {cooldown}
  max_disrupted_replicas_pct: 100
  drain_timeout: {drain_timeout}
"""
WORKLOAD = """\
apiVersion: arbiter/v1
kind: Workload
metadata: {{name: {name}}}
spec:
  data_class: {data_class}
  gpu_options: [{{model: L4, tokens_per_second: 500}}]
  replicas: {replicas}
  warmup_seconds: {warmup}
"""
L4_TYPE = InstanceType(
    provider="gcp",
    name="g2-standard-4",
    vcpus=4,
    memory_gib=16,
    accelerator="L4",
    accelerator_count=1,
    accelerator_memory_gib=24,
)


def offer(region: str, market: str = "on-demand") -> Offer:
    """The L4 offer (g2-standard-4) of a GCP region."""
    return Offer(provider="gcp", region=region, instance_type="g2-standard-4", market=market)


def policy(*, sustained_for: str = "0s", cooldown: str = "0s", drain_timeout: str = "5m") -> str:
    return POLICY.format(
        sustained_for=sustained_for, cooldown=cooldown, drain_timeout=drain_timeout
    )


def workload(
    name: str = "chat", *, data_class: str = "internal", replicas: int = 2, warmup: int = 30
) -> str:
    return WORKLOAD.format(name=name, data_class=data_class, replicas=replicas, warmup=warmup)


class World:
    """One store, one clock, one fake cloud, one reconciler (the leader's pass)."""

    def __init__(
        self,
        store: Store,
        tmp: Path,
        *,
        policies: str | None = None,
        workloads: Mapping[str, str] | None = None,
        warmup: timedelta = timedelta(seconds=10),
        mode: Mode = Mode.ENFORCE,
        steps_per_tick: int = 20,
        stale_after: float = 3600,
    ) -> None:
        self.store = store
        self.clock = FakeClock(NOW)
        self.cloud = FakeExecutor(self.clock, warmup=warmup)
        self.dir = tmp
        (tmp / "policies").mkdir()
        (tmp / "workloads").mkdir()
        (tmp / "policies" / "eu.yaml").write_text(policy() if policies is None else policies)
        for name, text in (workloads or {"chat": workload()}).items():
            (tmp / "workloads" / f"{name}.yaml").write_text(text)
        settings = Settings.model_validate(
            {
                "daemon": {
                    "mode": mode.value,
                    "kill_switch_file": str(tmp / "KILL"),
                    "migration_steps_per_tick": steps_per_tick,
                },
                "policies": {
                    "paths": [str(tmp / "policies")],
                    "workloads": [str(tmp / "workloads")],
                },
            }
        )
        store.instance_types.upsert([L4_TYPE], now=NOW)
        self.migrator = Migrator(store, self.cloud, self.cloud, self.clock, actor="test")
        self.reconciler = Reconciler(
            store, self.migrator, settings, CATALOG, self.clock, stale_after={SOURCE: stale_after}
        )

    def prices(self, prices: Mapping[Offer, float]) -> None:
        """Quotes for these offers, observed now (what a poll records)."""
        self.store.prices.record(
            [
                PriceQuote(offer=o, usd_per_hour=p, observed_at=self.clock.now(), source=SOURCE)
                for o, p in prices.items()
            ]
        )

    def tick(self, times: int = 1, every: timedelta = timedelta(seconds=15)) -> TickResult:
        result = None
        for _ in range(times):
            result = self.reconciler.tick()
            self.clock.advance(every)
        assert result is not None
        return result

    def migrations(self) -> list[Migration]:
        """Every migration, oldest first."""
        return list(reversed(self.store.migrations.recent(limit=100_000)))

    def events(self, migration: Migration) -> list[MigrationEvent]:
        return self.store.migrations.events(migration.id)

    def placements(self, name: str = "chat") -> list[tuple[str, int]]:
        return self.store.workloads.placements(name)

    def orphans(self) -> list[str]:
        running = placements_from_store(self.store.workloads.all_placements())
        return [g.id for g in self.migrator.orphans(running)]


def assert_steps_once_in_order(events: list[MigrationEvent]) -> None:
    """Every recorded step of a migration is a legal transition from the one before it,
    and no state is entered twice: no step was taken twice or skipped."""
    from arbiter.domain.migrations import TRANSITIONS

    states = [e.to_state for e in events]
    assert len(states) == len(set(states)), f"a state entered twice: {states}"
    assert states[0] is MigrationState.PLANNED and events[0].from_state is None, states
    for before, after in itertools.pairwise(events):
        assert after.from_state is before.to_state, f"out of order: {states}"
        assert after.to_state in TRANSITIONS[before.to_state], f"illegal step: {states}"
