"""The cheapest placement of every replica of every workload at once, as one MILP.

The caller has already applied the hard rules (sovereignty, accelerator, latency,
carbon) and priced what is left: a :class:`Problem` lists, per workload, the offers it
may use (one *column* per workload × offer) with the effective cost and throughput of
one replica there. :func:`solve` places all workloads together, because they compete
for the same capacity and budgets, and never places a replica on a column it was not
given.

The model (HiGHS, built in bulk from numpy arrays), solved lexicographically::

    minimise    (1) missing units, then (2) Σ cost_j·x_j
    x_j ∈ ℤ, 0 ≤ x_j ≤ ub_j                       replicas of workload w(j) on offer o(j)
    Σ_{j∈w} x_j + u_w = replicas_w                (replica-sized; u_w ∈ ℤ, 0..replicas_w)
    Σ_{j∈w} tput_j·x_j ≥ min_throughput_w · z_w   (throughput-sized; z_w ∈ {0,1})
    Σ_{j∈w} x_j ≥ min_replicas_w · z_w            (throughput-sized, if more than 1)
    y_{w,r} ≤ Σ_{j∈w,r} x_j,  y ∈ [0,1]           (a region counts only if it has a replica)
    Σ_r y_{w,r} ≥ min_distinct_regions_w · z_w    (same for providers)
    Σ_{j∈w,p} x_j ≤ share·Σ_{j∈w} x_j             (per provider, and on spot)
    Σ_{j on o} gpus_w(j)·x_j ≤ capacity_o         (offers with bounded capacity)
    Σ_{j∈group b} cost_j·x_j ≤ budget_b

Missing units are the unplaced replicas u_w plus, per throughput-sized workload left
unplaced, as many as its target needs of its fastest column.

A region indicator needs no binary and no big-M: ``y ≤ Σx`` with ``x`` integer lets
``y`` reach 1 only where a replica is placed, so a continuous ``y ≤ 1`` already counts
distinct regions exactly. (``x ≤ M·y`` alone would let an empty region count.) The
binary ``z_w`` says "this workload is placed": a workload whose spread cannot be met
places nothing instead of making the whole problem infeasible.

**Unplaceable workloads.** What is decidable for one workload alone is decided before
the solve and reported with its reason (no candidate, too few distinct regions or
providers, shares that cannot be met, a budget below its cheapest placement, no offer
with room for one replica). What couples workloads — capacity and budgets — is left to
the solver: phase one finds the fewest missing units (an integral objective, so HiGHS
rounds its bound up and stops as soon as a placement reaches it; skipped when the
start misses none, or no more than the LP relaxation's bound rounded up), phase two
the cheapest placement missing no more; the workloads
left short are reported with the rule that stopped them. A throughput-sized workload
is placed whole or not at all; a replica-sized one may be placed in part (status
``partial``).

**Parts.** Workloads are coupled only through offers whose capacity may bind and
through budget groups; the workloads connected by those fall apart into independent
groups, and the cheapest placement of the whole is the cheapest of each. Each group
is solved as a MILP of its own (small ones together, :func:`_parts`), with its share
of the time; the whole's gap is Σ (cost − bound) / Σ cost over the parts, so parts
within ``mip_rel_gap`` each make a whole within it. The gap asked for is the whole's:
once every part has a placement and a bound, a part whose own gap is wider may stop
when the others' narrower gaps make up for it (:class:`_Whole`). For a large part
the bound that gets there first is usually not HiGHS's but the Lagrangian one
(:func:`_lift`): the rows workloads share priced at the LP's duals, each workload's
own small MILP solved exactly.

**Bounds.** The LP relaxation is tightened by rows every integer placement keeps, so
the proof is short: the rounding of each throughput row at its cheapest levels, and
of it together with the spot share (:func:`_add_mix_cuts`); the
exact hull of each throughput target over its levels (an extended formulation over
the minimal patterns of replicas per level that reach it, see
:func:`_add_level_hulls`), and of each with a spot share over its levels on each
market (:func:`_add_share_hulls`); on-demand and other-provider replicas rounded up from the
fewest replicas any placement needs (:func:`_add_share_rounding`); and, when the start
leaves a budget group short, the fewest missing units that group can reach on its own
— a small MILP over its members, a relaxation of the whole, so its bound holds for
every placement (:func:`_budget_floors`). Without it every binding budget is a
knapsack whose LP bound is a fraction of a replica off, and branching closes them one
group at a time.

**Start.** Each phase starts from a placement: a greedy one (each workload in turn on
the cheapest columns with room and budget left, within its rules) or, for a part with
throughput targets, the rounding of the LP relaxation when it is better (whole
workloads kept, the others rounded within their rules, the rest placed by a small
MILP, then a local search: :func:`_lp_start`), improved when a phase is not settled
quickly by fixing the workloads the LP relaxation places whole and solving the rest,
which fall apart into small independent groups, as small MILPs
(:func:`_rounded_start`); for phase two, RINS around phase one's placement (which
ignores cost). Only starts, checked before
use: the solve is as exact as without them, but HiGHS's own heuristics find such
placements only after its root cut loop, which on large problems is most of the time.
The floors and the starts come in only when a phase is not settled by half a second
of plain solving (small problems never need them), and each takes at most a fifth of
the time left.

**Candidate reduction** (before building the MILP; numpy, no loop per column). Two
columns of a workload are *interchangeable* when no rule of that workload tells them
apart: same region if it needs distinct regions, same provider if it has a provider
rule, same market if it has a spot share. Within such a *cell* columns differ only in
cost, throughput and capacity. Three reductions follow:

1. *Dominance (exact).* A column is dropped when another column of its cell has
   unbounded capacity, costs no more and serves no less throughput: moving every
   replica from the dropped column to that one keeps every row satisfied (the rules
   cannot tell them apart, the capacity is unbounded, cost and budgets do not rise,
   throughput does not fall), so some optimum of the full problem uses only kept
   columns. Capacity that can never bind — at least the GPUs every workload could
   possibly put there — counts as unbounded. It takes two steps: first only the
   cheapest and the fastest unbounded column of each cell dominate (linear time;
   this leaves a few percent of the columns), then every unbounded column does.
2. *Region pruning (exact).* For a workload that needs ``d`` distinct regions, within
   a cell-without-region and one throughput level, let ``Q_r`` be the cheapest
   unbounded column in region ``r`` and ``Q_(d)`` the ``d``-th smallest. A region
   outside the ``d`` cheapest whose columns all cost at least ``Q_(d)`` is dropped: in
   any placement using it, either one of the ``d`` cheapest regions is unused (move the
   region's replicas there: the distinct count does not fall) or all ``d`` are used
   together with this one (merge it into one of them: at least ``d`` remain), at no
   extra cost.
3. *Coverage (exact).* A bounded column's *own room* is the replicas of its workload
   the offer has room for even when every other column on it takes as many replicas
   as its bounds allow. Bounded columns cheaper than the kept unbounded one are kept
   cheapest first until their own room covers the most replicas an optimum puts in
   that cell at that throughput level (the replica count; for a throughput target,
   what reaches it at that level, or the total cap under share rules); the rest are
   dropped. In any placement using a dropped column, some kept column of its group
   still has room for this workload — nobody else can take its own room, and this
   workload has fewer replicas there than it covers — so moving a replica there keeps
   every row and costs no more. (Counting the whole room instead would be wrong: a
   workload may have to leave a cheap offer to another that has no other place.)

The per-workload checks and the first step of dominance run chunk by chunk of whole
workloads (a few hundred thousand columns at a time: over tens of millions at once,
each temporary array is fresh memory and faulting it in costs more than the work).
Only the demand on an offer needs every workload, and it decides which columns are
bounded: a first pass over the chunks checks the workloads and sums the demand, a
second drops the columns the cheapest and fastest columns dominate. The other
reductions run on what is left.

The domain reads no clock: ``solve_seconds`` is HiGHS's own run time.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum

import highspy
import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_EPS = 1e-9


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True)
class WorkloadDemand:
    """What one workload needs: exactly one of ``replicas`` or ``min_throughput``.

    Shares are of the workload's placed replicas; ``budget_group`` indexes
    ``Problem.budgets``.
    """

    name: str
    replicas: int | None
    min_throughput: float | None
    """Tokens/s to reach in total; the replica count is then the solver's choice."""
    gpus_per_replica: int
    min_distinct_regions: int = 1
    min_distinct_providers: int = 1
    max_share_per_provider: float = 1.0
    max_spot_share: float = 1.0
    budget_group: int | None = None
    min_replicas: int = 1
    """For a throughput target: at least this many replicas in all (a replica count
    says how many already)."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a workload needs a name")
        if (self.replicas is None) == (self.min_throughput is None):
            raise ValueError(f"{self.name}: give exactly one of replicas and min_throughput")
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"{self.name}: replicas must be at least 1")
        if self.min_throughput is not None and not (
            math.isfinite(self.min_throughput) and self.min_throughput > 0
        ):
            raise ValueError(f"{self.name}: min_throughput must be a positive number")
        if self.gpus_per_replica < 1:
            raise ValueError(f"{self.name}: gpus_per_replica must be at least 1")
        if self.min_replicas < 1:
            raise ValueError(f"{self.name}: min_replicas must be at least 1")
        if self.min_distinct_regions < 1 or self.min_distinct_providers < 1:
            raise ValueError(f"{self.name}: min_distinct_* must be at least 1")
        for key in ("max_share_per_provider", "max_spot_share"):
            share = getattr(self, key)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{self.name}: {key} must be within 0..1, got {share}")
        if self.budget_group is not None and self.budget_group < 0:
            raise ValueError(f"{self.name}: budget_group must not be negative")


def _frozen(value: object, dtype: type[np.generic], name: str) -> npt.NDArray[np.generic]:
    array = np.asarray(value, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class Problem:
    """Compliant candidates, priced. One entry per column in the ``col_*`` arrays (a
    workload may put replicas on an offer), one per offer in the ``offer_*`` arrays.

    Arrays are converted to their dtypes and frozen (read-only views). Costs are USD/h
    per replica, capacity is in GPUs (``np.inf``: unknown or unbounded), budgets are
    USD/h per budget group and are charged at the columns' costs.
    """

    workloads: Sequence[WorkloadDemand]
    col_workload: npt.NDArray[np.int64]
    col_offer: npt.NDArray[np.int64]
    col_cost: npt.NDArray[np.float64]
    col_throughput: npt.NDArray[np.float64]
    offer_region: npt.NDArray[np.int64]
    offer_provider: npt.NDArray[np.int64]
    offer_spot: npt.NDArray[np.bool_]
    offer_capacity_gpus: npt.NDArray[np.float64]
    budgets: Sequence[float] = ()

    def __post_init__(self) -> None:
        typed: dict[str, type[np.generic]] = {
            "col_workload": np.int64,
            "col_offer": np.int64,
            "col_cost": np.float64,
            "col_throughput": np.float64,
            "offer_region": np.int64,
            "offer_provider": np.int64,
            "offer_spot": np.bool_,
            "offer_capacity_gpus": np.float64,
        }
        for name, dtype in typed.items():
            object.__setattr__(self, name, _frozen(getattr(self, name), dtype, name))
        object.__setattr__(self, "workloads", tuple(self.workloads))
        object.__setattr__(self, "budgets", tuple(float(b) for b in self.budgets))

        n = len(self.col_workload)
        for name in ("col_offer", "col_cost", "col_throughput"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, expected {n}")
        n_offers = len(self.offer_region)
        for name in ("offer_provider", "offer_spot", "offer_capacity_gpus"):
            if len(getattr(self, name)) != n_offers:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries, expected {n_offers}"
                )
        if n and not (self.col_workload.min() >= 0 and self.col_workload.max() < self.n_workloads):
            raise ValueError("col_workload must index workloads")
        if n and not (self.col_offer.min() >= 0 and self.col_offer.max() < n_offers):
            raise ValueError("col_offer must index offers")
        if not np.all(np.isfinite(self.col_cost) & (self.col_cost >= 0)):
            raise ValueError("col_cost must be finite and not negative")
        if not np.all(np.isfinite(self.col_throughput) & (self.col_throughput >= 0)):
            raise ValueError("col_throughput must be finite and not negative")
        if np.any(np.isnan(self.offer_capacity_gpus) | (self.offer_capacity_gpus < 0)):
            raise ValueError("offer_capacity_gpus must be a number ≥ 0 or inf")
        if n_offers and (self.offer_region.min() < 0 or self.offer_provider.min() < 0):
            raise ValueError("offer_region and offer_provider must not be negative")
        if not all(math.isfinite(b) and b >= 0 for b in self.budgets):
            raise ValueError("budgets must be finite and not negative")
        for w in self.workloads:
            if w.budget_group is not None and w.budget_group >= len(self.budgets):
                raise ValueError(
                    f"{w.name}: budget group {w.budget_group} does not exist "
                    f"({len(self.budgets)} budgets given)"
                )

    @property
    def n_workloads(self) -> int:
        return len(self.workloads)

    @property
    def n_columns(self) -> int:
        return len(self.col_workload)


class PlacementStatus(StrEnum):
    PLACED = "placed"
    PARTIAL = "partial"
    """Some replicas of a replica-sized workload are placed, not all."""
    UNPLACEABLE = "unplaceable"


@dataclass(frozen=True)
class WorkloadOutcome:
    name: str
    status: PlacementStatus
    placed_replicas: int
    reasons: tuple[str, ...] = ()
    """Why replicas are missing, in words; empty when placed."""


@dataclass(frozen=True, eq=False)
class Solution:
    replicas: npt.NDArray[np.int64]
    """Replicas per column of the problem (read-only, aligned with ``col_*``)."""
    workloads: tuple[WorkloadOutcome, ...]
    total_cost: float
    """USD/h: Σ col_cost · replicas."""
    gap: float
    """Relative MIP gap HiGHS reports for the last solve: of the real cost once the
    number of missing units is settled (or when the start misses none). When time runs
    out before that, it is phase one's gap, of the missing units: it then says how many
    more replicas some placement might still place, not how much cheaper it might be
    (phase one does not look at cost)."""
    optimal: bool
    """The placement is proved within ``mip_rel_gap`` of the optimum (or within
    ``mip_abs_gap``): each part's by HiGHS, or the parts' together (see ``gap``)."""
    time_limited: bool
    solve_seconds: float
    """HiGHS's run time, summed over both phases."""
    columns_before: int
    columns_after: int
    """Columns in the MILP, after reduction."""
    solves: int = 0

    def outcome(self, name: str) -> WorkloadOutcome:
        for o in self.workloads:
            if o.name == name:
                return o
        raise KeyError(f"unknown workload {name!r}")


# ------------------------------------------------------------------------ preparation


@dataclass(frozen=True, eq=False)
class _Demands:
    """The workloads as arrays, one entry per workload."""

    replicas: FloatArray
    target: FloatArray
    throughput_sized: BoolArray
    gpus: FloatArray
    min_regions: IntArray
    min_providers: IntArray
    provider_share: FloatArray
    spot_share: FloatArray
    budget_group: IntArray
    spot_cap: FloatArray
    """Most replicas a workload may put on spot (inf: no limit but the share row)."""
    provider_cap: FloatArray
    min_count: FloatArray
    """Fewest replicas a throughput target takes in all (1 unless it sets more; 0 for
    a replica count)."""

    @classmethod
    def of(cls, workloads: Sequence[WorkloadDemand]) -> _Demands:
        replicas = np.array([w.replicas or 0 for w in workloads], dtype=np.float64)
        target = np.array([w.min_throughput or 0.0 for w in workloads], dtype=np.float64)
        sized = np.array([w.min_throughput is not None for w in workloads], dtype=np.bool_)
        provider_share = np.array([w.max_share_per_provider for w in workloads], np.float64)
        spot_share = np.array([w.max_spot_share for w in workloads], dtype=np.float64)
        return cls(
            replicas=replicas,
            target=target,
            throughput_sized=sized,
            gpus=np.array([w.gpus_per_replica for w in workloads], dtype=np.float64),
            min_regions=np.array([w.min_distinct_regions for w in workloads], dtype=np.int64),
            min_providers=np.array([w.min_distinct_providers for w in workloads], np.int64),
            provider_share=provider_share,
            spot_share=spot_share,
            budget_group=np.array(
                [-1 if w.budget_group is None else w.budget_group for w in workloads],
                dtype=np.int64,
            ),
            spot_cap=_share_cap(spot_share, replicas, sized),
            provider_cap=_share_cap(provider_share, replicas, sized),
            min_count=np.array(
                [w.min_replicas if w.min_throughput is not None else 0 for w in workloads],
                dtype=np.float64,
            ),
        )


def _share_cap(share: FloatArray, replicas: FloatArray, sized: BoolArray) -> FloatArray:
    """Most replicas a share allows: ⌊share·replicas⌋, or unbounded when sized by
    throughput (the share row does the work), or 0 when the share is 0."""
    capped = np.floor(share * replicas + _EPS)
    free = np.where(share > 0, np.inf, 0.0)
    return np.where(sized, free, np.where(share >= 1, replicas, capped))


