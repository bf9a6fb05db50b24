"""Decide: policies + snapshot + workloads → the cheapest compliant placement of every
replica of every workload, solved at once (capacity couples workloads), with the
reasons for every workload that cannot be placed.

Pure: ``now`` is an argument; nothing is read or written.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from arbiter.domain.accelerators import DEFAULT_POWER_KW, POWER_KW, PUE
from arbiter.domain.decisions import Decision, RuleVerdict, Verdict
from arbiter.domain.evaluation import PolicyBook, VerdictCache, WorkloadEvaluator
from arbiter.domain.market import Market
from arbiter.domain.regions import RegionCatalog
from arbiter.domain.snapshot import MarketSnapshot
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

    def __init__(self, snapshot: MarketSnapshot, catalog: RegionCatalog):
        states = snapshot.offers
        self.states = states
        self.region_keys = sorted({s.offer.region_key for s in states})
        region_index = {k: i for i, k in enumerate(self.region_keys)}
        self.shapes = sorted(
            {(s.accelerator, s.accelerator_count, s.accelerator_memory_gib) for s in states},
            key=repr,
        )
        shape_index = {k: i for i, k in enumerate(self.shapes)}
        providers = ("aws", "gcp", "azure")
        n = len(states)
        self.region = np.fromiter(
            (region_index[s.offer.region_key] for s in states), dtype=np.int64, count=n
        )
        self.shape = np.fromiter(
            (
                shape_index[(s.accelerator, s.accelerator_count, s.accelerator_memory_gib)]
                for s in states
            ),
            dtype=np.int64,
            count=n,
        )
        self.provider = np.fromiter(
            (providers.index(s.offer.provider.value) for s in states), dtype=np.int64, count=n
        )
        self.spot = np.fromiter(
            (s.offer.market is Market.SPOT for s in states), dtype=bool, count=n
        )
        self.stale = np.fromiter((s.stale for s in states), dtype=bool, count=n)
        self.implausible = np.fromiter(
            (snapshot.implausibly_cheap(s) is not None for s in states), dtype=bool, count=n
        )
        self.price = np.fromiter((s.usd_per_hour for s in states), dtype=float, count=n)
        self.bucket = np.fromiter(
            (2.0 if s.interruption_bucket is None else s.interruption_bucket for s in states),
            dtype=float,
            count=n,
        )
        self.capacity = np.fromiter(
            (np.inf if s.capacity_gpus is None else s.capacity_gpus for s in states),
            dtype=float,
            count=n,
        )
        carbon = snapshot.carbon_by_zone()
        intensity = []
        for key in self.region_keys:
            provider, _, region_id = key.partition(":")
            region = catalog.get(provider, region_id)
            zc = carbon.get(region.grid_zone) if region else None
            intensity.append(np.nan if zc is None else zc.gco2_per_kwh)
        self.region_intensity = np.array(intensity, dtype=float)


def _excludes(verdicts: Sequence[RuleVerdict]) -> bool:
    return any(v.excludes for v in verdicts)


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
) -> Outcome:
    """Decide every workload at once. The stopping gap is absolute by default (within
    $0.01/h of the proven optimum): a gap relative to the whole fleet's cost would let
    a small workload sit on a dearer offer within the slack, and move back and forth
    between runs on unchanged inputs; a tight relative gap alone would make large
    fleets run to the time limit."""
    offers = _Offers(snapshot, catalog)
    demands: list[WorkloadDemand] = []
    col_w: list[np.ndarray] = []
    col_o: list[np.ndarray] = []
    col_cost: list[np.ndarray] = []
    col_tps: list[np.ndarray] = []
    col_price: list[np.ndarray] = []
    col_grams: list[np.ndarray] = []
    budget_names: list[str] = []
    budgets: list[float] = []
    evaluators: list[WorkloadEvaluator] = []
    shared = VerdictCache()
    region_ok_by: dict[Any, np.ndarray] = {}
    type_ok_by: dict[Any, np.ndarray] = {}

    for index, workload in enumerate(workloads):
        terms = book.terms(workload)
        ev = WorkloadEvaluator(workload, terms, snapshot, catalog, now, shared=shared)
        evaluators.append(ev)
        region_ok = region_ok_by.get(ev.region_signature)
        if region_ok is None:
            region_ok = region_ok_by[ev.region_signature] = np.array(
                [
                    not _excludes(ev.region_verdicts(*key.split(":", 1)))
                    for key in offers.region_keys
                ],
                dtype=bool,
            )
        type_ok = type_ok_by.get(ev.type_signature)
        if type_ok is None:
            type_ok = type_ok_by[ev.type_signature] = np.array(
                [not _excludes(ev.type_verdicts(*shape)) for shape in offers.shapes], dtype=bool
            )
        spot_ok, _ = ev.spot_allowed()
        mask = (
            region_ok[offers.region] & type_ok[offers.shape] & ~offers.stale & ~offers.implausible
        )
        if not spot_ok:
            mask &= ~offers.spot
        chosen = np.flatnonzero(mask)
        per_instance = np.array(
            [ev.replicas_per_instance(count) for _, count, _ in offers.shapes], dtype=float
        )[offers.shape[chosen]]
        tps_by_shape = np.array(
            [
                (workload.throughput_on(accel) or 0.0) if accel else 0.0
                for accel, _, _ in offers.shapes
            ],
            dtype=float,
        )
        power = np.array(
            [POWER_KW.get(accel or "", DEFAULT_POWER_KW) for accel, _, _ in offers.shapes]
        )
        price = offers.price[chosen] / per_instance
        intensity = offers.region_intensity[offers.region[chosen]]
        grams = workload.gpus_per_replica * power[offers.shape[chosen]] * PUE * intensity
        carbon_usd = np.nan_to_num(grams) / 1e6 * terms.objective.carbon_price_usd_per_tonne
        risk = np.where(
            offers.spot[chosen],
            price * terms.objective.interruption_premium * offers.bucket[chosen] / 4,
            0.0,
        )
        tps = tps_by_shape[offers.shape[chosen]]
        effective = price + carbon_usd + risk
        if workload.replicas is not None and len(chosen):
            # A replica count fixes how many replicas, not which GPU: compare options by
            # cost per unit of throughput, priced as one replica on the fastest option.
            effective = effective * (tps.max() / np.maximum(tps, 1e-9))
        col_w.append(np.full(len(chosen), index, dtype=np.int64))
        col_o.append(chosen)
        col_cost.append(effective)
        col_tps.append(tps)
        col_price.append(price)
        col_grams.append(grams)

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
        demands.append(
            WorkloadDemand(
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
            )
        )

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    problem = Problem(
        workloads=demands,
        col_workload=cat(col_w, np.int64),
        col_offer=cat(col_o, np.int64),
        col_cost=cat(col_cost, float),
        col_throughput=cat(col_tps, float),
        offer_region=offers.region,
        offer_provider=offers.provider,
        offer_spot=offers.spot,
        offer_capacity_gpus=offers.capacity,
        budgets=budgets,
    )
    solution = solve(
        problem, time_limit=time_limit, mip_rel_gap=mip_rel_gap, mip_abs_gap=mip_abs_gap
    )
    price_all = cat(col_price, float)
    grams_all = cat(col_grams, float)

    decisions = []
    for index, workload in enumerate(workloads):
        in_w = np.flatnonzero((problem.col_workload == index) & (solution.replicas > 0))
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
            if not np.any(problem.col_workload == index):
                reasons = _exclusion_summary(evaluators[index])
        usd = float(np.sum(price_all[in_w] * solution.replicas[in_w]))
        grams = grams_all[in_w] * solution.replicas[in_w]
        carbon = None if np.isnan(grams).any() else float(np.sum(grams))
        decisions.append(
            Decision(
                id=str(
                    uuid.uuid5(_DECISION_NS, f"{snapshot.id}/{workload.name}/{now.isoformat()}")
                ),
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
