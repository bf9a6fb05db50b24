"""Market snapshots built from the store: newest data, stale marked, ids by content."""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine

from arbiter.domain.market import (
    CapacityKind,
    CapacitySignal,
    CarbonReading,
    InstanceType,
    Offer,
    PriceQuote,
)
from arbiter.domain.snapshot import MarketSnapshot
from arbiter.errors import StoreError
from arbiter.snapshots import build_snapshot
from arbiter.store.repositories import Store

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
SPOT = Offer(provider="aws", region="us-east-1", instance_type="p5.48xlarge", market="spot")
ON_DEMAND = Offer(
    provider="aws", region="us-east-1", instance_type="p5.48xlarge", market="on-demand"
)


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
            PriceQuote(
                offer=SPOT, usd_per_hour=30, observed_at=NOW - timedelta(minutes=1), source="aws"
            ),
            PriceQuote(
                offer=ON_DEMAND, usd_per_hour=98, observed_at=NOW - timedelta(hours=3), source="aws"
            ),
        ]
    )
    store.capacity.record(
        [
            CapacitySignal(
                provider="aws",
                region="us-east-1",
                instance_type="p5.48xlarge",
                kind=CapacityKind.INTERRUPTION_BUCKET,
                value=3,
                observed_at=NOW,
                source="aws",
            ),
            CapacitySignal(
                provider="aws",
                region="us-east-1",
                instance_type="p5.48xlarge",
                kind=CapacityKind.QUOTA_SPOT_GPUS_FREE,
                value=16,
                observed_at=NOW,
                source="aws",
            ),
        ]
    )
    store.carbon.record(
        [
            CarbonReading(
                zone="US-MIDA-PJM",
                valid_at=NOW - timedelta(days=400),
                value=380,
                basis="direct",
                source="static",
            ),
            CarbonReading(
                zone="US-MIDA-PJM",
                valid_at=NOW - timedelta(minutes=30),
                value=410,
                basis="lifecycle",
                source="em",
            ),
            CarbonReading(
                zone="DE",
                valid_at=NOW - timedelta(days=400),
                value=350,
                basis="direct",
                source="static",
            ),
        ],
        observed_at=NOW,
    )


def test_offers_carry_their_type_capacity_and_staleness(store: Store) -> None:
    fill(store)
    snap = build_snapshot(store, {"aws": 3600}, NOW)
    by_market = {s.offer.market.value: s for s in snap.offers}
    spot, od = by_market["spot"], by_market["on-demand"]
    assert (spot.accelerator, spot.accelerator_count) == ("H100", 8)
    assert spot.interruption_bucket == 3 and spot.capacity_gpus == 16 and not spot.stale
    assert od.stale and od.interruption_bucket is None and od.capacity_gpus is None


def test_fresh_carbon_wins_and_stale_is_kept_marked(store: Store) -> None:
    fill(store)
    snap = build_snapshot(store, {"em": 7200, "static": 3600}, NOW)
    zones = snap.carbon_by_zone()
    assert zones["US-MIDA-PJM"].gco2_per_kwh == 410 and not zones["US-MIDA-PJM"].stale
    assert zones["DE"].stale and zones["DE"].source == "static"


def test_the_same_data_gives_the_same_id_and_a_round_trip_through_json(store: Store) -> None:
    fill(store)
    a = build_snapshot(store, {"aws": 3600}, NOW)
    b = build_snapshot(store, {"aws": 3600}, NOW + timedelta(seconds=1))
    assert a.id == b.id
    assert MarketSnapshot.model_validate_json(a.model_dump_json()) == a


