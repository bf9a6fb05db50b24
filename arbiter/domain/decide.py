"""Decide: policies + snapshot + workloads → the cheapest compliant placement of every
replica of every workload, solved at once (capacity couples workloads), with the
reasons for every workload that cannot be placed.

Pure: ``now`` is an argument; nothing is read or written.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from arbiter.domain.accelerators import DEFAULT_POWER_KW, POWER_KW, PUE
from arbiter.domain.decisions import Decision, RuleVerdict, Verdict
from arbiter.domain.evaluation import PolicyBook, Terms, VerdictCache, WorkloadEvaluator
from arbiter.domain.market import Market
from arbiter.domain.regions import RegionCatalog
from arbiter.domain.snapshot import PLAUSIBLE_PRICE_FLOOR, MarketSnapshot
from arbiter.domain.solver import Problem, Solution, WorkloadDemand, solve
from arbiter.domain.workloads import Placement, Workload

_DECISION_NS = uuid.UUID("6f0f6a63-3f4e-4c39-9d8e-6a7c1e2f0b11")


@dataclass(frozen=True)
class Outcome:
    decisions: tuple[Decision, ...]
    solution: Solution
    columns: int
    evaluators: tuple[WorkloadEvaluator, ...] = ()
    """One per workload, in order: what :func:`arbiter.domain.explain.explain` reads."""

    def decision(self, workload: str) -> Decision:
        for d in self.decisions:
            if d.workload == workload:
                return d
        raise KeyError(workload)

    def evaluator(self, workload: str) -> WorkloadEvaluator:
        for e in self.evaluators:
            if e.workload.name == workload:
                return e
        raise KeyError(workload)


class _Offers:
    """The snapshot's offers as arrays, indexed once per decide() call."""

    def __init__(
        self,
        snapshot: MarketSnapshot,
        catalog: RegionCatalog,
        held_gpus: Mapping[str, float] | None = None,
    ):
        states = snapshot.offers
        self.states = states
        offers = [s.offer for s in states]
        region_keys = [o.region_key for o in offers]
        shapes = [(s.accelerator, s.accelerator_count, s.accelerator_memory_gib) for s in states]
        self.region_keys = sorted(set(region_keys))
        region_index = {k: i for i, k in enumerate(self.region_keys)}
        self.shapes = sorted(set(shapes), key=repr)
        shape_index = {k: i for i, k in enumerate(self.shapes)}
        provider_index = {p: i for i, p in enumerate(("aws", "gcp", "azure"))}
        n = len(states)
        self.region = np.fromiter((region_index[k] for k in region_keys), np.int64, count=n)
        self.shape = np.fromiter((shape_index[k] for k in shapes), np.int64, count=n)
        self.provider = np.fromiter(
            (provider_index[o.provider.value] for o in offers), np.int64, count=n
        )
        self.spot = np.fromiter((o.market is Market.SPOT for o in offers), bool, count=n)
        self.stale = np.fromiter((s.stale for s in states), bool, count=n)
        self.price = np.fromiter((s.usd_per_hour for s in states), float, count=n)
        self.bucket = np.fromiter(
            (2.0 if s.interruption_bucket is None else s.interruption_bucket for s in states),
            float,
            count=n,
        )
        self.capacity = np.fromiter(
            (np.inf if s.capacity_gpus is None else s.capacity_gpus for s in states),
            float,
            count=n,
        )
        if held_gpus:
            # A known capacity is what can still be obtained, our own replicas' GPUs
            # taken out (OfferState.capacity_gpus): they come back to their offer, once,
            # for every workload to share. Unknown (inf) stays unknown.
            self.capacity += np.fromiter(
                (held_gpus.get(o.key, 0.0) for o in offers), float, count=n
            )
        self.implausible = self._implausibly_cheap(snapshot)
        carbon = snapshot.carbon_by_zone()
        intensity = []
        for key in self.region_keys:
            provider, _, region_id = key.partition(":")
            region = catalog.get(provider, region_id)
            zc = carbon.get(region.grid_zone) if region else None
            intensity.append(np.nan if zc is None else zc.gco2_per_kwh)
        self.region_intensity = np.array(intensity, dtype=float)

    def _implausibly_cheap(self, snapshot: MarketSnapshot) -> np.ndarray:
        """:meth:`MarketSnapshot.implausibly_cheap` of every offer, at once."""
        medians = snapshot.gpu_hour_medians
        by_market = np.array(
            [
                [
                    medians.get((accel, market.value), np.nan) if accel and count > 0 else np.nan
                    for market in (Market.ON_DEMAND, Market.SPOT)
                ]
                for accel, count, _ in self.shapes
            ],
            dtype=float,
        ).reshape(len(self.shapes), 2)
        median = by_market[self.shape, self.spot.astype(np.int64)]
        count = np.array([count for _, count, _ in self.shapes], dtype=float)[self.shape]
        with np.errstate(divide="ignore", invalid="ignore"):
            per_gpu = self.price / count
            # NaN (no GPU, no median) compares false: plausible.
            cheap: np.ndarray = per_gpu < PLAUSIBLE_PRICE_FLOOR * median
        return cheap


