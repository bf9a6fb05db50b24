"""Properties of the placement solver on random problems, each checked against code in
this file that shares nothing with the solver:

* :func:`broken_rules` and :func:`violations` check every rule of a placement;
* :func:`brute_force` enumerates every placement of a small problem and keeps the best;
* :func:`greedy` builds one feasible placement, cheapest column first.

*Best* is the solver's objective, lexicographic: first the fewest missing units, then
the least cost. An unplaced replica is one missing unit; an unplaced throughput-sized
workload counts as many as its target needs replicas of its fastest usable column
(one with throughput, room for a replica, and not spot when its spot share is 0). A
column without throughput is no candidate for a throughput-sized workload.
"""

from __future__ import annotations

import functools
import itertools
import math
from unittest.mock import patch

import highspy
import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arbiter.domain import solver
from arbiter.domain.solver import PlacementStatus, Problem, Solution, WorkloadDemand, solve

IntMatrix = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
Score = tuple[int, float]

TOL = 1e-6
PROPERTY = settings(
    max_examples=150,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ------------------------------------------------------------------------- problems


@st.composite
def problems(
    draw: st.DrawFn, *, max_workloads: int, max_offers: int, max_replicas: int, max_cols: int
) -> Problem:
    """Offers in 3 regions of 3 providers, some spot, some with little capacity; each
    workload a random subset of them at small integer costs, sized by replicas or by a
    throughput target a few replicas reach, with random spread, share and budget rules."""
    n_offers = draw(st.integers(1, max_offers))

    def per_offer(values: st.SearchStrategy[object]) -> list[object]:
        return draw(st.lists(values, min_size=n_offers, max_size=n_offers))

    regions = per_offer(st.integers(0, 2))
    providers = per_offer(st.integers(0, 2))
    spot = per_offer(st.booleans())
    capacity = per_offer(st.one_of(st.just(math.inf), st.integers(0, 6).map(float)))
    budgets = draw(st.lists(st.integers(0, 40).map(float), max_size=2))

    workloads: list[WorkloadDemand] = []
    col_w: list[int] = []
    col_o: list[int] = []
    col_cost: list[float] = []
    col_tput: list[float] = []
    for w in range(draw(st.integers(1, max_workloads))):
        by_throughput = draw(st.integers(0, 2)) == 0
        workloads.append(
            WorkloadDemand(
                name=f"w{w}",
                replicas=None if by_throughput else draw(st.integers(1, max_replicas)),
                min_throughput=(
                    float(draw(st.sampled_from([100, 250, 400]))) if by_throughput else None
                ),
                gpus_per_replica=draw(st.sampled_from([1, 1, 2])),
                min_distinct_regions=draw(st.sampled_from([1, 1, 2, 3])),
                min_distinct_providers=draw(st.sampled_from([1, 1, 1, 2])),
                max_share_per_provider=draw(st.sampled_from([1.0, 1.0, 0.5, 0.75])),
                max_spot_share=draw(st.sampled_from([1.0, 1.0, 0.5, 0.0])),
                budget_group=(
                    draw(st.none() | st.integers(0, len(budgets) - 1)) if budgets else None
                ),
                min_replicas=draw(st.sampled_from([1, 1, 1, 2, 3])) if by_throughput else 1,
            )
        )
        offers = draw(
            st.lists(st.integers(0, n_offers - 1), unique=True, max_size=min(n_offers, max_cols))
        )
        for o in offers:
            col_w.append(w)
            col_o.append(o)
            col_cost.append(float(draw(st.integers(0, 12))))
            col_tput.append(float(draw(st.sampled_from([0, 100, 100, 200, 300]))))
    return Problem(
        workloads=workloads,
        col_workload=np.array(col_w, dtype=np.int64),
        col_offer=np.array(col_o, dtype=np.int64),
        col_cost=np.array(col_cost, dtype=np.float64),
        col_throughput=np.array(col_tput, dtype=np.float64),
        offer_region=np.array(regions, dtype=np.int64),
        offer_provider=np.array(providers, dtype=np.int64),
        offer_spot=np.array(spot, dtype=np.bool_),
        offer_capacity_gpus=np.array(capacity, dtype=np.float64),
        budgets=budgets,
    )


SMALL = problems(max_workloads=3, max_offers=6, max_replicas=4, max_cols=4)
MEDIUM = problems(max_workloads=6, max_offers=12, max_replicas=6, max_cols=8)


# ---------------------------------------------------------------------------- rules


def columns_of(p: Problem, w: int) -> IntMatrix:
    cols: IntMatrix = np.flatnonzero(p.col_workload == w).astype(np.int64)
    return cols


def broken_rules(p: Problem, w: int, x: IntMatrix) -> dict[str, BoolArray]:
    """Every rule of workload ``w`` on its own, over placements ``x`` (one per row, one
    entry per column of ``w``): the rows that break each rule."""
    wl = p.workloads[w]
    cols = columns_of(p, w)
    offer = p.col_offer[cols]
    region, provider, spot = p.offer_region[offer], p.offer_provider[offer], p.offer_spot[offer]
    n = x.sum(axis=1)
    some = n > 0

    def on(mask: BoolArray) -> IntMatrix:
        counts: IntMatrix = x[:, mask].sum(axis=1)
        return counts

    def distinct(place: IntMatrix) -> IntMatrix:
        count = np.zeros(len(x), dtype=np.int64)
        for value in np.unique(place):
            count += on(place == value) > 0
        return count

    broken: dict[str, BoolArray] = {}
    if wl.replicas is not None:
        broken["more replicas than asked"] = n > wl.replicas
    else:
        assert wl.min_throughput is not None
        tput = p.col_throughput[cols]
        broken["throughput below target"] = some & (x @ tput < wl.min_throughput * (1 - 1e-9))
        broken["fewer replicas than min_replicas"] = some & (n < wl.min_replicas)
        broken["replica without throughput"] = on(tput <= 0) > 0
    broken["too few regions"] = some & (distinct(region) < wl.min_distinct_regions)
    broken["too few providers"] = some & (distinct(provider) < wl.min_distinct_providers)
    over = np.zeros(len(x), dtype=np.bool_)
    for value in np.unique(provider):
        over |= on(provider == value) > wl.max_share_per_provider * n + 1e-9
    broken["provider share exceeded"] = over
    broken["spot share exceeded"] = on(spot) > wl.max_spot_share * n + 1e-9
    return broken


def violations(p: Problem, replicas: IntMatrix) -> list[str]:
    """Every rule the placement breaks, in words (empty: feasible)."""
    found = []
    if np.any(replicas < 0):
        found.append("negative replicas")
    for w, wl in enumerate(p.workloads):
        x = replicas[columns_of(p, w)][None, :]
        found += [f"{wl.name}: {rule}" for rule, rows in broken_rules(p, w, x).items() if rows[0]]
    gpus = np.array([p.workloads[w].gpus_per_replica for w in p.col_workload], dtype=np.float64)
    used = np.bincount(p.col_offer, weights=gpus * replicas, minlength=len(p.offer_region))
    for o in np.flatnonzero(used > p.offer_capacity_gpus + 1e-9):
        found.append(f"offer {o}: {used[o]:g} GPUs used of {p.offer_capacity_gpus[o]:g}")
    for b, budget in enumerate(p.budgets):
        members = [w for w, wl in enumerate(p.workloads) if wl.budget_group == b]
        spent = float(
            p.col_cost[np.isin(p.col_workload, members)]
            @ replicas[np.isin(p.col_workload, members)]
        )
        if spent > budget + TOL:
            found.append(f"budget {b}: ${spent:g}/h spent of ${budget:g}/h")
    return found


def missing_units(p: Problem, w: int, placed: int) -> int:
    """What leaving ``w`` with ``placed`` replicas costs in the first objective."""
    wl = p.workloads[w]
    if wl.replicas is not None:
        return wl.replicas - placed
    if placed:
        return 0
    assert wl.min_throughput is not None
    cols = columns_of(p, w)
    offer = p.col_offer[cols]
    usable = (
        (p.col_throughput[cols] > 0)
        & (p.offer_capacity_gpus[offer] >= wl.gpus_per_replica)
        & ~(p.offer_spot[offer] & (wl.max_spot_share == 0))
    )
    if not usable.any():
        return 0  # no placement can place it: every candidate leaves the same count
    return math.ceil(wl.min_throughput / p.col_throughput[cols][usable].max() - 1e-9)


def score(p: Problem, replicas: IntMatrix) -> Score:
    units = sum(
        missing_units(p, w, int(replicas[columns_of(p, w)].sum())) for w in range(p.n_workloads)
    )
    return units, float(p.col_cost @ replicas)


def solver_score(p: Problem, s: Solution) -> Score:
    return score(p, np.asarray(s.replicas, dtype=np.int64))


# ------------------------------------------------------------------------ brute force


@functools.cache
def vectors(length: int, most: int) -> IntMatrix:
    """Every vector of ``length`` non-negative integers summing to at most ``most``."""
    rows = [
        np.bincount(np.array(combo, dtype=np.int64), minlength=length)
        for total in range(most + 1)
        for combo in itertools.combinations_with_replacement(range(length), total)
    ]
    out: IntMatrix = np.array(rows, dtype=np.int64).reshape(len(rows), length)
    out.flags.writeable = False
    return out


def most_replicas(p: Problem, w: int) -> int:
    """A bound on the replicas any optimum gives ``w``: its count, or for a throughput
    target twice the total the solver allows itself (so that the enumeration can prove
    that bound wrong): ⌈1/s⌉ for its smallest share s below 1, times what its slowest
    useful column needs for the target plus one replica per distinct place needed."""
    wl = p.workloads[w]
    if wl.replicas is not None:
        return wl.replicas
    assert wl.min_throughput is not None
    tput = p.col_throughput[columns_of(p, w)]
    if not (tput > 0).any():
        return 0
    slowest = max(math.ceil(wl.min_throughput / tput[tput > 0].min() - 1e-9), wl.min_replicas)
    spread = wl.min_distinct_regions + wl.min_distinct_providers
    shares = [s for s in (wl.max_share_per_provider, wl.max_spot_share) if 0 < s < 1]
    return 2 * math.ceil(1 / min(shares)) * (slowest + spread) if shares else slowest + spread


def resources(p: Problem) -> tuple[FloatArray, FloatArray]:
    """What couples workloads, as a matrix (column × resource: what one replica there
    uses of each bounded offer's GPUs and each budget) and the limits."""
    bounded = np.flatnonzero(np.isfinite(p.offer_capacity_gpus))
    # One more resource nothing uses, so that there always is one.
    use = np.zeros((p.n_columns, len(bounded) + len(p.budgets) + 1))
    for j in range(p.n_columns):
        wl = p.workloads[int(p.col_workload[j])]
        where = np.flatnonzero(bounded == p.col_offer[j])
        if len(where):
            use[j, where[0]] = wl.gpus_per_replica
        if wl.budget_group is not None:
            use[j, len(bounded) + wl.budget_group] = p.col_cost[j]
    limits = np.concatenate([p.offer_capacity_gpus[bounded], np.array(p.budgets), [math.inf]])
    return use, limits


def best_per_usage(units: IntMatrix, cost: FloatArray, usage: FloatArray) -> npt.NDArray[np.intp]:
    """Rows to keep: of the rows using the same resources, the best one (an exact
    pruning: any completion of a worse row completes the best row as well)."""
    order = np.lexsort((cost, units))
    _, first = np.unique(np.round(usage[order], 6), axis=0, return_index=True)
    kept: npt.NDArray[np.intp] = order[first]
    return kept


def brute_force(p: Problem) -> Score:
    """The best score over every placement: per workload every vector of replicas that
    keeps its own rules, combined across workloads within capacity and budgets."""
    use, limits = resources(p)
    units = np.zeros(1, dtype=np.int64)
    cost = np.zeros(1)
    usage = np.zeros((1, len(limits)))
    for w in range(p.n_workloads):
        cols = columns_of(p, w)
        x = np.asarray(vectors(len(cols), most_replicas(p, w)))
        ok = ~np.any(list(broken_rules(p, w, x).values()), axis=0)
        x = x[ok]
        x_units = np.array([missing_units(p, w, int(n)) for n in x.sum(axis=1)], dtype=np.int64)
        x_cost = x @ p.col_cost[cols]
        x_usage = x @ use[cols]
        keep = best_per_usage(x_units, x_cost, x_usage)
        x_units, x_cost, x_usage = x_units[keep], x_cost[keep], x_usage[keep]
        # Every state with every option of this workload, within the limits.
        units = (units[:, None] + x_units[None, :]).ravel()
        cost = (cost[:, None] + x_cost[None, :]).ravel()
        usage = (usage[:, None, :] + x_usage[None, :, :]).reshape(-1, len(limits))
        fits = np.all(usage <= limits + TOL, axis=1)
        units, cost, usage = units[fits], cost[fits], usage[fits]
        keep = best_per_usage(units, cost, usage)
        units, cost, usage = units[keep], cost[keep], usage[keep]
    best = np.lexsort((cost, units))[0]
    return int(units[best]), float(cost[best])


# ---------------------------------------------------------------------------- greedy


def greedy(p: Problem) -> IntMatrix:
    """Workload by workload, one replica at a time on the cheapest column (per token for
    a throughput target) with room and budget left — a column in a new region or
    provider while the spread is short, within the per-provider and spot counts a full
    placement allows. A workload whose rules the result breaks is left unplaced."""
    x = np.zeros(p.n_columns, dtype=np.int64)
    free = p.offer_capacity_gpus.copy()
    left = np.array(p.budgets, dtype=np.float64)
    for w, wl in enumerate(p.workloads):
        cols = columns_of(p, w)
        offer = p.col_offer[cols]
        cost, tput = p.col_cost[cols], p.col_throughput[cols]
        region, provider = p.offer_region[offer], p.offer_provider[offer]
        spot = p.offer_spot[offer]
        sized = wl.min_throughput is not None
        price = cost / np.where(tput > 0, tput, np.nan) if sized else cost
        full = wl.replicas if wl.replicas is not None else 10**9
        per_provider = math.floor(wl.max_share_per_provider * full + 1e-9)
        on_spot = math.floor(wl.max_spot_share * full + 1e-9)
        mine = np.zeros(len(cols), dtype=np.int64)
        room, budget = free.copy(), left.copy()
        while not (
            bool(mine @ tput >= wl.min_throughput and mine.sum() >= wl.min_replicas)
            if wl.min_throughput is not None
            else int(mine.sum()) >= full
        ):
            can = (room[offer] >= wl.gpus_per_replica) & ~np.isnan(price)
            if wl.budget_group is not None:
                can &= budget[wl.budget_group] >= cost - TOL
            can &= np.array(
                [mine[provider == q].sum() < per_provider for q in provider], dtype=np.bool_
            )
            can &= ~spot | (mine[spot].sum() < on_spot)
            regions_used = set(region[mine > 0].tolist())
            providers_used = set(provider[mine > 0].tolist())
            new = np.zeros(len(cols), dtype=np.bool_)
            if len(regions_used) < wl.min_distinct_regions:
                new |= ~np.isin(region, list(regions_used))
            if len(providers_used) < wl.min_distinct_providers:
                new |= ~np.isin(provider, list(providers_used))
            if (can & new).any():
                can &= new
            if not can.any():
                break
            j = int(np.flatnonzero(can)[np.argmin(price[can])])
            mine[j] += 1
            room[offer[j]] -= wl.gpus_per_replica
            if wl.budget_group is not None:
                budget[wl.budget_group] -= cost[j]
        if mine.sum() and not any(rows[0] for rows in broken_rules(p, w, mine[None]).values()):
            x[cols] = mine
            free, left = room, budget
    return x


# ------------------------------------------------------------------------ properties


def lex_at_most(a: Score, b: Score, gap: float) -> bool:
    """``a`` no worse than ``b``: fewer missing units, or as many and a cost within the
    relative gap ``gap`` of a placement at least as good as ``b``."""
    if a[0] != b[0]:
        return a[0] < b[0]
    return a[1] * (1 - gap) <= b[1] + TOL


def check(p: Problem, s: Solution) -> None:
    """The solution keeps every rule and reports itself truthfully."""
    replicas = np.asarray(s.replicas, dtype=np.int64)
    assert violations(p, replicas) == []
    assert math.isclose(s.total_cost, float(p.col_cost @ replicas), abs_tol=TOL)
    for w, wl in enumerate(p.workloads):
        n = int(replicas[columns_of(p, w)].sum())
        outcome = s.workloads[w]
        assert outcome.name == wl.name and outcome.placed_replicas == n
        if wl.replicas is not None and 0 < n < wl.replicas:
            expected = PlacementStatus.PARTIAL
        elif n == 0:
            expected = PlacementStatus.UNPLACEABLE
        else:
            expected = PlacementStatus.PLACED
        assert outcome.status is expected
        assert bool(outcome.reasons) == (expected is not PlacementStatus.PLACED)


def assert_brute_force_optimum(p: Problem, s: Solution) -> None:
    """The solution misses as few units as the best placement, at the same cost."""
    best = brute_force(p)
    units, cost = solver_score(p, s)
    assert units == best[0]
    assert math.isclose(cost, best[1], rel_tol=1e-6, abs_tol=TOL), (cost, best)


@PROPERTY
@given(SMALL)
def test_the_solver_finds_the_brute_force_optimum(p: Problem) -> None:
    s = solve(p, mip_rel_gap=0.0)
    check(p, s)
    assert s.optimal
    assert_brute_force_optimum(p, s)


@PROPERTY
@given(MEDIUM)
def test_the_solver_is_never_worse_than_a_greedy_placement(p: Problem) -> None:
    s = solve(p)
    check(p, s)
    assert s.optimal and 0 <= s.gap <= 0.005
    baseline = greedy(p)
    assert violations(p, baseline) == []  # the greedy itself is feasible
    assert lex_at_most(solver_score(p, s), score(p, baseline), s.gap)


@PROPERTY
@given(st.one_of(SMALL, MEDIUM))
def test_no_solution_ever_breaks_a_rule(p: Problem) -> None:
    check(p, solve(p))


@PROPERTY
@given(MEDIUM)
def test_the_reduction_never_changes_the_optimum(p: Problem) -> None:
    reduced = solve(p, mip_rel_gap=0.0)
    full = solve(p, mip_rel_gap=0.0, reduce=False)
    check(p, reduced)
    check(p, full)
    a, b = solver_score(p, reduced), solver_score(p, full)
    assert a[0] == b[0]
    assert math.isclose(a[1], b[1], rel_tol=1e-6, abs_tol=TOL), (a, b)


# ------------------------------------------------------------------------ the aids
#
# Each phase first runs plainly for a moment; only a problem it does not settle gets
# the budget floors, the rounded start and the RINS start. These problems are too
# small to need them, so here the moment is none.


@PROPERTY
@given(SMALL)
def test_with_every_aid_the_solver_still_finds_the_brute_force_optimum(p: Problem) -> None:
    with patch.object(solver, "_QUICK", 0.0):
        s = solve(p, mip_rel_gap=0.0)
    check(p, s)
    assert s.optimal
    assert_brute_force_optimum(p, s)


@PROPERTY
@given(MEDIUM)
def test_the_aids_never_change_the_optimum(p: Problem) -> None:
    plain = solve(p, mip_rel_gap=0.0)
    with patch.object(solver, "_QUICK", 0.0):
        aided = solve(p, mip_rel_gap=0.0)
    check(p, aided)
    a, b = solver_score(p, aided), solver_score(p, plain)
    assert a[0] == b[0]
    assert math.isclose(a[1], b[1], rel_tol=1e-6, abs_tol=TOL), (a, b)


# ------------------------------------------------------------------- the model parts


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([40.0, 90.0, 100.0, 150.0, 300.0]), min_size=2, max_size=3, unique=True
    ),
    st.sampled_from([100.0, 250.0, 400.0, 777.0]),
)
def test_minimal_patterns_are_the_least_replica_counts_that_reach_a_target(
    speeds: list[float], target: float
) -> None:
    levels = np.array(sorted(speeds, reverse=True))
    patterns = solver._minimal_patterns(levels, target)
    most = [math.ceil(target / t) for t in levels]
    expected = set()
    for counts in itertools.product(*[range(m + 1) for m in most]):
        reach = float(np.dot(counts, levels))
        fewer = [reach - t for t, n in zip(levels, counts, strict=True) if n > 0]
        if reach >= target and all(r < target for r in fewer):
            expected.add(counts)
    if patterns is None:  # more than the model takes: then none are used
        assert len(expected) > solver._PATTERN_LIMIT
    else:
        assert {tuple(int(n) for n in row) for row in patterns} == expected