def test_the_freshest_source_gives_an_offers_price(store: Store) -> None:
    seen = {"old": NOW - timedelta(minutes=20), "new": NOW - timedelta(minutes=5)}
    store.prices.record(
        [
            PriceQuote(offer=SPOT, usd_per_hour=10 + i, observed_at=at, source=name)
            for i, (name, at) in enumerate(seen.items())
        ]
    )
    newest = build_snapshot(store, {"old": 3600, "new": 3600}, NOW)
    assert [(s.usd_per_hour, s.seen_at) for s in newest.offers] == [(11, seen["new"])]
    # A stale price never wins over a fresh one, however new.
    fresh_first = build_snapshot(store, {"old": 3600, "new": 60}, NOW)
    assert [(s.usd_per_hour, s.stale) for s in fresh_first.offers] == [(10, False)]


def test_a_source_whose_data_stays_fresh_for_millennia_is_never_stale(store: Store) -> None:
    store.prices.record(
        [PriceQuote(offer=SPOT, usd_per_hour=10, observed_at=NOW - timedelta(days=900), source="x")]
    )
    snap = build_snapshot(store, {"x": 1e12}, NOW)
    assert [s.stale for s in snap.offers] == [False]


@pytest.mark.parametrize("enabled", [True, False])
def test_building_a_snapshot_leaves_the_garbage_collector_as_it_was(
    store: Store, enabled: bool
) -> None:
    fill(store)
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        build_snapshot(store, {"aws": 3600}, NOW)
        assert gc.isenabled() is enabled
        with pytest.raises(StoreError):
            build_snapshot(Store(create_engine("sqlite://")), {}, NOW)  # no tables
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


# ------------------------------------------------------------ offers gone from the market

LISTED = NOW - timedelta(minutes=20)


def polled(store: Store, at: datetime, *offers: Offer, source: str = "aws") -> None:
    """One successful poll of ``source`` that listed ``offers``."""
    store.prices.record(
        [PriceQuote(offer=o, usd_per_hour=1.0, observed_at=at, source=source) for o in offers]
    )
    store.sources.succeeded(source, at=at)


def test_an_offer_the_newest_fresh_poll_no_longer_lists_has_left_the_market(store: Store) -> None:
    from arbiter.snapshots import offers_left_market

    polled(store, LISTED, SPOT, ON_DEMAND)
    polled(store, NOW - timedelta(minutes=5), ON_DEMAND)
    left = offers_left_market(store, [SPOT.key, ON_DEMAND.key], {"aws": 3600}, NOW)
    assert list(left) == [SPOT.key]
    assert left[SPOT.key] == (
        "gone from the market: aws last listed it at 2025-06-02 08:40Z; its poll at 08:55Z did not"
    )


def test_a_source_whose_last_success_is_stale_says_nothing_about_an_offer_leaving(
    store: Store,
) -> None:
    from arbiter.snapshots import offers_left_market

    polled(store, NOW - timedelta(hours=3), SPOT)
    polled(store, NOW - timedelta(hours=2), ON_DEMAND)
    assert offers_left_market(store, [SPOT.key], {"aws": 3600}, NOW) == {}


def test_a_failing_source_says_nothing_about_an_offer_leaving(store: Store) -> None:
    """Prices age into stale while the source fails: no poll said the offer is gone."""
    from arbiter.snapshots import offers_left_market

    polled(store, NOW - timedelta(hours=2), SPOT)
    store.sources.failed("aws", at=NOW - timedelta(minutes=1), error="throttled")
    assert offers_left_market(store, [SPOT.key], {"aws": 3600}, NOW) == {}


def test_an_offer_another_source_still_lists_has_not_left_the_market(store: Store) -> None:
    from arbiter.snapshots import offers_left_market

    polled(store, LISTED, SPOT, source="aws")
    polled(store, NOW - timedelta(minutes=5), ON_DEMAND, source="aws")
    polled(store, NOW - timedelta(minutes=5), SPOT, source="replay")
    assert offers_left_market(store, [SPOT.key], {"aws": 3600, "replay": 3600}, NOW) == {}


def test_an_offer_no_source_ever_priced_has_not_left_the_market(store: Store) -> None:
    from arbiter.snapshots import offers_left_market

    polled(store, NOW - timedelta(minutes=5), ON_DEMAND)
    assert offers_left_market(store, [SPOT.key], {"aws": 3600}, NOW) == {}
