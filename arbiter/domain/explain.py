"""Why a workload is placed where it is, and why not anywhere else.

An :class:`Explanation` has one row per region of the snapshot: where replicas were
placed, the regions that were eligible but not chosen (ranked by their cheapest
effective cost), and every excluded region with *every* rule that excluded it (never
just the first), each citing the ``file:line`` that wrote the rule. Audit-mode rules
that failed are listed apart: they are reported, never enforced.

Pure: built from a decision and the evaluator that priced its candidates.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from arbiter.domain.decisions import Decision, RuleMode, RuleVerdict, Verdict
from arbiter.domain.evaluation import EXEMPT_PREFIX, WorkloadEvaluator
from arbiter.domain.snapshot import OfferState


class RegionStatus(StrEnum):
    PLACED = "placed"
    ELIGIBLE = "eligible"
    EXCLUDED = "excluded"


@dataclass(frozen=True)
class OfferLine:
    """One offer in a region: its instance type and market, price and effective cost of
    one replica, the replicas placed on it."""

    instance_type: str
    market: str
    usd_per_hour: float
    effective_usd_per_hour: float
    replicas: int = 0
    tokens_per_second: float = 0.0
    """One replica's throughput on this offer's GPU model."""

    @property
    def usd_per_million_tokens(self) -> float:
        """Effective cost per unit of work: what the solver compares."""
        if self.tokens_per_second <= 0:
            return float("inf")
        return self.effective_usd_per_hour / (self.tokens_per_second * 3600) * 1e6


@dataclass(frozen=True)
class Exclusion:
    """One rule that excluded some or all of a region's offers."""

    rule_id: str
    verdict: Verdict
    reason: str
    origin: str
    offers: int
    """How many of the region's offers this rule excluded."""