@dataclass(frozen=True, eq=False)
class _Candidates:
    """Columns that survive the per-workload checks (one entry per such column,
    ``index`` into the problem's columns, in its order) and the reasons of the rest;
    when prepared for the reduction, only those the anchors of their cell do not
    dominate (see :func:`_prepare`). What only some columns need (bounds, room) is
    computed for those: see :func:`_upper`."""

    index: IntArray
    workload: IntArray
    offer: IntArray
    cost: FloatArray
    throughput: FloatArray
    bounded: BoolArray
    """The offer's capacity may bind (else the column's room is unbounded)."""
    capacity: FloatArray
    """Effective capacity per offer: inf where it can never bind."""
    demand: FloatArray
    """Per offer with bounded capacity: the GPUs every column on it could take."""
    reasons: dict[int, str]
    total_cap: FloatArray
    """Per workload: most replicas in total (inf: only the demand row limits it)."""


def _rule_upper(
    p: Problem, d: _Demands, total_cap: FloatArray, w: IntArray, o: IntArray, tput: FloatArray
) -> FloatArray:
    """Most replicas workload ``w`` may put on offer ``o`` by its own rules (capacity
    aside): its count within its provider and spot caps; for a throughput target, what
    reaches it there (the total cap under share rules, see :func:`_prepare`)."""
    on_demand = np.minimum(d.replicas, d.provider_cap)
    by_market = np.stack([on_demand, np.minimum(on_demand, d.spot_cap)], axis=1)
    upper: FloatArray = by_market.ravel()[w * 2 + p.offer_spot[o]]
    at = np.flatnonzero(d.throughput_sized[w])
    cap = total_cap[w[at]]
    reach = np.maximum(np.ceil(d.target[w[at]] / tput[at] - _EPS), d.min_count[w[at]])
    upper[at] = np.where(np.isfinite(cap), cap, reach)
    return upper


def _room(d: _Demands, c: _Candidates, pos: IntArray) -> FloatArray:
    """Replicas of the column's workload that fit its offer (inf: unbounded)."""
    room: FloatArray = np.full(len(pos), np.inf)
    at = np.flatnonzero(c.bounded[pos])
    room[at] = np.floor(c.capacity[c.offer[pos[at]]] / d.gpus[c.workload[pos[at]]] + _EPS)
    return room


def _upper(p: Problem, d: _Demands, c: _Candidates, pos: IntArray) -> FloatArray:
    """Bound of the column's variable: its rules' bound within its room."""
    w, o = c.workload[pos], c.offer[pos]
    upper: FloatArray = np.minimum(
        _rule_upper(p, d, c.total_cap, w, o, c.throughput[pos]), _room(d, c, pos)
    )
    return upper


def _own_room(p: Problem, d: _Demands, c: _Candidates, pos: IntArray) -> FloatArray:
    """Replicas of the column's workload its offer has room for even when every other
    column on it takes as many as its bounds allow (inf: unbounded)."""
    own: FloatArray = np.full(len(pos), np.inf)
    at = pos[c.bounded[pos]]
    w, o = c.workload[at], c.offer[at]
    wanted = d.gpus[w] * _rule_upper(p, d, c.total_cap, w, o, c.throughput[at])
    others = c.demand[o] - wanted
    free = np.floor(np.maximum(c.capacity[o] - others, 0.0) / d.gpus[w] + _EPS)
    own[c.bounded[pos]] = np.minimum(free, _room(d, c, at))
    return own


def _pct(share: float) -> str:
    return f"{share:.0%}"


def _distinct(rows: IntArray, cols: IntArray, shape: tuple[int, int]) -> IntArray:
    seen = np.zeros(shape, dtype=np.bool_)
    seen[rows, cols] = True
    counts: IntArray = seen.sum(axis=1).astype(np.int64)
    return counts


_CHUNK_COLUMNS = 250_000
"""Columns :func:`_prepare` takes at once, in whole workloads (more when one workload
has more). Its temporaries are then allocated again and again in memory already in
use: over all columns at once each would be hundreds of MB fresh from the system,
faulted in page by page, which takes longer than the work done on it."""


@dataclass(frozen=True, eq=False)
class _Chunk:
    """Workloads ``first..last-1`` and their columns, workload by workload."""

    first: int
    last: int
    cols: slice | IntArray
    """The problem's columns: a slice when the problem gives them in workload order."""
    counts: IntArray
    """Columns of each workload."""
    starts: IntArray
    """Where each workload that has columns begins, within the chunk."""

    @property
    def workloads(self) -> slice:
        return slice(self.first, self.last)

    def any(self, mask: BoolArray) -> BoolArray:
        """Per workload: some column of it is in ``mask``."""
        out = np.zeros(len(self.counts), dtype=np.bool_)
        if len(self.starts):
            out[self.counts > 0] = np.logical_or.reduceat(mask, self.starts)
        return out

    def least(self, values: FloatArray) -> FloatArray:
        """Per workload: the least value of its columns (inf: no column)."""
        out = np.full(len(self.counts), np.inf)
        if len(self.starts):
            out[self.counts > 0] = np.minimum.reduceat(values, self.starts)
        return out

    def index(self, at: IntArray) -> IntArray:
        """The problem's columns at chunk positions ``at``."""
        if isinstance(self.cols, slice):
            shifted: IntArray = at + self.cols.start
            return shifted
        taken: IntArray = self.cols[at]
        return taken


def _chunks(p: Problem) -> tuple[list[_Chunk], bool]:
    """Every workload in one chunk, in order, with about ``_CHUNK_COLUMNS`` columns
    each; and whether the problem gives its columns in workload order (if not, they
    are taken in it, each workload's in the problem's order)."""
    cw, n_w = p.col_workload, p.n_workloads
    in_order = bool(np.all(cw[1:] >= cw[:-1]))
    order = None if in_order else np.argsort(cw, kind="stable")
    begin = np.searchsorted(cw if order is None else cw[order], np.arange(n_w + 1))
    targets = np.arange(0, len(cw), _CHUNK_COLUMNS)
    cuts = np.unique(np.r_[0, np.searchsorted(begin, targets), n_w]).tolist()
    chunks = []
    for a, b in itertools.pairwise(cuts):
        lo, hi = int(begin[a]), int(begin[b])
        counts = np.diff(begin[a : b + 1])
        chunks.append(
            _Chunk(
                first=a,
                last=b,
                cols=slice(lo, hi) if order is None else order[lo:hi],
                counts=counts,
                starts=begin[a:b][counts > 0] - lo,
            )
        )
    return chunks, in_order


@dataclass(frozen=True, eq=False)
class _Sites:
    """The offers by region and provider together: the regions and the providers a
    workload's offers span are those of the sites they are at. Regions and providers
    are numbered 0..n-1 here, in the order of their ids."""

    of_offer: IntArray
    """The site of each offer."""
    region: IntArray
    """The region of each site."""
    provider: IntArray
    n_regions: int
    n_providers: int

    @classmethod
    def of(cls, p: Problem) -> _Sites:
        regions, region = np.unique(p.offer_region, return_inverse=True)
        providers, provider = np.unique(p.offer_provider, return_inverse=True)
        sites, of_offer = np.unique(region * len(providers) + provider, return_inverse=True)
        return cls(
            of_offer=of_offer.astype(np.int64),
            region=sites // max(len(providers), 1),
            provider=sites % max(len(providers), 1),
            n_regions=len(regions),
            n_providers=len(providers),
        )


def _prepare(p: Problem, d: _Demands, *, reduce: bool = True) -> _Candidates:
    """The candidate columns, in the problem's order, and the reasons of the workloads
    that cannot be placed whatever the others do. With ``reduce``, only the columns
    that no anchor of their cell dominates (:func:`_dominance_anchors`); ``demand``,
    ``capacity`` and ``total_cap`` are of every candidate column all the same.

    Chunk by chunk of whole workloads (:func:`_chunks`): the checks and reasons are
    each workload's own. Only the demand on an offer adds up over workloads, and it
    decides which columns are bounded, so the anchors take a second pass."""
    n_offers = len(p.offer_region)
    chunks, in_order = _chunks(p)
    sites = _Sites.of(p)
    reasons: dict[int, str] = {}
    total_cap = np.full(p.n_workloads, np.inf)
    demand = np.zeros(n_offers)
    offers = np.arange(n_offers)
    finite = np.isfinite(p.offer_capacity_gpus)
    candidates = []
    for ch in chunks:
        candidate, slowest = _check(p, d, ch, sites, reasons)
        total_cap[ch.workloads] = _total_cap(d, slowest, ch.workloads)
        # Capacity that every workload together could not fill never binds. Counted
        # with the bounds the workloads' own rules set, not the room: a column whose
        # bound is the offer's room is bounded, and the reduction must not treat it
        # as unbounded.
        at = ch.index(np.flatnonzero(candidate & finite[p.col_offer[ch.cols]]))
        w, o = p.col_workload[at], p.col_offer[at]
        wanted = d.gpus[w] * _rule_upper(p, d, total_cap, w, o, p.col_throughput[at])
        # Added to the sums so far in the order of the columns, as over all at once.
        demand = np.bincount(
            np.concatenate([offers, o]), np.concatenate([demand, wanted]), n_offers
        ).astype(np.float64)
        candidates.append(candidate)
    capacity = np.where(p.offer_capacity_gpus >= demand, np.inf, p.offer_capacity_gpus)

    bounded = np.isfinite(capacity)
    cells = _CellKeys.of(p, d, region=True)
    parts = [
        ch.index(
            _dominance_anchors(p, d, ch, candidate, bounded, cells)
            if reduce
            else np.flatnonzero(candidate)
        )
        for ch, candidate in zip(chunks, candidates, strict=True)
    ]
    index = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if not in_order:
        index = np.sort(index)
    offer = p.col_offer[index]
    return _Candidates(
        index=index,
        workload=p.col_workload[index],
        offer=offer,
        cost=p.col_cost[index],
        throughput=p.col_throughput[index],
        bounded=bounded[offer],
        capacity=capacity,
        demand=demand,
        reasons=reasons,
        total_cap=total_cap,
    )


def _check(
    p: Problem, d: _Demands, ch: _Chunk, sites: _Sites, reasons: dict[int, str]
) -> tuple[BoolArray, FloatArray]:
    """The chunk's workloads checked alone: adds the reasons of those that cannot be
    placed and returns which columns are candidates and, per workload, its slowest
    candidate when sized by throughput (inf: none)."""
    n_w, ws = ch.last - ch.first, ch.workloads
    co, tput = p.col_offer[ch.cols], p.col_throughput[ch.cols]
    sized = np.repeat(d.throughput_sized[ws], ch.counts)
    spot = p.offer_spot[co]
    useful = ~sized | (tput > 0)
    allowed = useful & (~spot | np.repeat(d.spot_cap[ws] > 0, ch.counts))
    fits = allowed & (p.offer_capacity_gpus[co] >= np.repeat(d.gpus[ws] - _EPS, ch.counts))
    has_useful, has_allowed, has_fit = ch.any(useful), ch.any(allowed), ch.any(fits)
    has_on_demand = ch.any(fits & ~spot)
    # The sites each workload has an offer that fits at, and so its regions and providers.
    n_sites = len(sites.region)
    seen = np.zeros(n_w * n_sites + 1, dtype=np.bool_)
    at_site = np.repeat(np.arange(n_w) * n_sites, ch.counts) + sites.of_offer[co]
    seen[np.where(fits, at_site, n_w * n_sites)] = True
    w_at, site = np.nonzero(seen[:-1].reshape(n_w, n_sites))
    n_reg = _distinct(w_at, sites.region[site], (n_w, sites.n_regions))
    n_prov = _distinct(w_at, sites.provider[site], (n_w, sites.n_providers))

    budgets = np.array([*p.budgets, np.inf])
    budget = budgets[d.budget_group[ws]]
    cheapest = np.full(n_w, np.inf)
    if np.isfinite(budget).any():
        with np.errstate(divide="ignore", invalid="ignore"):
            per_unit = p.col_cost[ch.cols] / np.where(sized, tput, 1.0)
        cheapest = ch.least(np.where(fits, per_unit, np.inf))
    # The smallest placement: the whole target, or (a replica-sized workload may be
    # placed in part) the fewest replicas its spread and provider share allow.
    with np.errstate(divide="ignore"):
        fewest = np.maximum.reduce(
            [
                d.min_regions[ws].astype(np.float64),
                d.min_providers[ws].astype(np.float64),
                np.ceil(1 / d.provider_share[ws] - _EPS),
            ]
        )
    floor_cost = np.where(d.throughput_sized[ws], d.target[ws], fewest) * cheapest
    over_budget = floor_cost > budget * (1 + _EPS)

    blocked = np.zeros(n_w, dtype=np.bool_)
    for i in range(n_w):
        w = ch.first + i
        wl = p.workloads[w]
        reason = _local_reason(
            wl,
            any_column=bool(ch.counts[i]),
            has_useful=bool(has_useful[i]),
            has_allowed=bool(has_allowed[i]),
            has_fit=bool(has_fit[i]),
            has_on_demand=bool(has_on_demand[i]),
            n_regions=int(n_reg[i]),
            n_providers=int(n_prov[i]),
            provider_cap=float(d.provider_cap[w]),
        )
        if reason is None and over_budget[i]:
            b = int(d.budget_group[w])
            reason = (
                f"budget group {b} exceeded: needs at least ${floor_cost[i]:.2f}/h "
                f"of ${p.budgets[b]:.2f}/h"
            )
        if reason is not None:
            reasons[w] = reason
            blocked[i] = True

    candidate = fits & ~np.repeat(blocked, ch.counts)
    slowest = ch.least(np.where(candidate & sized, tput, np.inf))
    return candidate, slowest