@dataclass(frozen=True)
class _Columns:
    """The columns of one workload: the offers it may use, per replica there."""

    offer: np.ndarray
    cost: np.ndarray
    """Effective USD/h: price, carbon and interruption risk."""
    throughput: np.ndarray
    price: np.ndarray
    grams: np.ndarray
    """gCO2eq/h; NaN where the region's intensity is unknown."""

    def take(self, keep: np.ndarray) -> _Columns:
        return _Columns(
            self.offer[keep], self.cost[keep], self.throughput[keep], self.price[keep],
            self.grams[keep],
        )  # fmt: skip


def _excludes(verdicts: Sequence[RuleVerdict]) -> bool:
    return any(v.excludes for v in verdicts)


class _ColumnBuilder:
    """Builds each workload's columns. Workloads the rules judge alike and that are
    priced alike get the same columns, so they are built once per such group."""

    def __init__(self, offers: _Offers, *, reduce: bool):
        self.offers = offers
        self.reduce = reduce
        self._region_ok: dict[Any, np.ndarray] = {}
        self._type_ok: dict[Any, np.ndarray] = {}
        self._columns: dict[Any, _Columns] = {}
        shapes = offers.shapes
        self._power = np.array([POWER_KW.get(a or "", DEFAULT_POWER_KW) for a, _, _ in shapes])

    def columns(
        self, ev: WorkloadEvaluator, terms: Terms, spot_ok: bool, demand: WorkloadDemand
    ) -> _Columns:
        key = (
            ev.region_signature,
            ev.type_signature,
            spot_ok,
            terms.objective.carbon_price_usd_per_tonne,
            terms.objective.interruption_premium,
            demand.replicas is None,
            demand.min_distinct_regions,
            demand.min_distinct_providers,
            demand.max_share_per_provider,
            demand.max_spot_share,
        )
        cols = self._columns.get(key)
        if cols is None:
            cols = self._columns[key] = self._build(ev, terms, spot_ok)
            if self.reduce:
                cols = self._columns[key] = cols.take(_undominated(self.offers, cols, demand))
        return cols

    def _build(self, ev: WorkloadEvaluator, terms: Terms, spot_ok: bool) -> _Columns:
        offers, workload = self.offers, ev.workload
        region_ok = self._region_ok.get(ev.region_signature)
        if region_ok is None:
            region_ok = self._region_ok[ev.region_signature] = np.array(
                [
                    not _excludes(ev.region_verdicts(*key.split(":", 1)))
                    for key in offers.region_keys
                ],
                dtype=bool,
            )
        type_ok = self._type_ok.get(ev.type_signature)
        if type_ok is None:
            type_ok = self._type_ok[ev.type_signature] = np.array(
                [not _excludes(ev.type_verdicts(*shape)) for shape in offers.shapes], dtype=bool
            )
        mask = (
            region_ok[offers.region] & type_ok[offers.shape] & ~offers.stale & ~offers.implausible
        )
        if not spot_ok:
            mask &= ~offers.spot
        chosen = np.flatnonzero(mask)
        shape = offers.shape[chosen]
        per_instance = np.array(
            [ev.replicas_per_instance(count) for _, count, _ in offers.shapes], dtype=float
        )[shape]
        tps_by_shape = np.array(
            [
                (workload.throughput_on(accel) or 0.0) if accel else 0.0
                for accel, _, _ in offers.shapes
            ],
            dtype=float,
        )
        price = offers.price[chosen] / per_instance
        intensity = offers.region_intensity[offers.region[chosen]]
        grams = workload.gpus_per_replica * self._power[shape] * PUE * intensity
        carbon_usd = np.nan_to_num(grams) / 1e6 * terms.objective.carbon_price_usd_per_tonne
        spot = offers.spot[chosen]
        risk = np.where(
            spot, price * terms.objective.interruption_premium * offers.bucket[chosen] / 4, 0.0
        )
        tps = tps_by_shape[shape]
        effective = price + carbon_usd + risk
        if workload.replicas is not None and len(chosen):
            # A replica count fixes how many replicas, not which GPU: compare options by
            # cost per unit of throughput, priced as one replica on the fastest option.
            effective = effective * (tps.max() / np.maximum(tps, 1e-9))
        return _Columns(chosen, effective, tps, price, grams)


