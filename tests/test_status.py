"""The fleet summary read from the store: cost against the on-demand baseline, carbon,
replicas by place and market, freshness, leadership."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from arbiter.catalog import load_catalog
from arbiter.config import SourceConfig
from arbiter.domain.market import CarbonReading, InstanceType, Offer, PriceQuote
from arbiter.domain.workloads import GpuOption, Placement, Workload
from arbiter.status import fleet_status
from arbiter.store.repositories import Store

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
SPOT = Offer(provider="aws", region="us-east-1", instance_type="p5.48xlarge", market="spot")
OD = Offer(provider="aws", region="us-east-1", instance_type="p5.48xlarge", market="on-demand")
SOURCES = {"aws": SourceConfig(kind="aws", stale_after=600)}


def fill(store: Store) -> None:
    store.instance_types.upsert(
        [
            InstanceType(
                provider="aws",
                name="p5.48xlarge",
                vcpus=192,
                memory_gib=2048,
                accelerator="H100",
                accelerator_count=8,
                accelerator_memory_gib=80,
            )
        ],
        now=NOW,
    )
    store.prices.record(
        [
            PriceQuote(offer=SPOT, usd_per_hour=40, observed_at=NOW, source="aws"),
            PriceQuote(offer=OD, usd_per_hour=100, observed_at=NOW, source="aws"),
        ]
    )
    store.carbon.record(
        [
            CarbonReading(
                zone="US-MIDA-PJM", valid_at=NOW, value=400, basis="lifecycle", source="aws"
            )
        ],
        observed_at=NOW,
    )
    w = Workload(
        name="chat",
        data_class="internal",
        gpus_per_replica=4,
        gpu_options=(GpuOption(model="H100", tokens_per_second=2000),),
        replicas=3,
    )
    store.workloads.upsert(w, now=NOW)
    store.workloads.set_placements(
        "chat",
        [
            Placement(workload="chat", offer=SPOT, replicas=2),
            Placement(workload="chat", offer=OD, replicas=1),
        ],
        now=NOW,
    )
    store.sources.succeeded("aws", at=NOW - timedelta(seconds=30))
    store.leases.acquire("leader", "host:1", now=NOW, ttl=timedelta(seconds=30))


def test_cost_is_set_against_the_on_demand_baseline(store: Store) -> None:
    fill(store)
    s = fleet_status(store, mode="observe", sources=SOURCES, catalog=load_catalog(), now=NOW)
    # two replicas per 8-GPU instance: spot 2 × $20, on-demand 1 × $50; baseline 3 × $50
    assert s["usd_per_hour"] == 90 and s["baseline_on_demand_usd_per_hour"] == 150
    assert s["savings_usd_per_hour"] == 60 and s["savings_pct"] == 40
    assert s["replicas_by"] == [
        {"provider": "aws", "region": "us-east-1", "market": "on-demand", "replicas": 1},
        {"provider": "aws", "region": "us-east-1", "market": "spot", "replicas": 2},
    ]


def test_carbon_is_grams_per_hour_of_the_running_gpus(store: Store) -> None:
    fill(store)
    s = fleet_status(store, mode="observe", sources=SOURCES, catalog=load_catalog(), now=NOW)
    # 3 replicas × 4 H100 × 0.7 kW × PUE 1.15 × 400 g/kWh
    assert s["carbon_g_per_hour"] == pytest.approx(3 * 4 * 0.7 * 1.15 * 400)


def test_leader_sources_and_mode_are_reported(store: Store) -> None:
    fill(store)
    s = fleet_status(store, mode="enforce", sources=SOURCES, catalog=load_catalog(), now=NOW)
    assert s["mode"] == "enforce" and s["leader"]["holder"] == "host:1"
    assert s["sources"] == [
        {
            "source": "aws",
            "kind": "aws",
            "health": "ok",
            "last_success_age_seconds": 30,
            "stale": False,
        }
    ]


def test_stale_prices_leave_replicas_unpriced_rather_than_priced_wrong(store: Store) -> None:
    fill(store)
    later = NOW + timedelta(hours=2)
    s = fleet_status(store, mode="observe", sources=SOURCES, catalog=load_catalog(), now=later)
    assert s["unpriced_replicas"] == 3 and s["usd_per_hour"] == 0
    assert s["leader"] is None  # the lease expired
    assert s["sources"][0]["stale"]


def test_a_fresh_source_prices_an_offer_whose_first_source_is_stale(store: Store) -> None:
    """Two sources price the same offers; the first in the store's order ("aws") last
    saw them long ago, the second ("replay") just now: the replicas are priced with
    the fresh prices, as the planner's snapshot prices them, not left unpriced."""
    fill(store)
    sources = {**SOURCES, "replay": SourceConfig(kind="replay", stale_after=600)}
    later = NOW + timedelta(hours=2)  # aws' prices are stale by now
    store.prices.record(
        [
            PriceQuote(offer=SPOT, usd_per_hour=36, observed_at=later, source="replay"),
            PriceQuote(offer=OD, usd_per_hour=96, observed_at=later, source="replay"),
        ]
    )
    s = fleet_status(store, mode="observe", sources=sources, catalog=load_catalog(), now=later)
    # two replicas per 8-GPU instance: spot 2 × $18, on-demand 1 × $48; baseline 3 × $48
    assert s["unpriced_replicas"] == 0
    assert s["usd_per_hour"] == 84 and s["baseline_on_demand_usd_per_hour"] == 144


