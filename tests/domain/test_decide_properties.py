"""Properties of decide() under an EU sovereignty policy, on random markets: offers in
EU and EEA regions, in non-EU regions (some named like EU ones: London, Zurich), in
regions the catalog does not know, some of them stale, some spot, some with little
capacity, and random spread, share, spot and budget rules.

Where a placement may go is judged here from the region's country alone (the EU
member states and the EEA), not from the catalog's jurisdiction groups.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from arbiter.catalog import load_catalog
from arbiter.domain.decide import Outcome, decide
from arbiter.domain.evaluation import PolicyBook
from arbiter.domain.market import Offer
from arbiter.domain.policy import Policy
from arbiter.domain.snapshot import MarketSnapshot, OfferState
from arbiter.domain.workloads import GpuOption, InterruptionTolerance, Workload

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
CATALOG = load_catalog()

EU_MEMBER_STATES = {
    *("AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE"),
    *("IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"),
}
EU_AND_EEA = frozenset({*EU_MEMBER_STATES, "IS", "LI", "NO"})
EU_REGIONS = (
    "aws:eu-central-1",
    "aws:eu-north-1",
    "aws:eu-west-1",
    "aws:eu-west-3",
    "gcp:europe-west1",
    "gcp:europe-west4",
    "gcp:europe-north1",
    "azure:westeurope",
    "azure:norwayeast",
    "azure:swedencentral",
)
NON_EU_REGIONS = (
    "aws:eu-west-2",
    "aws:eu-central-2",
    "aws:us-east-1",
    "gcp:europe-west2",
    "gcp:europe-west6",
    "gcp:us-central1",
    "azure:uksouth",
    "azure:switzerlandnorth",
    "azure:eastus",
)
UNKNOWN_REGIONS = ("aws:eu-west-9", "gcp:europe-west99", "azure:germanysouth")
GPUS = {"H100": 2500.0, "A100-80GB": 1000.0}


def region(key: str) -> tuple[str, str]:
    provider, _, region_id = key.partition(":")
    return provider, region_id


def may_hold_eu_personal_data(key: str) -> bool:
    known = CATALOG.get(*region(key))
    return known is not None and known.country in EU_AND_EEA


def test_the_regions_drawn_from_are_what_their_names_say() -> None:
    assert all(may_hold_eu_personal_data(k) for k in EU_REGIONS)
    assert not any(may_hold_eu_personal_data(k) for k in NON_EU_REGIONS)
    assert all(CATALOG.get(*region(k)) is None for k in UNKNOWN_REGIONS)


@st.composite
def offer_states(draw: st.DrawFn) -> OfferState:
    key = draw(st.sampled_from(EU_REGIONS + NON_EU_REGIONS + UNKNOWN_REGIONS))
    provider, region_id = region(key)
    accelerator = draw(st.sampled_from(sorted(GPUS)))
    count = draw(st.sampled_from([1, 8]))
    market = draw(st.sampled_from(["on-demand", "spot"]))
    return OfferState(
        offer=Offer(
            provider=provider,
            region=region_id,
            instance_type=f"{accelerator}x{count}",
            market=market,
        ),
        usd_per_hour=draw(st.integers(1, 40)) * count / 4,
        seen_at=NOW,
        stale=draw(st.booleans()),
        accelerator=accelerator,
        accelerator_count=count,
        capacity_gpus=draw(st.none() | st.integers(0, 16).map(float)),
        interruption_bucket=draw(st.none() | st.integers(0, 4).map(float)),
    )


snapshots = st.lists(offer_states(), min_size=6, max_size=24, unique_by=lambda s: s.offer.key).map(
    lambda offers: MarketSnapshot.make(taken_at=NOW, offers=tuple(offers), carbon=())
)


@st.composite
def eu_policies(draw: st.DrawFn) -> Policy:
    body: dict[str, object] = {
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
    redundancy: dict[str, object] = {}
    if draw(st.booleans()):
        redundancy["spread"] = {
            "across": draw(st.sampled_from(["region", "provider"])),
            "min_distinct": draw(st.integers(1, 3)),
        }
    if draw(st.booleans()):
        redundancy["max_share_per_provider"] = draw(st.sampled_from([0.5, 0.75]))
    if redundancy:
        body["redundancy"] = redundancy
    if draw(st.booleans()):
        body["capacity"] = {
            "spot": {
                "allowed": draw(st.booleans()),
                "max_share": draw(st.sampled_from([0.0, 0.5, 1.0])),
            }
        }
    if draw(st.booleans()):
        body["budget"] = {"max_usd_per_hour": draw(st.integers(5, 200))}
    return Policy.model_validate(body)


@st.composite
def workload_lists(draw: st.DrawFn) -> list[Workload]:
    workloads = []
    for i in range(draw(st.integers(1, 3))):
        by_throughput = draw(st.booleans())
        models = draw(st.lists(st.sampled_from(sorted(GPUS)), min_size=1, unique=True))
        workloads.append(
            Workload(
                name=f"chat-{i}",
                data_class="personal-eu",
                gpus_per_replica=draw(st.sampled_from([1, 8])),
                gpu_options=tuple(GpuOption(model=m, tokens_per_second=GPUS[m]) for m in models),
                replicas=None if by_throughput else draw(st.integers(1, 4)),
                required_tokens_per_second=(
                    float(draw(st.integers(1, 8)) * 1000) if by_throughput else None
                ),
                interruption_tolerance=draw(st.sampled_from(list(InterruptionTolerance))),
            )
        )
    return workloads


DECIDE = settings(
    max_examples=100,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def decided(workloads: list[Workload], policy: Policy, snapshot: MarketSnapshot) -> Outcome:
    outcome = decide(workloads, PolicyBook((policy,)), snapshot, CATALOG, NOW, time_limit=10.0)
    event("something placed" if any(d.placements for d in outcome.decisions) else "none placed")
    return outcome


def placed_offers(outcome: Outcome) -> list[Offer]:
    return [p.offer for d in outcome.decisions for p in d.placements]


@DECIDE
@given(workload_lists(), eu_policies(), snapshots)
def test_eu_personal_data_is_never_placed_outside_the_eu_and_eea(
    workloads: list[Workload], policy: Policy, snapshot: MarketSnapshot
) -> None:
    for offer in placed_offers(decided(workloads, policy, snapshot)):
        assert may_hold_eu_personal_data(offer.region_key), offer.region_key


@DECIDE
@given(workload_lists(), eu_policies(), snapshots)
def test_a_stale_offer_is_never_placed_on(
    workloads: list[Workload], policy: Policy, snapshot: MarketSnapshot
) -> None:
    stale = {s.offer.key for s in snapshot.offers if s.stale}
    for offer in placed_offers(decided(workloads, policy, snapshot)):
        assert offer.key not in stale


@DECIDE
@given(workload_lists(), eu_policies(), snapshots)
def test_a_region_the_catalog_does_not_know_is_never_placed_in(
    workloads: list[Workload], policy: Policy, snapshot: MarketSnapshot
) -> None:
    for offer in placed_offers(decided(workloads, policy, snapshot)):
        assert CATALOG.get(*region(offer.region_key)) is not None, offer.region_key


crowded_snapshots = st.lists(
    offer_states(), min_size=12, max_size=48, unique_by=lambda s: s.offer.key
).map(lambda offers: MarketSnapshot.make(taken_at=NOW, offers=tuple(offers), carbon=()))
"""Many offers per region, so that many columns are alike."""


@settings(DECIDE, max_examples=200)
@given(workload_lists(), eu_policies(), crowded_snapshots)
def test_leaving_out_the_columns_the_solver_would_drop_changes_no_decision(
    workloads: list[Workload], policy: Policy, snapshot: MarketSnapshot
) -> None:
    book = PolicyBook((policy,))
    reduced = decide(workloads, book, snapshot, CATALOG, NOW, time_limit=10.0)
    full = decide(workloads, book, snapshot, CATALOG, NOW, time_limit=10.0, reduce=False)
    event("columns left out" if reduced.columns < full.columns else "no column left out")
    assert reduced.decisions == full.decisions
    assert reduced.solution.workloads == full.solution.workloads
    assert reduced.solution.columns_after == full.solution.columns_after
    assert reduced.solution.total_cost == full.solution.total_cost


@settings(DECIDE, max_examples=50)
@given(workload_lists(), eu_policies(), snapshots, st.data())
def test_gpus_our_replicas_hold_count_as_that_much_more_known_capacity_on_their_offer(
    workloads: list[Workload], policy: Policy, snapshot: MarketSnapshot, data: st.DataObject
) -> None:
    """Giving back held GPUs is the market reporting them free: where capacity is known
    it rises by them, where unknown it stays unbounded."""
    held = {
        s.offer.key: float(data.draw(st.integers(0, 16), label=s.offer.key))
        for s in snapshot.offers
    }
    raised = MarketSnapshot.make(
        taken_at=NOW,
        offers=tuple(
            s
            if s.capacity_gpus is None
            else s.model_copy(update={"capacity_gpus": s.capacity_gpus + held[s.offer.key]})
            for s in snapshot.offers
        ),
        carbon=snapshot.carbon,
    )
    book = PolicyBook((policy,))
    given_back = decide(workloads, book, snapshot, CATALOG, NOW, time_limit=10.0, held_gpus=held)
    reported = decide(workloads, book, raised, CATALOG, NOW, time_limit=10.0)
    for a, b in zip(given_back.decisions, reported.decisions, strict=True):
        assert (a.placements, a.unplaceable_reasons) == (b.placements, b.unplaceable_reasons)
