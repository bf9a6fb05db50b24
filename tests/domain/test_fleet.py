"""What runs vs what the market says: spot capacity lost without an interruption notice,
and the GPUs arbiter's own replicas hold on each offer."""

from __future__ import annotations

from datetime import UTC, datetime

from arbiter.domain.fleet import gpus_held, spot_capacity_gone, spot_capacity_lost
from arbiter.domain.market import Offer
from arbiter.domain.migrations import Migration, MigrationState
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


def test_a_spot_quota_spent_to_zero_is_not_gone_capacity() -> None:
    """What is left of a quota reads 0 when arbiter's own replicas use all of it."""
    assert spot_capacity_gone([placed(SPOT)], snapshot(state(SPOT, capacity_gpus=0)), {}) == {}


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


# ------------------------------------------------------------------ GPUs held

WEST4 = Offer(provider="gcp", region="europe-west4", instance_type="a2-highgpu-8g", market="spot")
WEST1 = WEST4.model_copy(update={"region": "europe-west1"})


def running(workload: str, o: Offer, n: int) -> Placement:
    return Placement(workload=workload, offer=o, replicas=n)


def migration(
    state: MigrationState, source: tuple[Placement, ...], target: tuple[Placement, ...]
) -> Migration:
    return Migration(
        id="m-1",
        workload=source[0].workload if source else target[0].workload,
        source=source,
        target=target,
        state=state,
        reason="move: cheaper",
        created_at=NOW,
        updated_at=NOW,
    )


def test_the_gpus_held_on_an_offer_are_every_workloads_replicas_times_their_gpus() -> None:
    fleet = {
        "chat": (running("chat", WEST4, 2), running("chat", WEST1, 1)),
        "batch": (running("batch", WEST4, 3),),
    }
    held = gpus_held(fleet, [], {"chat": 4, "batch": 1})
    assert held == {WEST4.key: 2 * 4 + 3 * 1, WEST1.key: 4}


def test_a_planned_migration_holds_nothing_beyond_what_runs() -> None:
    fleet = {"chat": (running("chat", WEST4, 2),)}
    moving = migration(MigrationState.PLANNED, fleet["chat"], (running("chat", WEST1, 2),))
    assert gpus_held(fleet, [moving], {"chat": 4}) == {WEST4.key: 8}


def test_a_migration_under_way_holds_its_source_until_released_and_its_target_already() -> None:
    """Make-before-break: from provisioning until done, the target groups run and the
    source groups still run; a replica drained away holds its GPUs until it is gone."""
    fleet = {"chat": (running("chat", WEST4, 2),)}
    target = (running("chat", WEST4, 1), running("chat", WEST1, 3))
    for state in (
        MigrationState.PROVISIONING,
        MigrationState.WARMING,
        MigrationState.SHIFTING,
        MigrationState.DRAINING,
        MigrationState.RELEASING,
        MigrationState.ROLLING_BACK,
    ):
        held = gpus_held(fleet, [migration(state, fleet["chat"], target)], {"chat": 4})
        assert held == {WEST4.key: 8, WEST1.key: 12}, state


def test_a_finished_migration_holds_only_what_the_store_records_as_running() -> None:
    fleet = {"chat": (running("chat", WEST1, 3),)}
    done = migration(MigrationState.DONE, (running("chat", WEST4, 2),), fleet["chat"])
    assert gpus_held(fleet, [done], {"chat": 4}) == {WEST1.key: 12}


def test_replicas_of_a_workload_whose_spec_is_unknown_give_nothing_back() -> None:
    """Their size is unknown: the offer's capacity stays as the market reports it."""
    fleet = {"gone": (running("gone", WEST4, 2),), "chat": (running("chat", WEST4, 1),)}
    assert gpus_held(fleet, [], {"chat": 4}) == {WEST4.key: 4}
