"""Evaluating every rule on every (workload, offer): fail closed, never short-circuited."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from arbiter.catalog import load_catalog
from arbiter.domain.decisions import RuleMode, Verdict
from arbiter.domain.evaluation import (
    DATA_CLASS_COVERED,
    FRESH_PRICE,
    WORKLOAD_GPU,
    WORKLOAD_INTERRUPTION,
    PolicyBook,
    WorkloadEvaluator,
    estimate_rtt_ms,
)
from arbiter.domain.market import Offer
from arbiter.domain.policy import Policy
from arbiter.domain.regions import RegionCatalog
from arbiter.domain.snapshot import MarketSnapshot, OfferState, ZoneCarbon
from arbiter.domain.workloads import GpuOption, UserLocation, Workload

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
CATALOG: RegionCatalog = load_catalog()


def policy(**body: object) -> Policy:
    base: dict[str, object] = {
        "apiVersion": "arbiter/v1",
        "kind": "PlacementPolicy",
        "metadata": {"name": "eu"},
        "constraints": [
            {
                "id": "eu-residency",
                "sovereignty": {"data_classes": ["personal-eu"], "jurisdictions": ["EU", "EEA"]},
            },
        ],
    }
    base.update(body)
    return Policy.model_validate(base)


def workload(**changes: object) -> Workload:
    fields: dict[str, object] = {
        "name": "chat-api",
        "data_class": "personal-eu",
        "gpu_options": (GpuOption(model="H100", tokens_per_second=2500),),
        "gpus_per_replica": 8,
        "replicas": 2,
    }
    fields.update(changes)
    return Workload(**fields)  # type: ignore[arg-type]


def state(provider: str, region: str, market: str = "on-demand", **changes: object) -> OfferState:
    fields: dict[str, object] = {
        "offer": Offer(provider=provider, region=region, instance_type="x8", market=market),
        "usd_per_hour": 80.0,
        "seen_at": NOW,
        "accelerator": "H100",
        "accelerator_count": 8,
        "accelerator_memory_gib": 80,
    }
    fields.update(changes)
    return OfferState(**fields)  # type: ignore[arg-type]


def carbon(zone: str, value: float, stale: bool = False) -> ZoneCarbon:
    return ZoneCarbon(
        zone=zone, gco2_per_kwh=value, basis="lifecycle", valid_at=NOW, source="em", stale=stale
    )


def evaluator(
    pol: Policy, w: Workload | None = None, carbon_data: tuple[ZoneCarbon, ...] = ()
) -> WorkloadEvaluator:
    w = w or workload()
    book = PolicyBook((pol,), rule_origins={"eu-residency": "policies/eu.yaml:8"})
    snapshot = MarketSnapshot.make(taken_at=NOW, offers=(), carbon=carbon_data)
    return WorkloadEvaluator(w, book.terms(w), snapshot, CATALOG, NOW)


def by_rule(verdicts: tuple[object, ...]) -> dict[str, object]:
    return {v.rule_id: v for v in verdicts}  # type: ignore[attr-defined]


def test_a_region_in_the_allowed_jurisdiction_passes_with_its_country() -> None:
    v = by_rule(evaluator(policy()).verdicts(state("aws", "eu-central-1")))["eu-residency"]
    assert v.verdict is Verdict.PASS and "DE" in v.reason  # type: ignore[attr-defined]
    assert v.origin == "policies/eu.yaml:8"  # type: ignore[attr-defined]


def test_a_region_outside_the_jurisdiction_fails_and_says_where_it_is() -> None:
    v = by_rule(evaluator(policy()).verdicts(state("aws", "us-east-1")))["eu-residency"]
    assert v.verdict is Verdict.FAIL and "in US; allowed: EU, EEA" in v.reason  # type: ignore[attr-defined]
    assert v.excludes  # type: ignore[attr-defined]


def test_a_region_missing_from_the_catalog_is_never_eligible() -> None:
    v = by_rule(evaluator(policy()).verdicts(state("aws", "eu-moon-1")))["eu-residency"]
    assert v.verdict is Verdict.FAIL and "unknown jurisdiction" in v.reason  # type: ignore[attr-defined]


def test_a_data_class_no_sovereignty_rule_covers_excludes_every_offer() -> None:
    ev = evaluator(policy(), workload(data_class="health-us"))
    verdicts = by_rule(ev.verdicts(state("aws", "eu-central-1")))
    assert verdicts[DATA_CLASS_COVERED].verdict is Verdict.ERROR  # type: ignore[attr-defined]
    assert verdicts[DATA_CLASS_COVERED].excludes  # type: ignore[attr-defined]


def test_a_region_excluded_by_name_fails_even_inside_the_jurisdiction() -> None:
    pol = policy(
        constraints=[
            {
                "id": "eu-residency",
                "sovereignty": {
                    "data_classes": ["personal-eu"],
                    "jurisdictions": ["EU"],
                    "exclude_regions": ["aws:eu-south-2"],
                },
            }
        ]
    )
    v = by_rule(evaluator(pol).verdicts(state("aws", "eu-south-2")))["eu-residency"]
    assert v.verdict is Verdict.FAIL and "excluded by name" in v.reason  # type: ignore[attr-defined]


def carbon_policy(mode: str = "enforce") -> Policy:
    return policy(
        constraints=[
            {
                "id": "eu-residency",
                "sovereignty": {"data_classes": ["personal-eu"], "jurisdictions": ["EU"]},
            },
            {"id": "carbon-cap", "mode": mode, "carbon": {"max_gco2_per_kwh": 300}},
        ]
    )


def test_carbon_over_the_cap_fails() -> None:
    ev = evaluator(carbon_policy(), carbon_data=(carbon("DE", 420),))
    v = by_rule(ev.verdicts(state("aws", "eu-central-1")))["carbon-cap"]
    assert v.verdict is Verdict.FAIL and "420 g/kWh > 300" in v.reason  # type: ignore[attr-defined]


@pytest.mark.parametrize("data", [(), (carbon("DE", 100, stale=True),)])
def test_stale_or_missing_carbon_is_an_error_that_excludes(data: tuple[ZoneCarbon, ...]) -> None:
    ev = evaluator(carbon_policy(), carbon_data=data)
    v = by_rule(ev.verdicts(state("aws", "eu-central-1")))["carbon-cap"]
    assert v.verdict is Verdict.ERROR and v.excludes  # type: ignore[attr-defined]


def test_an_audit_rule_reports_but_never_excludes() -> None:
    ev = evaluator(carbon_policy("audit"), carbon_data=(carbon("DE", 420),))
    v = by_rule(ev.verdicts(state("aws", "eu-central-1")))["carbon-cap"]
    assert v.verdict is Verdict.FAIL and v.mode is RuleMode.AUDIT and not v.excludes  # type: ignore[attr-defined]


def test_sovereignty_cannot_be_set_to_audit() -> None:
    with pytest.raises(ValueError, match="always enforce"):
        policy(
            constraints=[
                {
                    "id": "eu",
                    "mode": "audit",
                    "sovereignty": {"data_classes": ["x"], "jurisdictions": ["EU"]},
                }
            ]
        )


def test_every_rule_is_evaluated_so_all_reasons_are_listed() -> None:
    ev = evaluator(carbon_policy(), carbon_data=(carbon("US-MIDA-PJM", 500),))
    offer = state("aws", "us-east-1", "spot", accelerator="L4", accelerator_count=1, stale=True)
    w_none = evaluator(
        carbon_policy(),
        workload(interruption_tolerance="none"),
        carbon_data=(carbon("US-MIDA-PJM", 500),),
    )
    failing = {v.rule_id for v in w_none.verdicts(offer) if v.excludes}
    assert failing == {
        "eu-residency",
        "carbon-cap",
        WORKLOAD_GPU,
        WORKLOAD_INTERRUPTION,
        FRESH_PRICE,
    }
    assert len([v for v in ev.verdicts(offer) if v.excludes]) >= 4


def test_an_instance_with_fewer_gpus_than_a_replica_needs_fails() -> None:
    ev = evaluator(policy())
    v = by_rule(ev.verdicts(state("aws", "eu-central-1", accelerator_count=4)))[WORKLOAD_GPU]
    assert v.verdict is Verdict.FAIL and "4× H100 < 8 per replica" in v.reason  # type: ignore[attr-defined]


def test_an_unexpired_exception_exempts_a_rule_and_says_why() -> None:
    pol = policy(
        constraints=[
            {
                "id": "eu-residency",
                "sovereignty": {"data_classes": ["personal-eu"], "jurisdictions": ["EU"]},
            },
            {"id": "carbon-cap", "carbon": {"max_gco2_per_kwh": 300}},
        ],
        exceptions=[
            {
                "rule": "carbon-cap",
                "workloads": ["chat-api"],
                "reason": "pinned hardware (ML-2291)",
                "expires": date(2025, 9, 30),
            }
        ],
    )
    ev = evaluator(pol, carbon_data=(carbon("DE", 420),))
    v = by_rule(ev.verdicts(state("aws", "eu-central-1")))["carbon-cap"]
    assert v.verdict is Verdict.PASS and "exempt until 2025-09-30" in v.reason  # type: ignore[attr-defined]


def test_a_sovereignty_rule_cannot_have_exceptions() -> None:
    with pytest.raises(ValueError, match="cannot have exceptions"):
        policy(
            exceptions=[
                {
                    "rule": "eu-residency",
                    "workloads": ["chat-api"],
                    "reason": "please",
                    "expires": date(2030, 1, 1),
                }
            ]
        )


def test_latency_is_estimated_from_great_circle_distance() -> None:
    paris_frankfurt = estimate_rtt_ms(48.86, 2.35, 50.11, 8.68)
    paris_virginia = estimate_rtt_ms(48.86, 2.35, 39.04, -77.49)
    assert 8 < paris_frankfurt < 20 < 80 < paris_virginia < 130


def test_a_latency_rule_fails_a_far_region_from_the_named_users() -> None:
    pol = policy(
        constraints=[
            {
                "id": "eu-residency",
                "sovereignty": {"data_classes": ["personal-eu"], "jurisdictions": ["EU", "EEA"]},
            },
            {"id": "p95", "latency": {"p95_ms_max": 25, "from": ["paris"]}},
        ]
    )
    users = (UserLocation(name="paris", latitude=48.86, longitude=2.35, share=1.0),)
    ev = evaluator(pol, workload(user_locations=users))
    near = by_rule(ev.verdicts(state("aws", "eu-west-3")))["p95"]
    far = by_rule(ev.verdicts(state("aws", "eu-north-1")))["p95"]
    assert near.verdict is Verdict.PASS  # type: ignore[attr-defined]
    assert far.verdict is Verdict.FAIL and "from paris" in far.reason  # type: ignore[attr-defined]


def test_the_carbon_price_is_folded_into_the_effective_cost() -> None:
    pol = policy(objective={"carbon_price_usd_per_tonne": 100})
    ev = evaluator(pol, carbon_data=(carbon("DE", 400),))
    cost = ev.cost(state("aws", "eu-central-1"))
    assert cost is not None and cost.carbon_g_per_hour is not None
    # 8 H100 × 0.7 kW × PUE 1.15 × 400 g/kWh = 2,576 g/h → $0.2576/h at $100/t
    assert cost.carbon_g_per_hour == pytest.approx(2576)
    assert cost.effective == pytest.approx(80 + 0.2576)


@pytest.mark.parametrize("tolerance", ["low", "high"])
def test_spot_passes_for_a_tolerant_workload_when_the_policy_falls_back_to_on_demand(
    tolerance: str,
) -> None:
    pol = policy(capacity={"spot": {"fallback": "on_demand"}})
    ev = evaluator(pol, workload(interruption_tolerance=tolerance))
    v = by_rule(ev.verdicts(state("aws", "eu-central-1", "spot")))[WORKLOAD_INTERRUPTION]
    assert v.verdict is Verdict.PASS  # type: ignore[attr-defined]


def test_a_low_tolerance_workload_gets_no_spot_from_a_policy_without_on_demand_fallback() -> None:
    """`fallback: none` leaves a workload short of its spot replicas while spot capacity
    is gone: only a workload with interruption_tolerance high accepts that."""
    pol = policy(capacity={"spot": {"fallback": "none"}})
    ev = evaluator(pol, workload(interruption_tolerance="low"))
    v = by_rule(ev.verdicts(state("aws", "eu-central-1", "spot")))[WORKLOAD_INTERRUPTION]
    assert v.verdict is Verdict.FAIL and v.excludes  # type: ignore[attr-defined]
    assert "fallback: none" in v.reason and "low" in v.reason  # type: ignore[attr-defined]
    assert ev.spot_allowed()[0] is False
    on_demand = ev.verdicts(state("aws", "eu-central-1", "on-demand"))
    assert WORKLOAD_INTERRUPTION not in by_rule(on_demand)


def test_a_high_tolerance_workload_may_use_spot_without_on_demand_fallback() -> None:
    pol = policy(capacity={"spot": {"fallback": "none"}})
    ev = evaluator(pol, workload(interruption_tolerance="high"))
    v = by_rule(ev.verdicts(state("aws", "eu-central-1", "spot")))[WORKLOAD_INTERRUPTION]
    assert v.verdict is Verdict.PASS  # type: ignore[attr-defined]
    assert ev.spot_allowed()[0] is True