def test_of_two_fresh_sources_the_price_seen_last_counts(store: Store) -> None:
    fill(store)
    sources = {**SOURCES, "replay": SourceConfig(kind="replay", stale_after=600)}
    soon = NOW + timedelta(minutes=5)  # both fresh; replay's newer than aws'
    store.prices.record(
        [
            PriceQuote(offer=SPOT, usd_per_hour=36, observed_at=soon, source="replay"),
            PriceQuote(offer=OD, usd_per_hour=96, observed_at=soon, source="replay"),
        ]
    )
    s = fleet_status(store, mode="observe", sources=sources, catalog=load_catalog(), now=soon)
    assert s["unpriced_replicas"] == 0 and s["usd_per_hour"] == 84
    later = soon + timedelta(minutes=1)  # aws sees its prices again, after replay
    store.prices.record(
        [
            PriceQuote(offer=SPOT, usd_per_hour=40, observed_at=later, source="aws"),
            PriceQuote(offer=OD, usd_per_hour=100, observed_at=later, source="aws"),
        ]
    )
    s = fleet_status(store, mode="observe", sources=sources, catalog=load_catalog(), now=later)
    assert s["usd_per_hour"] == 90


# ------------------------------------------- read from the tables, as the repositories


def summary_from_repositories(
    store: Store, *, mode: str, sources: dict[str, SourceConfig], now: datetime
) -> dict[str, object]:
    """The summary as it was built before it read the tables itself: through the
    repositories and :func:`arbiter.snapshots.choose_carbon` (the oracle)."""
    import math
    from collections import Counter

    from arbiter.domain.accelerators import DEFAULT_POWER_KW, POWER_KW, PUE
    from arbiter.snapshots import build_snapshot, choose_carbon, stale_checker

    def on_demand_key(offer_key: str) -> str:
        provider, region, _zone, itype, _market = offer_key.split(":")
        return ":".join((provider, region, "-", itype, "on-demand"))

    catalog = load_catalog()
    stale = stale_checker({name: c.stale_after for name, c in sources.items()}, now)
    placed_all = store.workloads.all_placements()
    keys = {k for placed in placed_all.values() for k, _ in placed}
    keys |= {on_demand_key(k) for k in keys}
    # each offer's price as the planner's snapshot chooses it among sources
    snapshot = build_snapshot(store, {name: c.stale_after for name, c in sources.items()}, now)
    prices = {
        o.offer.key: (o.usd_per_hour, o.stale) for o in snapshot.offers if o.offer.key in keys
    }
    types = {(t.provider.value, t.name): t for t in store.instance_types.all()}
    carbon = choose_carbon(store, stale)
    workloads = {w.name: w for w in store.workloads.all()}
    usd = baseline = 0.0
    grams: float | None = 0.0
    by: Counter[tuple[str, str, str]] = Counter()
    unpriced = 0
    for name, placed in placed_all.items():
        w = workloads.get(name)
        for offer_key, replicas in placed:
            provider, region, _zone, itype, market = offer_key.split(":")
            by[(provider, region, market)] += replicas
            price = prices.get(offer_key)
            shape = types.get((provider, itype))
            if w is None or price is None or price[1] or shape is None:
                unpriced += replicas
                continue
            per_instance = math.floor(shape.accelerator_count / w.gpus_per_replica + 1e-9)
            if per_instance < 1:
                unpriced += replicas
                continue
            cost = replicas * price[0] / per_instance
            usd += cost
            on_demand = prices.get(on_demand_key(offer_key))
            baseline += (
                replicas * on_demand[0] / per_instance
                if on_demand is not None and not on_demand[1]
                else cost
            )
            place = catalog.get(provider, region)
            zc = carbon.get(place.grid_zone) if place else None
            if zc is None or grams is None:
                grams = None
            else:
                power = POWER_KW.get(shape.accelerator or "", DEFAULT_POWER_KW)
                grams += replicas * w.gpus_per_replica * power * PUE * zc.gco2_per_kwh
    statuses = {s.source: s for s in store.sources.all()}
    source_rows = []
    for name, config in sorted(sources.items()):
        s = statuses.get(name)
        age = (now - s.last_success_at).total_seconds() if s and s.last_success_at else None
        if s is None or s.last_attempt_at is None:
            health = "never polled"
        elif s.consecutive_failures >= 3:
            health = "degraded"
        elif s.consecutive_failures:
            health = "failing"
        else:
            health = "ok"
        source_rows.append(
            {
                "source": name,
                "kind": config.kind,
                "health": health,
                "last_success_age_seconds": None if age is None else round(age),
                "stale": age is None or age > config.stale_after,
            }
        )
    lease = store.leases.get("leader")
    in_flight = Counter(m.state.value for m in store.migrations.unfinished())
    return {
        "mode": mode,
        "leader": None
        if lease is None or lease.expires_at < now
        else {"holder": lease.holder, "expires_at": lease.expires_at.isoformat()},
        "workloads": len(workloads),
        "replicas": sum(by.values()),
        "replicas_by": [
            {"provider": p, "region": r, "market": m, "replicas": n}
            for (p, r, m), n in sorted(by.items())
        ],
        "unpriced_replicas": unpriced,
        "usd_per_hour": round(usd, 4),
        "baseline_on_demand_usd_per_hour": round(baseline, 4),
        "savings_usd_per_hour": round(baseline - usd, 4),
        "savings_pct": round(100 * (baseline - usd) / baseline, 2) if baseline else None,
        "carbon_g_per_hour": None if grams is None else round(grams, 1),
        "sources": source_rows,
        "migrations_in_flight": dict(sorted(in_flight.items())),
    }


