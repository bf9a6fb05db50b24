"""An accelerated soak: seven simulated days of reconcile passes, one every ten minutes.

The leader's pass (Reconciler + Migrator, FakeExecutor as executor and router) runs on a
SQLite store against a changing market: GCP L4 offers (g2-standard-4, on-demand and
spot) in four EU and two US regions, starting from the newest recorded prices of the
shipped replay data (``arbiter/data/replay``) and re-priced at random every few hours;
a poll records every price each hour. Every day an offer runs out of capacity for
three hours (the executor raises CapacityUnavailable), and the spot capacity a workload
runs on gets an interruption notice (``Reconciler.notice``). Day 4 is quiet.

After every pass: no migration unfinished for longer than its timeouts allow, no
capacity the store does not account for (``Migrator.orphans``), no internal workload
anywhere but in the EU (the sovereignty rule, re-checked against the region catalog on
the placements, the executor's groups and the migrations' targets). Over the run: the
decision log grows only when a decision changes (not per pass), and memory does not grow
(tracemalloc snapshots at the end of day 2 and of day 7, and the interpreter's allocated
block count then).
"""

from __future__ import annotations

import csv
import gc
import logging
import random
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import event

from arbiter import logs
from arbiter.domain.fleet import InterruptionNotice
from arbiter.domain.market import Market, Offer
from arbiter.domain.migrations import MigrationState
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store
from tests.reliability.world import CATALOG, World, offer

TICK = timedelta(minutes=10)
DAY = 144  # passes per simulated day
DAYS = 7
POLL_EVERY = 6  # passes: prices are recorded every hour (stale after two)
EU = ("europe-west1", "europe-west3", "europe-west4", "europe-west9")
US = ("us-central1", "us-east4")
MAX_UNFINISHED = timedelta(hours=1)
"""Longest a migration may stay unfinished: warm-up (5 min) + its grace (2 min) + drain
timeout (5 min), each judged once per ten-minute pass, plus a pass of slack."""
QUIET_DAY = 3  # 0-based: the fourth day has no market event at all
GROWTH = 64 * 1024
"""Most bytes more held at the end of day 7 than at the end of day 2: 720 passes, so
under 100 bytes a pass."""
WARM = 48
"""Passes traced before the day-2 snapshot, so that what bounded caches (pydantic-core's
string cache, SQLAlchemy's compiled statements and the parameters they keep) replace
later was traced too: replacing an entry allocated before tracing began would count as
growth. Tracing slows every allocation down severalfold, so it runs from there on only."""
BLOCK_GROWTH = 2000
"""Python memory blocks more at the end of day 7 than at the end of day 2."""

POLICIES = """\
apiVersion: arbiter/v1
kind: PlacementPolicy
metadata: {name: eu-internal}
select: {data_classes: [internal]}
constraints:
  - id: eu-residency
    sovereignty: {data_classes: [internal], jurisdictions: [EU]}
capacity:
  spot: {allowed: true, max_share: 0.5, fallback: on_demand}
migration:
  min_saving: {pct: 5}
  sustained_for: 30m
  cooldown: 2h
  drain_timeout: 5m
  max_disrupted_replicas_pct: 50
---
apiVersion: arbiter/v1
kind: PlacementPolicy
metadata: {name: public-anywhere}
select: {data_classes: [public]}
constraints:
  - id: public-eu-or-us
    sovereignty: {data_classes: [public], jurisdictions: [EU, US]}
capacity:
  spot: {allowed: true, max_share: 1.0, fallback: on_demand}
migration:
  min_saving: {pct: 5}
  sustained_for: 30m
  cooldown: 2h
  drain_timeout: 5m
  max_disrupted_replicas_pct: 50
"""
WORKLOAD = """\
apiVersion: arbiter/v1
kind: Workload
metadata: {{name: {name}}}
spec:
  data_class: {data_class}
  gpu_options: [{{model: L4, tokens_per_second: 500}}]
  replicas: 2
  warmup_seconds: 300
"""