def _undominated(offers: _Offers, cols: _Columns, demand: WorkloadDemand) -> np.ndarray:
    """The columns to give the solver: all but those its dominance reduction would drop
    anyway (see :mod:`arbiter.domain.solver`, *Candidate reduction* 1), found from this
    workload's columns alone, so that it solves the same model from far fewer columns.

    A column is dropped only when its offer's capacity is unknown (unbounded) and an
    earlier column of its cell — same region, provider or market where the workload's
    rules tell them apart — also unbounded, serves at least as much throughput, in the
    order cheapest first, then fastest, then offer. The solver drops exactly those (its
    first such column has no earlier one, so it is kept here too); columns on offers
    with a known capacity are all kept, so what it counts per offer is unchanged, and so
    is everything it reads of a workload's columns before reducing them: whether it has
    any (per cell), its cheapest cost per unit (a dominating column is no dearer per
    unit) and, for a throughput target under share rules, its slowest column (kept).
    """
    n = len(cols.offer)
    sized = demand.min_throughput is not None
    unbounded = np.isinf(offers.capacity[cols.offer])
    cell = np.zeros(n, dtype=np.int64)
    if demand.min_distinct_regions > 1:
        cell = offers.region[cols.offer]
    if demand.min_distinct_providers > 1 or demand.max_share_per_provider < 1:
        cell = cell * 3 + offers.provider[cols.offer]
    if demand.max_spot_share < 1:
        cell = cell * 2 + offers.spot[cols.offer]
    at = np.flatnonzero(unbounded)
    keep: np.ndarray = ~unbounded
    if not sized:
        # Every column serves the same: the first cheapest of each cell is kept.
        if len(at) and not cell.any():
            keep[at[np.argmin(cols.cost[at])]] = True
        elif len(at):
            order = np.lexsort((at, cols.cost[at], cell[at]))
            group = cell[at][order]
            keep[at[order][np.r_[True, group[1:] != group[:-1]]]] = True
        return keep
    level = cols.throughput[at]
    order = np.lexsort((at, -level, cols.cost[at], cell[at]))
    at, level, group = at[order], level[order], cell[at][order]
    starts = np.r_[True, group[1:] != group[:-1]] if len(at) else np.zeros(0, dtype=bool)
    # Kept: faster than every earlier column of its cell (the first of each cell is).
    rank = np.unique(level, return_inverse=True)[1].reshape(-1).astype(np.int64)
    span = int(rank.max()) + 2 if len(rank) else 1
    value = (np.cumsum(starts) - 1) * span + rank
    best_before = np.r_[-1, np.maximum.accumulate(value)[:-1]] if len(at) else value
    best_before = np.where(starts, -1, best_before - (np.cumsum(starts) - 1) * span)
    keep[at[rank > best_before]] = True
    share = min(
        s if 0 < s < 1 else 1.0 for s in (demand.max_share_per_provider, demand.max_spot_share)
    )
    if share < 1:
        # The solver bounds such a workload's total by its slowest column.
        useful = unbounded & (cols.throughput > 0)
        if demand.max_spot_share <= 0:
            useful &= ~offers.spot[cols.offer]
        if useful.any():
            slowest = cols.throughput[useful].min()
            keep[np.flatnonzero(useful & (cols.throughput == slowest))[0]] = True
    return keep