BUSY_SOURCES = {
    "aws": SourceConfig(kind="aws", stale_after=600),
    "replay": SourceConfig(kind="replay", stale_after=86400 * 3650),
    "gcp": SourceConfig(kind="gcp", stale_after=600),
}


def fill_busy(store: Store) -> None:
    """Everything the summary weighs: several price levels per offer, two sources for
    one offer (one of them stale), a shape without accelerators, carbon of every basis
    and unit with forecasts, failing sources, and migrations finished and in flight."""
    from arbiter.domain.migrations import Migration, MigrationState

    fill(store)
    g6 = Offer(provider="aws", region="eu-west-1", instance_type="g6.xlarge", market="spot")
    g6_od = Offer(provider="aws", region="eu-west-1", instance_type="g6.xlarge", market="on-demand")
    m5 = Offer(provider="aws", region="eu-central-1", instance_type="m5.large", market="on-demand")
    store.instance_types.upsert(
        [
            InstanceType(
                provider="aws",
                name="g6.xlarge",
                vcpus=4,
                memory_gib=16,
                accelerator="L4",
                accelerator_count=1,
                accelerator_memory_gib=24,
            ),
            InstanceType(provider="aws", name="m5.large", vcpus=2, memory_gib=8),
        ],
        now=NOW,
    )
    day = timedelta(days=1)
    for i, price in enumerate((0.9, 0.7, 0.8)):  # three levels; the newest counts
        at = NOW - (3 - i) * day
        store.prices.record(
            [
                PriceQuote(offer=g6, usd_per_hour=price, observed_at=at, source="replay"),
                PriceQuote(offer=g6_od, usd_per_hour=price * 2, observed_at=at, source="replay"),
                PriceQuote(offer=SPOT, usd_per_hour=30 + i, observed_at=at, source="replay"),
            ]
        )
    store.prices.record(
        [
            # the same offers from a second source, stale for aws' 600 s
            PriceQuote(offer=g6, usd_per_hour=0.5, observed_at=NOW - day, source="aws"),
            PriceQuote(offer=m5, usd_per_hour=0.1, observed_at=NOW, source="aws"),
        ]
    )
    for name, gpus in (("small", 1), ("batch", 2), ("tiny", 1), ("web", 1)):
        store.workloads.upsert(
            Workload(
                name=name,
                data_class="internal",
                gpus_per_replica=gpus,
                gpu_options=(GpuOption(model="L4", tokens_per_second=100),),
                replicas=2,
            ),
            now=NOW,
        )
    store.workloads.set_placements(
        "small", [Placement(workload="small", offer=g6, replicas=2)], now=NOW
    )
    store.workloads.set_placements(
        "batch", [Placement(workload="batch", offer=g6_od, replicas=1)], now=NOW
    )
    store.workloads.set_placements(
        "tiny", [Placement(workload="tiny", offer=g6_od, replicas=3)], now=NOW
    )
    store.workloads.set_placements(
        "web", [Placement(workload="web", offer=m5, replicas=2)], now=NOW
    )
    hour = timedelta(hours=1)
    g = "gCO2eq/kWh"
    readings = [  # fill() has US-MIDA-PJM lifecycle 400 from aws at NOW
        ("US-MIDA-PJM", "lifecycle", "replay", NOW - hour, 450.0, False, g),  # older
        ("US-MIDA-PJM", "lifecycle", "azure", NOW + hour / 3, 420.0, False, g),  # newest
        ("US-MIDA-PJM", "lifecycle", "replay", NOW + day, 100.0, True, g),  # a forecast
        ("US-MIDA-PJM", "lifecycle", "aws", NOW + hour / 2, 40.0, False, "percentile"),
        ("US-MIDA-PJM", "direct", "aws", NOW - 2 * day, 300.0, False, g),
        ("US-MIDA-PJM", "marginal", "replay", NOW, 600.0, False, g),
        ("IE", "lifecycle", "replay", NOW - day, 250.0, False, g),
        ("IE", "lifecycle", "aws", NOW, 270.0, False, g),
        ("IE", "lifecycle", "gcp", NOW, 280.0, False, g),  # a tie: aws comes first
        ("IE", "direct", "replay", NOW, 200.0, False, g),
    ]
    for zone, basis, source, valid_at, value, forecast, unit in readings:
        store.carbon.record(
            [
                CarbonReading(
                    zone=zone,
                    valid_at=valid_at,
                    value=value,
                    basis=basis,
                    source=source,
                    forecast=forecast,
                    unit=unit,
                )
            ],
            observed_at=NOW,
        )
    for _ in range(3):
        store.sources.failed("gcp", at=NOW, error="HTTP 503")
    store.sources.failed("replay", at=NOW, error="HTTP 503")
    for i, state in enumerate(
        (MigrationState.PLANNED, MigrationState.PLANNED, MigrationState.DONE, MigrationState.FAILED)
    ):
        store.migrations.create(
            Migration(
                id=f"m{i}",
                workload="small",
                source=(Placement(workload="small", offer=g6, replicas=2),),
                target=(Placement(workload="small", offer=g6_od, replicas=2),),
                state=state,
                reason="cheaper",
                created_at=NOW,
                updated_at=NOW,
            )
        )