def recorded_prices() -> dict[Offer, float]:
    """The newest listed g2-standard-4 prices of the regions above in the shipped GCP
    recording (on-demand and spot)."""
    newest: dict[str, dict[str, str]] = {}
    path = resources.files("arbiter") / "data" / "replay" / "gcp_gpu_price_changes.csv"
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            wanted = row["instance_type"] == "g2-standard-4" and row["region"] in EU + US
            if wanted and row["status"] == "listed" and not row["flag"]:
                newest[row["region"]] = row  # the file is in time order
    prices: dict[Offer, float] = {}
    for region, row in newest.items():
        prices[offer(region)] = float(row["ondemand_usd_per_hour"])
        if row["spot_usd_per_hour"]:
            prices[offer(region, "spot")] = float(row["spot_usd_per_hour"])
    assert len(newest) == len(EU + US), sorted(newest)
    return prices


def is_eu(o: Offer) -> bool:
    return CATALOG.is_within(o.provider.value, o.region, ["EU"])


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """The real log pipeline (redaction, JSON rendering), written to /dev/null: seven days
    of log lines would otherwise fill pytest's capture."""
    saved = structlog.get_config()
    handlers, level = logging.root.handlers[:], logging.root.level
    with open("/dev/null", "w") as sink:
        logs.configure("info", "json", sink)
        try:
            yield
        finally:
            structlog.configure(**saved)
            logging.root.handlers[:] = handlers
            logging.root.setLevel(level)


@pytest.fixture
def soak_store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'soak.db'}"
    upgrade(url)
    engine = make_engine(url)

    @event.listens_for(engine, "connect")
    def _no_fsync(dbapi_connection: Any, _record: Any) -> None:
        # the soak exercises the logic; a test machine's fsync latency is not the subject
        dbapi_connection.execute("PRAGMA synchronous=OFF")

    yield Store(engine)
    engine.dispose()


class SimulatedMarket:
    """The simulated market: prices, capacity outages and interruption notices."""

    def __init__(self, world: World, seed: int = 20240109) -> None:
        self.world = world
        self.rng = random.Random(seed)
        self.base = recorded_prices()
        self.price = dict(self.base)
        self.events = 0
        self.outage: tuple[str, int] | None = None  # (offer key, pass it ends)
        self.notices = 0
        self.outages = 0

    def step(self, n: int) -> None:
        day, minute = divmod(n, DAY)
        hour = minute * 10 // 60
        quiet = day == QUIET_DAY
        cloud = self.world.cloud
        if self.outage and n >= self.outage[1]:
            cloud.no_capacity.discard(self.outage[0])
            self.outage = None
        if not quiet and minute % 24 == 0 and n > 0:  # every 4 hours: two offers re-priced
            for o in self.rng.sample(sorted(self.price, key=lambda x: x.key), 2):
                self.price[o] = round(self.base[o] * self.rng.uniform(0.55, 1.45), 4)
            self.events += 1
        if not quiet and hour == 10 and minute % 6 == 0 and self.outage is None and day > 0:
            # an EU offer nothing runs on turns cheapest — and has no capacity for 3 hours
            used = {g.offer for g in cloud.groups()}
            target = self.rng.choice(
                sorted((o for o in self.price if is_eu(o) and o not in used), key=lambda o: o.key)
            )
            self.price[target] = round(min(self.price.values()) * 0.6, 4)
            cloud.no_capacity.add(target.key)
            self.outage = (target.key, n + 18)
            self.outages += 1
        if not quiet and hour == 16 and minute % 6 == 0:
            spot = sorted(
                {g.offer for g in cloud.groups() if g.offer.market is Market.SPOT},
                key=lambda o: o.key,
            )
            if spot:
                hit = spot[0]
                notice = InterruptionNotice(
                    provider=hit.provider,
                    region=hit.region,
                    instance_type=hit.instance_type,
                    deadline=self.world.clock.now() + timedelta(minutes=2),
                    source="soak",
                    detail=f"day {day + 1}",
                )
                if self.world.reconciler.notice(notice):
                    self.notices += 1
        if n % POLL_EVERY == 0:
            self.world.prices(self.price)


def check_invariants(world: World, n: int) -> None:
    now = world.clock.now()
    store = world.store
    unfinished = store.migrations.unfinished()
    for m in unfinished:
        age = now - m.created_at
        assert age <= MAX_UNFINISHED, f"pass {n}: {m.id} stuck in {m.state} for {age}"
        assert all(is_eu(p.offer) for p in m.target if m.workload == "chat"), m
    assert world.orphans() == [], f"pass {n}: capacity nothing accounts for"
    for name, placed in store.workloads.all_placements().items():
        if name == "chat":
            assert all(CATALOG.is_within(*k.split(":")[:2], ["EU"]) for k, _ in placed), placed
    for g in world.cloud.groups("chat"):
        assert is_eu(g.offer), f"pass {n}: chat runs on {g.offer.key}"


