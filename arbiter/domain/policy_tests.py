"""Policy tests: cases written next to the policies, run against a frozen market snapshot.

A test file (``policies/*.test.yaml``) names a snapshot file (exported with ``arbiter
snapshot export``) and the workloads, then lists cases. Each case may change the
workload (``override``), the market (``patch_snapshot``, ``patch_carbon``) or the time
(``at``), decides every workload at once exactly as the daemon does, and checks what
it expects of one workload::

    policy: eu-personal-data
    snapshot: fixtures/market-replay.json
    workloads: [../workloads]
    cases:
      - name: never leaves the EU even when the US is far cheaper
        workload: eu-chat-api
        patch_snapshot: {"aws:us-*": {price_factor: 0.1}}
        expect:
          placed_only_in: ["*:eu*", "azure:*europe*", "gcp:europe-*"]
          excluded: {aws:us-east-1: [eu-residency]}

A failing case says what was expected, what was got and *why*, from the same
explanation ``arbiter explain`` prints. Pure: the shell reads the files.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, ValidationError

from arbiter.domain.decide import Outcome, decide
from arbiter.domain.evaluation import PolicyBook
from arbiter.domain.explain import Explanation, RegionRow, RegionStatus, explain
from arbiter.domain.market import CarbonBasis, Market
from arbiter.domain.regions import RegionCatalog
from arbiter.domain.snapshot import MarketSnapshot, OfferState, ZoneCarbon
from arbiter.domain.values import Finite, UtcDatetime, Value
from arbiter.domain.workloads import Slug, Workload

NonNegative = Annotated[Finite, Field(ge=0)]


class OfferPatch(Value):
    """Changes to every offer whose region matches the key (``provider:region`` glob),
    narrowed by ``market``, ``accelerator`` and ``instance_type`` when given."""

    market: Market | None = None
    accelerator: str | None = None
    instance_type: str | None = None
    usd_per_hour: NonNegative | None = None
    """Set the price of each matching instance (USD/h)."""
    price_factor: Annotated[Finite, Field(gt=0)] | None = None
    """Multiply the price of each matching instance."""
    stale: bool | None = None
    capacity_gpus: NonNegative | None = None
    remove: bool = False
    """Drop the matching offers (the market no longer has them)."""


class CarbonPatch(Value):
    """A carbon reading for a grid zone (key: zone, or ``provider:region`` for its zone)."""

    gco2_per_kwh: NonNegative
    basis: CarbonBasis = CarbonBasis.DIRECT
    stale: bool = False


class Expectation(Value):
    """What must hold of the case's workload; every given check is applied."""

    placed: dict[str, Annotated[int, Field(ge=1)]] | None = None
    """Exactly these replicas per ``provider:region``."""
    placed_only_in: tuple[str, ...] | None = None
    """Every placed region matches one of these globs."""
    never_in: tuple[str, ...] | None = None
    """No placed region matches any of these globs."""
    jurisdictions: tuple[str, ...] | None = None
    """Every placed region is in one of these countries or groups (region catalog)."""
    excluded: dict[str, tuple[str, ...]] | None = None
    """These regions are excluded, each by (at least) the listed rule ids."""
    unplaceable: bool | None = None
    """True: the workload is not fully placed. False: every replica is placed."""
    reason: str | None = None
    """Text that one of the unplaceable reasons contains."""
    max_usd_per_hour: NonNegative | None = None
    min_distinct_regions: Annotated[int, Field(ge=1)] | None = None
    max_spot_replicas: Annotated[int, Field(ge=0)] | None = None


class Case(Value):
    name: Annotated[str, Field(min_length=1)]
    workload: Slug
    override: dict[str, Any] = Field(default_factory=dict)
    """Workload fields to change for this case, e.g. ``{replicas: 4}``."""
    patch_snapshot: dict[str, OfferPatch] = Field(default_factory=dict)
    patch_carbon: dict[str, CarbonPatch] = Field(default_factory=dict)
    at: UtcDatetime | None = None
    """Decide as of this time (exception expiry); default: the snapshot's time."""
    expect: Expectation


class PolicyTestFile(Value):
    policy: str | None = None
    """The policy under test: it must be among the loaded policies."""
    snapshot: Annotated[str, Field(min_length=1)]
    """Snapshot file, relative to the test file."""
    workloads: tuple[str, ...] = ("../workloads",)
    """Workload files or directories, relative to the test file."""
    cases: Annotated[tuple[Case, ...], Field(min_length=1)]