def _total_cap(d: _Demands, slowest: FloatArray, ws: slice) -> FloatArray:
    """Most replicas in total of workloads ``ws`` (inf: only the demand row limits it),
    given the slowest candidate of each.

    Without share rules a throughput-sized workload never needs more replicas on one
    offer than reach its target there: one fewer would still reach it (and the offer
    keeps at least one, so the spread is kept). With share rules replicas may be
    needed to balance others; the model then allows at most ⌈1/s⌉·(⌈target / its
    slowest column⌉ + d_r + d_p) in total (s: its smallest share below 1; d_r, d_p:
    the distinct regions and providers it needs), enough to reach the target and the
    spread within each of ⌈1/s⌉ providers or markets. HiGHS needs this bound: with
    unbounded integers its cuts and heuristics stall."""
    # A share of 0 is no share to balance: its columns are gone (see _check).
    provider_share, spot_share = d.provider_share[ws], d.spot_share[ws]
    smallest = np.minimum(
        np.where((provider_share > 0) & (provider_share < 1), provider_share, 1.0),
        np.where((spot_share > 0) & (spot_share < 1), spot_share, 1.0),
    )
    spread_need = (d.min_regions[ws] + d.min_providers[ws]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        total_cap: FloatArray = np.where(
            d.throughput_sized[ws] & (smallest < 1) & np.isfinite(slowest),
            np.ceil(1 / np.maximum(smallest, _EPS) - _EPS)
            * (np.maximum(np.ceil(d.target[ws] / slowest - _EPS), d.min_count[ws]) + spread_need),
            np.inf,
        )
    return total_cap


def _local_reason(
    wl: WorkloadDemand,
    *,
    any_column: bool,
    has_useful: bool,
    has_allowed: bool,
    has_fit: bool,
    has_on_demand: bool,
    n_regions: int,
    n_providers: int,
    provider_cap: float,
) -> str | None:
    """Why this workload cannot be placed whatever the others do, or None."""
    if not any_column:
        return "no compliant candidate"
    if not has_useful:
        return "no compliant candidate has throughput for this workload"
    if not has_allowed:
        return (
            f"at most {_pct(wl.max_spot_share)} of replicas on spot, "
            "but only spot offers are compliant"
        )
    if not has_fit:
        return f"capacity exhausted: no compliant offer has {wl.gpus_per_replica} GPUs free"
    for what, need, have in (
        ("regions", wl.min_distinct_regions, n_regions),
        ("providers", wl.min_distinct_providers, n_providers),
    ):
        if wl.replicas is not None and need > wl.replicas:
            return f"needs {need} distinct {what} but has only {wl.replicas} replicas"
        if have < need:
            return f"needs {need} distinct {what}, {have} have compliant offers"
    if wl.max_share_per_provider < 1:
        share = wl.max_share_per_provider
        if provider_cap <= 0:
            return f"at most {_pct(share)} of replicas per provider leaves no room for one"
        # Any placement needs ⌈1/share⌉ providers, and that many (one replica each)
        # keeps the share: with fewer providers than a full placement needs, a
        # replica-sized workload is still placed in part.
        needed = math.ceil(1 / share - _EPS)
        if n_providers < needed:
            return (
                f"at most {_pct(share)} of replicas per provider needs {needed} providers, "
                f"{n_providers} have compliant offers"
            )
    spot_limited = wl.max_spot_share < 1 and (
        wl.replicas is None or math.floor(wl.max_spot_share * wl.replicas + _EPS) < wl.replicas
    )
    if spot_limited and not has_on_demand:
        return (
            f"at most {_pct(wl.max_spot_share)} of replicas on spot, "
            "but only spot offers are compliant"
        )
    return None


# -------------------------------------------------------------------------- reduction


def _dense(raw: IntArray, size: int) -> tuple[IntArray, int]:
    """Group ids 0..n-1 for non-negative keys below ``size``."""
    if size <= max(4 * len(raw), 1 << 16):
        return raw, size
    uniq, inverse = np.unique(raw, return_inverse=True)
    return inverse.astype(np.int64), len(uniq)


@dataclass(frozen=True, eq=False)
class _CellKeys:
    """Cell keys: workload, and region / provider / market where its rules tell them
    apart. A column's key is ``workload · size + within[mode[workload], offer]``."""

    mode: IntArray
    """Which of region (4), provider (2) and market (1) each workload's rules tell
    apart."""
    within: IntArray
    """Each offer's key within a workload, for each of those 8 modes."""
    size: int

    @classmethod
    def of(cls, p: Problem, d: _Demands, *, region: bool) -> _CellKeys:
        n_regions = int(p.offer_region.max(initial=0)) + 1
        n_providers = int(p.offer_provider.max(initial=0)) + 1
        mode = (
            ((d.min_regions > 1) & region) * 4
            + ((d.min_providers > 1) | (d.provider_share < 1)) * 2
            + (d.spot_share < 1)
        ).astype(np.int64)
        modes = np.arange(8)[:, None]
        within = (
            np.where(modes & 4, p.offer_region, 0) * n_providers
            + np.where(modes & 2, p.offer_provider, 0)
        ) * 2 + np.where(modes & 1, p.offer_spot, 0)
        return cls(mode, within, n_regions * n_providers * 2)


def _cells(p: Problem, d: _Demands, c: _Candidates, pos: IntArray, *, region: bool) -> IntArray:
    """Cell key of each column (see :class:`_CellKeys`)."""
    keys = _CellKeys.of(p, d, region=region)
    w, o = c.workload[pos], c.offer[pos]
    key: IntArray = w * keys.size + keys.within.ravel()[keys.mode[w] * len(p.offer_region) + o]
    return key


def _level(d: _Demands, c: _Candidates, pos: IntArray) -> FloatArray:
    """Throughput that matters for comparing columns: none for replica-sized workloads."""
    return np.where(d.throughput_sized[c.workload[pos]], c.throughput[pos], 0.0)


def _reduce(p: Problem, d: _Demands, c: _Candidates) -> IntArray:
    """Candidate positions that survive the three exact reductions, sorted, of
    candidates :func:`_prepare` left after the first step of dominance."""
    survivors = _dominance_full(p, d, c, np.arange(len(c.index), dtype=np.int64))
    survivors = _coverage(p, d, c, survivors)
    kept: IntArray = np.sort(_prune_regions(p, d, c, survivors))
    return kept


def _dominance_anchors(
    p: Problem,
    d: _Demands,
    ch: _Chunk,
    candidate: BoolArray,
    bounded: BoolArray,
    cells: _CellKeys,
) -> IntArray:
    """Exact, O(n), the first step of dominance: the chunk's candidates (positions in
    the chunk) that no anchor of their cell dominates — the cheapest unbounded column
    and, for a throughput target, the fastest unbounded one (ties to the first).
    ``bounded``: per offer, its capacity may bind."""
    n_w, ws = ch.last - ch.first, ch.workloads
    co, cost = p.col_offer[ch.cols], p.col_cost[ch.cols]
    # Cell keys counted from the chunk's first workload.
    raw = (
        np.repeat(np.arange(n_w) * cells.size, ch.counts)
        + cells.within.ravel()[np.repeat(cells.mode[ws] * len(p.offer_region), ch.counts) + co]
    )
    cell, n_cells = _dense(raw, n_w * cells.size)
    free = candidate & ~bounded[co]

    def cell_min(values: FloatArray, group: IntArray) -> FloatArray:
        out = np.full(n_cells, np.inf)
        np.minimum.at(out, group, values)
        return out

    # A replica count: every column serves the same, so the cheapest unbounded column
    # dominates every dearer one and every bounded one as cheap (unbounded ties stay).
    cheapest = cell_min(np.where(free, cost, np.inf), cell)
    best = cheapest[cell]
    dominated = (cost > best) | ((cost == best) & ~free)

    at = np.flatnonzero(candidate & np.repeat(d.throughput_sized[ws], ch.counts))
    if len(at):
        cell_, cost_, free_ = cell[at], cost[at], free[at]
        level_ = p.col_throughput[ch.cols][at]

        def cell_max(values: FloatArray, group: IntArray) -> FloatArray:
            out = np.full(n_cells, -1.0)
            np.maximum.at(out, group, values)
            return out

        def dominated_by(best_cost: FloatArray, best_level: FloatArray, on: BoolArray) -> BoolArray:
            """Columns no faster and no cheaper than the anchor (the first of ``on``);
            ``best_*``: the anchor's, per column."""
            anchor = np.full(n_cells, len(cost), dtype=np.int64)
            np.minimum.at(anchor, cell_[on], at[on])
            result: BoolArray = (
                (cost_ >= best_cost) & (level_ <= best_level) & (at != anchor[cell_])
            )
            return result

        # The cheapest unbounded column (ties to the fastest) ...
        cost_a = best[at]
        on = free_ & (cost_ == cost_a)
        level_a = cell_max(level_[on], cell_[on])[cell_]
        on &= level_ == level_a
        by_cheapest = dominated_by(cost_a, level_a, on)
        # ... and the fastest (ties to the cheapest).
        level_b = cell_max(level_[free_], cell_[free_])[cell_]
        on = free_ & (level_ == level_b)
        cost_b = cell_min(cost_[on], cell_[on])[cell_]
        on &= cost_ == cost_b
        dominated[at] = by_cheapest | dominated_by(cost_b, level_b, on)
    kept: IntArray = np.flatnonzero(candidate & ~dominated)
    return kept


def _sorted_groups(keys: IntArray) -> IntArray:
    """0-based group number of each element of an already sorted key array."""
    starts = np.empty(len(keys), dtype=np.bool_)
    if len(keys):
        starts[0] = True
        starts[1:] = keys[1:] != keys[:-1]
    return np.cumsum(starts) - 1


def _dominance_full(p: Problem, d: _Demands, c: _Candidates, pos: IntArray) -> IntArray:
    """Exact: drop every column with an earlier unbounded column in its cell (sorted by
    cost, then throughput descending) that serves at least as much throughput."""
    if len(pos) == 0:
        return pos
    cell = _cells(p, d, c, pos, region=True)
    cost, level = c.cost[pos], _level(d, c, pos)
    order = np.lexsort((pos, -level, cost, cell))
    pos, cell, level = pos[order], cell[order], level[order]
    rank = np.unique(level, return_inverse=True)[1].astype(np.int64)
    group = _sorted_groups(cell)
    span = int(rank.max()) + 2
    value = group * span + np.where(c.bounded[pos], -1, rank)
    best = np.maximum.accumulate(value)
    before = np.empty_like(best)
    before[0] = -1
    before[1:] = best[:-1]
    starts = np.r_[True, group[1:] != group[:-1]]
    before = np.where(starts, group * span - 1, before)
    dominated = (before - group * span) >= rank
    kept: IntArray = pos[~dominated]
    return kept


def _coverage(p: Problem, d: _Demands, c: _Candidates, pos: IntArray) -> IntArray:
    """Exact: within a cell and throughput level, keep bounded columns cheapest first
    until the room they keep for the workload whatever the others do covers its need
    there (see the module docstring); drop the rest."""
    if len(pos) == 0:
        return pos
    cell = _cells(p, d, c, pos, region=True)
    level = _level(d, c, pos)
    rank = np.unique(level, return_inverse=True)[1].astype(np.int64)
    order = np.lexsort((pos, c.cost[pos], rank, cell))
    pos, cell, rank = pos[order], cell[order], rank[order]
    group = _sorted_groups(cell * (int(rank.max()) + 1) + rank)
    w = c.workload[pos]
    # The most replicas an optimum puts in one cell at one level: the replica count,
    # or what reaches the target at that level (the total cap under share rules).
    # Only a throughput-sized workload divides by throughput (its candidates all have
    # some); a replica-sized one may come with none.
    sized = d.throughput_sized[w]
    need = d.replicas[w].copy()
    cap = c.total_cap[w[sized]]
    reach = np.maximum(
        np.ceil(d.target[w[sized]] / c.throughput[pos[sized]] - _EPS), d.min_count[w[sized]]
    )
    need[sized] = np.where(np.isfinite(cap), cap, reach)
    bounded = c.bounded[pos]
    room = np.where(bounded, _own_room(p, d, c, pos), 0.0)
    total = np.cumsum(room)
    starts = np.r_[True, group[1:] != group[:-1]]
    base = np.maximum.accumulate(np.where(starts, total - room, 0.0))
    covered_before = total - room - base
    kept: IntArray = pos[~(bounded & (covered_before >= need))]
    return kept


def _prune_regions(p: Problem, d: _Demands, c: _Candidates, pos: IntArray) -> IntArray:
    """Exact region pruning for workloads needing ``d`` ≥ 2 distinct regions (see the
    module docstring). Returns the kept positions."""
    w = c.workload[pos]
    spread = d.min_regions[w] > 1
    if not spread.any():
        return pos
    others, sp = pos[~spread], pos[spread]
    level = _level(d, c, sp)
    rank = np.unique(level, return_inverse=True)[1].astype(np.int64)
    sub = _cells(p, d, c, sp, region=False) * (int(rank.max()) + 1) + rank
    region = p.offer_region[c.offer[sp]]
    n_regions = int(p.offer_region.max()) + 1
    pair_key = sub * n_regions + region
    pair_ids, pair = np.unique(pair_key, return_inverse=True)
    n_pairs = len(pair_ids)
    pair_sub, pair_region = pair_ids // n_regions, pair_ids % n_regions
    cost = c.cost[sp]
    q = np.full(n_pairs, np.inf)
    unbounded = ~c.bounded[sp]
    np.minimum.at(q, pair[unbounded], cost[unbounded])
    m = np.full(n_pairs, np.inf)
    np.minimum.at(m, pair, cost)
    need = np.zeros(n_pairs, dtype=np.int64)
    need[pair] = d.min_regions[c.workload[sp]]

    order = np.lexsort((pair_region, q, pair_sub))
    sub_sorted = pair_sub[order]
    group = _sorted_groups(sub_sorted)
    first = np.r_[0, np.flatnonzero(group[1:] != group[:-1]) + 1]
    rank_in = np.arange(n_pairs) - first[group]
    in_top = np.zeros(n_pairs, dtype=np.bool_)
    in_top[order] = (rank_in < need[order]) & np.isfinite(q[order])
    # The d-th smallest unbounded price per sub-cell (inf when fewer than d exist).
    q_d_by_group = np.full(len(first), np.inf)
    at_d = rank_in == need[order] - 1
    q_d_by_group[group[at_d]] = q[order][at_d]
    q_d = np.empty(n_pairs)
    q_d[order] = q_d_by_group[group]
    keep_pair = in_top | (m < q_d)
    keep = keep_pair[pair]
    kept: IntArray = np.concatenate([others, sp[keep]])
    return kept


# ------------------------------------------------------------------------------ model


@dataclass(frozen=True, eq=False)
class _Model:
    cols: IntArray
    """Candidate positions of the x variables."""
    n_vars: int
    cost: FloatArray
    lower: FloatArray
    upper: FloatArray
    integer: IntArray
    row_lower: FloatArray
    row_upper: FloatArray
    start: IntArray
    index: IntArray
    value: FloatArray
    slack: IntArray
    """The variables that count missing units (u: unplaced replicas; z: placed) ..."""
    slack_units: FloatArray
    """... and the units each counts: 1 per unplaced replica, −n for a throughput-sized
    workload's z, where n is what its target needs of its fastest column ..."""
    units_offset: float
    """... plus Σ n: missing units = slack_units · slack + units_offset."""
    slack_workload: IntArray
    """The workload of each slack variable."""
    unplaced_var: IntArray
    """Per workload: its u variable, or -1."""
    placed_var: IntArray
    """Per workload: its z variable, or -1."""
    trivial: FloatArray
    """Everything unplaced: feasible, a start the solver can always improve on."""
    links: tuple[tuple[IntArray, IntArray, IntArray], ...]
    """Distinct-place indicators: (y variables, pair of each linked x, that x)."""


class _Rows:
    """Collects a sparse matrix as triplets, in bulk."""

    def __init__(self) -> None:
        self.rows: list[IntArray] = []
        self.cols: list[IntArray] = []
        self.vals: list[FloatArray] = []
        self.lower: list[FloatArray] = []
        self.upper: list[FloatArray] = []
        self.n = 0

    def add_rows(self, lower: FloatArray, upper: FloatArray) -> int:
        first = self.n
        self.lower.append(np.asarray(lower, dtype=np.float64))
        self.upper.append(np.asarray(upper, dtype=np.float64))
        self.n += len(lower)
        return first

    def add(self, rows: IntArray, cols: IntArray, vals: FloatArray | float) -> None:
        self.rows.append(np.asarray(rows, dtype=np.int64))
        self.cols.append(np.asarray(cols, dtype=np.int64))
        self.vals.append(np.broadcast_to(np.asarray(vals, dtype=np.float64), len(rows)))

    def csr(self) -> tuple[FloatArray, FloatArray, IntArray, IntArray, FloatArray]:
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)
        cols = np.concatenate(self.cols) if self.cols else np.zeros(0, np.int64)
        vals = np.concatenate(self.vals) if self.vals else np.zeros(0)
        order = np.argsort(rows, kind="stable")
        start = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=self.n), out=start[1:])
        lower = np.concatenate(self.lower) if self.lower else np.zeros(0)
        upper = np.concatenate(self.upper) if self.upper else np.zeros(0)
        return lower, upper, start, cols[order], vals[order]


_ROUNDING_LEVELS = 3


def _add_rounding_cuts(
    a: _Rows,
    d: _Demands,
    w: IntArray,
    x: IntArray,
    cost: FloatArray,
    tput: FloatArray,
    placed_var: IntArray,
) -> None:
    """Chvátal–Gomory rounding of each throughput row, at the throughput levels its
    cheapest tokens come from: Σ ⌈tput_j/u⌉·x_j ≥ ⌈target/u⌉·z. Valid for integer x
    and binary z; without them the LP relaxation buys fractions of replicas and the
    bound stays far below any placement."""
    on = d.throughput_sized[w]
    if not on.any():
        return
    ws, ts = w[on], tput[on]
    span_ids, pair = np.unique(np.stack([ws, ts.view(np.int64)]), axis=1, return_inverse=True)
    pair = pair.ravel()
    n_pairs = span_ids.shape[1]
    pair_w = span_ids[0]
    pair_t = span_ids[1].copy().view(np.float64)
    price = np.full(n_pairs, np.inf)
    np.minimum.at(price, pair, cost[on] / ts)
    order = np.lexsort((price, pair_w))
    group = _sorted_groups(pair_w[order])
    first = np.r_[0, np.flatnonzero(group[1:] != group[:-1]) + 1]
    rank = np.arange(n_pairs) - first[group]
    level_of = order[rank < _ROUNDING_LEVELS]
    if len(level_of) == 0:
        return
    levels_w, levels_t = pair_w[level_of], pair_t[level_of]
    need = np.ceil(d.target[levels_w] / levels_t - _EPS)
    rows = a.add_rows(np.zeros(len(level_of)), np.full(len(level_of), np.inf))
    a.add(rows + np.arange(len(level_of)), placed_var[levels_w], -need)
    # Entries: every column of the workload, once per level of that workload.
    start = np.searchsorted(levels_w, np.arange(len(d.replicas)))
    count = np.bincount(levels_w, minlength=len(d.replicas))
    reps = count[ws]
    col = np.repeat(np.flatnonzero(on), reps)
    ends = np.cumsum(reps)
    level = (
        np.repeat(start[ws], reps)
        + np.arange(int(ends[-1]) if len(ends) else 0)
        - np.repeat(ends - reps, reps)
    )
    a.add(rows + level, x[col], np.ceil(tput[col] / levels_t[level] - _EPS))


_PATTERN_LIMIT = 48
"""Most minimal patterns per throughput-sized workload; beyond, its rows are left out."""
_PATTERN_BOX = 4096
"""Most candidate patterns to enumerate per workload."""


def _minimal_patterns(levels: FloatArray, target: float) -> IntArray | None:
    """Every minimal replica count per throughput level (fastest first) that reaches
    ``target``: one replica fewer at any level used falls short. None when there are
    more than the limit (or too many to enumerate)."""
    reach = np.ceil(target / levels - _EPS).astype(np.int64)
    if math.prod(int(r) + 1 for r in reach[:-1]) > _PATTERN_BOX:  # Python ints: no overflow
        return None
    grids = np.meshgrid(*[np.arange(r + 1) for r in reach[:-1]], indexing="ij")
    head = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
    left = target - head @ levels[:-1]
    last = np.maximum(np.ceil(left / levels[-1] - _EPS), 0).astype(np.int64)
    counts = np.concatenate([head, last[:, None]], axis=1)
    total = counts @ levels
    # Minimal: dropping one replica of the slowest level used falls short.
    slowest_used = np.where(counts > 0, levels[None, :], np.inf).min(axis=1)
    minimal = (total >= target * (1 - 1e-12)) & (total - slowest_used < target * (1 - 1e-12))
    patterns: IntArray = np.unique(counts[minimal], axis=0)
    if len(patterns) > _PATTERN_LIMIT:
        return None
    return patterns


