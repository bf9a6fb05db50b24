"""Deciding: policies + snapshot + workloads → placements, solved at once, with reasons."""

from __future__ import annotations

from datetime import UTC, datetime

from arbiter.catalog import load_catalog
from arbiter.domain.decide import decide
from arbiter.domain.evaluation import PolicyBook
from arbiter.domain.market import Offer
from arbiter.domain.policy import Policy
from arbiter.domain.snapshot import MarketSnapshot, OfferState, ZoneCarbon
from arbiter.domain.workloads import GpuOption, Workload

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
CATALOG = load_catalog()


def offer(
    provider: str,
    region: str,
    price: float,
    market: str = "on-demand",
    accelerator: str = "H100",
    count: int = 8,
    **extra: object,
) -> OfferState:
    return OfferState(
        offer=Offer(
            provider=provider, region=region, instance_type=f"{accelerator}x{count}", market=market
        ),
        usd_per_hour=price,
        seen_at=NOW,
        accelerator=accelerator,
        accelerator_count=count,
        **extra,  # type: ignore[arg-type]
    )


def eu_policy(**body: object) -> Policy:
    base: dict[str, object] = {
        "apiVersion": "arbiter/v1",
        "kind": "PlacementPolicy",
        "metadata": {"name": "eu"},
        "constraints": [
            {
                "id": "eu-residency",
                "sovereignty": {"data_classes": ["personal-eu"], "jurisdictions": ["EU", "EEA"]},
            }
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
    }
    fields.update(changes)
    return Workload(**fields)  # type: ignore[arg-type]


def snapshot(*offers: OfferState, carbon: tuple[ZoneCarbon, ...] = ()) -> MarketSnapshot:
    return MarketSnapshot.make(taken_at=NOW, offers=offers, carbon=carbon)


def placed(decision: object) -> dict[str, int]:
    return {p.offer.region_key: p.replicas for p in decision.placements}  # type: ignore[attr-defined]


def test_the_cheapest_compliant_region_wins_even_when_a_non_compliant_one_is_cheaper() -> None:
    snap = snapshot(
        offer("aws", "us-east-1", 40),
        offer("aws", "eu-central-1", 90),
        offer("gcp", "europe-west4", 80),
    )
    (d,) = decide([chat()], PolicyBook((eu_policy(),)), snap, CATALOG, NOW).decisions
    assert placed(d) == {"gcp:europe-west4": 2}
    assert d.usd_per_hour == 160


def test_spread_puts_replicas_in_two_regions() -> None:
    pol = eu_policy(redundancy={"spread": {"across": "region", "min_distinct": 2}})
    snap = snapshot(offer("aws", "eu-central-1", 90), offer("gcp", "europe-west4", 80))
    (d,) = decide([chat()], PolicyBook((pol,)), snap, CATALOG, NOW).decisions
    assert placed(d) == {"aws:eu-central-1": 1, "gcp:europe-west4": 1}


def test_a_workload_with_no_compliant_offer_is_explained_rule_by_rule() -> None:
    snap = snapshot(offer("aws", "us-east-1", 40), offer("aws", "us-west-2", 45))
    (d,) = decide([chat()], PolicyBook((eu_policy(),)), snap, CATALOG, NOW).decisions
    assert not d.placed
    assert d.unplaceable_reasons[0].startswith("eu-residency excludes 2 of 2 offers")


def test_a_data_class_no_policy_covers_is_never_placed() -> None:
    snap = snapshot(offer("aws", "eu-central-1", 90))
    (d,) = decide(
        [chat(data_class="secret")], PolicyBook((eu_policy(),)), snap, CATALOG, NOW
    ).decisions
    assert not d.placed and "data-class-covered" in d.unplaceable_reasons[0]


def test_a_stale_price_is_never_used() -> None:
    snap = snapshot(offer("aws", "eu-central-1", 10, stale=True), offer("gcp", "europe-west4", 80))
    (d,) = decide([chat()], PolicyBook((eu_policy(),)), snap, CATALOG, NOW).decisions
    assert placed(d) == {"gcp:europe-west4": 2}


def test_throughput_per_dollar_decides_between_gpu_models() -> None:
    w = chat(
        gpus_per_replica=1,
        replicas=None,
        required_tokens_per_second=5000,
        gpu_options=(
            GpuOption(model="H100", tokens_per_second=2500),
            GpuOption(model="A100-80GB", tokens_per_second=1000),
        ),
    )
    # H100 at 2.1× the A100's price with 2.5× its throughput: the H100 wins
    snap = snapshot(
        offer("aws", "eu-central-1", 2.1, accelerator="H100", count=1),
        offer("aws", "eu-central-1", 1.0, accelerator="A100-80GB", count=1),
    )
    (d,) = decide([w], PolicyBook((eu_policy(),)), snap, CATALOG, NOW).decisions
    assert {p.offer.instance_type: p.replicas for p in d.placements} == {"H100x1": 2}


def test_min_replicas_gives_a_throughput_target_that_many_replicas() -> None:
    """One H100 alone reaches 2,000 tokens/s; the policy asks for 3 replicas."""
    w = chat(gpus_per_replica=1, replicas=None, required_tokens_per_second=2000)
    snap = snapshot(offer("aws", "eu-central-1", 2.0, count=1))
    (alone,) = decide([w], PolicyBook((eu_policy(),)), snap, CATALOG, NOW).decisions
    assert placed(alone) == {"aws:eu-central-1": 1}
    pol = eu_policy(redundancy={"min_replicas": 3})
    (d,) = decide([w], PolicyBook((pol,)), snap, CATALOG, NOW).decisions
    assert placed(d) == {"aws:eu-central-1": 3}
    assert d.usd_per_hour == 6.0


def test_carbon_is_reported_in_grams_per_hour() -> None:
    snap = snapshot(
        offer("gcp", "europe-west4", 80),
        carbon=(
            ZoneCarbon(zone="NL", gco2_per_kwh=300, basis="lifecycle", valid_at=NOW, source="em"),
        ),
    )
    (d,) = decide([chat()], PolicyBook((eu_policy(),)), snap, CATALOG, NOW).decisions
    assert d.carbon_g_per_hour is not None and d.carbon_g_per_hour > 0


def test_a_budget_reason_names_the_policy_that_sets_the_budget() -> None:
    pol = eu_policy(budget={"max_usd_per_hour": 100})
    snap = snapshot(offer("gcp", "europe-west4", 80))
    (d,) = decide([chat()], PolicyBook((pol,)), snap, CATALOG, NOW).decisions
    assert placed(d) == {"gcp:europe-west4": 1}
    assert d.unplaceable_reasons == ("budget of policy 'eu' exceeded: 1 of 2 replicas placed",)


# ------------------------------------------------- capacity our own replicas hold


def test_a_workload_using_up_an_offers_remaining_capacity_stays_there_while_cheapest() -> None:
    """A remaining quota of 0 GPUs says no *more* can be had: chat's own 16 GPUs are
    already on europe-west4, and keeping them there needs none."""
    west4 = offer("gcp", "europe-west4", 80, capacity_gpus=0)
    snap = snapshot(west4, offer("aws", "eu-central-1", 90))
    (d,) = decide(
        [chat()],
        PolicyBook((eu_policy(),)),
        snap,
        CATALOG,
        NOW,
        held_gpus={west4.offer.key: 16},
    ).decisions
    assert placed(d) == {"gcp:europe-west4": 2}
    assert d.unplaceable_reasons == ()


def test_gpus_given_back_to_an_offer_are_shared_by_every_workload_and_count_once() -> None:
    """chat's 16 GPUs on europe-west4 come back once: with 8 more free, 24 GPUs hold
    three of the four 8-GPU replicas asked for there, whichever workload they belong to."""
    west4 = offer("gcp", "europe-west4", 80, capacity_gpus=8)
    snap = snapshot(west4, offer("aws", "eu-central-1", 90))
    workloads = [chat(), chat(name="batch")]
    outcome = decide(
        workloads,
        PolicyBook((eu_policy(),)),
        snap,
        CATALOG,
        NOW,
        held_gpus={west4.offer.key: 16},
    )
    on_west4 = sum(placed(d).get("gcp:europe-west4", 0) for d in outcome.decisions)
    on_aws = sum(placed(d).get("aws:eu-central-1", 0) for d in outcome.decisions)
    assert (on_west4, on_aws) == (3, 1)


def test_gpus_held_on_an_offer_of_unknown_capacity_change_nothing() -> None:
    west4 = offer("gcp", "europe-west4", 80)
    snap = snapshot(west4, offer("aws", "eu-central-1", 90))
    decided = [
        decide(
            [chat(replicas=3)], PolicyBook((eu_policy(),)), snap, CATALOG, NOW, held_gpus=held
        ).decisions[0]
        for held in ({}, {west4.offer.key: 16})
    ]
    assert placed(decided[0]) == placed(decided[1]) == {"gcp:europe-west4": 3}