def _reduced(
    p: Problem,
) -> tuple[solver._Demands, solver._Candidates, IntMatrix, solver._Model]:
    """The problem as the solver models it: demands, candidates, kept columns, model."""
    d = solver._Demands.of(p.workloads)
    c = solver._prepare(p, d)
    cols = solver._reduce(p, d, c)
    return d, c, cols, solver._build(p, d, c, cols)


def _model(p: Problem) -> solver._Model:
    return _reduced(p)[3]


def _optimum(model: solver._Model, cost: FloatArray) -> float:
    h = solver._highs(model, time_limit=30.0, mip_rel_gap=0.0)
    h.changeColsCost(model.n_vars, np.arange(model.n_vars, dtype=np.int32), cost)
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return float(h.getInfo().objective_function_value)


@PROPERTY
@given(MEDIUM)
def test_the_model_solved_component_by_component_has_the_same_optimum(p: Problem) -> None:
    model = _model(p)
    if model.n_vars == 0:
        return
    cost, _ = solver._penalised(model)  # the real cost plus a penalty per missing unit
    label = solver._components(model, np.ones(model.n_vars, dtype=np.bool_))
    whole = _optimum(model, cost)
    parts = 0.0
    for c in np.unique(label):
        keep = np.flatnonzero(label == c)
        parts += _optimum(solver._submodel(model, keep, model.trivial), cost[keep])
    assert math.isclose(whole, parts, rel_tol=1e-7, abs_tol=1e-6)