def _add_level_hulls(
    a: _Rows,
    d: _Demands,
    w: IntArray,
    x: IntArray,
    tput: FloatArray,
    placed_var: IntArray,
    new_vars: Callable[[int], IntArray],
) -> None:
    """The exact hull of each throughput target over its levels (the distinct
    throughputs of its columns), as an extended formulation: the replicas at each
    level cover a convex combination λ of the minimal patterns that reach the target,
    Σ_k λ_k = z, Σ_{j at level l} x_j ≥ Σ_k n_{k,l}·λ_k. Valid: a placement reaching
    the target covers some minimal pattern (take λ on it); and any x covering a
    combination reaches the target. Its LP is the convex hull of the integer counts,
    which the rounding rows only approach: with two levels the LP otherwise buys
    3.5 replicas of the cheaper one and half of the faster."""
    order = np.lexsort((-tput, w))
    ws, ts = w[order], tput[order]
    sized = d.throughput_sized[ws]
    ws, ts, cols = ws[sized], ts[sized], x[order][sized]
    if len(ws) == 0:
        return
    bounds = np.flatnonzero(np.r_[True, ws[1:] != ws[:-1], True])
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        wl = int(ws[start])
        levels, at = np.unique(-ts[start:end], return_inverse=True)
        levels = -levels
        if len(levels) < 2:
            continue  # the rounding row at its one level is the hull already
        patterns = _minimal_patterns(levels, float(d.target[wl]))
        if patterns is None:
            continue
        lam = new_vars(len(patterns))
        one = a.add_rows(np.zeros(1), np.zeros(1))
        a.add(np.full(len(lam), one), lam, 1.0)
        a.add(np.array([one]), placed_var[wl : wl + 1], -1.0)
        first = a.add_rows(np.zeros(len(levels)), np.full(len(levels), np.inf))
        a.add(first + at.ravel(), cols[start:end], 1.0)
        k, lv = np.nonzero(patterns)
        a.add(first + lv, lam[k], -patterns[k, lv].astype(np.float64))


def _shared_patterns(
    speed: FloatArray, spot: BoolArray, target: float, share: float
) -> IntArray | None:
    """Every minimal replica count per cell (a throughput ``speed`` on spot or on
    demand) that reaches ``target`` with at most ``share`` of its replicas on spot:
    one replica fewer in any cell used falls short of the target or breaks the share.
    None when there are more than the limit or too many to enumerate.

    A replica on spot counts only while it is needed for the target (one fewer on spot
    never breaks the share), so at most ⌈target / speed⌉ of a cell; one on demand is
    needed for the target or for the share, so at most that or the on-demand replicas
    the most spot replicas need."""
    reach = np.ceil(target / speed - _EPS).astype(np.int64)
    most_spot = int(reach[spot].max(initial=0))
    balance = math.ceil(most_spot * (1 - share) / share - _EPS)
    top = np.where(spot, reach, np.maximum(reach, balance))
    if math.prod(int(r) + 1 for r in top) > _SHARED_BOX:
        return None
    grids = np.meshgrid(*[np.arange(r + 1) for r in top], indexing="ij")
    counts = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
    reached = counts @ speed
    n_spot = counts[:, spot].sum(axis=1)
    total = counts.sum(axis=1)
    short = target * (1 - 1e-12)
    keep = (reached >= short) & (n_spot <= share * total + _EPS)
    for cell in range(len(speed)):
        used = counts[:, cell] > 0
        still = reached - speed[cell] >= short
        if spot[cell]:
            fewer_ok = still & (n_spot - 1 <= share * (total - 1) + _EPS)
        else:
            fewer_ok = still & (n_spot <= share * (total - 1) + _EPS)
        keep &= ~(used & fewer_ok)
    patterns: IntArray = counts[keep]
    if len(patterns) > _PATTERN_LIMIT:
        return None
    return patterns


_SHARED_BOX = 8192
"""Most candidate patterns to enumerate per workload for its spot share."""


def _add_share_hulls(
    a: _Rows,
    d: _Demands,
    w: IntArray,
    x: IntArray,
    tput: FloatArray,
    spot: BoolArray,
    placed_var: IntArray,
    new_vars: Callable[[int], IntArray],
) -> None:
    """The hull of each throughput target with its spot share (0 < s < 1), as
    :func:`_add_level_hulls` builds it over levels, here over cells of a level and a
    market: Σ_k λ_k = z, Σ_{j in cell c} x_j ≥ Σ_k n_{k,c}·λ_k over the minimal
    patterns n_k (:func:`_shared_patterns`). Valid: a placement reaching the target
    within its share covers some minimal pattern (drop replicas while it stays
    feasible). Too many patterns: the slower levels of a market are merged into
    faster ones (a merged cell counts its replicas at its fastest speed, so every
    placement still covers some pattern: valid, only looser), until few enough or
    one level per market is left (then the workload gets none)."""
    on = d.throughput_sized[w] & (d.spot_share[w] > 0) & (d.spot_share[w] < 1)
    if not on.any():
        return
    cols = np.flatnonzero(on)
    order = cols[np.lexsort((-tput[cols], w[cols]))]
    bounds = np.flatnonzero(np.r_[True, w[order][1:] != w[order][:-1], True])
    for first, last in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        mine = order[first:last]
        wl = int(w[mine[0]])
        share, target = float(d.spot_share[wl]), float(d.target[wl])
        market: list[bool] = spot[mine].tolist()
        if all(market) or not any(market):
            continue  # one market only: the share rows and level hulls do it
        # Per market its distinct speeds, fastest first; each column's cell is the
        # speed it counts at (its own, or a faster one it was merged into).
        counts_as: list[float] = tput[mine].tolist()
        patterns: IntArray | None = None
        while True:
            cells = sorted(set(zip(market, counts_as, strict=True)), key=lambda k: (k[0], -k[1]))
            speed = np.array([v for _, v in cells])
            on_spot = np.array([m for m, _ in cells], dtype=np.bool_)
            patterns = _shared_patterns(speed, on_spot, target, share)
            if patterns is not None:
                break
            # Merge the two closest speeds of one market (the slower into the faster).
            best, pair = math.inf, None
            for (m1, hi), (m2, lo) in itertools.pairwise(cells):
                if m1 == m2 and hi / lo < best:
                    best, pair = hi / lo, (m1, hi, lo)
            if pair is None:
                break
            mk, hi, lo = pair
            counts_as = [
                hi if m == mk and v == lo else v for m, v in zip(market, counts_as, strict=True)
            ]
        if patterns is None or len(patterns) < 2:
            continue
        index = {cell: i for i, cell in enumerate(cells)}
        cell_of = np.array([index[k] for k in zip(market, counts_as, strict=True)])
        lam = new_vars(len(patterns))
        one = a.add_rows(np.zeros(1), np.zeros(1))
        a.add(np.full(len(lam), one), lam, 1.0)
        a.add(np.array([one]), placed_var[wl : wl + 1], -1.0)
        row = a.add_rows(np.zeros(len(speed)), np.full(len(speed), np.inf))
        a.add(row + cell_of, x[mine], 1.0)
        k, cell = np.nonzero(patterns)
        a.add(row + cell, lam[k], -patterns[k, cell].astype(np.float64))


def _add_share_rounding(
    a: _Rows,
    d: _Demands,
    w: IntArray,
    x: IntArray,
    tput: FloatArray,
    spot: BoolArray,
    provider: IntArray,
    placed_var: IntArray,
) -> None:
    """Rounded share rows for throughput targets. Every placement has at least
    N = ⌈target / fastest⌉ replicas, so at least (1 − s)·N are off spot (s: the spot
    share) and off any one provider (s: the provider share); whole replicas, so the
    ceiling: Σ_{j off spot} x_j ≥ ⌈(1 − s)·N⌉·z. The LP otherwise keeps the share with
    fractions of an on-demand replica."""
    n_w = len(d.replicas)
    fastest = np.zeros(n_w)
    np.maximum.at(fastest, w, tput)
    with np.errstate(divide="ignore", invalid="ignore"):
        fewest = np.where(fastest > 0, np.ceil(d.target / fastest - _EPS), 0.0)
    for share, key in ((d.spot_share, spot.astype(np.int64)), (d.provider_share, provider)):
        need = np.ceil((1 - share) * fewest - _EPS)
        on = d.throughput_sized[w] & (share[w] < 1) & (need[w] >= 1)
        if not on.any():
            continue
        # One row per (workload, key) with the workload's columns of other keys; for
        # the spot share only the key "spot" (1).
        span = int(key.max()) + 1
        pair_ids = np.unique(w[on] * span + key[on])
        if share is d.spot_share:
            pair_ids = pair_ids[pair_ids % span == 1]
        pair_w = pair_ids // span
        if len(pair_ids) == 0:
            continue
        rows = a.add_rows(np.zeros(len(pair_ids)), np.full(len(pair_ids), np.inf))
        a.add(rows + np.arange(len(pair_ids)), placed_var[pair_w], -need[pair_w])
        # Columns of each workload against each of its pairs, where the key differs.
        start = np.searchsorted(pair_w, np.arange(n_w))
        count = np.bincount(pair_w, minlength=n_w)
        cols_on = np.flatnonzero(on)
        reps = count[w[cols_on]]
        col_rep = np.repeat(cols_on, reps)
        ends = np.cumsum(reps)
        within = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - reps, reps)
        pair_of = np.repeat(start[w[cols_on]], reps) + within
        other = key[col_rep] != pair_ids[pair_of] % span
        a.add(rows + pair_of[other], x[col_rep[other]], 1.0)


def _add_mix_cuts(
    a: _Rows,
    d: _Demands,
    w: IntArray,
    x: IntArray,
    tput: FloatArray,
    spot: BoolArray,
    placed_var: IntArray,
) -> None:
    """Chvátal–Gomory cuts of a throughput target and its spot share together. With
    spot share s, Σ_spot x ≤ s·Σ x, i.e. (1 − s)·Σ_spot x − s·Σ_od x ≤ 0; μ times that
    subtracted from the target row Σ t_j·x_j ≥ target gives Σ a_j·x_j ≥ target with
    a_j = t_j − μ(1 − s) on spot and t_j + μ·s on demand; divided by u and rounded up
    (x ≥ 0 integer; a negative coefficient may be raised to 0), and times z (a
    workload left unplaced, z = 0, keeps the row with any x):
    Σ max(⌈a_j/u⌉, 0)·x_j ≥ ⌈target/u⌉·z. One cut per pair of a spot level t_s and a
    slower on-demand level t_o, with μ = t_s − t_o so both weigh u = s·t_s + (1 − s)·t_o:
    the mix the LP relaxation otherwise buys in fractions (5.7 spot and 5.7 on-demand
    replicas where 6 and 6 are needed) counts whole replicas of that mix."""
    on = d.throughput_sized[w] & (d.spot_share[w] > 0) & (d.spot_share[w] < 1)
    if not on.any():
        return
    cols = np.flatnonzero(on)
    order = cols[np.argsort(w[cols], kind="stable")]
    bounds = np.flatnonzero(np.r_[True, w[order][1:] != w[order][:-1], True])
    for first, last in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        mine = order[first:last]
        wl = int(w[mine[0]])
        share, target = float(d.spot_share[wl]), float(d.target[wl])
        t, is_spot = tput[mine], spot[mine]
        for t_s in np.unique(t[is_spot]).tolist():
            for t_o in np.unique(t[~is_spot]).tolist():
                if t_o >= t_s:
                    continue
                mu = t_s - t_o
                u = share * t_s + (1 - share) * t_o
                coef = np.where(is_spot, t - mu * (1 - share), t + mu * share) / u
                coef = np.maximum(np.ceil(coef - 1e-9), 0.0)
                need = math.ceil(target / u - 1e-9)
                row = a.add_rows(np.zeros(1), np.full(1, np.inf))
                used = coef > 0
                a.add(np.full(int(used.sum()), row), x[mine[used]], coef[used])
                a.add(np.array([row]), placed_var[wl : wl + 1], -float(need))