def fill_pydantic_string_cache() -> None:
    """pydantic-core keeps the strings its whitespace-stripping validators return in a
    bounded cache (about 1.4 MiB of 36-character strings once full; arbiter's values use
    ``str_strip_whitespace``). Filled here first, so that the soak measures growth that
    does not stop rather than a cache filling up at a few unique ids per pass. Filled
    while tracing, so that entries it later replaces were traced too."""
    import uuid

    from pydantic import BaseModel, ConfigDict

    class Stripped(BaseModel):
        model_config = ConfigDict(str_strip_whitespace=True)
        text: str

    for _ in range(80_000):
        Stripped(text=str(uuid.uuid4()))


def allocated() -> int:
    gc.collect()
    return sys.getallocatedblocks()


@pytest.mark.timeout(150)
def test_seven_simulated_days_leave_nothing_stuck_orphaned_leaked_or_out_of_place(
    soak_store: Store, tmp_path: Path, quiet_logs: None
) -> None:
    started = time.monotonic()
    world = World(
        soak_store,
        tmp_path,
        policies=POLICIES,
        workloads={
            "chat": WORKLOAD.format(name="chat", data_class="internal"),
            "batch": WORKLOAD.format(name="batch", data_class="public"),
        },
        warmup=timedelta(minutes=5),
        stale_after=2 * 3600,
    )
    market = SimulatedMarket(world)
    decisions_by_day: list[int] = []
    blocks: dict[int, int] = {}
    day2: Any = None
    try:
        for n in range(DAYS * DAY):
            day, minute = divmod(n, DAY)
            if n == 2 * DAY - WARM:  # from 8 hours before the end of day 2 on, every
                # allocation is traced (snapshots only compare what was traced)
                gc.collect()
                tracemalloc.start()
                fill_pydantic_string_cache()
            market.step(n)
            world.reconciler.tick()
            world.cloud.calls.clear()  # the fake's own call log is not the daemon's memory
            check_invariants(world, n)
            world.clock.advance(TICK)
            if minute == DAY - 1:
                decisions_by_day.append(len(soak_store.decisions.recent(limit=100_000)))
                if day == 1:
                    gc.collect()
                    day2 = tracemalloc.take_snapshot()
                if day in (1, DAYS - 1):  # counted with the day-2 snapshot alive both times
                    blocks[day] = allocated()
        day7 = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started

    migrations = world.migrations()
    states = {m.state for m in migrations}
    recent = world.clock.now() - MAX_UNFINISHED
    assert all(m.state.finished for m in migrations if m.created_at < recent)
    assert MigrationState.FAILED not in states
    kinds = [m.reason.split(":")[0] for m in migrations]
    assert kinds.count("place") == 2 and kinds.count("move") >= 5, kinds
    assert "evacuate" in kinds, "interruption notices moved workloads"
    assert MigrationState.ROLLED_BACK in states, "capacity errors rolled moves back"
    assert market.notices >= 3 and market.outages >= 3

    # the decision log grows on change, not per pass: a quiet day adds nothing
    per_day = [b - a for a, b in zip([0, *decisions_by_day], decisions_by_day, strict=False)]
    assert per_day[QUIET_DAY] == 0, per_day
    changes = market.events + 2 * (market.outages + market.notices) + 1
    assert decisions_by_day[-1] <= 2 * changes, (per_day, changes)
    assert decisions_by_day[-1] < DAYS * DAY / 4, per_day

    stats = day7.compare_to(day2, "lineno")
    growth = sum(s.size_diff for s in stats)
    top = "\n".join(str(s) for s in stats[:10])
    assert growth < GROWTH, f"{growth} B more at the end of day 7 than of day 2:\n{top}"
    assert blocks[DAYS - 1] - blocks[1] < BLOCK_GROWTH, blocks
    print(
        f"soak: {DAYS * DAY} passes in {elapsed:.1f} s; {len(migrations)} migrations "
        f"({', '.join(f'{k} {kinds.count(k)}' for k in sorted(set(kinds)))}); decisions per "
        f"day {per_day}; memory day 2 → day 7: {growth:+} B traced, "
        f"{blocks[DAYS - 1] - blocks[1]:+} blocks"
    )