@pytest.mark.parametrize("read_from", ["url", "engine"])
@pytest.mark.parametrize(
    ("later", "aws_stale_after"),
    [
        (timedelta(0), 600),
        (timedelta(hours=2), 600),  # aws' prices and carbon stale
        (timedelta(minutes=50), 86400),  # azure's newest carbon fresh (default: 1 h)
        (timedelta(minutes=90), 86400),  # and then stale
    ],
)
def test_the_summary_read_from_the_tables_is_the_one_the_repositories_give(
    store: Store, store_url: str, later: timedelta, aws_stale_after: float, read_from: str
) -> None:
    """Read through the database driver (given the URL, as ``arbiter status``) or on
    the engine's pool (as the daemon's /metrics), against the oracle."""
    fill_busy(store)
    now = NOW + later
    sources = {**BUSY_SOURCES, "aws": SourceConfig(kind="aws", stale_after=aws_stale_after)}
    read = fleet_status(
        store_url if read_from == "url" else store.engine,
        mode="observe",
        sources=sources,
        catalog=load_catalog(),
        now=now,
    )
    assert read == summary_from_repositories(store, mode="observe", sources=sources, now=now)
    if not later:  # the fixture exercises what it means to
        assert read["unpriced_replicas"] and read["usd_per_hour"]
        assert read["carbon_g_per_hour"] and read["migrations_in_flight"] == {"planned": 2}