def _build(p: Problem, d: _Demands, c: _Candidates, cols: IntArray) -> _Model:
    n_w = p.n_workloads
    m = len(cols)
    w = c.workload[cols]
    o = c.offer[cols]
    cost = c.cost[cols]
    tput = c.throughput[cols]
    gpus = d.gpus[w]
    region = p.offer_region[o]
    provider = p.offer_provider[o]
    spot = p.offer_spot[o]
    x = np.arange(m, dtype=np.int64)
    active = np.bincount(w, minlength=n_w) > 0
    sized = d.throughput_sized
    spread = active & ((d.min_regions > 1) | (d.min_providers > 1))

    var_cost = [cost]
    var_lower = [np.zeros(m)]
    var_upper = [_upper(p, d, c, cols)]
    var_int = [np.ones(m, dtype=np.int64)]
    n_vars = m

    def new_vars(
        count: int, lo: float, hi: FloatArray | float, obj: FloatArray | float, kind: int
    ) -> IntArray:
        nonlocal n_vars
        first = n_vars
        n_vars += count
        var_cost.append(np.broadcast_to(np.asarray(obj, np.float64), count).copy())
        var_lower.append(np.full(count, lo))
        var_upper.append(np.broadcast_to(np.asarray(hi, np.float64), count).copy())
        var_int.append(np.full(count, kind, dtype=np.int64))
        return np.arange(first, first + count, dtype=np.int64)

    unplaced_var = np.full(n_w, -1, dtype=np.int64)
    placed_var = np.full(n_w, -1, dtype=np.int64)
    by_replicas = np.flatnonzero(active & ~sized)
    # Integer, as x and the replica count make it: phase one's objective is then
    # integral, and HiGHS rounds its bound up.
    unplaced_var[by_replicas] = new_vars(len(by_replicas), 0.0, d.replicas[by_replicas], 0.0, 1)
    by_tput = np.flatnonzero(active & sized)
    max_tput = np.zeros(n_w)
    np.maximum.at(max_tput, w, tput)
    weight = np.ceil(d.target / np.maximum(max_tput, _EPS) - _EPS)
    placed_var[by_tput] = new_vars(len(by_tput), 0.0, 1.0, 0.0, 1)
    spread_replica = np.flatnonzero(spread & ~sized)
    placed_var[spread_replica] = new_vars(len(spread_replica), 0.0, 1.0, 0.0, 1)

    a = _Rows()
    # Demand.
    row = np.full(n_w, -1, dtype=np.int64)
    row[by_replicas] = a.add_rows(d.replicas[by_replicas], d.replicas[by_replicas]) + np.arange(
        len(by_replicas)
    )
    a.add(row[by_replicas], unplaced_var[by_replicas], 1.0)
    row[by_tput] = a.add_rows(np.zeros(len(by_tput)), np.full(len(by_tput), np.inf)) + np.arange(
        len(by_tput)
    )
    a.add(row[by_tput], placed_var[by_tput], -1.0)
    # Throughput rows in units of the target: Σ (tput/target)·x ≥ z.
    a.add(row[w], x, np.where(sized[w], tput / np.where(sized[w], d.target[w], 1.0), 1.0))
    _add_rounding_cuts(a, d, w, x, cost, tput, placed_var)
    _add_level_hulls(a, d, w, x, tput, placed_var, lambda k: new_vars(k, 0.0, 1.0, 0.0, 0))
    _add_share_rounding(a, d, w, x, tput, spot, provider, placed_var)
    _add_mix_cuts(a, d, w, x, tput, spot, placed_var)
    _add_share_hulls(a, d, w, x, tput, spot, placed_var, lambda k: new_vars(k, 0.0, 1.0, 0.0, 0))
    # The fewest replicas of a throughput-sized workload, if it sets more than one:
    # Σ x ≥ min_replicas · z.
    counted = np.flatnonzero(active & sized & (d.min_count > 1))
    if len(counted):
        first = a.add_rows(np.zeros(len(counted)), np.full(len(counted), np.inf))
        count_of = np.full(n_w, -1, dtype=np.int64)
        count_of[counted] = first + np.arange(len(counted))
        on = count_of[w] >= 0
        a.add(count_of[w[on]], x[on], 1.0)
        a.add(count_of[counted], placed_var[counted], -d.min_count[counted])
    # The total of a throughput-sized workload with share rules (see _prepare).
    capped_total = np.flatnonzero(active & np.isfinite(c.total_cap))
    if len(capped_total):
        first = a.add_rows(np.full(len(capped_total), -np.inf), c.total_cap[capped_total])
        total_row = np.full(n_w, -1, dtype=np.int64)
        total_row[capped_total] = first + np.arange(len(capped_total))
        on = total_row[w] >= 0
        a.add(total_row[w[on]], x[on], 1.0)
    # A spread replica-sized workload places nothing unless placed (z = 1).
    if len(spread_replica):
        link = a.add_rows(np.full(len(spread_replica), -np.inf), np.zeros(len(spread_replica)))
        link_row = np.full(n_w, -1, dtype=np.int64)
        link_row[spread_replica] = link + np.arange(len(spread_replica))
        on = spread[w] & ~sized[w]
        a.add(link_row[w[on]], x[on], 1.0)
        a.add(link_row[spread_replica], placed_var[spread_replica], -d.replicas[spread_replica])
    # Distinct regions and providers: y ≤ Σx per (workload, place), Σy ≥ d·z.
    links: list[tuple[IntArray, IntArray, IntArray]] = []
    for need, place in ((d.min_regions, region), (d.min_providers, provider)):
        on = need[w] > 1
        if not on.any():
            continue
        span = int(place.max()) + 1
        pair_ids, pair = np.unique(w[on] * span + place[on], return_inverse=True)
        pair_w = pair_ids // span
        y = new_vars(len(pair_ids), 0.0, 1.0, 0.0, 0)
        link = a.add_rows(np.full(len(pair_ids), -np.inf), np.zeros(len(pair_ids)))
        a.add(link + np.arange(len(pair_ids)), y, 1.0)
        a.add(link + pair, x[on], -1.0)
        links.append((y, pair.astype(np.int64), x[on]))
        needing = np.unique(pair_w)
        count_row = np.full(n_w, -1, dtype=np.int64)
        count_row[needing] = a.add_rows(np.zeros(len(needing)), np.full(len(needing), np.inf)) + (
            np.arange(len(needing))
        )
        a.add(count_row[pair_w], y, 1.0)
        a.add(count_row[needing], placed_var[needing], -need[needing].astype(np.float64))
    # Provider share: Σ_{j∈w,p} x_j − s·Σ_{j∈w} x_j ≤ 0 for each provider p of w.
    on = d.provider_share[w] < 1
    if on.any():
        span = int(provider.max()) + 1
        pair_ids = np.unique(w[on] * span + provider[on])
        pair_w, pair_p = pair_ids // span, pair_ids % span
        first = a.add_rows(np.full(len(pair_ids), -np.inf), np.zeros(len(pair_ids)))
        start = np.searchsorted(pair_w, np.arange(n_w))
        count = np.bincount(pair_w, minlength=n_w)
        cols_on = x[on]
        reps = count[w[on]]
        col_rep = np.repeat(cols_on, reps)
        ends = np.cumsum(reps)
        within = np.arange(int(ends[-1])) - np.repeat(ends - reps, reps)
        pair_of = np.repeat(start[w[on]], reps) + within
        coef = (provider[col_rep] == pair_p[pair_of]) - d.provider_share[w[col_rep]]
        a.add(first + pair_of, col_rep, coef)
        # The same rule counted for a full placement, ⌊share·replicas⌋: implied for
        # integers, but it keeps the LP relaxation from splitting replicas in halves.
        capped = ~sized[pair_w]
        if capped.any():
            cap_rows = a.add_rows(
                np.full(int(capped.sum()), -np.inf), d.provider_cap[pair_w[capped]]
            )
            cap_row = np.full(len(pair_ids), -1, dtype=np.int64)
            cap_row[capped] = cap_rows + np.arange(int(capped.sum()))
            key = w[on] * span + provider[on]
            pair_of_col = np.searchsorted(pair_ids, key)
            has = cap_row[pair_of_col] >= 0
            a.add(cap_row[pair_of_col[has]], x[on][has], 1.0)
    # Spot share: Σ_{spot} x − s·Σ x ≤ 0.
    has_spot = np.bincount(w[spot], minlength=n_w) > 0
    spot_rows = np.flatnonzero(active & has_spot & (d.spot_share < 1))
    if len(spot_rows):
        first = a.add_rows(np.full(len(spot_rows), -np.inf), np.zeros(len(spot_rows)))
        spot_row = np.full(n_w, -1, dtype=np.int64)
        spot_row[spot_rows] = first + np.arange(len(spot_rows))
        on = spot_row[w] >= 0
        a.add(spot_row[w[on]], x[on], spot[on] - d.spot_share[w[on]])
        capped = spot_rows[~sized[spot_rows]]
        if len(capped):
            first = a.add_rows(np.full(len(capped), -np.inf), d.spot_cap[capped])
            cap_row = np.full(n_w, -1, dtype=np.int64)
            cap_row[capped] = first + np.arange(len(capped))
            on = spot & (cap_row[w] >= 0)
            a.add(cap_row[w[on]], x[on], 1.0)
    # Capacity per bounded offer.
    bounded = np.isfinite(c.capacity[o])
    if bounded.any():
        offers, which = np.unique(o[bounded], return_inverse=True)
        first = a.add_rows(np.full(len(offers), -np.inf), c.capacity[offers])
        a.add(first + which, x[bounded], gpus[bounded])
    # Budgets.
    group = d.budget_group[w]
    budgeted = group >= 0
    if budgeted.any():
        groups, which = np.unique(group[budgeted], return_inverse=True)
        limits = np.array(p.budgets, dtype=np.float64)[groups]
        first = a.add_rows(np.full(len(groups), -np.inf), limits)
        a.add(first + which, x[budgeted], cost[budgeted])

    row_lower, row_upper, start_, index, value = a.csr()
    slack = np.concatenate([unplaced_var[by_replicas], placed_var[by_tput]])
    slack_units = np.concatenate([np.ones(len(by_replicas)), -weight[by_tput]])
    trivial = np.zeros(n_vars)
    trivial[unplaced_var[by_replicas]] = d.replicas[by_replicas]
    return _Model(
        cols=cols,
        n_vars=n_vars,
        cost=np.concatenate(var_cost),
        lower=np.concatenate(var_lower),
        upper=np.concatenate(var_upper),
        integer=np.concatenate(var_int),
        row_lower=row_lower,
        row_upper=row_upper,
        start=start_,
        index=index,
        value=value,
        slack=slack,
        slack_units=slack_units,
        units_offset=float(weight[by_tput].sum()),
        slack_workload=np.concatenate([by_replicas, by_tput]),
        unplaced_var=unplaced_var,
        placed_var=placed_var,
        trivial=trivial,
        links=tuple(links),
    )


# ----------------------------------------------------------------------------- start


@dataclass
class _Tally:
    """One workload's replicas so far, while the greedy start places it."""

    regions: dict[int, int] = field(default_factory=dict)
    providers: dict[int, int] = field(default_factory=dict)
    spot: int = 0
    placed: int = 0
    reached: float = 0.0

    def add(self, region: int, provider: int, spot: bool, throughput: float) -> None:
        self.regions[region] = self.regions.get(region, 0) + 1
        self.providers[provider] = self.providers.get(provider, 0) + 1
        self.spot += spot
        self.placed += 1
        self.reached += throughput

    def keeps_rules(self, d: _Demands, w: int) -> bool:
        """Something is placed and it keeps every rule of workload ``w`` alone."""
        return bool(
            self.placed > 0
            and len(self.regions) >= d.min_regions[w]
            and len(self.providers) >= d.min_providers[w]
            and max(self.providers.values()) <= d.provider_share[w] * self.placed + _EPS
            and self.spot <= d.spot_share[w] * self.placed + _EPS
            and (not d.throughput_sized[w] or self.reached >= d.target[w] * (1 - 1e-9))
            and self.placed >= d.min_count[w]
        )


def _greedy_start(
    p: Problem, d: _Demands, c: _Candidates, model: _Model, kept: FloatArray | None = None
) -> FloatArray:
    """A feasible placement to start HiGHS from (replicas per model column), so that
    it begins near the optimum instead of from "nothing placed". Workload by workload,
    cheapest per unit first, one replica at a time on the cheapest column with room
    and budget left: in a new region or provider while the spread is short; for a
    replica count, within what the share rules allow a full placement; for a
    throughput target, on a provider and market still within their shares when one
    is, until the target is reached and the shares are kept. A workload whose result
    breaks a rule (a partial placement may) is left out. ``kept``: replicas already
    placed (of workloads placed whole, within the rows together), which stay and are
    placed first; only the other workloads are placed greedily. Only a start: the
    solve decides."""
    cols = model.cols
    n = len(cols)
    w_of = c.workload[cols]
    offer = c.offer[cols].tolist()
    cost = c.cost[cols].tolist()
    tput = c.throughput[cols].tolist()
    upper = model.upper[:n].tolist()
    region = p.offer_region[c.offer[cols]].tolist()
    provider = p.offer_provider[c.offer[cols]].tolist()
    spot = p.offer_spot[c.offer[cols]].tolist()
    free = c.capacity.tolist()
    left = [*p.budgets, math.inf]
    x = [0] * n
    done = np.zeros(len(d.replicas), dtype=np.bool_)
    if kept is not None:
        x = np.rint(kept).astype(np.int64).tolist()
        done[w_of[kept > 0.5]] = True
        free, left = _Columns(p, d, c, model).room(p, d, c, kept)

    sized = d.throughput_sized
    price = np.where(sized[w_of], c.cost[cols] / np.maximum(c.throughput[cols], _EPS), c.cost[cols])
    per_unit = np.full(len(d.replicas), np.inf)
    np.minimum.at(per_unit, w_of, price)
    # Each workload's columns, cheapest per unit first: col_order[starts[w]:starts[w + 1]].
    col_order = np.lexsort((price, w_of))
    starts = np.searchsorted(w_of[col_order], np.arange(len(d.replicas) + 1))

    present = np.unique(w_of)
    for w in present[np.argsort(per_unit[present], kind="stable")].tolist():
        mine = col_order[starts[w] : starts[w + 1]].tolist()
        if not mine or done[w]:
            continue
        gpus = float(d.gpus[w])
        group = int(d.budget_group[w])
        by_tput = bool(sized[w])
        most = float(c.total_cap[w]) if by_tput else float(d.replicas[w])
        per_provider = math.inf if by_tput else float(d.provider_cap[w])
        on_spot = math.inf if by_tput else float(d.spot_cap[w])
        provider_share, spot_share = float(d.provider_share[w]), float(d.spot_share[w])
        need_r, need_p = int(d.min_regions[w]), int(d.min_providers[w])
        t = _Tally()
        taken: list[int] = []
        while t.placed < most and not (by_tput and t.keeps_rules(d, w)):
            regions, providers = t.regions, t.providers
            placed, n_spot = t.placed, t.spot
            short_r, short_p = len(regions) < need_r, len(providers) < need_p
            best, best_key = -1, (-1, -1)
            for j in mine:
                if (
                    x[j] >= upper[j]
                    or free[offer[j]] < gpus
                    or left[group] < cost[j]
                    or providers.get(provider[j], 0) >= per_provider
                    or (spot[j] and n_spot >= on_spot)
                ):
                    continue
                gain = (short_r and region[j] not in regions) + (
                    short_p and provider[j] not in providers
                )
                safe = (
                    providers.get(provider[j], 0) + 1 <= provider_share * (placed + 1) + _EPS
                    and n_spot + spot[j] <= spot_share * (placed + 1) + _EPS
                )
                key = (gain, int(safe and by_tput))
                if key > best_key:
                    best, best_key = j, key
            if best < 0:
                break
            x[best] += 1
            taken.append(best)
            free[offer[best]] -= gpus
            left[group] -= cost[best]
            t.add(region[best], provider[best], spot[best], tput[best])
        if not t.keeps_rules(d, w):
            for j in taken:
                x[j] -= 1
                free[offer[j]] += gpus
                left[group] += cost[j]
    return np.array(x, dtype=np.float64)


class _Columns:
    """The model's columns as Python lists, for the start heuristics' loops, and the
    room and budget a placement leaves."""

    def __init__(self, p: Problem, d: _Demands, c: _Candidates, model: _Model) -> None:
        cols = model.cols
        n = len(cols)
        self.workload = c.workload[cols]
        offers = c.offer[cols]
        self.offer: list[int] = offers.tolist()
        self.cost: list[float] = c.cost[cols].tolist()
        self.tput: list[float] = c.throughput[cols].tolist()
        self.upper: list[float] = model.upper[:n].tolist()
        self.region: list[int] = p.offer_region[offers].tolist()
        self.provider: list[int] = p.offer_provider[offers].tolist()
        self.spot: list[bool] = p.offer_spot[offers].tolist()
        # Each workload's columns (only those of the model's workloads: a part's
        # model holds a few of many).
        order = np.argsort(self.workload, kind="stable")
        present, first = np.unique(self.workload[order], return_index=True)
        self.of: dict[int, list[int]] = {
            w: chunk.tolist()
            for w, chunk in zip(present.tolist(), np.split(order, first[1:]), strict=True)
        }
        self.present: IntArray = present
        self.gpus: list[float] = d.gpus.tolist()
        self.group: list[int] = d.budget_group.tolist()

    def room(
        self, p: Problem, d: _Demands, c: _Candidates, x: FloatArray
    ) -> tuple[list[float], list[float]]:
        """GPUs free per offer and budget left per group (last: no group) beside ``x``."""
        gpus = d.gpus[self.workload] * x
        used = np.bincount(
            np.asarray(self.offer, dtype=np.int64), weights=gpus, minlength=len(c.capacity)
        )
        group = np.where(
            d.budget_group[self.workload] >= 0, d.budget_group[self.workload], len(p.budgets)
        )
        spent = np.bincount(group, weights=np.asarray(self.cost) * x, minlength=len(p.budgets) + 1)
        return (c.capacity - used).tolist(), (np.array([*p.budgets, math.inf]) - spent).tolist()

    def keeps_rules(self, d: _Demands, w: int, counts: dict[int, int]) -> bool:
        """Replicas ``counts`` (column → replicas) keep every rule of workload ``w``:
        for a replica count, all of it."""
        t = _Tally()
        for j, k in counts.items():
            for _ in range(k):
                t.add(self.region[j], self.provider[j], self.spot[j], self.tput[j])
        if not d.throughput_sized[w] and t.placed != int(d.replicas[w]):
            return False
        return t.keeps_rules(d, w)


def _lp_start(
    p: Problem, d: _Demands, c: _Candidates, model: _Model, *, time_limit: float
) -> tuple[FloatArray | None, float, highspy.Highs | None]:
    """A start from the LP relaxation (real cost plus a penalty per missing unit),
    and the seconds HiGHS spent: workloads it places in whole replicas keep them;
    each other one takes the cheapest rounding of its fractional columns (each one
    replica below its floor to one above its ceiling) that keeps its rules, the room
    and the budget left; the rest are placed greedily (:func:`_greedy_start`), and a
    local search improves the result (:func:`_improve`). None when the LP is not
    solved in time. Also HiGHS with the solved LP (see :func:`_fewest_bound`). Only a
    start: with the rows that tighten the relaxation most
    workloads come out whole, and HiGHS's own rounding finds as good only after its
    root cut loop."""
    h = _highs(model, time_limit=time_limit, mip_rel_gap=0.0)
    cost, _ = _penalised(model)
    h.changeColsCost(model.n_vars, np.arange(model.n_vars, dtype=np.int32), cost)
    h.setOptionValue("solve_relaxation", True)
    h.setOptionValue("presolve", "off")  # HiGHS's presolve costs more than it saves on these LPs
    h.run()
    seconds = float(h.getRunTime())
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None, seconds, None
    m = len(model.cols)
    lp = np.asarray(h.getSolution().col_value, dtype=np.float64)[:m]
    lp = np.maximum(lp, 0.0)
    cs = _Columns(p, d, c, model)
    fractional = np.abs(lp - np.rint(lp)) > 1e-6
    frac_w = np.bincount(cs.workload[fractional], minlength=len(d.replicas)) > 0
    x = np.zeros(m)
    free, left = cs.room(p, d, c, x)
    # Whole workloads first (together they keep every shared row, as in the LP), then
    # the others, fewest fractional columns first.
    n_frac = np.bincount(cs.workload[fractional], minlength=len(d.replicas))
    for w in cs.present[np.argsort(n_frac[cs.present], kind="stable")].tolist():
        mine = cs.of[w]
        if not mine:
            continue
        base = np.floor(lp[mine] + 1e-6)
        if not frac_w[w] and base.sum() == 0:
            continue
        at = [i for i, j in enumerate(mine) if fractional[j]]
        steps = (-1, 0, 1, 2) if len(at) <= 3 else (0, 1) if len(at) <= 8 else (0,)
        best: list[int] | None = None
        best_cost = math.inf
        g, group = cs.gpus[w], cs.group[w]
        for delta in itertools.product(steps, repeat=len(at)):
            counts = base.copy()
            counts[at] += delta
            if (counts < 0).any() or (counts > model.upper[mine]).any():
                continue
            spend = float(counts @ np.asarray([cs.cost[j] for j in mine]))
            if spend >= best_cost or spend > left[group] + _EPS:
                continue
            need: dict[int, float] = {}
            for j, k in zip(mine, counts.tolist(), strict=True):
                if k > 0:
                    need[cs.offer[j]] = need.get(cs.offer[j], 0.0) + k * g
            if any(free[o] < gpus - _EPS for o, gpus in need.items()):
                continue
            placed = {j: int(k) for j, k in zip(mine, counts.tolist(), strict=True) if k > 0}
            if cs.keeps_rules(d, w, placed):
                best, best_cost = counts.astype(np.int64).tolist(), spend
        if best is None:
            continue
        for j, k in zip(mine, best, strict=True):
            if k:
                x[j] = k
                free[cs.offer[j]] -= k * g
        left[group] -= best_cost
    rest = np.bincount(cs.workload, weights=x, minlength=len(d.replicas)) < 0.5
    rest &= np.bincount(cs.workload, minlength=len(d.replicas)) > 0
    if rest.any():
        x, spent = _place_rest(p, d, c, model, cs, x, rest, time_limit=time_limit - seconds)
        seconds += spent
    x = _greedy_start(p, d, c, model, kept=x)
    # The workloads the LP placed whole stay as it placed them (its optimum given
    # the others); the rounded and the rest are searched.
    whole = ~frac_w & ~rest
    return _improve(p, d, c, model, x, cs, ~whole), seconds, h