@dataclass(frozen=True)
class RegionRow:
    region: str
    """``provider:region``."""
    status: RegionStatus
    offers: int
    """Offers the snapshot has in this region."""
    placed: tuple[OfferLine, ...]
    best: OfferLine | None
    """The cheapest eligible offer by effective cost (None when none is eligible)."""
    rank: int | None
    """1 = cheapest eligible region, by ``best``."""
    exclusions: tuple[Exclusion, ...]
    """Every enforcing rule that excluded offers here; for an excluded region, why."""
    audit: tuple[Exclusion, ...]
    """Audit-mode rules that failed here: reported, not enforced."""
    exempt: tuple[Exclusion, ...] = ()
    """Rules that would have failed here but an exception in force exempts."""

    @property
    def replicas(self) -> int:
        return sum(line.replicas for line in self.placed)


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    policies: tuple[str, ...]
    rows: tuple[RegionRow, ...]
    """Placed regions first, then eligible by rank, then excluded by name."""

    def row(self, region: str) -> RegionRow | None:
        return next((r for r in self.rows if r.region == region), None)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``arbiter explain --output json`` (docs/cli.md)."""
        d = self.decision
        return {
            "workload": d.workload,
            "decision": d.id,
            "decided_at": d.decided_at.isoformat(),
            "snapshot": d.snapshot_id,
            "policy_revision": d.policy_revision,
            "policies": list(self.policies),
            "placed": d.placed,
            "usd_per_hour": d.usd_per_hour,
            "carbon_g_per_hour": d.carbon_g_per_hour,
            "unplaceable_reasons": list(d.unplaceable_reasons),
            "regions": [_row_dict(r) for r in self.rows],
        }


def _line_dict(line: OfferLine | None) -> dict[str, Any] | None:
    if line is None:
        return None
    return {
        "instance_type": line.instance_type,
        "market": line.market,
        "usd_per_hour": round(line.usd_per_hour, 6),
        "effective_usd_per_hour": round(line.effective_usd_per_hour, 6),
        "usd_per_million_tokens": round(line.usd_per_million_tokens, 6),
        "replicas": line.replicas,
    }


def _exclusion_dict(e: Exclusion) -> dict[str, Any]:
    return {
        "rule": e.rule_id,
        "verdict": e.verdict.value,
        "reason": e.reason,
        "origin": e.origin,
        "offers": e.offers,
    }


def _row_dict(row: RegionRow) -> dict[str, Any]:
    return {
        "region": row.region,
        "status": row.status.value,
        "offers": row.offers,
        "replicas": row.replicas,
        "placed": [_line_dict(p) for p in row.placed],
        "best": _line_dict(row.best),
        "rank": row.rank,
        "excluded_by": [_exclusion_dict(e) for e in row.exclusions],
        "audit": [_exclusion_dict(e) for e in row.audit],
        "exempt": [_exclusion_dict(e) for e in row.exempt],
    }


def _summarise(failures: list[RuleVerdict]) -> tuple[Exclusion, ...]:
    """One entry per rule: how many offers it hit and its first reason, in rule order."""
    first: dict[str, RuleVerdict] = {}
    counts: dict[str, int] = defaultdict(int)
    for v in failures:
        first.setdefault(v.rule_id, v)
        counts[v.rule_id] += 1
    return tuple(
        Exclusion(v.rule_id, v.verdict, v.reason, v.origin, counts[rule])
        for rule, v in first.items()
    )


def explain(evaluator: WorkloadEvaluator, decision: Decision) -> Explanation:
    """Every region of the evaluator's snapshot, judged for the decision's workload."""
    by_region: dict[str, list[OfferState]] = defaultdict(list)
    for state in evaluator.snapshot.offers:
        by_region[state.offer.region_key].append(state)
    placed_on = {p.offer: p.replicas for p in decision.placements}

    rows: list[RegionRow] = []
    for region, states in by_region.items():
        excluding: list[RuleVerdict] = []
        audit: list[RuleVerdict] = []
        exempt: list[RuleVerdict] = []
        eligible: list[OfferLine] = []
        placed: list[OfferLine] = []
        for state in states:
            verdicts = evaluator.verdicts(state)
            bad = [v for v in verdicts if v.excludes]
            excluding.extend(bad)
            audit.extend(
                v for v in verdicts if v.mode is RuleMode.AUDIT and v.verdict is not Verdict.PASS
            )
            exempt.extend(v for v in verdicts if v.reason.startswith(EXEMPT_PREFIX))
            cost = evaluator.cost(state)
            if bad or cost is None:
                continue
            line = OfferLine(
                state.offer.instance_type,
                state.offer.market.value,
                cost.usd_per_hour,
                cost.effective,
                placed_on.get(state.offer, 0),
                cost.tokens_per_second,
            )
            eligible.append(line)
            if line.replicas:
                placed.append(line)
        best = min(eligible, key=lambda line: line.usd_per_million_tokens, default=None)
        status = (
            RegionStatus.PLACED
            if placed
            else RegionStatus.ELIGIBLE
            if eligible
            else RegionStatus.EXCLUDED
        )
        rows.append(
            RegionRow(
                region=region,
                status=status,
                offers=len(states),
                placed=tuple(sorted(placed, key=lambda line: line.usd_per_million_tokens)),
                best=best,
                rank=None,
                exclusions=_summarise(excluding),
                audit=_summarise(audit),
                exempt=_summarise(exempt),
            )
        )

    ranked = sorted(
        (r for r in rows if r.best is not None),
        key=lambda r: (r.best.usd_per_million_tokens if r.best else 0.0, r.region),
    )
    rank = {r.region: i + 1 for i, r in enumerate(ranked)}
    order = {RegionStatus.PLACED: 0, RegionStatus.ELIGIBLE: 1, RegionStatus.EXCLUDED: 2}
    rows = [replace(r, rank=rank.get(r.region)) for r in rows]
    rows.sort(key=lambda r: (order[r.status], r.rank or 0, r.region))
    return Explanation(decision=decision, policies=evaluator.terms.policies, rows=tuple(rows))
