"""What runs vs what the market says: spot capacity lost without an interruption notice."""

from __future__ import annotations

from datetime import UTC, datetime

from arbiter.domain.fleet import spot_capacity_gone, spot_capacity_lost
from arbiter.domain.market import Offer
from arbiter.domain.snapshot import MarketSnapshot, OfferState
from arbiter.domain.workloads import Placement

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
SPOT = Offer(provider="aws", region="us-east-1", instance_type="g5.xlarge", market="spot")
ON_DEMAND = SPOT.model_copy(update={"market": "on-demand"})
LEFT = {SPOT.key: "gone from the market", ON_DEMAND.key: "gone from the market"}


def snapshot(*states: OfferState) -> MarketSnapshot:
    return MarketSnapshot.make(taken_at=NOW, offers=states, carbon=())


def state(o: Offer, capacity_gpus: float | None = None) -> OfferState:
    return OfferState(
        offer=o,
        usd_per_hour=1.0,
        seen_at=NOW,
        accelerator="A10G",
        accelerator_count=1,
        capacity_gpus=capacity_gpus,
    )


def placed(o: Offer, n: int = 2) -> Placement:
    return Placement(workload="chat", offer=o, replicas=n)


def test_a_spot_offer_that_left_the_market_is_gone() -> None:
    assert spot_capacity_gone([placed(SPOT)], snapshot(), LEFT) == {SPOT.key: LEFT[SPOT.key]}


def test_a_spot_offer_a_fresh_capacity_signal_puts_at_zero_gpus_is_gone() -> None:
    gone = spot_capacity_gone([placed(SPOT)], snapshot(state(SPOT, capacity_gpus=0)), {})
    assert list(gone) == [SPOT.key] and "0 GPUs" in gone[SPOT.key]


def test_a_spot_offer_still_on_the_market_with_capacity_or_none_known_is_not_gone() -> None:
    market = snapshot(state(SPOT, capacity_gpus=8))
    assert spot_capacity_gone([placed(SPOT)], market, {}) == {}
    assert spot_capacity_gone([placed(SPOT)], snapshot(state(SPOT)), {}) == {}


def test_on_demand_capacity_is_never_taken_for_lost_spot_capacity() -> None:
    market = snapshot(state(ON_DEMAND, capacity_gpus=0))
    assert spot_capacity_gone([placed(ON_DEMAND)], market, LEFT) == {}


def test_gone_capacity_whose_replicas_the_executor_reports_down_is_lost() -> None:
    lost = spot_capacity_lost([placed(SPOT, 2)], {SPOT.key: "gone from the market"}, {SPOT.key: 1})
    assert lost == {SPOT.key: "gone from the market; the executor reports 1 of 2 replicas ready"}


def test_gone_capacity_whose_replicas_the_executor_reports_ready_is_not_lost() -> None:
    """A missing price quote is no reason to move replicas that serve."""
    gone = {SPOT.key: "gone from the market"}
    assert spot_capacity_lost([placed(SPOT, 2)], gone, {SPOT.key: 2}) == {}


def test_gone_capacity_the_executor_could_not_report_on_is_not_lost() -> None:
    assert spot_capacity_lost([placed(SPOT, 2)], {SPOT.key: "gone from the market"}, {}) == {}
