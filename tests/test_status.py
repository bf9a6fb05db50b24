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
