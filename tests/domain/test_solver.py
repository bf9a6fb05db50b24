"""The placement solver on small problems, one rule at a time.

Offers are given as :class:`At` (region, provider, market, capacity); columns as
``(workload, offer, cost, throughput)``. ``placed`` reads a solution back as
``{(workload, offer): replicas}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from arbiter.domain.solver import (
    PlacementStatus,
    Problem,
    Solution,
    WorkloadDemand,
    WorkloadOutcome,
    solve,
)

INF = math.inf


@dataclass(frozen=True)
class At:
    """One offer: where it is, its market and how many GPUs it has free."""

    region: int = 0
    provider: int = 0
    spot: bool = False
    capacity_gpus: float = INF


Column = tuple[str, int, float, float]


def workload(name: str = "chat", replicas: int | None = 2, **rules: object) -> WorkloadDemand:
    fields: dict[str, object] = {
        "name": name,
        "replicas": replicas,
        "min_throughput": None,
        "gpus_per_replica": 1,
    }
    fields.update(rules)
    return WorkloadDemand(**fields)  # type: ignore[arg-type]


def problem(
    workloads: Sequence[WorkloadDemand],
    offers: Sequence[At],
    columns: Sequence[Column],
    budgets: Sequence[float] = (),
) -> Problem:
    index = {w.name: i for i, w in enumerate(workloads)}
    return Problem(
        workloads=workloads,
        col_workload=np.array([index[c[0]] for c in columns], dtype=np.int64),
        col_offer=np.array([c[1] for c in columns], dtype=np.int64),
        col_cost=np.array([c[2] for c in columns], dtype=np.float64),
        col_throughput=np.array([c[3] for c in columns], dtype=np.float64),
        offer_region=np.array([o.region for o in offers], dtype=np.int64),
        offer_provider=np.array([o.provider for o in offers], dtype=np.int64),
        offer_spot=np.array([o.spot for o in offers], dtype=np.bool_),
        offer_capacity_gpus=np.array([o.capacity_gpus for o in offers], dtype=np.float64),
        budgets=budgets,
    )


def placed(p: Problem, s: Solution) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for j in np.flatnonzero(s.replicas):
        key = (p.workloads[int(p.col_workload[j])].name, int(p.col_offer[j]))
        out[key] = out.get(key, 0) + int(s.replicas[j])
    return out


def every(
    name: str, offers: Sequence[int], costs: Sequence[float], tput: float = 0.0
) -> list[Column]:
    return [(name, o, c, tput) for o, c in zip(offers, costs, strict=True)]


# ------------------------------------------------------------------------- cheapest


def test_every_replica_goes_to_the_cheapest_offer_when_nothing_else_binds() -> None:
    p = problem([workload(replicas=3)], [At(), At(), At()], every("chat", [0, 1, 2], [5, 3, 4]))
    s = solve(p)
    assert placed(p, s) == {("chat", 1): 3}
    assert s.total_cost == 9
    assert s.outcome("chat").status is PlacementStatus.PLACED


def test_replicas_are_reported_per_column_of_the_problem_as_given() -> None:
    p = problem([workload(replicas=1)], [At(), At()], every("chat", [0, 1], [2, 1]))
    s = solve(p)
    assert s.replicas.tolist() == [0, 1]
    assert not s.replicas.flags.writeable


def test_a_problem_without_workloads_has_an_empty_solution() -> None:
    s = solve(problem([], [At()], []))
    assert s.workloads == () and s.total_cost == 0 and s.replicas.size == 0


# ------------------------------------------------------------------------- capacity


def test_capacity_of_an_offer_is_never_exceeded() -> None:
    p = problem(
        [workload(replicas=4)],
        [At(capacity_gpus=3), At()],
        every("chat", [0, 1], [1, 10]),
    )
    assert placed(p, solve(p)) == {("chat", 0): 3, ("chat", 1): 1}


def test_capacity_is_counted_in_gpus_per_replica() -> None:
    p = problem(
        [workload(replicas=3, gpus_per_replica=4)],
        [At(capacity_gpus=10), At()],
        every("chat", [0, 1], [1, 10]),
    )
    assert placed(p, solve(p)) == {("chat", 0): 2, ("chat", 1): 1}


def test_a_workload_leaves_a_cheap_offer_to_one_that_has_no_other_place() -> None:
    # batch fits on A and B alone, but chat needs all of A: batch must use dearer C.
    p = problem(
        [workload("batch", replicas=4), workload("chat", replicas=1, gpus_per_replica=2)],
        [At(capacity_gpus=2), At(capacity_gpus=3), At(capacity_gpus=1)],
        [("batch", 0, 1, 0), ("batch", 1, 2, 0), ("batch", 2, 3, 0), ("chat", 0, 1, 0)],
    )
    s = solve(p)
    assert placed(p, s) == {("batch", 1): 3, ("batch", 2): 1, ("chat", 0): 1}
    assert s.optimal


def test_workloads_sharing_an_offer_share_its_capacity_at_the_least_total_cost() -> None:
    # "batch" saves more by taking the shared cheap offer (9 vs 2 per replica).
    p = problem(
        [workload("chat", replicas=1), workload("batch", replicas=1)],
        [At(capacity_gpus=1), At(), At()],
        [("chat", 0, 1, 0), ("chat", 1, 3, 0), ("batch", 0, 1, 0), ("batch", 2, 10, 0)],
    )
    s = solve(p)
    assert placed(p, s) == {("chat", 1): 1, ("batch", 0): 1}
    assert s.total_cost == 4


# --------------------------------------------------------------------------- spread


def test_a_workload_needing_two_regions_gets_two_distinct_regions() -> None:
    p = problem(
        [workload(replicas=3, min_distinct_regions=2)],
        [At(region=0), At(region=0), At(region=1)],
        every("chat", [0, 1, 2], [1, 2, 5]),
    )
    assert placed(p, solve(p)) == {("chat", 0): 2, ("chat", 2): 1}


def test_two_offers_in_one_region_count_as_one_region() -> None:
    p = problem(
        [workload(replicas=2, min_distinct_regions=2)],
        [At(region=0), At(region=0)],
        every("chat", [0, 1], [1, 2]),
    )
    s = solve(p)
    assert placed(p, s) == {}
    assert s.outcome("chat").reasons == ("needs 2 distinct regions, 1 have compliant offers",)


def test_a_workload_needing_two_providers_gets_two_distinct_providers() -> None:
    p = problem(
        [workload(replicas=2, min_distinct_providers=2)],
        [At(provider=0), At(provider=0), At(provider=1)],
        every("chat", [0, 1, 2], [1, 2, 5]),
    )
    assert placed(p, solve(p)) == {("chat", 0): 1, ("chat", 2): 1}


def test_distinct_regions_are_counted_only_where_replicas_are_placed() -> None:
    # A region with a candidate but no replica must not count towards the spread.
    p = problem(
        [workload(replicas=2, min_distinct_regions=3)],
        [At(region=0), At(region=1), At(region=2)],
        every("chat", [0, 1, 2], [1, 1, 1]),
    )
    s = solve(p)
    assert placed(p, s) == {}
    assert s.outcome("chat").reasons == ("needs 3 distinct regions but has only 2 replicas",)


# --------------------------------------------------------------------------- shares


def test_no_provider_gets_more_than_its_share_of_the_replicas() -> None:
    p = problem(
        [workload(replicas=4, max_share_per_provider=0.5)],
        [At(provider=0), At(provider=1), At(provider=2)],
        every("chat", [0, 1, 2], [1, 2, 3]),
    )
    assert placed(p, solve(p)) == {("chat", 0): 2, ("chat", 1): 2}


def test_a_provider_share_rounds_down_to_whole_replicas() -> None:
    p = problem(
        [workload(replicas=3, max_share_per_provider=0.5)],
        [At(provider=0), At(provider=1), At(provider=2)],
        every("chat", [0, 1, 2], [1, 2, 3]),
    )
    assert placed(p, solve(p)) == {("chat", 0): 1, ("chat", 1): 1, ("chat", 2): 1}


def test_a_provider_share_too_few_providers_can_serve_in_full_is_served_in_part() -> None:
    # Three replicas at most 50 % per provider need three providers; two carry two.
    p = problem(
        [workload(replicas=3, max_share_per_provider=0.5)],
        [At(provider=0), At(provider=1)],
        every("chat", [0, 1], [1, 2]),
    )
    s = solve(p)
    assert placed(p, s) == {("chat", 0): 1, ("chat", 1): 1}
    assert s.outcome("chat").status is PlacementStatus.PARTIAL


def test_a_provider_share_no_placement_can_keep_is_unplaceable() -> None:
    p = problem(
        [workload(replicas=3, max_share_per_provider=0.4)],
        [At(provider=0), At(provider=1)],
        every("chat", [0, 1], [1, 2]),
    )
    assert solve(p).outcome("chat").reasons == (
        "at most 40% of replicas per provider needs 3 providers, 2 have compliant offers",
    )


def test_no_more_than_the_spot_share_of_replicas_runs_on_spot() -> None:
    p = problem(
        [workload(replicas=4, max_spot_share=0.5)],
        [At(spot=True), At()],
        every("chat", [0, 1], [1, 4]),
    )
    assert placed(p, solve(p)) == {("chat", 0): 2, ("chat", 1): 2}


def test_a_zero_spot_share_never_uses_spot() -> None:
    p = problem(
        [workload(replicas=2, max_spot_share=0.0)],
        [At(spot=True), At()],
        every("chat", [0, 1], [1, 4]),
    )
    assert placed(p, solve(p)) == {("chat", 1): 2}


def test_a_spot_share_with_only_spot_offers_is_unplaceable() -> None:
    p = problem(
        [workload(replicas=2, max_spot_share=0.5)],
        [At(spot=True), At(spot=True)],
        every("chat", [0, 1], [1, 4]),
    )
    s = solve(p)
    assert placed(p, s) == {}
    assert s.outcome("chat").reasons == (
        "at most 50% of replicas on spot, but only spot offers are compliant",
    )


# -------------------------------------------------------------------------- budgets


def test_a_budget_group_never_spends_more_than_its_budget() -> None:
    # Both need the cheap offer; whoever misses it would overrun the shared budget.
    p = problem(
        [
            workload("chat", replicas=1, budget_group=0),
            workload("batch", replicas=1, budget_group=0),
        ],
        [At(capacity_gpus=1), At()],
        [("chat", 0, 2, 0), ("chat", 1, 9, 0), ("batch", 0, 2, 0), ("batch", 1, 9, 0)],
        budgets=[10.0],
    )
    s = solve(p)
    assert s.total_cost <= 10
    assert sorted(placed(p, s).items()) in ([(("chat", 0), 1)], [(("batch", 0), 1)])
    unplaced = [o for o in s.workloads if o.status is PlacementStatus.UNPLACEABLE]
    assert [o.reasons for o in unplaced] == [("capacity exhausted", "budget group 0 exceeded")]


def test_a_budget_below_the_cheapest_replica_is_reported_before_solving() -> None:
    p = problem(
        [workload(replicas=2, budget_group=0)],
        [At()],
        every("chat", [0], [3]),
        budgets=[2.0],
    )
    s = solve(p)
    assert placed(p, s) == {}
    assert s.outcome("chat").reasons == (
        "budget group 0 exceeded: needs at least $3.00/h of $2.00/h",
    )


def test_a_budget_that_pays_for_some_replicas_places_those_in_part() -> None:
    p = problem([workload(replicas=3, budget_group=0)], [At()], every("chat", [0], [3]), [7.0])
    s = solve(p)
    assert placed(p, s) == {("chat", 0): 2}
    assert s.outcome("chat").reasons == ("budget group 0 exceeded: 2 of 3 replicas placed",)


def test_a_budget_below_the_smallest_placement_the_spread_allows_is_unplaceable() -> None:
    p = problem(
        [workload(replicas=3, min_distinct_regions=2, budget_group=0)],
        [At(region=0), At(region=1)],
        every("chat", [0, 1], [3, 3]),
        budgets=[5.0],
    )
    assert solve(p).outcome("chat").reasons == (
        "budget group 0 exceeded: needs at least $6.00/h of $5.00/h",
    )


def test_workloads_outside_a_budget_group_are_not_charged_to_it() -> None:
    p = problem(
        [workload("chat", replicas=1, budget_group=0), workload("batch", replicas=3)],
        [At()],
        [("chat", 0, 4, 0), ("batch", 0, 4, 0)],
        budgets=[4.0],
    )
    assert placed(p, solve(p)) == {("chat", 0): 1, ("batch", 0): 3}


# ----------------------------------------------------------------------- throughput


def tput_workload(target: float, name: str = "chat", **rules: object) -> WorkloadDemand:
    return workload(name, replicas=None, min_throughput=target, **rules)


def test_a_throughput_sized_workload_gets_replicas_until_its_target_is_reached() -> None:
    p = problem([tput_workload(1000)], [At()], every("chat", [0], [1], tput=300))
    s = solve(p)
    assert placed(p, s) == {("chat", 0): 4}
    assert s.outcome("chat").placed_replicas == 4


def test_a_throughput_sized_workload_buys_the_cheapest_tokens() -> None:
    # Fast: 2 replicas for $5 each; slow: 5 replicas for $3 each.
    p = problem(
        [tput_workload(1000)],
        [At(), At()],
        [("chat", 0, 5, 500), ("chat", 1, 3, 200)],
    )
    assert placed(p, solve(p)) == {("chat", 0): 2}


def test_a_throughput_sized_workload_mixes_offers_when_that_is_cheaper() -> None:
    p = problem(
        [tput_workload(700)],
        [At(), At()],
        [("chat", 0, 5, 500), ("chat", 1, 2, 200)],
    )
    assert placed(p, solve(p)) == {("chat", 0): 1, ("chat", 1): 1}


def test_a_throughput_sized_workload_gets_a_replica_in_every_region_its_spread_needs() -> None:
    # One replica reaches the target; the spread needs three, the spot share notwithstanding.
    p = problem(
        [tput_workload(100, min_distinct_regions=3, max_spot_share=0.5)],
        [At(region=0), At(region=1), At(region=2)],
        every("chat", [0, 1, 2], [1, 1, 1], tput=100),
    )
    assert placed(p, solve(p)) == {("chat", 0): 1, ("chat", 1): 1, ("chat", 2): 1}


@pytest.mark.timeout(10)
def test_a_throughput_target_its_provider_share_cannot_reach_off_spot_is_unplaceable() -> None:
    # Provider 1 has room for one replica, so at 50 % provider 0 may hold one too: 200
    # of 250 tokens/s. A spot share of 0 is no share to balance and must not make the
    # bound on replicas astronomical.
    p = problem(
        [tput_workload(250, max_share_per_provider=0.5, max_spot_share=0.0)],
        [At(provider=0), At(provider=1, capacity_gpus=1), At(provider=2, spot=True)],
        [("chat", 0, 1, 100), ("chat", 1, 2, 100), ("chat", 2, 0.5, 300)],
    )
    s = solve(p)
    assert placed(p, s) == {}
    assert s.outcome("chat").status is PlacementStatus.UNPLACEABLE


def test_a_throughput_sized_workload_is_placed_whole_or_not_at_all() -> None:
    p = problem(
        [tput_workload(1000)],
        [At(capacity_gpus=2)],
        every("chat", [0], [1], tput=300),
    )
    s = solve(p)
    assert placed(p, s) == {}
    outcome = s.outcome("chat")
    assert outcome.status is PlacementStatus.UNPLACEABLE and outcome.placed_replicas == 0
    assert outcome.reasons == ("capacity exhausted",)


def test_a_budget_goes_to_the_throughput_target_that_places_more_replicas() -> None:
    # Either fits the budget alone: "big" needs 4 replicas (50 % per provider), "small"
    # 2. Placing "big" leaves fewer replicas unplaced, though "small" is far cheaper.
    p = problem(
        [
            tput_workload(250, name="big", max_share_per_provider=0.5, budget_group=0),
            tput_workload(250, name="small", budget_group=0),
        ],
        [At(provider=0), At(provider=1)],
        [("big", 0, 5, 100), ("big", 1, 12, 100), ("small", 0, 1, 200)],
        budgets=[34.0],
    )
    s = solve(p)
    assert placed(p, s) == {("big", 0): 2, ("big", 1): 2}
    assert s.outcome("small").reasons == ("budget group 0 exceeded",)


def test_offers_without_throughput_are_no_candidates_for_a_throughput_sized_workload() -> None:
    p = problem([tput_workload(100)], [At()], every("chat", [0], [1], tput=0))
    s = solve(p)
    assert s.outcome("chat").reasons == ("no compliant candidate has throughput for this workload",)


# ------------------------------------------------------------- unplaceable, partial


def test_a_workload_without_candidates_is_unplaceable_and_others_are_still_placed() -> None:
    p = problem(
        [workload("chat"), workload("batch", replicas=1)],
        [At()],
        [("batch", 0, 1, 0)],
    )
    s = solve(p)
    assert placed(p, s) == {("batch", 0): 1}
    assert s.outcome("chat") == WorkloadOutcome(
        "chat", PlacementStatus.UNPLACEABLE, 0, ("no compliant candidate",)
    )


def test_no_offer_with_room_for_one_replica_is_reported_as_capacity_exhausted() -> None:
    p = problem(
        [workload(replicas=1, gpus_per_replica=8)],
        [At(capacity_gpus=4)],
        every("chat", [0], [1]),
    )
    assert solve(p).outcome("chat").reasons == (
        "capacity exhausted: no compliant offer has 8 GPUs free",
    )


def test_a_replica_sized_workload_is_placed_in_part_when_capacity_runs_out() -> None:
    p = problem([workload(replicas=5)], [At(capacity_gpus=3)], every("chat", [0], [1]))
    s = solve(p)
    assert placed(p, s) == {("chat", 0): 3}
    outcome = s.outcome("chat")
    assert outcome.status is PlacementStatus.PARTIAL and outcome.placed_replicas == 3
    assert outcome.reasons == ("capacity exhausted: 3 of 5 replicas placed",)


def test_a_partial_placement_still_keeps_every_rule() -> None:
    # Only one replica fits in region 1, so only two of four can keep the 50 % share.
    p = problem(
        [workload(replicas=4, max_share_per_provider=0.5)],
        [At(provider=0), At(provider=1, capacity_gpus=1)],
        every("chat", [0, 1], [1, 1]),
    )
    s = solve(p)
    assert placed(p, s) == {("chat", 0): 1, ("chat", 1): 1}
    assert s.outcome("chat").status is PlacementStatus.PARTIAL


def test_a_spread_that_capacity_cannot_serve_places_nothing_rather_than_bend() -> None:
    # Region 1 has room for chat's second replica or for all of batch, not both; batch
    # places more replicas, and chat does not fall back to one region.
    p = problem(
        [
            workload("chat", replicas=2, min_distinct_regions=2, gpus_per_replica=4),
            workload("batch", replicas=4),
        ],
        [At(region=0), At(region=1, capacity_gpus=4)],
        [("chat", 0, 1, 0), ("chat", 1, 1, 0), ("batch", 1, 1, 0)],
    )
    s = solve(p)
    assert placed(p, s) == {("batch", 1): 4}
    assert s.outcome("chat").status is PlacementStatus.UNPLACEABLE
    assert s.outcome("chat").reasons == ("capacity exhausted",)


def test_as_many_replicas_as_possible_are_placed_before_cost_is_considered() -> None:
    # Placing both needs the expensive offer for one of them.
    p = problem(
        [workload("chat", replicas=1), workload("batch", replicas=1)],
        [At(capacity_gpus=1), At()],
        [("chat", 0, 1, 0), ("chat", 1, 100, 0), ("batch", 0, 1, 0)],
    )
    assert placed(p, solve(p)) == {("chat", 1): 1, ("batch", 0): 1}


# ---------------------------------------------------------------------- optimality


def test_a_solved_problem_reports_its_gap_within_the_one_asked_for() -> None:
    p = problem(
        [workload(replicas=3, min_distinct_regions=2, max_spot_share=0.5)],
        [At(region=0, spot=True), At(region=1), At(region=2, capacity_gpus=1)],
        every("chat", [0, 1, 2], [1, 3, 2]),
    )
    s = solve(p, mip_rel_gap=0.01)
    assert s.optimal and not s.time_limited
    assert 0 <= s.gap <= 0.01
    assert s.solve_seconds >= 0 and s.solves >= 1


def test_the_reduction_drops_dominated_columns_and_says_how_many_remain() -> None:
    p = problem([workload(replicas=2)], [At(), At(), At()], every("chat", [0, 1, 2], [3, 1, 2]))
    s = solve(p)
    assert (s.columns_before, s.columns_after) == (3, 1)
    assert solve(p, reduce=False).columns_after == 3


# ------------------------------------------------------------------------- problems


def test_a_workload_must_be_sized_by_replicas_or_by_throughput_not_both() -> None:
    with pytest.raises(ValueError, match="exactly one of replicas and min_throughput"):
        workload(replicas=2, min_throughput=100.0)


def test_a_problem_with_misaligned_columns_is_rejected() -> None:
    with pytest.raises(ValueError, match="col_cost has 1 entries, expected 2"):
        Problem(
            workloads=[workload()],
            col_workload=np.array([0, 0]),
            col_offer=np.array([0, 0]),
            col_cost=np.array([1.0]),
            col_throughput=np.array([0.0, 0.0]),
            offer_region=np.array([0]),
            offer_provider=np.array([0]),
            offer_spot=np.array([False]),
            offer_capacity_gpus=np.array([INF]),
        )


def test_a_workload_in_a_budget_group_that_does_not_exist_is_rejected() -> None:
    with pytest.raises(ValueError, match="budget group 1 does not exist"):
        problem([workload(budget_group=1)], [At()], every("chat", [0], [1]), budgets=[5.0])