@dataclass(frozen=True)
class CaseResult:
    name: str
    passed: bool
    failures: tuple[str, ...] = ()
    """``expected …`` / ``got …`` lines, one pair per failed check."""
    because: tuple[str, ...] = ()
    error: str | None = None
    """The case could not run (unknown workload, a patch that matches nothing, …)."""


class CaseError(ValueError):
    """A case that cannot be run as written."""


# ------------------------------------------------------------------------ patching


def _matches(region_key: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(region_key, pattern)


def _patch_offer(state: OfferState, patch: OfferPatch) -> OfferState | None:
    if patch.remove:
        return None
    update: dict[str, Any] = {}
    if patch.usd_per_hour is not None:
        update["usd_per_hour"] = patch.usd_per_hour
    if patch.price_factor is not None:
        update["usd_per_hour"] = update.get("usd_per_hour", state.usd_per_hour) * (
            patch.price_factor
        )
    if patch.stale is not None:
        update["stale"] = patch.stale
    if patch.capacity_gpus is not None:
        update["capacity_gpus"] = patch.capacity_gpus
    return state.model_copy(update=update)


def _selects(state: OfferState, patch: OfferPatch) -> bool:
    return (
        (patch.market is None or state.offer.market is patch.market)
        and (patch.accelerator is None or state.accelerator == patch.accelerator)
        and (patch.instance_type is None or state.offer.instance_type == patch.instance_type)
    )


def patch_snapshot(
    snapshot: MarketSnapshot,
    offers: Mapping[str, OfferPatch],
    carbon: Mapping[str, CarbonPatch],
    catalog: RegionCatalog,
) -> MarketSnapshot:
    """The snapshot with the case's changes; a patch that matches nothing is an error
    (a typo would otherwise make a test pass vacuously)."""
    if not offers and not carbon:
        return snapshot
    states: list[OfferState] = []
    hits: Counter[str] = Counter()
    for state in snapshot.offers:
        current: OfferState | None = state
        for pattern, patch in offers.items():
            if (
                current is not None
                and _matches(state.offer.region_key, pattern)
                and _selects(current, patch)
            ):
                hits[pattern] += 1
                current = _patch_offer(current, patch)
        if current is not None:
            states.append(current)
    missed = [p for p in offers if not hits[p]]
    if missed:
        raise CaseError(f"patch_snapshot {missed[0]!r} matches no offer in the snapshot")

    readings = {c.zone: c for c in snapshot.carbon}
    for key, reading in carbon.items():
        zone = key
        if ":" in key:
            provider, _, region_id = key.partition(":")
            region = catalog.get(provider, region_id)
            if region is None:
                raise CaseError(f"patch_carbon {key!r}: region not in the catalog")
            zone = region.grid_zone
        readings[zone] = ZoneCarbon(
            zone=zone,
            gco2_per_kwh=reading.gco2_per_kwh,
            basis=reading.basis,
            valid_at=snapshot.taken_at,
            source="policy-test",
            stale=reading.stale,
        )
    return MarketSnapshot.make(
        taken_at=snapshot.taken_at,
        offers=tuple(states),
        carbon=tuple(sorted(readings.values(), key=lambda c: c.zone)),
    )


def _override(workload: Workload, fields: Mapping[str, Any]) -> Workload:
    if not fields:
        return workload
    try:
        return Workload.model_validate({**workload.model_dump(), **fields})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "override"
        raise CaseError(f"override {where}: {err['msg']}") from None


# ------------------------------------------------------------------------- checking


def _count(mapping: Mapping[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(mapping.items())) or "nothing"


def _why_not(row: RegionRow | None, region: str, placed_max: float | None) -> str:
    if row is None:
        return f"{region} has no offers in the snapshot"
    if row.status is RegionStatus.EXCLUDED:
        rules = "; ".join(
            f"{e.rule_id} ({e.reason}{', ' + e.origin if e.origin else ''})" for e in row.exclusions
        )
        return f"{region} excluded by {rules}"
    best = row.best
    assert best is not None
    cmp = f"; the dearest placed replica is ${placed_max:,.2f}/h" if placed_max else ""
    return (
        f"{region} eligible, ranked {row.rank}, cheapest ${best.effective_usd_per_hour:,.2f}/h "
        f"effective ({best.instance_type} {best.market}){cmp}"
    )


def _placed_max(ex: Explanation) -> float | None:
    costs = [line.effective_usd_per_hour for r in ex.rows for line in r.placed]
    return max(costs) if costs else None


def check(
    expect: Expectation, ex: Explanation, catalog: RegionCatalog
) -> tuple[list[str], list[str]]:
    """Failed checks as ``expected``/``got`` lines, and the reasons behind them."""
    d = ex.decision
    got: Counter[str] = Counter()
    for p in d.placements:
        got[p.offer.region_key] += p.replicas
    failures: list[str] = []
    because: list[str] = []
    dearest = _placed_max(ex)

    def fail(expected: str, actual: str) -> None:
        failures.extend([f"expected  {expected}", f"got       {actual}"])

    if expect.placed is not None and dict(got) != expect.placed:
        fail(_count(expect.placed), _count(got))
        for region, n in sorted(expect.placed.items()):
            if got.get(region, 0) < n:
                because.append(_why_not(ex.row(region), region, dearest))
        because.extend(f"unplaced: {r}" for r in d.unplaceable_reasons)
    if expect.placed_only_in is not None:
        outside = sorted(r for r in got if not any(_matches(r, g) for g in expect.placed_only_in))
        if outside:
            fail(f"placed only in {', '.join(expect.placed_only_in)}", _count(got))
    if expect.never_in is not None:
        inside = sorted(r for r in got if any(_matches(r, g) for g in expect.never_in))
        if inside:
            fail(f"never in {', '.join(expect.never_in)}", _count(got))
    if expect.jurisdictions is not None:
        allowed = set(expect.jurisdictions)
        outside = []
        for key in sorted(got):
            provider, _, region_id = key.partition(":")
            where = catalog.get(provider, region_id)
            if where is None or where.jurisdictions.isdisjoint(allowed):
                outside.append(f"{key} ({where.country if where else 'unknown'})")
        if outside:
            fail(f"placed only in {', '.join(expect.jurisdictions)}", ", ".join(outside))
    for region, rules in sorted((expect.excluded or {}).items()):
        row = ex.row(region)
        if row is None:
            fail(f"{region} excluded", f"{region} has no offers in the snapshot")
            continue
        by = {e.rule_id for e in row.exclusions}
        if row.status is not RegionStatus.EXCLUDED:
            fail(f"{region} excluded by {', '.join(rules) or 'any rule'}", f"{row.status.value}")
        elif not set(rules) <= by:
            fail(
                f"{region} excluded by {', '.join(rules)}",
                f"excluded by {', '.join(sorted(by))}",
            )
    if expect.unplaceable is not None:
        is_unplaceable = bool(d.unplaceable_reasons)
        if is_unplaceable != expect.unplaceable:
            fail(
                "unplaceable" if expect.unplaceable else "every replica placed",
                "; ".join(d.unplaceable_reasons) if is_unplaceable else _count(got),
            )
    if expect.reason is not None and not any(expect.reason in r for r in d.unplaceable_reasons):
        fail(
            f"a reason containing {expect.reason!r}",
            "; ".join(d.unplaceable_reasons) or "no unplaceable reason",
        )
    if expect.max_usd_per_hour is not None and d.usd_per_hour > expect.max_usd_per_hour + 1e-9:
        fail(f"≤ ${expect.max_usd_per_hour:,.2f}/h", f"${d.usd_per_hour:,.2f}/h")
    if expect.min_distinct_regions is not None and len(got) < expect.min_distinct_regions:
        fail(f"≥ {expect.min_distinct_regions} distinct regions", f"{len(got)}: {_count(got)}")
    if expect.max_spot_replicas is not None:
        spot = sum(p.replicas for p in d.placements if p.offer.market is Market.SPOT)
        if spot > expect.max_spot_replicas:
            fail(f"≤ {expect.max_spot_replicas} spot replicas", f"{spot}")
    return failures, because


# -------------------------------------------------------------------------- running


def run_case(
    case: Case,
    *,
    book: PolicyBook,
    workloads: Sequence[Workload],
    snapshot: MarketSnapshot,
    catalog: RegionCatalog,
    policy_revision: str = "",
) -> CaseResult:
    """Decide every workload on the case's market and check the case's workload."""
    try:
        names = [w.name for w in workloads]
        if case.workload not in names:
            raise CaseError(
                f"unknown workload {case.workload!r}; known: {', '.join(sorted(names)) or 'none'}"
            )
        chosen = [_override(w, case.override) if w.name == case.workload else w for w in workloads]
        market = patch_snapshot(snapshot, case.patch_snapshot, case.patch_carbon, catalog)
    except CaseError as exc:
        return CaseResult(case.name, False, error=str(exc))
    now: datetime = case.at or snapshot.taken_at
    outcome: Outcome = decide(chosen, book, market, catalog, now, policy_revision=policy_revision)
    ex = explain(outcome.evaluator(case.workload), outcome.decision(case.workload))
    failures, because = check(case.expect, ex, catalog)
    return CaseResult(case.name, not failures, tuple(failures), tuple(because))