@PROPERTY
@given(MEDIUM)
def test_a_part_solved_with_the_rest_fixed_keeps_every_row_of_the_whole(p: Problem) -> None:
    model = _model(p)
    fixed = np.zeros(model.n_vars, dtype=np.bool_)
    fixed[: len(model.cols) // 2] = True  # half the columns stay unplaced
    values = model.trivial.copy()
    label = solver._components(model, ~fixed)
    for c in np.unique(label[~fixed]):
        keep = np.flatnonzero(label == c)
        sub = solver._submodel(model, keep, values)
        h = solver._highs(sub, time_limit=30.0, mip_rel_gap=0.0)
        run = solver._run_once(h, values[keep])
        values[keep] = run.values
    assert solver._feasible(model, values)


# ------------------------------------------------------------ parts and the LP start
#
# Problems this small are one part and never get the LP start; with parts of one
# column every component is a part of its own and every part of more than one column
# starts from the LP rounding.


@PROPERTY
@given(SMALL)
def test_solved_part_by_part_the_solver_still_finds_the_brute_force_optimum(p: Problem) -> None:
    with patch.object(solver, "_PART_COLUMNS", 1):
        s = solve(p, mip_rel_gap=0.0)
    check(p, s)
    assert s.optimal and s.gap <= 1e-9
    assert_brute_force_optimum(p, s)


@PROPERTY
@given(MEDIUM)
def test_parts_never_change_the_optimum(p: Problem) -> None:
    whole = solve(p, mip_rel_gap=0.0)
    with patch.object(solver, "_PART_COLUMNS", 1):
        parted = solve(p, mip_rel_gap=0.0)
    check(p, parted)
    a, b = solver_score(p, parted), solver_score(p, whole)
    assert a[0] == b[0]
    assert math.isclose(a[1], b[1], rel_tol=1e-6, abs_tol=TOL), (a, b)


@PROPERTY
@given(MEDIUM)
def test_the_parts_gap_bounds_the_cost_above_the_optimum(p: Problem) -> None:
    exact = solve(p, mip_rel_gap=0.0)
    with patch.object(solver, "_PART_COLUMNS", 1):
        loose = solve(p, mip_rel_gap=0.2)
    check(p, loose)
    assert loose.optimal and 0 <= loose.gap <= 0.2 + 1e-9
    units, cost = solver_score(p, loose)
    best = solver_score(p, exact)
    assert units == best[0]
    # The whole's gap is of Σ cost over the parts: the optimum lies within it.
    assert best[1] >= cost * (1 - loose.gap) - TOL


@PROPERTY
@given(MEDIUM)
def test_the_lp_start_keeps_every_rule(p: Problem) -> None:
    d, c, cols, model = _reduced(p)
    if len(cols) == 0:
        return
    x, _, _ = solver._lp_start(p, d, c, model, time_limit=30.0)
    assert x is not None
    replicas = np.zeros(p.n_columns, dtype=np.int64)
    replicas[c.index[cols]] = np.rint(x).astype(np.int64)
    assert violations(p, replicas) == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([60.0, 127.0, 339.0, 700.0, 1167.0]), st.booleans()),
        min_size=2,
        max_size=4,
        unique=True,
    ),
    st.sampled_from([500.0, 1300.0, 2500.0]),
    st.sampled_from([0.25, 0.5, 0.75]),
)
def test_the_mix_cuts_keep_every_placement_that_reaches_the_target_within_the_spot_share(
    columns: list[tuple[float, bool]], target: float, share: float
) -> None:
    tput = np.array([t for t, _ in columns])
    spot = np.array([s for _, s in columns])
    n = len(columns)
    d = solver._Demands.of(
        [
            WorkloadDemand(
                "w", replicas=None, min_throughput=target, gpus_per_replica=1, max_spot_share=share
            )
        ]
    )
    rows = solver._Rows()
    z = n  # the placed variable follows the columns
    solver._add_mix_cuts(
        rows, d, np.zeros(n, dtype=np.int64), np.arange(n), tput, spot, np.array([z])
    )
    lower, _, start, index, value = rows.csr()
    most = math.ceil(target / tput.min()) * 4  # shares may need extra on-demand replicas
    for counts in itertools.product(range(min(most, 12) + 1), repeat=n):
        x = np.array(counts, dtype=np.float64)
        reached = float(x @ tput) >= target
        within = float(x[spot].sum()) <= share * float(x.sum()) + 1e-9
        if not (reached and within):
            continue
        values = np.append(x, 1.0)
        for r in range(len(lower)):
            at = slice(start[r], start[r + 1])
            assert float(value[at] @ values[index[at]]) >= lower[r] - 1e-9, (counts, r)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([100.0, 250.0, 400.0, 700.0]), st.booleans()),
        min_size=2,
        max_size=3,
        unique=True,
    ),
    st.sampled_from([300.0, 800.0, 1200.0]),
    st.sampled_from([0.34, 0.5, 0.75]),
)
def test_shared_patterns_are_the_least_counts_that_reach_a_target_within_a_spot_share(
    cells: list[tuple[float, bool]], target: float, share: float
) -> None:
    speed = np.array([t for t, _ in cells])
    spot = np.array([s for _, s in cells])
    patterns = solver._shared_patterns(speed, spot, target, share)
    # Every count up to the target in the slowest cell, times the replicas one spot
    # replica may need beside it: beyond, no count is minimal.
    most = math.ceil(target / speed.min()) * math.ceil(1 / share)
    grid = np.stack(
        np.meshgrid(*[np.arange(most + 1)] * len(cells), indexing="ij"), axis=-1
    ).reshape(-1, len(cells))

    def feasible(n: IntMatrix) -> BoolArray:
        on_spot = n[:, spot].sum(axis=1)
        return (n @ speed >= target) & (on_spot <= share * n.sum(axis=1) + 1e-9)

    minimal = feasible(grid)
    for i in range(len(cells)):
        fewer = grid.copy()
        fewer[:, i] -= 1
        minimal &= ~((grid[:, i] > 0) & feasible(fewer))
    expected = {tuple(int(n) for n in row) for row in grid[minimal]}
    if patterns is None:  # more than the model takes
        assert len(expected) > solver._PATTERN_LIMIT
    else:
        assert {tuple(int(n) for n in row) for row in patterns} == expected