def _place_rest(
    p: Problem,
    d: _Demands,
    c: _Candidates,
    model: _Model,
    cs: _Columns,
    x: FloatArray,
    rest: BoolArray,
    *,
    time_limit: float,
) -> tuple[FloatArray, float]:
    """The workloads ``rest`` placed by a small MILP in the room and budgets the
    placement ``x`` of the others leaves (the real cost plus a penalty per missing
    unit), and the seconds spent; ``x`` unchanged if none is found in time."""
    if time_limit <= 0:
        return x, 0.0
    free, left = cs.room(p, d, c, x)
    room = dataclasses.replace(c, capacity=np.maximum(np.asarray(free), 0.0))
    budgets = [max(b, 0.0) for b in left[:-1]]
    mine = np.flatnonzero(rest[cs.workload])
    # A copy with the budgets left, not re-checked: the arrays are the checked ones.
    within = copy.copy(p)
    object.__setattr__(within, "budgets", tuple(budgets))
    sub = _build(within, d, room, model.cols[mine])
    h = _highs(sub, time_limit=time_limit, mip_rel_gap=_START_GAP)
    cost, _ = _penalised(sub)
    h.changeColsCost(sub.n_vars, np.arange(sub.n_vars, dtype=np.int32), cost)
    run = _run_once(h, sub.trivial)
    if run.values is sub.trivial:
        return x, run.seconds
    x = x.copy()
    x[mine] = np.rint(run.values[: len(mine)])
    # A throughput-sized workload the MILP leaves unplaced (z = 0) places nothing.
    unplaced = np.zeros(len(d.replicas), dtype=np.bool_)
    has_z = sub.placed_var >= 0
    unplaced[has_z] = run.values[sub.placed_var[has_z]] < 0.5
    x[mine[unplaced[cs.workload[mine]]]] = 0.0
    return x, run.seconds


_START_GAP = 0.001
"""Gap at which the start's small MILPs stop."""


def _improve(
    p: Problem,
    d: _Demands,
    c: _Candidates,
    model: _Model,
    x: FloatArray,
    cs: _Columns,
    which: BoolArray,
) -> FloatArray:
    """A local search on a start, workload by workload (those ``which``): drop a
    replica of a throughput target, or move one to a cheaper column, while the
    workload's rules, the room and the budget allow; the best move first, until none
    helps."""
    x = x.copy()
    free, left = cs.room(p, d, c, x)
    for w in cs.present[which[cs.present]].tolist():
        mine = cs.of[w]
        placed = {j: int(x[j]) for j in mine if x[j] > 0.5}
        if not placed:
            continue
        g, group = cs.gpus[w], cs.group[w]
        sized = bool(d.throughput_sized[w])
        while True:
            best: tuple[int, int] | None = None
            gain = 1e-9
            for j in [j for j, k in placed.items() if k > 0]:
                placed[j] -= 1
                if sized and cs.cost[j] > gain and cs.keeps_rules(d, w, placed):
                    best, gain = (j, -1), cs.cost[j]
                for k in mine:
                    saving = cs.cost[j] - cs.cost[k]
                    if (
                        k == j
                        or saving <= gain
                        or x[k] >= cs.upper[k] - _EPS
                        or free[cs.offer[k]] < g - _EPS
                    ):
                        continue
                    placed[k] = placed.get(k, 0) + 1
                    if cs.keeps_rules(d, w, placed):
                        best, gain = (j, k), saving
                    placed[k] -= 1
                placed[j] += 1
            if best is None:
                break
            j, k = best
            placed[j] -= 1
            x[j] -= 1
            free[cs.offer[j]] += g
            left[group] += cs.cost[j]
            if k >= 0:
                placed[k] = placed.get(k, 0) + 1
                x[k] += 1
                free[cs.offer[k]] -= g
                left[group] -= cs.cost[k]
    return x


# ---------------------------------------------------------------------------- solving


@dataclass
class _Run:
    values: FloatArray
    optimal: bool
    time_limited: bool
    gap: float
    seconds: float
    solves: int = 1
    bound: float = -math.inf
    """HiGHS's dual bound on the objective solved."""
    phase: int = 2
    """The phase the run ended in: 1 when time ran out in phase one (``gap`` and
    ``bound`` are then of the missing units), else 2 (of the cost)."""
    whole: bool = False
    """Stopped because the whole problem was within the gap (see :class:`_Whole`)."""


def _highs(
    model: _Model, *, time_limit: float, mip_rel_gap: float, mip_abs_gap: float = 0.0
) -> highspy.Highs:
    """HiGHS with the model, minimising its real cost."""
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    _set_gaps(h, mip_rel_gap, mip_abs_gap)
    h.setOptionValue("time_limit", max(time_limit, 1e-3))
    h.passModel(
        model.n_vars,
        len(model.row_lower),
        len(model.index),
        int(highspy.MatrixFormat.kRowwise),
        int(highspy.ObjSense.kMinimize),
        0.0,
        model.cost,
        model.lower,
        np.where(np.isinf(model.upper), highspy.kHighsInf, model.upper),
        np.where(np.isinf(model.row_lower), -highspy.kHighsInf, model.row_lower),
        np.where(np.isinf(model.row_upper), highspy.kHighsInf, model.row_upper),
        model.start.astype(np.int32),
        model.index.astype(np.int32),
        model.value,
        model.integer.astype(np.int32),
    )
    return h


def _set_gaps(h: highspy.Highs, mip_rel_gap: float, mip_abs_gap: float) -> None:
    h.setOptionValue("mip_rel_gap", mip_rel_gap)
    # 1e-6 is HiGHS's own default.
    h.setOptionValue("mip_abs_gap", mip_abs_gap if mip_abs_gap > 0 else 1e-6)


def _count_missing(h: highspy.Highs, model: _Model) -> None:
    """Make the objective the number of missing units (phase one's): integral, so
    HiGHS rounds its bound up, and a gap below one unit is none."""
    h.changeColsCost(model.n_vars, np.arange(model.n_vars, dtype=np.int32), _units_cost(model))
    h.changeObjectiveOffset(model.units_offset)
    _set_gaps(h, 0.0, 0.5)


def _units_cost(model: _Model) -> FloatArray:
    cost = np.zeros(model.n_vars)
    cost[model.slack] = model.slack_units
    return cost


def _missing(model: _Model, values: FloatArray) -> float:
    """Missing units of a solution: unplaced replicas, and for each throughput target
    left unplaced what it needs of its fastest column."""
    return float(model.slack_units @ values[model.slack]) + model.units_offset


def _run_once(h: highspy.Highs, start: FloatArray) -> _Run:
    h.setSolution(len(start), np.arange(len(start), dtype=np.int32), start)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    values = np.asarray(h.getSolution().col_value, dtype=np.float64)
    if len(values) != len(start) or info.primal_solution_status != 2:  # kSolutionStatusFeasible
        values = start
    return _Run(
        values=values,
        optimal=status == highspy.HighsModelStatus.kOptimal,
        time_limited=status == highspy.HighsModelStatus.kTimeLimit,
        gap=float(info.mip_gap) if math.isfinite(info.mip_gap) else math.inf,
        seconds=float(h.getRunTime()),
        bound=float(info.mip_dual_bound),
    )


def _budget_floors(
    p: Problem,
    d: _Demands,
    c: _Candidates,
    model: _Model,
    start: FloatArray,
    time_limit: float,
) -> tuple[list[tuple[IntArray, FloatArray, float]], float]:
    """Rows ``Σ missing units of group b ≥ L_b``, one per budget group the start
    leaves short, and the seconds spent finding them.

    ``L_b`` is the fewest missing units the group's members can reach on their own:
    the same model restricted to them (their rows, their budget, the capacity rows of
    their offers), which drops only rows, so it is a relaxation and its bound holds for
    every placement of the whole problem. Each budget is a knapsack whose LP bound
    is a fraction of a replica off; the whole problem's LP sums those fractions over
    every group, and branching closes them only one group at a time — these small
    solves close each at once."""
    cols = model.cols
    m = len(cols)
    w_of = c.workload[cols]
    short = np.zeros(len(d.replicas), dtype=np.bool_)
    units = model.slack_units * start[model.slack]
    lacking = np.where(model.slack_units > 0, units, units - model.slack_units)
    short[model.slack_workload[lacking > 0.5]] = True
    groups = np.unique(d.budget_group[short & (d.budget_group >= 0)])
    slack_group = d.budget_group[model.slack_workload]
    rows: list[tuple[IntArray, FloatArray, float]] = []
    seconds = 0.0
    for i, b in enumerate(groups.tolist()):
        if seconds >= time_limit:
            break
        mine = d.budget_group[w_of] == b
        sub = _build(p, d, c, cols[mine])
        # The groups share the time evenly; a bound found by then holds as well.
        share = (time_limit - seconds) / (len(groups) - i)
        h = _highs(sub, time_limit=share, mip_rel_gap=0.0)
        _count_missing(h, sub)
        run = _run_once(h, _start_from(sub, start[:m][mine], d, c))
        seconds += run.seconds
        floor = math.ceil(run.bound - 1e-6) if math.isfinite(run.bound) else 0
        if floor <= 0:
            continue
        on = slack_group == b
        offset = float(-model.slack_units[on & (model.slack_units < 0)].sum())
        rows.append((model.slack[on], model.slack_units[on], floor - offset))
    return rows, seconds


def _with_rows(model: _Model, rows: Sequence[tuple[IntArray, FloatArray, float]]) -> _Model:
    """The model with rows ``Σ value·x[index] ≥ lower`` added."""
    if not rows:
        return model
    count = np.array([len(index) for index, _, _ in rows])
    return dataclasses.replace(
        model,
        row_lower=np.concatenate([model.row_lower, [lower for _, _, lower in rows]]),
        row_upper=np.concatenate([model.row_upper, np.full(len(rows), np.inf)]),
        start=np.concatenate([model.start, model.start[-1] + np.cumsum(count)]),
        index=np.concatenate([model.index, *(index for index, _, _ in rows)]),
        value=np.concatenate([model.value, *(value for _, value, _ in rows)]),
    )


def _components(model: _Model, free: BoolArray) -> IntArray:
    """Connected components of the free variables, two being connected when a row
    holds both (fixed variables connect nothing): each free variable's label is the
    least free variable of its component, -1 for the fixed ones."""
    n = model.n_vars
    label = np.append(np.where(free, np.arange(n), n), n).astype(np.int64)
    rows = np.repeat(np.arange(len(model.row_lower)), np.diff(model.start))
    on = free[model.index]
    rows, cols = rows[on], model.index[on]
    if len(rows):
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        sizes = np.diff(np.r_[starts, len(rows)])
        while True:
            row_min = np.minimum.reduceat(label[cols], starts)
            new = label.copy()
            np.minimum.at(new, cols, np.repeat(row_min, sizes))
            new = new[new]  # the label's label: fewer rounds along long chains
            if np.array_equal(new, label):
                break
            label = new
    result: IntArray = np.where(free, label[:n], -1)
    return result


def _submodel(model: _Model, keep: IntArray, values: FloatArray) -> _Model:
    """The model over the variables ``keep``, the others fixed at ``values``: rows
    without a kept variable are dropped, the fixed terms moved into the bounds."""
    n_rows = len(model.row_lower)
    rows = np.repeat(np.arange(n_rows), np.diff(model.start))
    new_index = np.full(model.n_vars, -1, dtype=np.int64)
    new_index[keep] = np.arange(len(keep))
    kept = new_index[model.index] >= 0
    fixed_sum = np.bincount(
        rows[~kept], weights=model.value[~kept] * values[model.index[~kept]], minlength=n_rows
    )
    used = np.bincount(rows[kept], minlength=n_rows) > 0
    row_map = np.cumsum(used) - 1
    sel = kept & used[rows]
    start = np.zeros(int(used.sum()) + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_map[rows[sel]], minlength=len(start) - 1), out=start[1:])
    return dataclasses.replace(
        model,
        n_vars=len(keep),
        cost=model.cost[keep],
        lower=model.lower[keep],
        upper=model.upper[keep],
        integer=model.integer[keep],
        row_lower=(model.row_lower - fixed_sum)[used],
        row_upper=(model.row_upper - fixed_sum)[used],
        start=start,
        index=new_index[model.index[sel]],
        value=model.value[sel],
    )


_BATCH_VARIABLES = 400
"""Small components are solved together, up to this many variables at once."""
_BATCH_SECONDS = 0.1
"""The least time a batch is given."""


def _feasible(model: _Model, values: FloatArray) -> bool:
    """``values`` keep every bound, row and integrality of the model (within 1e-6)."""
    tol = 1e-6
    rows = np.repeat(np.arange(len(model.row_lower)), np.diff(model.start))
    activity = np.bincount(
        rows, weights=model.value * values[model.index], minlength=len(model.row_lower)
    )
    integer = model.integer == 1
    return bool(
        np.all(values >= model.lower - tol)
        and np.all(values <= model.upper + tol)
        and np.all(np.abs(values[integer] - np.rint(values[integer])) <= tol)
        and np.all(activity >= model.row_lower - tol * (1 + np.abs(model.row_lower)))
        and np.all(activity <= model.row_upper + tol * (1 + np.abs(model.row_upper)))
    )


def _owners(model: _Model, c: _Candidates) -> IntArray:
    """The workload of each integer variable (x, u, z); -1 for the others."""
    owner = np.full(model.n_vars, -1, dtype=np.int64)
    owner[: len(model.cols)] = c.workload[model.cols]
    for var in (model.unplaced_var, model.placed_var):
        owner[var[var >= 0]] = np.flatnonzero(var >= 0)
    return owner


def _penalised(model: _Model) -> tuple[FloatArray, float]:
    """Phase one and two at once, for the starts: the real cost plus a penalty far
    above it per missing unit; and the penalty."""
    top = float(model.cost[: len(model.cols)].max(initial=0.0))
    penalty = 1e3 * max(top, 1.0)
    return model.cost + penalty * _units_cost(model), penalty


def _better(model: _Model, a: FloatArray, b: FloatArray) -> bool:
    """``a`` misses fewer units than ``b``, or as many at a lower cost."""
    return (round(_missing(model, a)), float(model.cost @ a)) < (
        round(_missing(model, b)),
        float(model.cost @ b),
    )


