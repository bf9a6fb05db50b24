"""Planning migrations: saving gates, safety gates, urgent moves, waves, windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from arbiter.catalog import load_catalog
from arbiter.domain.decide import decide
from arbiter.domain.evaluation import PolicyBook
from arbiter.domain.market import Offer
from arbiter.domain.planner import Current, Gate, Inputs, MoveKind, plan, wave_target
from arbiter.domain.policy import Policy
from arbiter.domain.snapshot import MarketSnapshot, OfferState
from arbiter.domain.windows import parse_window
from arbiter.domain.workloads import GpuOption, Placement, Workload

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)  # a Monday, 11:00 in Berlin
CATALOG = load_catalog()


def offer(region: str, provider: str = "gcp", market: str = "on-demand") -> Offer:
    return Offer(provider=provider, region=region, instance_type="g2-standard-4", market=market)


def state(o: Offer, price: float) -> OfferState:
    return OfferState(
        offer=o, usd_per_hour=price, seen_at=NOW, accelerator="L4", accelerator_count=1
    )


def policy(*, spot: dict[str, object] | None = None, **migration: object) -> Policy:
    settings: dict[str, object] = {"sustained_for": "0s", "cooldown": "0s"}
    settings.update(migration)
    body: dict[str, object] = {
        "apiVersion": "arbiter/v1",
        "kind": "PlacementPolicy",
        "metadata": {"name": "eu"},
        "constraints": [
            {
                "id": "eu-residency",
                "sovereignty": {"data_classes": ["internal"], "jurisdictions": ["EU"]},
            }
        ],
        "migration": settings,
    }
    if spot is not None:
        body["capacity"] = {"spot": spot}
    return Policy.model_validate(body)


def workload(replicas: int = 3, tolerance: str = "low") -> Workload:
    return Workload(
        name="chat",
        data_class="internal",
        replicas=replicas,
        gpu_options=(GpuOption(model="L4", tokens_per_second=500),),
        warmup_seconds=300,
        model_size_gib=10,
        interruption_tolerance=tolerance,  # type: ignore[arg-type]
    )


WEST4 = offer("europe-west4")
WEST1 = offer("europe-west1")
US = offer("us-east4")
WEST4_SPOT = offer("europe-west4", market="spot")
WEST1_SPOT = offer("europe-west1", market="spot")
US_SPOT = offer("us-east4", market="spot")


def placed(o: Offer, n: int) -> Placement:
    return Placement(workload="chat", offer=o, replicas=n)


def run(
    prices: dict[Offer, float],
    running: tuple[Placement, ...],
    pol: Policy | None = None,
    *,
    now: datetime = NOW,
    pending: dict[str, datetime] | None = None,
    violating: dict[str, datetime] | None = None,
    replicas: int = 3,
    tolerance: str = "low",
    **current: object,
):  # type: ignore[no-untyped-def]
    snap = MarketSnapshot.make(
        taken_at=now, offers=tuple(state(o, p) for o, p in prices.items()), carbon=()
    )
    book = PolicyBook((pol or policy(),))
    w = workload(replicas, tolerance)
    outcome = decide([w], book, snap, CATALOG, now)
    inputs = [Inputs(w, outcome.decision("chat"), outcome.evaluator("chat"))]
    cur = {"chat": Current(running, **current)} if running or current else {}  # type: ignore[arg-type]
    return plan(inputs, cur, now=now, pending_since=pending or {}, violating_since=violating or {})


def test_a_new_workload_is_placed_at_once() -> None:
    result = run({WEST4: 1.0}, ())
    (move,) = result.moves
    assert move.kind is MoveKind.PLACE and move.target == (placed(WEST4, 3),)


def test_a_small_saving_does_not_move_anything() -> None:
    result = run({WEST4: 1.0, WEST1: 0.95}, (placed(WEST4, 3),))
    assert not result.moves
    (hold,) = result.holds
    assert hold.gate is Gate.MIN_SAVING and "5.0%" in hold.detail


def test_a_large_saving_moves_once_it_pays_back_its_cost() -> None:
    result = run({WEST4: 1.0, WEST1: 0.5}, (placed(WEST4, 3),))
    (move,) = result.moves
    assert move.kind is MoveKind.MOVE and not move.urgent
    assert move.saving_usd_per_hour == pytest.approx(1.5)
    # 3 new replicas × $0.5/h × (300 s warm-up + 300 s drain) + 10 GiB × $0.09 egress
    assert move.migration_cost_usd == pytest.approx(1.5 * 600 / 3600 + 0.9)


def test_a_saving_that_never_pays_back_the_move_is_held() -> None:
    pol = policy(planning_horizon="10m", egress_usd_per_gib=1.0)
    result = run({WEST4: 1.0, WEST1: 0.5}, (placed(WEST4, 3),), pol)
    assert [h.gate for h in result.holds] == [Gate.PAYBACK]


def test_a_saving_must_be_sustained_before_moving() -> None:
    pol = policy(sustained_for="30m")
    first = run({WEST4: 1.0, WEST1: 0.5}, (placed(WEST4, 3),), pol)
    assert [h.gate for h in first.holds] == [Gate.SUSTAINED_FOR]
    assert first.pending_since == {"chat": NOW}
    later = NOW + timedelta(minutes=31)
    second = run(
        {WEST4: 1.0, WEST1: 0.5}, (placed(WEST4, 3),), pol, now=later, pending=first.pending_since
    )
    assert [m.kind for m in second.moves] == [MoveKind.MOVE]


def test_a_workload_in_cooldown_waits() -> None:
    pol = policy(cooldown="6h")
    result = run(
        {WEST4: 1.0, WEST1: 0.5},
        (placed(WEST4, 3),),
        pol,
        last_migration_at=NOW - timedelta(hours=1),
    )
    assert [h.gate for h in result.holds] == [Gate.COOLDOWN]


def test_a_hard_violation_is_evacuated_urgently_past_the_saving_gates() -> None:
    pol = policy(cooldown="6h", sustained_for="1h", min_saving={"pct": 90})
    result = run(
        {WEST4: 1.0, US: 0.2},
        (placed(US, 3),),
        pol,
        last_migration_at=NOW - timedelta(minutes=5),
    )
    (move,) = result.moves
    assert move.kind is MoveKind.EVACUATE and move.urgent
    assert "eu-residency" in move.reason


def test_an_interrupted_offer_is_evacuated_urgently() -> None:
    # the shell takes interrupted offers out of the market before deciding
    result = run(
        {WEST4: 1.0},
        (placed(WEST1, 3),),
        interrupted=frozenset({WEST1.key}),
    )
    (move,) = result.moves
    assert move.kind is MoveKind.EVACUATE and "interruption notice" in move.reason


def test_no_move_starts_during_a_blackout_but_an_evacuation_does() -> None:
    pol = policy(blackout=["Mon-Fri 08:00-18:00 Europe/Berlin"])
    held = run({WEST4: 1.0, WEST1: 0.5}, (placed(WEST4, 3),), pol)
    assert [h.gate for h in held.holds] == [Gate.BLACKOUT]
    urgent = run({WEST4: 1.0, US: 0.5}, (placed(US, 3),), pol)
    assert [m.kind for m in urgent.moves] == [MoveKind.EVACUATE]


def test_moves_wait_while_too_many_migrations_are_in_flight() -> None:
    snap = MarketSnapshot.make(
        taken_at=NOW, offers=(state(WEST4, 1.0), state(WEST1, 0.5)), carbon=()
    )
    w = workload()
    outcome = decide([w], PolicyBook((policy(),)), snap, CATALOG, NOW)
    inputs = [Inputs(w, outcome.decision("chat"), outcome.evaluator("chat"))]
    running = {"chat": Current((placed(WEST4, 3),))}
    free = plan(inputs, running, now=NOW, pending_since={}, in_flight_total=0)
    busy = plan(inputs, running, now=NOW, pending_since={}, in_flight_total=1)
    assert [m.kind for m in free.moves] == [MoveKind.MOVE]
    assert [h.gate for h in busy.holds] == [Gate.MAX_CONCURRENT]


def test_a_large_move_goes_in_waves_within_the_disruption_budget() -> None:
    result = run({WEST4: 1.0, WEST1: 0.5}, (placed(WEST4, 6),), replicas=6)
    (move,) = result.moves
    assert move.wave == (1, 3)  # 34 % of 6 replicas → 2 at a time
    assert sorted((p.offer.region, p.replicas) for p in move.target) == [
        ("europe-west1", 2),
        ("europe-west4", 4),
    ]


def test_a_workload_gone_from_the_files_is_released() -> None:
    result = plan(
        [],
        {"old": Current((Placement(workload="old", offer=WEST4, replicas=1),))},
        now=NOW,
        pending_since={},
    )
    (move,) = result.moves
    assert move.kind is MoveKind.RELEASE and move.target == ()


def test_an_unplaceable_workload_keeps_running_where_it_is() -> None:
    result = run({US: 0.2}, (placed(US, 3),))
    assert not result.moves
    (hold,) = result.holds
    assert hold.gate is Gate.UNPLACEABLE and hold.detail.startswith("keeps running where it is")
    assert "VIOLATING" in hold.detail


def test_a_workload_with_a_migration_in_flight_is_left_alone() -> None:
    result = run({WEST4: 1.0, WEST1: 0.5}, (placed(WEST4, 3),), in_flight=True)
    assert [h.gate for h in result.holds] == [Gate.IN_FLIGHT]


def test_wave_target_moves_at_most_the_budget() -> None:
    target, waves = wave_target((placed(WEST4, 3),), (placed(WEST1, 3),), 1, "chat")
    assert waves == 3
    assert sorted((p.offer.region, p.replicas) for p in target) == [
        ("europe-west1", 1),
        ("europe-west4", 2),
    ]


@pytest.mark.parametrize(
    ("text", "at", "inside"),
    [
        ("Mon-Fri 08:00-18:00 Europe/Berlin", NOW, True),
        ("Mon-Fri 08:00-18:00 Europe/Berlin", NOW + timedelta(hours=8), False),
        ("Sat,Sun 00:00-24:00 UTC", NOW, False),
        ("daily 22:00-06:00 UTC", datetime(2025, 6, 3, 2, 0, tzinfo=UTC), True),
        ("Fri 22:00-06:00 UTC", datetime(2025, 6, 7, 5, 0, tzinfo=UTC), True),
    ],
)
def test_blackout_windows_are_read_in_their_own_time_zone(
    text: str, at: datetime, inside: bool
) -> None:
    assert parse_window(text).contains(at) is inside


@pytest.mark.parametrize(
    "text", ["Mon-Fry 08:00-18:00 UTC", "Mon 25:00-26:00 UTC", "Mon 08:00-18:00 Mars/Base"]
)
def test_a_bad_blackout_window_is_refused_with_the_reason(text: str) -> None:
    with pytest.raises(ValueError):
        parse_window(text)


def test_an_evacuation_moves_every_replica_at_once_not_in_waves() -> None:
    result = run({WEST4: 1.0, US: 0.5}, (placed(US, 6),), replicas=6)
    (move,) = result.moves
    assert move.kind is MoveKind.EVACUATE and move.wave == (1, 1)
    assert move.target == (placed(WEST4, 6),)


def test_a_replica_count_move_is_judged_per_unit_of_throughput_as_decide_ranks_it() -> None:
    """Twice the price for 2.5x the throughput is a saving, for decide and the planner."""
    fast = Offer(provider="gcp", region="europe-west1", instance_type="a3-1g", market="on-demand")
    w = workload().model_copy(
        update={
            "gpu_options": (
                GpuOption(model="L4", tokens_per_second=400),
                GpuOption(model="H100", tokens_per_second=1000),
            )
        }
    )
    snap = MarketSnapshot.make(
        taken_at=NOW,
        offers=(
            state(WEST4, 1.0),
            OfferState(
                offer=fast, usd_per_hour=2.0, seen_at=NOW, accelerator="H100", accelerator_count=1
            ),
        ),
        carbon=(),
    )
    outcome = decide([w], PolicyBook((policy(),)), snap, CATALOG, NOW)
    assert {p.offer for p in outcome.decision("chat").placements} == {fast}
    inputs = [Inputs(w, outcome.decision("chat"), outcome.evaluator("chat"))]
    result = plan(inputs, {"chat": Current((placed(WEST4, 3),))}, now=NOW, pending_since={})
    (move,) = result.moves
    assert move.kind is MoveKind.MOVE and "(20.0%)" in move.reason


# ------------------------------------------------- capacity.spot.fallback: lost spot


def test_with_on_demand_fallback_lost_spot_replicas_are_replaced_on_on_demand_at_once() -> None:
    # the shell has taken the interrupted spot offer out of the market: only on-demand left
    pol = policy(spot={"fallback": "on_demand"}, blackout=["Mon-Fri 08:00-18:00 Europe/Berlin"])
    result = run(
        {WEST4: 1.0},
        (placed(WEST1_SPOT, 3),),
        pol,
        tolerance="high",
        interrupted=frozenset({WEST1_SPOT.key}),
        last_migration_at=NOW - timedelta(minutes=1),
    )
    (move,) = result.moves
    assert move.kind is MoveKind.EVACUATE and move.urgent
    assert move.target == (placed(WEST4, 3),)
    assert result.holds == ()


def test_without_fallback_lost_spot_replicas_wait_for_spot_instead_of_going_on_demand() -> None:
    pol = policy(spot={"fallback": "none"})
    result = run(
        {WEST4: 1.0},
        (placed(WEST1_SPOT, 3),),
        pol,
        tolerance="high",
        interrupted=frozenset({WEST1_SPOT.key}),
    )
    assert result.moves == ()
    (hold,) = result.holds
    assert hold.gate is Gate.WAITING_FOR_SPOT
    assert "3 replica(s)" in hold.detail and WEST1_SPOT.key in hold.detail
    assert "capacity.spot.fallback: none" in hold.detail


def test_without_fallback_a_workload_keeps_its_on_demand_replicas_while_it_waits_for_spot() -> None:
    pol = policy(spot={"fallback": "none", "max_share": 0.67})
    result = run(
        {WEST4: 1.0},
        (placed(WEST4, 1), placed(WEST1_SPOT, 2)),
        pol,
        tolerance="high",
        interrupted=frozenset({WEST1_SPOT.key}),
    )
    assert result.moves == ()
    (hold,) = result.holds
    assert hold.gate is Gate.WAITING_FOR_SPOT and "2 replica(s)" in hold.detail


def test_without_fallback_interrupted_spot_replicas_move_to_other_spot_capacity_at_once() -> None:
    pol = policy(spot={"fallback": "none"})
    result = run(
        {WEST4: 1.0, WEST4_SPOT: 0.4},
        (placed(WEST1_SPOT, 3),),
        pol,
        tolerance="high",
        interrupted=frozenset({WEST1_SPOT.key}),
    )
    (move,) = result.moves
    assert move.kind is MoveKind.EVACUATE and move.urgent
    assert move.target == (placed(WEST4_SPOT, 3),)


def test_without_fallback_a_spot_placement_that_breaks_a_rule_still_moves_to_on_demand() -> None:
    """The enforced rules come first: fallback none does not keep replicas where a
    rule forbids them."""
    pol = policy(spot={"fallback": "none"})
    result = run(
        {WEST4: 1.0},
        (placed(US_SPOT, 3),),
        pol,
        tolerance="high",
        interrupted=frozenset({US_SPOT.key}),
    )
    (move,) = result.moves
    assert move.kind is MoveKind.EVACUATE and move.target == (placed(WEST4, 3),)
    assert "eu-residency" in move.reason


def test_without_fallback_a_new_workload_is_still_placed_on_on_demand() -> None:
    result = run({WEST4: 1.0}, (), policy(spot={"fallback": "none"}), tolerance="high")
    (move,) = result.moves
    assert move.kind is MoveKind.PLACE and move.target == (placed(WEST4, 3),)


# ------------------------------------------------ on_hard_violation.drain_within


def test_a_hard_violation_is_remembered_from_when_it_was_first_seen() -> None:
    first = run({WEST4: 1.0, US: 0.2}, (placed(US, 3),), in_flight=True)
    assert first.violating_since == {"chat": NOW}
    later = run(
        {WEST4: 1.0, US: 0.2},
        (placed(US, 3),),
        now=NOW + timedelta(minutes=5),
        violating=dict(first.violating_since),
    )
    assert later.violating_since == {"chat": NOW}
    assert [m.kind for m in later.moves] == [MoveKind.EVACUATE]


def test_a_compliant_workload_has_no_violation_to_remember() -> None:
    result = run({WEST4: 1.0}, (placed(WEST4, 3),), violating={"chat": NOW - timedelta(hours=1)})
    assert result.violating_since == {} and result.overdue == ()


def test_an_interruption_alone_does_not_start_the_violation_clock() -> None:
    """The provider's own deadline governs an interruption; drain_within is for
    placements that break an enforced rule."""
    result = run({WEST4: 1.0}, (placed(WEST1, 3),), interrupted=frozenset({WEST1.key}))
    assert [m.kind for m in result.moves] == [MoveKind.EVACUATE]
    assert result.violating_since == {}


def test_a_violation_not_drained_within_drain_within_is_overdue() -> None:
    pol = policy(on_hard_violation={"drain_within": "1h"})
    # only the violating region has offers: nothing compliant to move to
    early = run({US: 0.2}, (placed(US, 3),), pol, violating={"chat": NOW - timedelta(minutes=59)})
    assert early.overdue == ()
    late = run({US: 0.2}, (placed(US, 3),), pol, violating={"chat": NOW - timedelta(hours=2)})
    (overdue,) = late.overdue
    assert overdue.workload == "chat"
    assert overdue.since == NOW - timedelta(hours=2)
    assert overdue.deadline == NOW - timedelta(hours=1)
    assert "eu-residency" in overdue.detail and US.key in overdue.detail
    assert [h.gate for h in late.holds] == [Gate.UNPLACEABLE]


def test_a_violation_whose_evacuation_is_still_in_flight_past_drain_within_is_overdue() -> None:
    pol = policy(on_hard_violation={"drain_within": "30m"})
    result = run(
        {WEST4: 1.0, US: 0.2},
        (placed(US, 3),),
        pol,
        in_flight=True,
        violating={"chat": NOW - timedelta(minutes=31)},
    )
    assert [h.gate for h in result.holds] == [Gate.IN_FLIGHT]
    assert [o.workload for o in result.overdue] == ["chat"]
    assert result.violating_since == {"chat": NOW - timedelta(minutes=31)}


def test_an_evacuation_that_must_wait_out_a_blackout_starts_in_time_to_drain_within() -> None:
    """ignore_blackout false: the evacuation waits for the window to end, but no longer
    than leaves it time to finish (warm-up 5 min + drain_timeout 5 min) by the end of
    drain_within."""
    pol = policy(
        blackout=["Mon-Fri 08:00-18:00 Europe/Berlin"],
        on_hard_violation={"drain_within": "2h", "ignore_blackout": False},
    )
    prices = {WEST4: 1.0, US: 0.2}
    waiting = run(prices, (placed(US, 3),), pol, violating={"chat": NOW - timedelta(minutes=100)})
    assert waiting.moves == ()
    (hold,) = waiting.holds
    assert hold.gate is Gate.BLACKOUT
    assert "drained by 2025-06-02 09:20Z" in hold.detail
    assert "starts by 09:10Z" in hold.detail
    due = run(prices, (placed(US, 3),), pol, violating={"chat": NOW - timedelta(minutes=110)})
    (move,) = due.moves
    assert move.kind is MoveKind.EVACUATE and move.urgent
    assert "inside blackout" in move.reason and "drain_within" in move.reason
    assert due.overdue == ()


def test_with_ignore_blackout_an_evacuation_starts_in_a_blackout_at_once() -> None:
    pol = policy(
        blackout=["Mon-Fri 08:00-18:00 Europe/Berlin"],
        on_hard_violation={"drain_within": "2h", "ignore_blackout": True},
    )
    result = run({WEST4: 1.0, US: 0.2}, (placed(US, 3),), pol)
    assert [m.kind for m in result.moves] == [MoveKind.EVACUATE]


# ------------------------------------------------- resizing: the spec asks for it


GUARDED = {
    "min_saving": {"pct": 15, "usd_per_hour": 5},
    "sustained_for": "30m",
    "cooldown": "6h",
}
"""Saving gates no resize could pass: adding replicas costs more, removing one saves $1/h."""


def throughput_workload(tokens_per_second: float) -> Workload:
    return Workload(
        name="chat",
        data_class="internal",
        required_tokens_per_second=tokens_per_second,
        gpu_options=(GpuOption(model="L4", tokens_per_second=500),),
        warmup_seconds=300,
        model_size_gib=10,
    )


def run_sized(
    w: Workload,
    prices: dict[Offer, float],
    running: tuple[Placement, ...],
    pol: Policy | None = None,
    **current: object,
):  # type: ignore[no-untyped-def]
    snap = MarketSnapshot.make(
        taken_at=NOW, offers=tuple(state(o, p) for o, p in prices.items()), carbon=()
    )
    outcome = decide([w], PolicyBook((pol or policy(),)), snap, CATALOG, NOW)
    inputs = [Inputs(w, outcome.decision("chat"), outcome.evaluator("chat"))]
    cur = {"chat": Current(running, **current)}  # type: ignore[arg-type]
    return plan(inputs, cur, now=NOW, pending_since={}, violating_since={})


def test_replicas_the_spec_asks_for_are_added_past_every_saving_gate() -> None:
    result = run(
        {WEST4: 1.0},
        (placed(WEST4, 2),),
        policy(**GUARDED),
        replicas=3,
        last_migration_at=NOW - timedelta(minutes=5),
    )
    (move,) = result.moves
    assert move.kind is MoveKind.SCALE_UP and not move.urgent
    assert move.target == (placed(WEST4, 3),)
    assert move.reason.startswith("the workload asks for 3 replicas, 2 run")
    assert result.holds == () and result.pending_since == {}


def test_a_scale_up_keeps_the_running_replicas_and_adds_where_decide_places_them() -> None:
    """Moving the two running replicas to the cheaper region is a cost move: it stays
    under the saving gates; only the missing replica goes where decide puts it."""
    result = run({WEST4: 1.0, WEST1: 0.9}, (placed(WEST4, 2),), policy(**GUARDED), replicas=3)
    (move,) = result.moves
    assert move.kind is MoveKind.SCALE_UP
    assert move.source == (placed(WEST4, 2),)
    assert sorted(move.target, key=lambda p: p.offer.key) == [placed(WEST1, 1), placed(WEST4, 2)]


def test_a_scale_up_is_not_held_by_a_blackout_nor_by_migrations_in_flight() -> None:
    """Adding replicas disrupts nothing, as placing a new workload does not."""
    snap = MarketSnapshot.make(taken_at=NOW, offers=(state(WEST4, 1.0),), carbon=())
    w = workload(3)
    pol = policy(blackout=["Mon-Fri 08:00-18:00 Europe/Berlin"], max_concurrent_drains=1)
    outcome = decide([w], PolicyBook((pol,)), snap, CATALOG, NOW)
    inputs = [Inputs(w, outcome.decision("chat"), outcome.evaluator("chat"))]
    result = plan(
        inputs,
        {"chat": Current((placed(WEST4, 2),))},
        now=NOW,
        pending_since={},
        in_flight_total=1,
    )
    assert [m.kind for m in result.moves] == [MoveKind.SCALE_UP]


def test_a_scale_up_is_not_split_into_waves() -> None:
    result = run({WEST4: 1.0}, (placed(WEST4, 2),), replicas=6)
    (move,) = result.moves
    assert move.kind is MoveKind.SCALE_UP and move.wave == (1, 1)
    assert move.target == (placed(WEST4, 6),)


def test_a_throughput_sized_workload_whose_target_rises_gets_the_replicas_it_lacks() -> None:
    result = run_sized(
        throughput_workload(1500), {WEST4: 1.0}, (placed(WEST4, 2),), policy(**GUARDED)
    )
    (move,) = result.moves
    assert move.kind is MoveKind.SCALE_UP and move.target == (placed(WEST4, 3),)
    assert "1,500 tokens/s" in move.reason and "1,000" in move.reason


def test_a_scale_up_that_adding_alone_cannot_make_compliant_takes_the_decided_placement() -> None:
    """Two spot replicas run; the policy now allows half on spot and the spec asks for
    three: adding one on-demand replica would leave 2 of 3 on spot."""
    pol = policy(spot={"max_share": 0.5}, **GUARDED)
    result = run(
        {WEST4: 1.0, WEST1_SPOT: 0.4, WEST4_SPOT: 0.45},
        (placed(WEST1_SPOT, 2),),
        pol,
        replicas=3,
    )
    (move,) = result.moves
    assert move.kind is MoveKind.SCALE_UP
    spot = sum(p.replicas for p in move.target if p.offer.market == "spot")
    assert sum(p.replicas for p in move.target) == 3 and spot == 1
    assert "spot" in move.reason and "decided placement" in move.reason


def test_replicas_the_spec_no_longer_asks_for_are_removed_past_every_saving_gate() -> None:
    result = run(
        {WEST4: 1.0},
        (placed(WEST4, 3),),
        policy(**GUARDED),
        replicas=2,
        last_migration_at=NOW - timedelta(minutes=5),
    )
    (move,) = result.moves
    assert move.kind is MoveKind.SCALE_DOWN and not move.urgent
    assert move.target == (placed(WEST4, 2),)
    assert move.reason.startswith("the workload asks for 2 replicas, 3 run")


def test_a_scale_down_removes_the_replicas_decide_no_longer_wants_first() -> None:
    pol = policy(max_disrupted_replicas_pct=100, **GUARDED)
    result = run({WEST4: 1.0, WEST1: 0.9}, (placed(WEST4, 2), placed(WEST1, 2)), pol, replicas=2)
    (move,) = result.moves
    assert move.kind is MoveKind.SCALE_DOWN and move.target == (placed(WEST1, 2),)


def test_a_scale_down_drains_replicas_so_it_waits_out_a_blackout_and_goes_in_waves() -> None:
    blackout = policy(blackout=["Mon-Fri 08:00-18:00 Europe/Berlin"])
    held = run({WEST4: 1.0}, (placed(WEST4, 6),), blackout, replicas=2)
    assert held.moves == () and [h.gate for h in held.holds] == [Gate.BLACKOUT]
    waves = run({WEST4: 1.0}, (placed(WEST4, 6),), replicas=2)
    (move,) = waves.moves
    assert move.kind is MoveKind.SCALE_DOWN and move.wave == (1, 2)  # 34 % of 6: 2 at once
    assert move.target == (placed(WEST4, 4),)


def test_a_throughput_sized_workload_whose_target_falls_drops_the_replicas_it_can_spare() -> None:
    result = run_sized(
        throughput_workload(900), {WEST4: 1.0}, (placed(WEST4, 3),), policy(**GUARDED)
    )
    (move,) = result.moves
    assert move.kind is MoveKind.SCALE_DOWN and move.target == (placed(WEST4, 2),)


def test_a_throughput_sized_workload_keeps_a_replica_its_spread_needs() -> None:
    """1 replica would serve 400 tokens/s, but the policy wants two regions: nothing to
    scale down."""
    body = policy(**GUARDED).model_dump(by_alias=True)
    body["redundancy"] = {"spread": {"across": "region", "min_distinct": 2}}
    pol = Policy.model_validate(body)
    result = run_sized(
        throughput_workload(400),
        {WEST4: 1.0, WEST1: 1.0},
        (placed(WEST4, 1), placed(WEST1, 1)),
        pol,
    )
    assert result.moves == () and result.holds == ()


def test_a_scale_up_the_budget_cannot_pay_for_beside_dear_replicas_takes_the_decision() -> None:
    """The budget of $1.60/h pays for three replicas in the cheaper region, not for two
    dear ones plus one cheap one."""
    body = policy(**GUARDED).model_dump(by_alias=True)
    body["budget"] = {"max_usd_per_hour": 1.6}
    result = run(
        {WEST4: 1.0, WEST1: 0.5}, (placed(WEST4, 2),), Policy.model_validate(body), replicas=3
    )
    (move,) = result.moves
    assert move.kind is MoveKind.SCALE_UP and move.target == (placed(WEST1, 3),)
    assert "budget of policy 'eu'" in move.reason


# ------------------------------------ spot capacity lost without an interruption notice

GONE = "gone from the market: test last listed it at 08:00Z; its poll at 08:55Z did not"


def test_spot_capacity_lost_without_a_notice_is_evacuated_urgently_past_every_gate() -> None:
    # the shell has taken the lost offer out of the market before deciding
    pol = policy(spot={"fallback": "on_demand"}, **GUARDED)
    result = run(
        {WEST4: 1.0},
        (placed(WEST1_SPOT, 3),),
        pol,
        capacity_lost={WEST1_SPOT.key: GONE},
        last_migration_at=NOW - timedelta(minutes=1),
    )
    (move,) = result.moves
    assert move.kind is MoveKind.EVACUATE and move.urgent
    assert move.target == (placed(WEST4, 3),)
    assert move.reason == f"spot capacity lost: {WEST1_SPOT.key}: {GONE}"
    assert result.violating_since == {}  # the provider took it: no rule is broken


def test_without_fallback_spot_capacity_lost_without_a_notice_waits_for_spot() -> None:
    result = run(
        {WEST4: 1.0},
        (placed(WEST1_SPOT, 3),),
        policy(spot={"fallback": "none"}),
        tolerance="high",
        capacity_lost={WEST1_SPOT.key: GONE},
    )
    assert result.moves == ()
    (hold,) = result.holds
    assert hold.gate is Gate.WAITING_FOR_SPOT
    assert f"3 replica(s) on {WEST1_SPOT.key} lost (spot capacity gone)" in hold.detail
    assert "capacity.spot.fallback: none" in hold.detail