@PROPERTY
@given(SMALL)
def test_with_spot_cells_merged_the_solver_still_finds_the_brute_force_optimum(
    p: Problem,
) -> None:
    # A box of 3 candidates merges every market's speeds into one: looser, still valid.
    with patch.object(solver, "_SHARED_BOX", 3), patch.object(solver, "_PART_COLUMNS", 1):
        s = solve(p, mip_rel_gap=0.0)
    check(p, s)
    assert s.optimal
    assert_brute_force_optimum(p, s)


@PROPERTY
@given(MEDIUM)
def test_out_of_time_every_part_still_keeps_every_rule(p: Problem) -> None:
    with patch.object(solver, "_PART_COLUMNS", 1), patch.object(solver, "_PART_SECONDS", 0.0):
        s = solve(p, time_limit=1e-3)
    check(p, s)
    assert s.optimal or s.time_limited


# ------------------------------------------------------------ bounds for stopping early


def _phase_two_optimum(model: solver._Model, fewest: int) -> float:
    """The cheapest placement of the model missing at most ``fewest`` units."""
    h = solver._highs(model, time_limit=30.0, mip_rel_gap=0.0)
    h.addRow(
        -highspy.kHighsInf,
        fewest - model.units_offset + 1e-9,
        len(model.slack),
        model.slack.astype(np.int32),
        model.slack_units,
    )
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return float(h.getInfo().objective_function_value)