def _rounded_start(
    model: _Model,
    d: _Demands,
    c: _Candidates,
    start: FloatArray,
    *,
    time_limit: float,
    mip_rel_gap: float,
    missing_no_more_than_start: bool = False,
) -> tuple[FloatArray, float]:
    """A better start than ``start`` if one is found quickly, and the seconds spent.

    The LP relaxation (the real cost plus a large penalty per missing unit) leaves most
    workloads whole. Those are fixed where the LP put them; the others fall apart into
    small groups that share no row once the fixed ones are fixed, each solved as a
    MILP (small ones together), starting with its workloads unplaced — feasible: the
    fixed workloads alone keep every shared row, as in the LP. With
    ``missing_no_more_than_start`` (for phase two, once ``start`` misses the fewest) no
    workload may miss more units than in ``start``, only workloads the LP places
    exactly as ``start`` does are fixed (RINS), and the groups start from ``start``,
    which keeps their rows. Only a start, checked before use: HiGHS's own heuristics
    find one as good, but only after its root cut loop, and the more fractional
    workloads at once, the later.
    """
    lower, upper = model.lower.copy(), model.upper.copy()
    base = model.trivial  # every workload unplaced
    if missing_no_more_than_start:
        reps = model.unplaced_var[model.unplaced_var >= 0]
        upper[reps] = np.rint(start[reps])
        placed = model.placed_var[d.throughput_sized & (model.placed_var >= 0)]
        lower[placed] = np.rint(start[placed])
        base = start
    bounded = dataclasses.replace(model, lower=lower, upper=upper)
    h = _highs(bounded, time_limit=time_limit, mip_rel_gap=0.0)
    cost, penalty = _penalised(model)
    h.changeColsCost(model.n_vars, np.arange(model.n_vars, dtype=np.int32), cost)
    h.setOptionValue("solve_relaxation", True)
    h.setOptionValue("presolve", "off")  # HiGHS's presolve costs more than it saves on these LPs
    h.run()
    seconds = float(h.getRunTime())
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal or seconds >= time_limit:
        return start, seconds
    lp = np.asarray(h.getSolution().col_value, dtype=np.float64)
    owner = _owners(model, c)
    integer = owner >= 0
    fractional = integer & (np.abs(lp - np.rint(lp)) > 1e-6)
    whole = np.ones(len(d.replicas), dtype=np.bool_)
    whole[owner[fractional]] = False
    if missing_no_more_than_start:
        # Fix only where the LP agrees with the start (RINS): the start then keeps
        # every group's rows.
        agree = np.ones(len(d.replicas), dtype=np.bool_)
        agree[owner[integer & (np.abs(lp - start) > 1e-6)]] = False
        whole &= agree
        lp = np.where(integer & whole[owner], start, lp)
    fixed = integer & whole[owner]
    found = np.where(fixed, np.rint(lp), lp)
    label = _components(model, ~fixed)
    # Components holding a fractional workload's integer variables; the others hold
    # the continuous variables of whole workloads, at their LP values already.
    open_ = np.unique(label[integer & ~fixed])
    members = np.flatnonzero(np.isin(label, open_))
    comp_of = np.searchsorted(open_, label[members])
    size = np.bincount(comp_of, minlength=len(open_))
    # Component by component, smallest first; small ones in batches.
    order = np.lexsort((members, comp_of, size[comp_of]))
    members, comp_of = members[order], comp_of[order]
    first = np.flatnonzero(np.r_[True, comp_of[1:] != comp_of[:-1]]) if len(members) else members
    batch = np.zeros(len(members), dtype=np.int64)
    filled, current = 0, 0
    for at, length in zip(first.tolist(), size[comp_of[first]].tolist(), strict=True):
        if filled and filled + length > _BATCH_VARIABLES:
            current += 1
            filled = 0
        batch[at : at + length] = current
        filled += length
    for b in range(current + 1 if len(members) else 0):
        if seconds >= time_limit:
            return start, seconds
        keep = np.sort(members[batch == b])
        sub = _submodel(bounded, keep, found)
        # The batches share the time by size, each with a moment at least (HiGHS
        # does nothing useful in less); one that runs out keeps its start.
        left = time_limit - seconds
        share = max(left * len(keep) / int((batch >= b).sum()), min(_BATCH_SECONDS, left))
        h = _highs(sub, time_limit=share, mip_rel_gap=mip_rel_gap)
        if not missing_no_more_than_start:  # else no workload can miss fewer
            h.changeColsCost(sub.n_vars, np.arange(sub.n_vars, dtype=np.int32), cost[keep])
            # The missing units as a count (≥ 0), so that the gap means something.
            counted = np.isin(model.slack, keep) & (model.slack_units < 0)
            h.changeObjectiveOffset(-penalty * float(model.slack_units[counted].sum()))
        run = _run_once(h, base[keep])
        seconds += run.seconds
        found[keep] = run.values
    if _better(model, found, start) and _feasible(model, found):
        return found, seconds
    return start, seconds


_AIDS = 0.2
"""Share of the time left that the floors and each rounded start may take."""
_QUICK = 0.5
"""Seconds each phase runs plainly before its aids are brought in: most problems are
solved by then, and the aids cost more than that."""


def _fewest_bound(h: highspy.Highs, model: _Model) -> tuple[float | None, float]:
    """The LP relaxation's bound on the missing units, from HiGHS holding the model's
    solved LP (its basis makes the re-solve short), and the seconds spent."""
    before = float(h.getRunTime())
    _count_missing(h, model)
    h.run()
    seconds = float(h.getRunTime()) - before
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None, seconds
    return float(h.getInfo().objective_function_value), seconds


def _fewest_by_lp(model: _Model, start: FloatArray, time_limit: float) -> tuple[bool, float]:
    """The LP relaxation proves that no placement misses fewer units than ``start``
    (missing units are integral: a bound above one fewer is the start's count), so
    phase one has nothing to find. HiGHS would find as much, after its presolve and
    root, which on a large model takes several times the LP's time."""
    if time_limit <= 0:
        return False, 0.0
    h = _highs(model, time_limit=time_limit, mip_rel_gap=0.0)
    _count_missing(h, model)
    h.setOptionValue("solve_relaxation", True)
    h.setOptionValue("presolve", "off")  # HiGHS's presolve costs more than it saves on these LPs
    h.run()
    seconds = float(h.getRunTime())
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return False, seconds
    bound = float(h.getInfo().objective_function_value)
    return math.ceil(bound - 1e-6) >= round(_missing(model, start)), seconds


def _solve_model(
    p: Problem,
    d: _Demands,
    c: _Candidates,
    model: _Model,
    start: FloatArray,
    *,
    time_limit: float,
    mip_rel_gap: float,
    mip_abs_gap: float = 0.0,
    fewest_bound: float | None = None,
    whole: Callable[[float, float], bool] | None = None,
    lp: highspy.Highs | None = None,
) -> _Run:
    """Phase one: the fewest missing units (skipped when the start misses none, as
    none is the least, or no more than ``fewest_bound`` or the LP relaxation's bound
    on them, rounded up). Phase two: the cheapest placement missing no more. Each runs
    plainly for a moment; if that does not settle it, it runs again with the aids:
    the budget floors and a rounded start for phase one, a RINS start for phase two.

    Phase two stops early when ``whole`` (called with the best cost and a bound so
    far) says the whole problem is within the gap: at once if the LP relaxation's bound
    already makes it so (``lp``: HiGHS holding the model's solved LP, re-solved for
    phase two), else as soon as HiGHS's bound or the Lagrangian one (:func:`_lift`,
    an aid) does."""
    # HiGHS's run time is counted over every run of one instance; the time limit is
    # per run. ``elsewhere``: the seconds of the aids' own solves.
    h = _highs(model, time_limit=time_limit, mip_rel_gap=mip_rel_gap, mip_abs_gap=mip_abs_gap)
    elsewhere, solves = 0.0, 0
    given = model  # ``lp``'s rows: phase one's aids may add some to ``model``

    def left() -> float:
        return time_limit - elsewhere - float(h.getRunTime())

    def attempt(values: FloatArray, seconds: float) -> _Run:
        h.setOptionValue("time_limit", max(min(seconds, left()), 1e-3))
        run = _run_once(h, values)
        run.seconds = elsewhere + float(h.getRunTime())
        run.whole = h.getModelStatus() == highspy.HighsModelStatus.kInterrupt
        return run

    fewest, aided = start, False
    settled = False
    if _missing(model, start) > 0.5 and fewest_bound is not None:
        settled = math.ceil(fewest_bound - 1e-6) >= round(_missing(model, start))
    elif _missing(model, start) > 0.5:
        settled, seconds = _fewest_by_lp(model, start, left())
        elsewhere += seconds
    if not settled and _missing(model, start) > 0.5:
        _count_missing(h, model)
        first = attempt(start, _QUICK) if _QUICK > 0 else None
        if first is None or (not first.optimal and left() > 0):
            aided = True
            rows, seconds = _budget_floors(p, d, c, model, start, _AIDS * left())
            elsewhere += seconds
            model = _with_rows(model, rows)
            for index, value, lower in rows:
                h.addRow(lower, highspy.kHighsInf, len(index), index.astype(np.int32), value)
            better = start
            if first is not None and _better(model, first.values, start):
                better = first.values
            rounded, seconds = _rounded_start(
                model, d, c, better, time_limit=_AIDS * left(), mip_rel_gap=mip_rel_gap
            )
            elsewhere += seconds
            first = attempt(rounded, math.inf)
            # Phase one's placement ignores cost: the rounded one may miss as few.
            if _missing(model, rounded) < _missing(model, first.values) + 0.5:
                start = rounded
        if not first.optimal:
            # Out of time: phase one's placement, or the start if it misses as few.
            if not _better(model, first.values, start):
                first.values = start
            first.phase = 1
            return first
        solves = 1
        fewest = first.values
        if model.cost @ start < model.cost @ fewest and (
            _missing(model, start) < _missing(model, fewest) + 0.5
        ):
            fewest = start
        h.changeColsCost(model.n_vars, np.arange(model.n_vars, dtype=np.int32), model.cost)
        h.changeObjectiveOffset(0.0)
        _set_gaps(h, mip_rel_gap, mip_abs_gap)
    h.addRow(
        -highspy.kHighsInf,
        _missing(model, fewest) - model.units_offset + 0.5,
        len(model.slack),
        model.slack.astype(np.int32),
        model.slack_units,
    )
    relaxed, floor = None, [-math.inf]  # phase two's bound so far, for the callback
    if lp is not None and whole is not None:
        relaxed, seconds = _cost_lp(lp, given, _missing(model, fewest))
        elsewhere += seconds
        floor[0] = relaxed.value if relaxed is not None else -math.inf

    def enough(values: FloatArray) -> _Run | None:
        """The run, when ``values`` and the bound so far make the whole within the gap."""
        cost = float(model.cost @ values)
        if whole is None or not whole(cost, floor[0]):
            return None
        return _Run(
            values=values,
            optimal=False,
            time_limited=False,
            gap=(cost - floor[0]) / abs(cost) if abs(cost) > _EPS else 0.0,
            seconds=elsewhere + float(h.getRunTime()),
            solves=solves + 1,
            bound=floor[0],
            whole=True,
        )

    if (done := enough(fewest)) is not None:
        return done
    if whole is not None:
        _stop_when(h, whole, floor)
    second = attempt(fewest, _QUICK) if _QUICK > 0 else None
    if second is None or (not second.optimal and not second.whole and left() > 0):
        better = fewest
        if second is not None and model.cost @ second.values < model.cost @ fewest:
            better = second.values
        if relaxed is not None and whole is not None:
            lifted, seconds = _lift(given, c, relaxed, better, whole, time_limit=_AIDS * left())
            elsewhere += seconds
            floor[0] = max(floor[0], lifted)
            if (done := enough(better)) is not None:
                return done
        # The rounded start when it misses no more (unless phase one had it already),
        # else RINS around the best placement so far.
        rounded = better
        if not aided:
            rounded, seconds = _rounded_start(
                model, d, c, better, time_limit=_AIDS * left(), mip_rel_gap=mip_rel_gap
            )
            elsewhere += seconds
        if rounded is better:
            rounded, seconds = _rounded_start(
                model,
                d,
                c,
                better,
                time_limit=_AIDS * left(),
                mip_rel_gap=mip_rel_gap,
                missing_no_more_than_start=True,
            )
            elsewhere += seconds
        second = attempt(rounded, math.inf)
    second.solves = solves + 1
    second.bound = max(second.bound, floor[0])
    return second


def _stop_when(
    h: highspy.Highs, whole: Callable[[float, float], bool], floor: Sequence[float]
) -> None:
    """Interrupt HiGHS's MILP search as soon as ``whole`` says its best placement and
    bound so far (or ``floor[0]``, a bound found elsewhere, if higher) leave the
    whole problem within the gap."""

    def check(event: highspy.HighsCallbackEvent) -> None:
        out = event.data_out
        if math.isfinite(out.mip_primal_bound) and whole(
            out.mip_primal_bound, max(out.mip_dual_bound, floor[0])
        ):
            event.interrupt()

    h.cbMipInterrupt.subscribe(check)


@dataclass(frozen=True, eq=False)
class _Relaxed:
    """Phase two's LP relaxation (the real cost; no more missing units than
    ``missing``): its value, solution and row duals (the model's rows, then the row
    on the missing units)."""

    value: float
    x: FloatArray
    dual: FloatArray
    missing: float


def _cost_lp(h: highspy.Highs, model: _Model, missing: float) -> tuple[_Relaxed | None, float]:
    """Phase two's LP relaxation, from HiGHS holding the model's solved LP (its basis
    makes the re-solve short), and the seconds spent."""
    before = float(h.getRunTime())
    h.changeColsCost(model.n_vars, np.arange(model.n_vars, dtype=np.int32), model.cost)
    h.changeObjectiveOffset(0.0)
    h.setOptionValue("time_limit", math.inf)
    k = round(missing)
    h.addRow(
        -highspy.kHighsInf,
        k - model.units_offset + 1e-9,
        len(model.slack),
        model.slack.astype(np.int32),
        model.slack_units,
    )
    h.run()
    seconds = float(h.getRunTime()) - before
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None, seconds
    solution = h.getSolution()
    relaxed = _Relaxed(
        value=float(h.getInfo().objective_function_value),
        x=np.asarray(solution.col_value, dtype=np.float64),
        dual=np.asarray(solution.row_dual, dtype=np.float64),
        missing=float(k),
    )
    return relaxed, seconds


def _lift(
    model: _Model,
    c: _Candidates,
    relaxed: _Relaxed,
    placement: FloatArray,
    whole: Callable[[float, float], bool],
    *,
    time_limit: float,
) -> tuple[float, float]:
    """A bound on phase two's cost tighter than its LP relaxation's, and the seconds
    spent: the Lagrangian relaxation of the rows that workloads share (capacity,
    budgets, the missing units), priced at the LP's duals ``y``. Without those rows
    the model falls apart into one block per workload, and

        L = Σ_shared y_i·b_i + Σ_blocks min over the block's integer placements of (c − yA)·x

    is at most the cost of every placement (each shared row holds, and the sign of
    ``y_i`` says which of its bounds ``b_i`` is tight). Over the blocks' LP
    relaxations instead of their integer placements the sum is the LP's value, and
    the LP's solution is the minimum of each block; so L is the LP's value plus, per
    block, how much more its integer minimum is. A block the LP places whole adds
    nothing; the others are small MILPs, solved in batches, the block with the most
    to add first (at most what ``placement`` costs it, at the same prices). Stops
    when ``whole`` is content (called with the cost of ``placement``) or at
    ``time_limit``; HiGHS's own cuts close such gaps far more slowly."""
    n_rows = len(model.row_lower)
    rows = np.repeat(np.arange(n_rows), np.diff(model.start))
    owners = _owners(model, c)
    owner = owners[model.index]
    has = owner >= 0
    low = np.full(n_rows, np.iinfo(np.int64).max)
    high = np.full(n_rows, -1)
    np.minimum.at(low, rows[has], owner[has])
    np.maximum.at(high, rows[has], owner[has])
    shared = (high >= 0) & (low != high)
    dual = np.where(shared, relaxed.dual[:n_rows], 0.0)
    price = model.cost - np.bincount(
        model.index, weights=model.value * dual[rows], minlength=model.n_vars
    )
    price[model.slack] -= relaxed.dual[n_rows] * model.slack_units
    keep = ~shared[rows]
    start = np.zeros(n_rows - int(shared.sum()) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=n_rows)[~shared], out=start[1:])
    blocks = dataclasses.replace(
        model,
        cost=price,
        row_lower=model.row_lower[~shared],
        row_upper=model.row_upper[~shared],
        start=start,
        index=model.index[keep],
        value=model.value[keep],
    )
    x = relaxed.x
    block = _components(blocks, np.ones(model.n_vars, dtype=np.bool_))
    fractional = (owners >= 0) & (np.abs(x - np.rint(x)) > 1e-6)
    open_ = np.unique(block[fractional])
    members = np.flatnonzero(np.isin(block, open_))
    of = np.searchsorted(open_, block[members])
    at_lp = np.bincount(of, weights=price[members] * x[members], minlength=len(open_))
    at_placement = np.bincount(
        of, weights=price[members] * placement[members], minlength=len(open_)
    )
    # Blocks with the most to add first, in batches of about _LIFT_VARIABLES; each
    # batch's MILP cut from the open blocks' model (the whole one is far larger).
    rank = np.argsort(-(at_placement - at_lp), kind="stable")
    size = np.bincount(of, minlength=len(open_))
    batch_of = np.empty(len(open_), dtype=np.int64)
    batch_of[rank] = np.cumsum(size[rank]) // _LIFT_VARIABLES
    opened = _submodel(blocks, members, x)
    var_batch = batch_of[of]  # per variable of ``opened`` (members are sorted)
    bound, seconds = relaxed.value, 0.0
    cost = float(model.cost @ placement)
    for b in np.unique(batch_of).tolist():
        if seconds >= time_limit or whole(cost, bound):
            break
        h = _highs(
            _submodel(opened, np.flatnonzero(var_batch == b), x[members]),
            time_limit=time_limit - seconds,
            mip_rel_gap=_LIFT_GAP,
        )
        h.run()
        seconds += float(h.getRunTime())
        # Cut off by the time limit, HiGHS's bound may be below the blocks' LP
        # minimum, itself a bound on their integer minimum.
        floor = float(h.getInfo().mip_dual_bound)
        if math.isfinite(floor):
            bound += max(floor - float(at_lp[batch_of == b].sum()), 0.0)
    return bound, seconds


_LIFT_VARIABLES = 150
"""Variables of the blocks solved together in one MILP by :func:`_lift`."""
_LIFT_GAP = 1e-4
"""The blocks' MILPs stop within this gap: their bound is what counts."""