def decide(
    workloads: Sequence[Workload],
    book: PolicyBook,
    snapshot: MarketSnapshot,
    catalog: RegionCatalog,
    now: datetime,
    *,
    policy_revision: str = "",
    time_limit: float = 30.0,
    mip_rel_gap: float = 1e-6,
    mip_abs_gap: float = 0.01,
    reduce: bool = True,
    held_gpus: Mapping[str, float] | None = None,
) -> Outcome:
    """Decide every workload at once. The stopping gap is absolute by default (within
    $0.01/h of the proven optimum): a gap relative to the whole fleet's cost would let
    a small workload sit on a dearer offer within the slack, and move back and forth
    between runs on unchanged inputs; a tight relative gap alone would make large
    fleets run to the time limit.

    ``reduce=False`` gives the solver every compliant column instead of leaving out
    those its own reduction drops (see :func:`_undominated`): the same decisions,
    slower.

    ``held_gpus``: per offer key, the GPUs arbiter's own replicas hold there now
    (:func:`arbiter.domain.fleet.gpus_held`: the fleet's placements and the
    migrations under way). An offer's known capacity counts only what can still be
    obtained, with those GPUs already taken out; they are added back, so a workload
    keeps its replicas where they run when that is still best, and capacity a workload
    may leave counts once, shared by every workload. Without it (policy tests, policy
    diff, a snapshot file) every known capacity is taken as free for the whole
    placement."""
    offers = _Offers(snapshot, catalog, held_gpus)
    builder = _ColumnBuilder(offers, reduce=reduce)
    demands: list[WorkloadDemand] = []
    columns: list[_Columns] = []
    budget_names: list[str] = []
    budgets: list[float] = []
    evaluators: list[WorkloadEvaluator] = []
    shared = VerdictCache()

    for workload in workloads:
        terms = book.terms(workload)
        ev = WorkloadEvaluator(workload, terms, snapshot, catalog, now, shared=shared)
        evaluators.append(ev)
        spot_ok, _ = ev.spot_allowed()
        r = terms.redundancy
        budget_group = None
        if terms.budget is not None:
            name, budget = terms.budget
            if name not in budget_names:
                budget_names.append(name)
                budgets.append(budget.max_usd_per_hour)
            budget_group = budget_names.index(name)
        replicas = workload.replicas
        if replicas is not None and r.min_replicas is not None:
            replicas = max(replicas, r.min_replicas)
        demand = WorkloadDemand(
            name=workload.name,
            replicas=replicas,
            min_throughput=workload.required_tokens_per_second,
            gpus_per_replica=workload.gpus_per_replica,
            min_distinct_regions=(
                r.spread.min_distinct if r.spread and r.spread.across == "region" else 1
            ),
            min_distinct_providers=(
                r.spread.min_distinct if r.spread and r.spread.across == "provider" else 1
            ),
            max_share_per_provider=r.max_share_per_provider or 1.0,
            max_spot_share=terms.spot.max_share if spot_ok else 0.0,
            budget_group=budget_group,
            # A replica count took min_replicas above; a throughput target keeps it here.
            min_replicas=(
                r.min_replicas or 1 if workload.required_tokens_per_second is not None else 1
            ),
        )
        demands.append(demand)
        columns.append(builder.columns(ev, terms, spot_ok, demand))

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    counts = np.array([len(c.offer) for c in columns], dtype=np.int64)
    problem = Problem(
        workloads=demands,
        col_workload=np.repeat(np.arange(len(columns), dtype=np.int64), counts),
        col_offer=cat([c.offer for c in columns], np.int64),
        col_cost=cat([c.cost for c in columns], float),
        col_throughput=cat([c.throughput for c in columns], float),
        offer_region=offers.region,
        offer_provider=offers.provider,
        offer_spot=offers.spot,
        offer_capacity_gpus=offers.capacity,
        budgets=budgets,
    )
    solution = solve(
        problem, time_limit=time_limit, mip_rel_gap=mip_rel_gap, mip_abs_gap=mip_abs_gap
    )
    price_all = cat([c.price for c in columns], float)
    grams_all = cat([c.grams for c in columns], float)
    # The placed columns of workload w: used[bounds[w]:bounds[w + 1]] (columns are in
    # workload order).
    used = np.flatnonzero(solution.replicas > 0)
    bounds = np.searchsorted(problem.col_workload[used], np.arange(len(columns) + 1))
    name_prefix, name_suffix = f"{snapshot.id}/", f"/{now.isoformat()}"

    decisions = []
    for index, workload in enumerate(workloads):
        in_w = used[bounds[index] : bounds[index + 1]]
        placements = tuple(
            Placement(
                workload=workload.name,
                offer=offers.states[int(problem.col_offer[c])].offer,
                replicas=int(solution.replicas[c]),
            )
            for c in in_w
        )
        status = solution.workloads[index]
        reasons: tuple[str, ...] = tuple(
            _BUDGET_GROUP.sub(lambda m: f"budget of policy {budget_names[int(m[1])]!r}", r)
            for r in status.reasons
        )
        if not placements:
            reasons = reasons or ("not placed",)
            if counts[index] == 0:
                reasons = _exclusion_summary(evaluators[index])
        usd = float(np.sum(price_all[in_w] * solution.replicas[in_w]))
        grams = grams_all[in_w] * solution.replicas[in_w]
        carbon = None if np.isnan(grams).any() else float(np.sum(grams))
        decisions.append(
            Decision(
                id=str(uuid.uuid5(_DECISION_NS, name_prefix + workload.name + name_suffix)),
                workload=workload.name,
                decided_at=now,
                snapshot_id=snapshot.id,
                policy_revision=policy_revision,
                placements=placements,
                usd_per_hour=round(usd, 6),
                carbon_g_per_hour=carbon,
                unplaceable_reasons=reasons,
            )
        )
    return Outcome(
        decisions=tuple(decisions),
        solution=solution,
        columns=len(problem.col_cost),
        evaluators=tuple(evaluators),
    )


_BUDGET_GROUP = re.compile(r"\bbudget group (\d+)\b")
"""The solver numbers budgets; a reason names the policy that sets the budget."""


def _exclusion_summary(ev: WorkloadEvaluator) -> tuple[str, ...]:
    """Why no offer is eligible: each excluding rule with the number of offers it excludes
    and one example reason, most excluding first."""
    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for state in ev.snapshot.offers:
        for v in ev.verdicts(state):
            if v.excludes:
                counts[v.rule_id] += 1
                example.setdefault(v.rule_id, v.reason)
    if not counts:
        return ("the snapshot has no offers",)
    total = len(ev.snapshot.offers)
    return tuple(
        f"{rule} excludes {n} of {total} offers (e.g. {example[rule]})"
        + (" [error: data missing or stale]" if _is_error(ev, rule) else "")
        for rule, n in counts.most_common()
    )


def _is_error(ev: WorkloadEvaluator, rule: str) -> bool:
    for state in ev.snapshot.offers[:200]:
        for v in ev.verdicts(state):
            if v.rule_id == rule and v.excludes:
                return v.verdict is Verdict.ERROR
    return False