def test_the_summary_takes_a_store_its_engine_or_its_url(store: Store, store_url: str) -> None:
    fill(store)
    catalog = load_catalog()
    read = [
        fleet_status(where, mode="observe", sources=SOURCES, catalog=catalog, now=NOW)
        for where in (store, store.engine, store_url)
    ]
    assert read[0] == read[1] == read[2]
    assert read[0]["usd_per_hour"] == 90


def test_the_constants_read_with_the_tables_are_the_domains() -> None:
    from arbiter import snapshots, status
    from arbiter.domain.market import CarbonUnit
    from arbiter.domain.migrations import MigrationState

    assert set(status.FINISHED_MIGRATION_STATES) == {s.value for s in MigrationState if s.finished}
    assert CarbonUnit.G_PER_KWH.value == status.CARBON_UNIT
    assert {
        basis.value: rank for basis, rank in snapshots._BASIS_PREFERENCE.items()
    } == status.CARBON_BASIS_PREFERENCE
    assert status.DEFAULT_STALE_AFTER == snapshots.DEFAULT_STALE_AFTER


def test_the_newest_prices_are_read_through_the_history_index(store: Store) -> None:
    """90 days of history cost a lookup per placed offer: the newest prices of a few
    offers are read without scanning price_history (on PostgreSQL with sequential scans
    discouraged, as a table of a few rows would otherwise be scanned whatever its
    indexes)."""
    from sqlalchemy import event

    from arbiter.store import reads

    fill_busy(store)
    statements: list[tuple[str, object]] = []

    def capture(*args: object) -> None:
        statements.append((str(args[2]), args[3]))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        with reads.view(store.engine, "test") as r:
            rows = reads.newest_prices(r, keys=[SPOT.key, OD.key])
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    assert sorted((p.key, p.source, p.usd_per_hour) for p in rows) == [
        (OD.key, "aws", 100.0),
        (SPOT.key, "aws", 40.0),
        (SPOT.key, "replay", 32.0),
    ]
    newest = next(s for s in statements if "price_history" in s[0])
    with store.engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        if conn.dialect.name == "sqlite":
            cursor.execute(f"EXPLAIN QUERY PLAN {newest[0]}", newest[1])
            plan = "\n".join(str(row[3]) for row in cursor.fetchall())
            assert "SCAN price_history" not in plan and "SCAN level" not in plan
            assert "INDEX ix_price_history_offer_id_source_first_seen" in plan
        else:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute(f"EXPLAIN {newest[0]}", newest[1])
            plan = "\n".join(str(row[0]) for row in cursor.fetchall())
            assert "Seq Scan" not in plan
            assert "ix_price_history_offer_id_source_first_seen" in plan