@PROPERTY
@given(MEDIUM)
def test_the_lagrangian_bound_lies_between_the_lp_bound_and_the_optimum(p: Problem) -> None:
    d, c, cols, model = _reduced(p)
    if len(cols) == 0:
        return
    _, _, lp = solver._lp_start(p, d, c, model, time_limit=30.0)
    assert lp is not None
    fewest = round(_optimum(model, solver._units_cost(model)) + model.units_offset)
    relaxed, _ = solver._cost_lp(lp, model, fewest)
    assert relaxed is not None
    best = _phase_two_optimum(model, fewest)
    never: list[float] = []  # the callback's arguments; it never says "enough"
    lifted, _ = solver._lift(
        model,
        c,
        relaxed,
        relaxed.x,
        lambda cost, bound: bool(never.append(bound)),
        time_limit=30.0,
    )
    tol = 1e-6 * max(1.0, abs(best))
    assert relaxed.value <= best + tol
    assert relaxed.value - tol <= lifted <= best + tol, (relaxed.value, lifted, best)
    # Each batch raises the bound, never lowers it.
    assert all(a <= b + tol for a, b in itertools.pairwise(never))
    # Nor does a batch cut off by the time limit, whatever HiGHS's bound then.
    hurried, _ = solver._lift(
        model, c, relaxed, relaxed.x, lambda cost, bound: False, time_limit=1e-9
    )
    assert relaxed.value - tol <= hurried <= best + tol


