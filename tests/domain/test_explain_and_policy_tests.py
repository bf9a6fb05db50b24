"""Explanations, policy test cases and policy diffs: what a reviewer and an operator see."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from arbiter.catalog import load_catalog
from arbiter.domain.decide import decide
from arbiter.domain.decisions import Verdict
from arbiter.domain.evaluation import PLAUSIBLE_PRICE, PolicyBook, WorkloadEvaluator
from arbiter.domain.explain import RegionStatus, explain
from arbiter.domain.market import Offer
from arbiter.domain.policy import Policy
from arbiter.domain.policy_diff import EXIT_BLOCKING, EXIT_CHANGES, EXIT_NO_CHANGE, Kind, diff
from arbiter.domain.policy_tests import Case, run_case
from arbiter.domain.snapshot import MarketSnapshot, OfferState, ZoneCarbon
from arbiter.domain.workloads import GpuOption, UserLocation, Workload

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
CATALOG = load_catalog()


def offer(provider: str, region: str, price: float, market: str = "on-demand", **extra: object):
    fields: dict[str, object] = {"accelerator": "H100", "accelerator_count": 8}
    fields.update(extra)
    return OfferState(
        offer=Offer(
            provider=provider,
            region=region,
            instance_type=f"{fields['accelerator']}x{fields['accelerator_count']}",
            market=market,
        ),
        usd_per_hour=price,
        seen_at=NOW,
        **fields,  # type: ignore[arg-type]
    )


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
            {"id": "near-paris", "latency": {"p95_ms_max": 30}},
        ],
    }
    base.update(body)
    return Policy.model_validate(base)


def chat(**changes: object) -> Workload:
    fields: dict[str, object] = {
        "name": "chat",
        "data_class": "personal-eu",
        "gpus_per_replica": 8,
        "replicas": 2,
        "gpu_options": (GpuOption(model="H100", tokens_per_second=2500),),
        "user_locations": (UserLocation(name="paris", latitude=48.86, longitude=2.35, share=1),),
    }
    fields.update(changes)
    return Workload(**fields)  # type: ignore[arg-type]


MARKET = MarketSnapshot.make(
    taken_at=NOW,
    offers=(
        offer("aws", "eu-central-1", 90),
        offer("gcp", "europe-west4", 80),
        offer("gcp", "us-east4", 40),
        offer("gcp", "europe-north1", 70),
    ),
    carbon=(),
)
BOOK = PolicyBook((policy(),), rule_origins={"eu-residency": "policies/eu.yaml:9"})


def explained(workloads=None, book=BOOK, snapshot=MARKET):  # type: ignore[no-untyped-def]
    outcome = decide(workloads or [chat()], book, snapshot, CATALOG, NOW)
    return explain(outcome.evaluator("chat"), outcome.decision("chat"))


# ------------------------------------------------------------------- explanations


def test_an_excluded_region_lists_every_rule_that_excluded_it_with_its_origin() -> None:
    row = explained().row("gcp:us-east4")
    assert row is not None and row.status is RegionStatus.EXCLUDED
    rules = {e.rule_id: e for e in row.exclusions}
    assert set(rules) == {"eu-residency", "near-paris"}
    assert rules["eu-residency"].origin == "policies/eu.yaml:9"
    assert "is in US" in rules["eu-residency"].reason


def test_placed_regions_come_first_then_eligible_by_rank_then_excluded() -> None:
    ex = explained()
    statuses = [r.status for r in ex.rows]
    assert statuses == sorted(statuses, key=[*RegionStatus].index)
    assert ex.row("gcp:europe-west4").status is RegionStatus.PLACED  # type: ignore[union-attr]
    assert ex.row("gcp:europe-west4").replicas == 2  # type: ignore[union-attr]
    # Hamina (Finland) is too far from Paris for 30 ms: excluded by latency alone
    north = ex.row("gcp:europe-north1")
    assert north is not None and [e.rule_id for e in north.exclusions] == ["near-paris"]
    frankfurt = ex.row("aws:eu-central-1")
    assert frankfurt is not None and frankfurt.status is RegionStatus.ELIGIBLE


def test_the_explanation_json_names_every_region_and_its_verdicts() -> None:
    body = explained().as_dict()
    assert {r["region"] for r in body["regions"]} == {o.offer.region_key for o in MARKET.offers}
    us = next(r for r in body["regions"] if r["region"] == "gcp:us-east4")
    assert us["status"] == "excluded" and us["excluded_by"][0]["rule"] == "eu-residency"


def test_an_implausibly_cheap_price_is_bad_data_never_a_bargain() -> None:
    snap = MarketSnapshot.make(
        taken_at=NOW,
        offers=(
            offer("aws", "eu-central-1", 90),
            offer("gcp", "europe-west4", 88),
            offer("azure", "westeurope", 95),
            offer("azure", "francecentral", 8),  # a machine price without its GPUs
        ),
        carbon=(),
    )
    ev = WorkloadEvaluator(chat(), BOOK.terms(chat()), snap, CATALOG, NOW)
    verdicts = {v.rule_id: v for v in ev.verdicts(snap.offers[3])}
    assert verdicts[PLAUSIBLE_PRICE].verdict is Verdict.ERROR
    ex = explained(snapshot=snap)
    assert ex.row("azure:francecentral").status is RegionStatus.EXCLUDED  # type: ignore[union-attr]


def test_a_replica_count_is_filled_with_the_gpu_that_costs_least_per_token() -> None:
    w = chat(
        gpus_per_replica=1,
        gpu_options=(
            GpuOption(model="H100", tokens_per_second=2500),
            GpuOption(model="A100-80GB", tokens_per_second=1000),
        ),
    )
    snap = MarketSnapshot.make(
        taken_at=NOW,
        offers=(
            offer("gcp", "europe-west4", 2.1, accelerator="H100", accelerator_count=1),
            offer("gcp", "europe-west4", 1.0, accelerator="A100-80GB", accelerator_count=1),
        ),
        carbon=(),
    )
    (d,) = decide([w], BOOK, snap, CATALOG, NOW).decisions
    assert {p.offer.instance_type for p in d.placements} == {"H100x1"}


# ------------------------------------------------------------------- policy tests


def case(**body: object) -> Case:
    return Case.model_validate({"name": "c", "workload": "chat", **body})


def run(c: Case, snapshot: MarketSnapshot = MARKET):  # type: ignore[no-untyped-def]
    return run_case(c, book=BOOK, workloads=[chat()], snapshot=snapshot, catalog=CATALOG)


def test_a_case_whose_expectation_holds_passes() -> None:
    result = run(case(expect={"placed": {"gcp:europe-west4": 2}, "jurisdictions": ["EU"]}))
    assert result.passed and not result.failures


def test_a_failing_case_says_expected_got_and_why_with_the_rule() -> None:
    result = run(case(expect={"placed": {"gcp:us-east4": 2}}))
    assert not result.passed
    assert result.failures == (
        "expected  gcp:us-east4 ×2",
        "got       gcp:europe-west4 ×2",
    )
    assert result.because[0].startswith("gcp:us-east4 excluded by eu-residency")
    assert "policies/eu.yaml:9" in result.because[0]


def test_a_market_patch_applies_before_deciding() -> None:
    cheaper = case(
        patch_snapshot={"aws:eu-central-1": {"price_factor": 0.5}},
        expect={"placed": {"aws:eu-central-1": 2}},
    )
    assert run(cheaper).passed


def test_a_patch_that_matches_nothing_is_an_error_not_a_vacuous_pass() -> None:
    result = run(case(patch_snapshot={"aws:eu-centrl-1": {"stale": True}}, expect={}))
    assert not result.passed and result.error and "matches no offer" in result.error


def test_an_unknown_workload_is_an_error_naming_the_known_ones() -> None:
    result = run(Case.model_validate({"name": "c", "workload": "chatt", "expect": {}}))
    assert result.error == "unknown workload 'chatt'; known: chat"


def test_a_workload_override_is_validated_like_the_file() -> None:
    result = run(case(override={"replicas": 0}, expect={}))
    assert result.error is not None and result.error.startswith("override replicas")


def test_stale_data_everywhere_makes_the_workload_unplaceable_with_the_reason() -> None:
    result = run(
        case(
            patch_snapshot={"*": {"stale": True}},
            expect={"unplaceable": True, "reason": "fresh-price"},
        )
    )
    assert result.passed, result.failures


def test_fresh_carbon_can_be_patched_in_by_region() -> None:
    carbon_book = PolicyBook(
        (policy(constraints=[*policy().model_dump()["constraints"][:1], _cap()]),)
    )
    c = case(
        patch_carbon={
            "gcp:europe-west4": {"gco2_per_kwh": 500},
            "aws:eu-central-1": {"gco2_per_kwh": 50},
        },
        expect={"placed": {"aws:eu-central-1": 2}},
    )
    result = run_case(c, book=carbon_book, workloads=[chat()], snapshot=MARKET, catalog=CATALOG)
    assert result.passed, (result.failures, result.because)


def _cap() -> dict[str, object]:
    return {"id": "clean", "carbon": {"max_gco2_per_kwh": 100}}


# ------------------------------------------------------------------- policy diff


def outcome(book: PolicyBook, snapshot: MarketSnapshot = MARKET):  # type: ignore[no-untyped-def]
    return decide([chat()], book, snapshot, CATALOG, NOW)


def test_an_unchanged_policy_diffs_to_no_change_exit_0() -> None:
    d = diff(BOOK.policies, BOOK.policies, [chat()], [chat()], outcome(BOOK), outcome(BOOK))
    assert d.exit_code == EXIT_NO_CHANGE and not d.rule_changes and not d.impacts


def test_a_rule_change_that_moves_a_workload_exits_2_and_says_why() -> None:
    head = PolicyBook(
        (
            policy(
                constraints=[
                    *policy().model_dump()["constraints"][:1],
                    {"id": "near-paris", "latency": {"p95_ms_max": 30}},
                    {
                        "id": "no-nl",
                        "sovereignty": {
                            "data_classes": ["personal-eu"],
                            "jurisdictions": ["EU"],
                            "exclude_regions": ["gcp:europe-west4"],
                        },
                    },
                ]
            ),
        )
    )
    d = diff(BOOK.policies, head.policies, [chat()], [chat()], outcome(BOOK), outcome(head))
    assert d.exit_code == EXIT_CHANGES
    (impact,) = d.impacts
    assert impact.kind is Kind.MOVED
    assert [line.region for line in impact.added] == ["aws:eu-central-1"]
    assert any("no-nl" in why and "excluded by name" in why for why in impact.because)
    assert [(c.change.value, c.subject) for c in d.rule_changes] == [("+", "eu/no-nl")]


def test_a_tightened_rule_that_leaves_a_workload_unplaceable_is_blocking_exit_3() -> None:
    tight = policy(
        constraints=[
            *policy().model_dump()["constraints"][:1],
            {"id": "near-paris", "latency": {"p95_ms_max": 5}},
        ]
    )
    d = diff(
        BOOK.policies, (tight,), [chat()], [chat()], outcome(BOOK), outcome(PolicyBook((tight,)))
    )
    assert d.exit_code == EXIT_BLOCKING
    assert d.impacts[0].kind is Kind.UNPLACEABLE
    (change,) = d.rule_changes
    assert change.subject == "eu/near-paris"
    assert [(f.path, f.before, f.after) for f in change.fields] == [
        ("latency.p95_ms_max", 30.0, 5.0)
    ]


@pytest.mark.parametrize("stale", [True, False])
def test_carbon_readings_are_patched_fresh_unless_said_stale(stale: bool) -> None:
    c = case(patch_carbon={"NL": {"gco2_per_kwh": 10, "stale": stale}}, expect={})
    result = run(c)
    assert result.passed
    from arbiter.domain.policy_tests import patch_snapshot

    snap = patch_snapshot(MARKET, {}, c.patch_carbon, CATALOG)
    (reading,) = snap.carbon
    assert reading == ZoneCarbon(
        zone="NL", gco2_per_kwh=10, basis="direct", valid_at=NOW, source="policy-test", stale=stale
    )