def solve(
    problem: Problem,
    *,
    time_limit: float = 30.0,
    mip_rel_gap: float = 0.005,
    mip_abs_gap: float = 0.0,
    reduce: bool = True,
    threads: int = 2,
) -> Solution:
    """The cheapest placement of every workload's replicas (see the module docstring).

    ``time_limit`` bounds HiGHS's run time in seconds across all solves (shared by
    the parts as they run, see :class:`_TimeShare`); a placement found by then is
    returned with ``time_limited=True``. HiGHS stops when the gap is
    within ``mip_rel_gap`` of the cost or within ``mip_abs_gap`` (USD/h) of it,
    whichever comes first. ``reduce=False`` solves the unreduced problem (every given
    column). ``threads``: independent parts solved at once (the result is the same).
    """
    d = _Demands.of(problem.workloads)
    c = _prepare(problem, d, reduce=reduce)
    n_cand = len(c.index)
    cols = _reduce(problem, d, c) if reduce and n_cand else np.arange(n_cand, dtype=np.int64)
    x = np.zeros(len(cols))
    chosen = np.zeros(problem.n_workloads, dtype=np.bool_)
    parts = _parts(problem, d, c, cols)
    sizes = np.array([len(part) for part in parts], dtype=np.float64)

    clock = _TimeShare(time_limit, float(sizes.sum()))
    ledger = _Whole(len(parts), mip_rel_gap, mip_abs_gap)

    def solve_part(i: int) -> tuple[_Model, _Run]:
        # Each part's share of an absolute gap by its size (the parts' gaps add up to
        # the whole one), and of the time left by its size among the parts left.
        share = float(sizes[i] / sizes.sum())
        model, run = _solve_part(
            problem,
            d,
            c,
            cols[parts[i]],
            time_limit=clock.take(float(sizes[i])),
            mip_rel_gap=mip_rel_gap,
            mip_abs_gap=mip_abs_gap * share,
            whole=lambda cost, bound: ledger.within(i, cost, bound),
        )
        if run.phase == 2:
            # The best bound this part reported (the Lagrangian one, say) is its bound.
            run.bound = max(run.bound, ledger.bound(i))
            ledger.within(i, float(model.cost @ run.values), _cost_floor(model, run))
        clock.spent(float(sizes[i]), run.seconds)
        return model, run

    # Largest first, so that the others fill the other threads meanwhile (HiGHS
    # releases the GIL while it runs); on one thread largest last, as a part may stop
    # early only once every other has a placement (see _Whole).
    order = np.argsort(-sizes if threads > 1 else sizes, kind="stable").tolist()
    if threads > 1 and len(parts) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            done = dict(zip(order, pool.map(solve_part, order), strict=True))
    else:
        done = {i: solve_part(i) for i in order}
    runs = [done[i] for i in range(len(parts))]
    for part, (model, run) in zip(parts, runs, strict=True):
        x[part] = np.rint(run.values[: len(part)])
        has_z = model.placed_var >= 0
        chosen[has_z] = run.values[model.placed_var[has_z]] > 0.5
    return _solution(problem, d, c, cols, x, chosen, _summary(runs, mip_rel_gap, mip_abs_gap))


class _Whole:
    """The parts' best costs and bounds so far, for stopping early: the whole's gap
    is Σ (cost − bound) / Σ cost over the parts (:func:`_summary`), so once every
    part has a placement and a bound of its cost, a part whose own gap is wider than
    ``mip_rel_gap`` may stop when the others' narrower ones make up for it. A large
    part's LP bound is often a little looser than the gap asks while the many small
    parts are solved to within a fraction of it. Thread-safe."""

    def __init__(self, n_parts: int, mip_rel_gap: float, mip_abs_gap: float) -> None:
        self._cost = np.full(n_parts, np.nan)
        self._bound = np.full(n_parts, -np.inf)
        self._rel, self._abs = mip_rel_gap, mip_abs_gap
        self._lock = threading.Lock()

    def bound(self, part: int) -> float:
        """The best bound a part has recorded (-inf: none)."""
        with self._lock:
            return float(self._bound[part])

    def within(self, part: int, cost: float, bound: float) -> bool:
        """Record a part's best cost and a bound so far; whether the whole is now
        within the gap (never before every part has recorded a cost)."""
        with self._lock:
            self._cost[part] = cost
            self._bound[part] = max(self._bound[part], bound)
            if np.isnan(self._cost).any():
                return False
            total = float(self._cost.sum())
            gap = float(np.maximum(self._cost - self._bound, 0.0).sum())
            return gap <= max(self._rel * abs(total), self._abs)


class _TimeShare:
    """The time limit shared by the parts: each part, as it starts, gets the time
    not yet spent in proportion to its size among the parts not yet done (a part
    that finishes early leaves its time to the others), but at least
    :data:`_PART_SECONDS` or half the time left, whichever is less: a small part
    beside a large one must not be cut off at its size's sliver of the limit. So the
    parts' run times may add up to somewhat more than the limit when small parts are
    slow. Thread-safe."""

    def __init__(self, seconds: float, size: float) -> None:
        self._left, self._size = seconds, size
        self._lock = threading.Lock()

    def take(self, size: float) -> float:
        with self._lock:
            share = self._left * size / max(self._size, size)
            return max(share, min(_PART_SECONDS, self._left / 2), 1e-3)

    def spent(self, size: float, seconds: float) -> None:
        with self._lock:
            self._left = max(self._left - seconds, 0.0)
            self._size -= size


def _solve_part(
    p: Problem,
    d: _Demands,
    c: _Candidates,
    cols: IntArray,
    *,
    time_limit: float,
    mip_rel_gap: float,
    mip_abs_gap: float,
    whole: Callable[[float, float], bool] | None = None,
) -> tuple[_Model, _Run]:
    """One part's model and its solve, from the better of the greedy start and (for
    a part with throughput targets) the LP rounding, whose LP also bounds the cost
    (see :func:`_solve_model` for ``whole``)."""
    model = _build(p, d, c, cols)
    # The greedy start is near the optimum for replica counts; throughput targets it
    # overshoots (cheapest tokens first, whole replicas), so those get the rounding.
    start: FloatArray | None = None
    lp_seconds = 0.0
    lp: highspy.Highs | None = None
    if d.throughput_sized[c.workload[cols]].any():
        rounded, lp_seconds, lp = _lp_start(p, d, c, model, time_limit=time_limit)
        start = None if rounded is None else _start_from(model, rounded, d, c)
    # The greedy start can only do better where the rounding leaves units missing.
    if start is None or _missing(model, start) > 0.5:
        greedy = _start_from(model, _greedy_start(p, d, c, model), d, c)
        if start is None or _better(model, greedy, start):
            start = greedy
    bound = None
    if lp is not None and _missing(model, start) > 0.5:
        bound, seconds = _fewest_bound(lp, model)
        lp_seconds += seconds
    run = _solve_model(
        p,
        d,
        c,
        model,
        start,
        time_limit=max(time_limit - lp_seconds, 1e-3),
        mip_rel_gap=mip_rel_gap,
        mip_abs_gap=mip_abs_gap,
        fewest_bound=bound,
        whole=whole,
        lp=lp,
    )
    run.seconds += lp_seconds
    return model, run


def _parts(p: Problem, d: _Demands, c: _Candidates, cols: IntArray) -> list[IntArray]:
    """The model's columns (positions in ``cols``) in parts that share no row, each
    solved alone: workloads are coupled only through offers whose capacity may bind
    and through budget groups, so the workloads connected by those fall apart into
    independent groups, and the cheapest placement of the whole is the cheapest of
    each. Small groups are solved together, up to :data:`_PART_COLUMNS` columns at
    once (HiGHS's fixed cost per solve would otherwise dominate); each group larger
    than that is a part of its own."""
    if len(cols) == 0:
        return []
    n_w = p.n_workloads
    w = c.workload[cols]
    # Nodes: workloads, then offers with bounded capacity, then budget groups; one
    # label per node, lowered along edges to the least label of its component.
    n_o = len(c.capacity)
    edges = [np.stack([w[c.bounded[cols]], n_w + c.offer[cols][c.bounded[cols]]])]
    budgeted = np.flatnonzero(d.budget_group >= 0)
    edges.append(np.stack([budgeted, n_w + n_o + d.budget_group[budgeted]]))
    a, b = np.concatenate(edges, axis=1)
    label = np.arange(n_w + n_o + max(len(p.budgets), 1), dtype=np.int64)
    while len(a):
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]  # the label's label: fewer rounds along long chains
        if np.array_equal(new, label):
            break
        label = new
    comp = label[w]
    ids, inverse, size = np.unique(comp, return_inverse=True, return_counts=True)
    # Components smallest first, packed into parts; columns of one component stay
    # together, in their order in ``cols``.
    order = np.argsort(size, kind="stable")
    part_of = np.empty(len(ids), dtype=np.int64)
    filled, current = 0, 0
    for k in order.tolist():
        if filled and filled + int(size[k]) > _PART_COLUMNS:
            current += 1
            filled = 0
        part_of[k] = current
        filled += int(size[k])
    of_col = part_of[inverse.ravel()]
    by_part = np.argsort(of_col, kind="stable")
    bounds = np.searchsorted(of_col[by_part], np.arange(current + 2))
    return [by_part[bounds[i] : bounds[i + 1]] for i in range(current + 1)]


_PART_COLUMNS = 300
"""Columns of independent workload groups solved together in one MILP."""
_PART_SECONDS = 2.0
"""The least time a part is given (if half the time left is more)."""


@dataclass(frozen=True)
class _Summary:
    """The parts' runs as one: the gap of the whole, from each part's bound."""

    gap: float
    optimal: bool
    time_limited: bool
    seconds: float
    solves: int


def _summary(
    runs: Sequence[tuple[_Model, _Run]], mip_rel_gap: float, mip_abs_gap: float
) -> _Summary | None:
    """The whole solve's gap: Σ (cost − bound) / Σ cost over the parts, HiGHS's own
    definition applied to the sum (the parts share no row, so the sum of their bounds
    bounds the whole). If time ran out in phase one in some part, the largest of
    those parts' gaps, of the missing units (see :attr:`Solution.gap`).

    Optimal when every part is, or when the whole is within the gap asked for even
    though a part ran out of time (the others made up for it); time-limited only when
    a part ran out of time and the whole is not within the gap."""
    if not runs:
        return None
    first_phase = [run.gap for _, run in runs if run.phase == 1]
    cost = 0.0
    if first_phase:
        gap = max(first_phase)
    else:
        cost = sum(float(model.cost @ run.values) for model, run in runs)
        bound = sum(_cost_floor(model, run) for model, run in runs)
        gap = max(cost - bound, 0.0) / abs(cost) if abs(cost) > _EPS else 0.0
    within = not first_phase and (gap <= mip_rel_gap or gap * abs(cost) <= mip_abs_gap)
    optimal = within or all(run.optimal or run.whole for _, run in runs)
    return _Summary(
        gap=gap,
        optimal=optimal,
        time_limited=not optimal and any(run.time_limited for _, run in runs),
        seconds=sum(run.seconds for _, run in runs),
        solves=max(run.solves for _, run in runs),
    )


def _cost_floor(model: _Model, run: _Run) -> float:
    """A phase-two run's bound on its cost: HiGHS's, or from its gap if it gave none."""
    if math.isfinite(run.bound):
        return run.bound
    return float(model.cost @ run.values) * (1 - run.gap if math.isfinite(run.gap) else 0.0)


def _start_from(model: _Model, x: FloatArray, d: _Demands, c: _Candidates) -> FloatArray:
    """A start for the model from replicas on its columns: the slack, indicator and
    distinct-place variables set to match them."""
    start = model.trivial.copy()
    m = len(model.cols)
    start[:m] = x
    w = c.workload[model.cols]
    placed = np.bincount(w, weights=x, minlength=len(d.replicas))
    reps = model.unplaced_var >= 0
    start[model.unplaced_var[reps]] = d.replicas[reps] - placed[reps]
    z = model.placed_var >= 0
    start[model.placed_var[z]] = (placed[z] > 0).astype(np.float64)
    for y, pair, xs in model.links:
        start[y] = np.minimum(1.0, np.bincount(pair, weights=x[xs], minlength=len(y)))
    return start


def _solution(
    p: Problem,
    d: _Demands,
    c: _Candidates,
    cols: IntArray,
    x: FloatArray,
    chosen: BoolArray,
    run: _Summary | None,
) -> Solution:
    """The solution from replicas ``x`` on the model's columns ``cols``; ``chosen``:
    the throughput-sized workloads the solver placed (their z)."""
    n_w = p.n_workloads
    w_m = c.workload[cols]
    placed = np.bincount(w_m, weights=x, minlength=n_w)
    # A throughput-sized workload is placed whole or not at all: its z says which (x
    # may hold leftovers the solver had no reason to clear when z = 0).
    reached = np.bincount(w_m, weights=x * c.throughput[cols], minlength=n_w)
    short = d.throughput_sized & (~chosen | (reached < d.target * (1 - 1e-6)))
    x = np.where(short[w_m], 0.0, x)
    placed = np.where(short, 0.0, placed)
    replicas = np.zeros(p.n_columns, dtype=np.int64)
    replicas[c.index[cols]] = x.astype(np.int64)
    replicas.flags.writeable = False

    used: FloatArray = np.bincount(
        c.offer[cols], weights=d.gpus[w_m] * x, minlength=len(c.capacity)
    ).astype(np.float64)
    group = d.budget_group[w_m]
    spent: FloatArray = np.bincount(
        np.maximum(group, 0),
        weights=np.where(group >= 0, c.cost[cols] * x, 0.0),
        minlength=max(len(p.budgets), 1),
    ).astype(np.float64)
    # The model's columns of each workload: cols[by_workload[start[w]:start[w + 1]]].
    by_workload = np.argsort(w_m, kind="stable")
    start = np.searchsorted(w_m[by_workload], np.arange(n_w + 1))
    time_limited = run.time_limited if run else False

    outcomes = []
    # As Python values: one loop step per workload (10,000 at the benchmark's size).
    placed_list: list[int] = np.rint(placed).astype(np.int64).tolist()
    short_list: list[bool] = short.tolist()
    for w, wl in enumerate(p.workloads):
        n_placed = placed_list[w]
        if w in c.reasons:
            outcomes.append(
                WorkloadOutcome(wl.name, PlacementStatus.UNPLACEABLE, 0, (c.reasons[w],))
            )
            continue
        complete = (
            not short_list[w] if wl.min_throughput is not None else n_placed >= (wl.replicas or 0)
        )
        if complete:
            outcomes.append(WorkloadOutcome(wl.name, PlacementStatus.PLACED, n_placed))
            continue
        mine = cols[by_workload[start[w] : start[w + 1]]]
        reasons = _coupled_reasons(p, d, c, w, mine, used, spent, time_limited)
        if wl.replicas is not None and n_placed > 0:
            status = PlacementStatus.PARTIAL
            reasons = tuple(f"{r}: {n_placed} of {wl.replicas} replicas placed" for r in reasons)
        else:
            status = PlacementStatus.UNPLACEABLE
        outcomes.append(WorkloadOutcome(wl.name, status, n_placed, reasons))

    return Solution(
        replicas=replicas,
        workloads=tuple(outcomes),
        total_cost=float(c.cost[cols] @ x),
        gap=run.gap if run else 0.0,
        optimal=run.optimal if run else True,
        time_limited=time_limited,
        solve_seconds=run.seconds if run else 0.0,
        columns_before=p.n_columns,
        columns_after=len(cols),
        solves=run.solves if run else 0,
    )


def _coupled_reasons(
    p: Problem,
    d: _Demands,
    c: _Candidates,
    w: int,
    mine: IntArray,
    used: FloatArray,
    spent: FloatArray,
    time_limited: bool,
) -> tuple[str, ...]:
    """The coupling rules that kept replicas of workload ``w`` unplaced, judged on the
    room and budget the final placement leaves: capacity when its offers are full (for
    a throughput-sized workload: when the room left cannot reach its target), a budget
    when what is left of it cannot pay for the cheapest column that still has room."""
    reasons = []
    o = c.offer[mine]
    free = np.floor(np.maximum(c.capacity[o] - used[o], 0.0) / d.gpus[w] + _EPS)
    open_ = free >= 1
    if d.throughput_sized[w]:
        reach = float(np.sum(np.minimum(free, _upper(p, d, c, mine)) * c.throughput[mine]))
        if reach < d.target[w] * (1 - 1e-6):
            reasons.append("capacity exhausted")
    elif not open_.all():
        reasons.append("capacity exhausted")
    b = int(d.budget_group[w])
    if b >= 0 and open_.any():
        cost, tput = c.cost[mine[open_]], c.throughput[mine[open_]]
        needed = (
            d.target[w] * float((cost / tput).min()) if d.throughput_sized[w] else float(cost.min())
        )
        if p.budgets[b] - spent[b] < needed - _EPS:
            reasons.append(f"budget group {b} exceeded")
    if not reasons:
        reasons.append(
            "no placement found within the time limit"
            if time_limited
            else "spread, share and spot rules cannot be met together"
        )
    return tuple(reasons)