def test_a_part_may_stop_wider_than_the_gap_when_the_others_make_up_for_it() -> None:
    whole = solver._Whole(2, mip_rel_gap=0.01, mip_abs_gap=0.0)
    # Part 0 alone is 1.5 % above its bound; nothing is known of part 1 yet.
    assert not whole.within(0, 100.0, 98.5)
    # Part 1 is solved exactly: the whole is 1.5 / 200 = 0.75 % above its bound.
    assert whole.within(1, 100.0, 100.0)
    # A worse bound later does not undo a better one found earlier.
    assert whole.within(0, 100.0, 90.0)
    # A dearer placement of part 1 makes the whole wider than the gap.
    assert not whole.within(1, 110.0, 100.0)


def test_the_lagrangian_bound_of_an_uncoupled_workload_is_its_integer_optimum() -> None:
    """400 tokens/s in 2 distinct regions, 100 tokens/s for $2/h in one and 200 in the
    other: whole replicas cost $6/h (1 + 2 or 2 + 1), the LP reaches 400 for $5/h
    (1 + 1.5). No row is shared, so the Lagrangian bound is the integer optimum."""
    p = Problem(
        workloads=[
            WorkloadDemand(
                "w",
                replicas=None,
                min_throughput=400.0,
                gpus_per_replica=1,
                min_distinct_regions=2,
            )
        ],
        col_workload=np.array([0, 0]),
        col_offer=np.array([0, 1]),
        col_cost=np.array([2.0, 2.0]),
        col_throughput=np.array([100.0, 200.0]),
        offer_region=np.array([0, 1]),
        offer_provider=np.array([0, 0]),
        offer_spot=np.array([False, False]),
        offer_capacity_gpus=np.array([np.inf, np.inf]),
    )
    d, c, _, model = _reduced(p)
    _, _, lp = solver._lp_start(p, d, c, model, time_limit=30.0)
    assert lp is not None
    relaxed, _ = solver._cost_lp(lp, model, 0)
    assert relaxed is not None
    lifted, _ = solver._lift(
        model, c, relaxed, relaxed.x, lambda cost, bound: False, time_limit=30.0
    )
    assert math.isclose(relaxed.value, 5.0, abs_tol=1e-6)
    assert math.isclose(lifted, 6.0, abs_tol=1e-6)
