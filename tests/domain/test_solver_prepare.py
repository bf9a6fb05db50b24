"""Candidate preparation chunk by chunk of whole workloads gives what all columns at
once give: the same candidates, reasons, demand and capacity, and the same columns
left after the reduction, whatever the chunk size and the order of the columns.

Problems come from the property tests' strategy; "at once" is one chunk as large as
the problem, "chunk by chunk" a few columns each, so that most workloads are a chunk
of their own and some take more than the chunk size.
"""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
import numpy.typing as npt
from hypothesis import given
from hypothesis import strategies as st

from arbiter.domain import solver
from arbiter.domain.solver import Problem
from tests.domain.test_solver_properties import MEDIUM, PROPERTY

IntArray = npt.NDArray[np.int64]

CHUNK_SIZES = st.integers(1, 6)
SEEDS = st.integers(0, 2**32 - 1)


def prepared(p: Problem, chunk: int | None, *, reduce: bool = True) -> solver._Candidates:
    """``_prepare`` with ``chunk`` columns at a time (None: all at once)."""
    d = solver._Demands.of(p.workloads)
    with patch.object(solver, "_CHUNK_COLUMNS", chunk or max(p.n_columns, 1)):
        return solver._prepare(p, d, reduce=reduce)


def reduced(p: Problem, chunk: int | None) -> IntArray:
    """The problem's columns left after the whole reduction, in order."""
    c = prepared(p, chunk)
    if len(c.index) == 0:
        return c.index
    kept: IntArray = c.index[solver._reduce(p, solver._Demands.of(p.workloads), c)]
    return kept


def with_columns(p: Problem, order: IntArray) -> Problem:
    """The same problem with its columns in ``order`` (column i is p's column order[i])."""
    return Problem(
        workloads=p.workloads,
        col_workload=p.col_workload[order],
        col_offer=p.col_offer[order],
        col_cost=p.col_cost[order],
        col_throughput=p.col_throughput[order],
        offer_region=p.offer_region,
        offer_provider=p.offer_provider,
        offer_spot=p.offer_spot,
        offer_capacity_gpus=p.offer_capacity_gpus,
        budgets=p.budgets,
    )


def assert_same_candidates(a: solver._Candidates, b: solver._Candidates) -> None:
    for name in ("index", "workload", "offer", "cost", "throughput", "bounded"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert_same_workloads_and_offers(a, b)


def assert_same_workloads_and_offers(a: solver._Candidates, b: solver._Candidates) -> None:
    assert a.reasons == b.reasons
    for name in ("capacity", "demand", "total_cap"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@PROPERTY
@given(MEDIUM, CHUNK_SIZES)
def test_every_candidate_column_is_prepared_alike_chunk_by_chunk(p: Problem, chunk: int) -> None:
    assert_same_candidates(prepared(p, chunk, reduce=False), prepared(p, None, reduce=False))


@PROPERTY
@given(MEDIUM, CHUNK_SIZES)
def test_the_columns_left_by_the_anchors_are_alike_chunk_by_chunk(p: Problem, chunk: int) -> None:
    assert_same_candidates(prepared(p, chunk), prepared(p, None))


@PROPERTY
@given(MEDIUM)
def test_the_anchors_leave_candidate_columns_with_every_candidates_demand(p: Problem) -> None:
    every, left = prepared(p, None, reduce=False), prepared(p, None)
    assert np.isin(left.index, every.index).all()
    assert_same_workloads_and_offers(left, every)


@PROPERTY
@given(MEDIUM, CHUNK_SIZES)
def test_the_reduction_keeps_the_same_problem_columns_chunk_by_chunk(
    p: Problem, chunk: int
) -> None:
    assert np.array_equal(reduced(p, chunk), reduced(p, None))


@PROPERTY
@given(MEDIUM, CHUNK_SIZES, SEEDS)
def test_workloads_interleaved_are_reduced_as_one_after_the_other(
    p: Problem, chunk: int, seed: int
) -> None:
    # Each workload's columns keep their order (ties go to the first), workloads mix.
    rng = np.random.default_rng(seed)
    order = rng.permutation(p.n_columns)
    for w in range(p.n_workloads):
        mine = p.col_workload[order] == w
        order[mine] = np.sort(order[mine])
    mixed = with_columns(p, order)
    assert np.array_equal(np.sort(order[reduced(mixed, chunk)]), reduced(p, None))
    assert_same_workloads_and_offers(prepared(mixed, chunk), prepared(p, None))


@PROPERTY
@given(MEDIUM, CHUNK_SIZES, SEEDS)
def test_columns_in_any_order_are_prepared_and_reduced_alike_chunk_by_chunk(
    p: Problem, chunk: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    shuffled = with_columns(p, rng.permutation(p.n_columns))
    assert_same_candidates(
        prepared(shuffled, chunk, reduce=False), prepared(shuffled, None, reduce=False)
    )
    assert_same_candidates(prepared(shuffled, chunk), prepared(shuffled, None))
    assert np.array_equal(reduced(shuffled, chunk), reduced(shuffled, None))
