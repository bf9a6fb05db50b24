"""The backtest engine on tiny hand-made markets: the real decide and plan, a simulated
executor, and the baselines they are compared with."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from arbiter.catalog import load_catalog
from arbiter.domain.backtest import (
    AdvisorRates,
    BacktestResult,
    SpotModel,
    StrategyKind,
    Trace,
    TraceReplay,
    default_strategies,
    price_only,
    run_backtest,
    with_carbon_price,
    without_spot,
)
from arbiter.domain.evaluation import PolicyBook
from arbiter.domain.market import Market, Offer, Provider
from arbiter.domain.policy import Policy
from arbiter.domain.snapshot import MarketSnapshot, OfferState
from arbiter.domain.workloads import GpuOption, Workload

T0 = datetime(2025, 6, 2, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
CATALOG = load_catalog()


def offer(region: str, market: Market = Market.ON_DEMAND) -> Offer:
    return Offer(provider=Provider.GCP, region=region, instance_type="g2-standard-4", market=market)


WEST4 = offer("europe-west4")
WEST1 = offer("europe-west1")
WEST4_SPOT = offer("europe-west4", Market.SPOT)
US = offer("us-east4")


def policy(**migration: object) -> Policy:
    settings: dict[str, object] = {
        "sustained_for": "2h",
        "cooldown": "0s",
        "max_disrupted_replicas_pct": 100,
        "drain_timeout": "5m",
    }
    settings.update(migration)
    return Policy.model_validate(
        {
            "apiVersion": "arbiter/v1",
            "kind": "PlacementPolicy",
            "metadata": {"name": "eu"},
            "constraints": [
                {
                    "id": "eu-residency",
                    "sovereignty": {"data_classes": ["internal"], "jurisdictions": ["EU"]},
                }
            ],
            "objective": {"interruption_premium": 0},
            "migration": settings,
        }
    )


def workload(replicas: int = 2, **extra: object) -> Workload:
    return Workload.model_validate(
        {
            "name": "chat",
            "data_class": "internal",
            "replicas": replicas,
            "gpu_options": [GpuOption(model="L4", tokens_per_second=500)],
            "warmup_seconds": 600,
            "model_size_gib": 10,
            **extra,
        }
    )


def market(series: Sequence[Mapping[Offer, float]]) -> Iterator[MarketSnapshot]:
    """One snapshot per hour from T0, with the prices given for that hour."""
    for i, prices in enumerate(series):
        now = T0 + i * HOUR
        states = tuple(
            OfferState(offer=o, usd_per_hour=p, seen_at=now, accelerator="L4", accelerator_count=1)
            for o, p in prices.items()
        )
        yield MarketSnapshot.make(taken_at=now, offers=states, carbon=())


def backtest(
    series: Sequence[Mapping[Offer, float]],
    pol: Policy | None = None,
    *,
    spot: SpotModel | None = None,
    replicas: int = 2,
) -> BacktestResult:
    book = PolicyBook((pol or policy(),))
    return run_backtest(
        market(series),
        [workload(replicas)],
        default_strategies(book),
        CATALOG,
        step=HOUR,
        spot=spot or SpotModel(),
    )


def moves(result: BacktestResult, strategy: str) -> list[tuple[datetime, str, str]]:
    return [
        (e.at, e.kind, e.detail)
        for e in result.strategy(strategy).events
        if e.kind in ("move", "evacuate")
    ]


DROP = [{WEST4: 1.0, WEST1: 1.2}] * 3 + [{WEST4: 1.0, WEST1: 0.5}] * 7
"""europe-west1 becomes half the price at 03:00 and stays there."""
FLAP = [{WEST4: 1.0, WEST1: 0.5 if i % 2 else 1.2} for i in range(12)]
"""europe-west1 is cheap every other hour."""


def test_a_price_drop_moves_the_arbiter_once_after_it_held_for_sustained_for() -> None:
    result = backtest(DROP)
    # cheaper from 03:00; sustained for 2 h at 05:00
    assert moves(result, "arbiter") == [
        (T0 + 5 * HOUR, "move", "gcp:europe-west1:-:g2-standard-4:on-demand×2")
    ]
    assert result.strategy("arbiter").migrations == 1


def test_greedy_moves_at_every_change_of_the_answer_and_the_arbiter_does_not() -> None:
    result = backtest(FLAP)
    assert result.strategy("arbiter").migrations == 0  # never cheaper for 2 h
    assert result.strategy("greedy").migrations == 11  # to west1, back, to west1, …


def test_static_strategies_never_move() -> None:
    for series in (DROP, FLAP):
        result = backtest(series)
        for name in ("static-on-demand", "static-spot"):
            assert result.strategy(name).migrations == 0
            assert moves(result, name) == []


def test_the_hindsight_bound_costs_no_more_than_any_strategy() -> None:
    for series in (DROP, FLAP):
        result = backtest(series)
        bound = result.strategy("hindsight").cost_usd
        for s in result.strategies:
            assert bound <= s.cost_usd + 1e-9, s.name


def test_the_hindsight_bound_is_the_cheapest_price_at_every_step() -> None:
    result = backtest(FLAP)
    expected = sum(2 * min(prices.values()) for prices in FLAP)
    assert result.strategy("hindsight").cost_usd == pytest.approx(expected)


def test_no_strategy_ever_runs_outside_the_allowed_jurisdictions() -> None:
    cheap_us = [{**prices, US: 0.05} for prices in DROP + FLAP]
    result = backtest(cheap_us)
    for s in result.strategies:
        assert s.sovereignty_violation_hours == 0 and s.violation_hours == 0, s.name
        assert all("us-east4" not in e.detail for e in s.events), s.name


def test_a_move_pays_for_old_and_new_replicas_while_the_new_ones_warm_up() -> None:
    result = backtest(DROP)
    arbiter = result.strategy("arbiter")
    before = 5 * 2 * 1.0  # 00:00-05:00 on europe-west4
    after = 5 * 2 * 0.5  # 05:00-10:00 on europe-west1
    overlap = 2 * 1.0 * (600 + 300) / 3600  # old replicas through warm-up and drain
    egress = 10 * 0.09  # the model copied to one new region
    assert arbiter.egress_usd == pytest.approx(egress)
    assert arbiter.cost_usd == pytest.approx(before + after + overlap + egress)
    assert arbiter.availability == 1.0  # make-before-break: the old serve until the new do


class OneReclaim(SpotModel):
    """Reclaims every replica on ``offer`` at ``at``; capacity is back at once."""

    def __init__(self, offer: Offer, at: datetime) -> None:
        self.offer = offer
        self.at = at

    def preemption(
        self, offer: Offer, bucket: float | None, slot: str, start: datetime, end: datetime
    ) -> datetime | None:
        return self.at if offer == self.offer and start < self.at < end else None


def test_a_reclaimed_spot_replica_is_missing_until_an_evacuation_replaces_it() -> None:
    series = [{WEST4_SPOT: 0.3, WEST1: 1.0, WEST4: 1.1}] * 6
    spot = OneReclaim(WEST4_SPOT, T0 + 2 * HOUR + timedelta(minutes=30))
    result = backtest(series, spot=spot, replicas=1)
    arbiter = result.strategy("arbiter")
    assert arbiter.preemptions == 1 and arbiter.evacuations == 1
    (evacuation,) = [m for m in moves(result, "arbiter") if m[1] == "evacuate"]
    assert evacuation[0] == spot.at  # the notice is acted on at once, off the reclaimed offer
    assert "spot" not in evacuation[2]
    # one replica missing for the 10-minute warm-up of its replacement
    assert arbiter.replica_hours_required == pytest.approx(6)
    assert arbiter.replica_hours_ready == pytest.approx(6 - 600 / 3600)
    static = result.strategy("static-spot")
    assert static.preemptions == 1 and static.reacquired == 1 and static.migrations == 0
    assert static.availability == pytest.approx(1 - 600 / 3600 / 6)
    assert result.strategy("hindsight").availability == 1.0


def test_spot_capacity_that_cannot_be_obtained_rolls_the_move_back() -> None:
    # a spot offer whose capacity is never there: the move onto it rolls back, the
    # offer is blocklisted, and the same pass moves to the next best offer instead
    never = Trace("never", ((0.0, 3600.0, False),))
    spot = TraceReplay({("gcp", "europe-west4", "g2-standard-4"): [never]}, SpotModel())
    series = [{WEST4: 1.0, WEST1: 1.2}] * 2 + [{WEST4: 1.0, WEST1: 0.8, WEST4_SPOT: 0.2}] * 4
    result = backtest(series, policy(sustained_for="0s"), spot=spot)
    arbiter = result.strategy("arbiter")
    assert arbiter.rollbacks >= 1
    assert [m[2] for m in moves(result, "arbiter")] == [
        "gcp:europe-west1:-:g2-standard-4:on-demand×2"
    ]


def test_snapshots_must_come_one_step_apart() -> None:
    snapshots = list(market([{WEST4: 1.0}] * 3))
    with pytest.raises(ValueError, match="one step"):
        run_backtest(
            [snapshots[0], snapshots[2]],
            [workload()],
            default_strategies(PolicyBook((policy(),))),
            CATALOG,
            step=HOUR,
        )


def test_the_rate_model_is_reproducible_and_follows_the_advisor_bucket() -> None:
    start, end = T0, T0 + timedelta(days=3650)

    def reclaims(model: AdvisorRates, bucket: int) -> list[datetime]:
        out, at = [], start
        while (when := model.preemption(WEST4_SPOT, bucket, "chat#0", at, end)) is not None:
            out.append(when)
            at = when
        return out

    low, high = reclaims(AdvisorRates(7), 0), reclaims(AdvisorRates(7), 4)
    assert reclaims(AdvisorRates(7), 4) == high  # same seed, same reclaims
    assert reclaims(AdvisorRates(8), 4) != high
    # 2.5 % and 25 % a month over ten years: about 3 and 34 reclaims
    assert 0 < len(low) < 10 < 20 < len(high) < 60
    assert AdvisorRates(7).preemption(WEST4, 4, "chat#0", start, end) is None  # on-demand


def test_a_replayed_trace_reclaims_when_it_goes_down_and_is_obtainable_when_up() -> None:
    trace = Trace("t", ((0.0, 600.0, True), (600.0, 900.0, False), (900.0, 3600.0, True)))
    model = TraceReplay({("gcp", "europe-west4", "g2-standard-4"): [trace]}, SpotModel())
    t = T0
    down = model.preemption(WEST4_SPOT, None, "chat#0", t, t + timedelta(hours=2))
    assert down is not None
    assert not model.available(WEST4_SPOT, down)
    back = model.next_available(WEST4_SPOT, down)
    assert back == down + timedelta(seconds=300)
    assert model.available(WEST4_SPOT, back)
    assert model.preemption(WEST4_SPOT, None, "chat#0", back, back + timedelta(minutes=50)) is None
    assert model.matched(WEST4_SPOT) == "t" and model.matched(WEST1) is None


def test_policy_variants_change_only_what_they_name() -> None:
    book = PolicyBook((policy(),))
    w = workload()
    assert with_carbon_price(book, 100).terms(w).objective.carbon_price_usd_per_tonne == 100
    assert not without_spot(book).terms(w).spot.allowed
    objective = price_only(with_carbon_price(book, 100)).terms(w).objective
    assert objective.carbon_price_usd_per_tonne == 0 and objective.interruption_premium == 0
    assert without_spot(book).terms(w).constraints == book.terms(w).constraints


def test_the_carbon_price_reference_is_reported_beside_the_arbiter() -> None:
    names = [s.name for s in default_strategies(PolicyBook((policy(),)), price_only_reference=True)]
    assert names[:2] == ["arbiter", "arbiter-price-only"]
    kinds = {s.kind for s in default_strategies(PolicyBook((policy(),)))}
    assert kinds == set(StrategyKind)
