"""The contract every executor (and its traffic router) keeps.

Each implementation's test module subclasses :class:`ExecutorContract` and provides a
``h`` fixture yielding a :class:`Harness`: the executor, a way to let warm-up time
pass, and a way to make an offer run out of capacity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from arbiter.domain.market import Offer
from arbiter.domain.workloads import GpuOption, Workload
from arbiter.errors import CapacityUnavailable

START = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
WORKLOAD = Workload(
    name="chat",
    data_class="internal",
    replicas=2,
    gpu_options=(GpuOption(model="L4", tokens_per_second=500),),
)
OTHER = WORKLOAD.model_copy(update={"name": "embed"})
A = Offer(provider="gcp", region="us-east4", instance_type="g2-standard-4", market="spot")
B = Offer(provider="aws", region="us-east-1", instance_type="g6.xlarge", market="on-demand")


@dataclass
class Harness:
    executor: object
    wait_ready: Callable[[], None]
    """Let enough time pass for asked-for replicas to become ready."""
    exhaust: Callable[[Offer], None] | None
    """Make an offer run out of capacity (None: the executor has no capacity to run out of)."""


class ExecutorContract:
    """Subclass with a ``h`` fixture yielding a Harness."""

    def test_ensure_creates_a_group_that_becomes_ready(self, h: Harness) -> None:
        group = h.executor.ensure(WORKLOAD, A, 2)  # type: ignore[attr-defined]
        assert (group.workload, group.offer, group.desired) == ("chat", A, 2)
        h.wait_ready()
        now = h.executor.group("chat", A)  # type: ignore[attr-defined]
        assert now is not None and now.ready == 2 and now.id == "chat@" + A.key

    def test_ensure_again_with_the_same_count_changes_nothing(self, h: Harness) -> None:
        h.executor.ensure(WORKLOAD, A, 2)  # type: ignore[attr-defined]
        h.wait_ready()
        again = h.executor.ensure(WORKLOAD, A, 2)  # type: ignore[attr-defined]
        assert again.ready == 2
        assert h.executor.groups("chat") == [again]  # type: ignore[attr-defined]

    def test_scaling_down_keeps_the_remaining_replicas_ready(self, h: Harness) -> None:
        h.executor.ensure(WORKLOAD, A, 3)  # type: ignore[attr-defined]
        h.wait_ready()
        smaller = h.executor.ensure(WORKLOAD, A, 1)  # type: ignore[attr-defined]
        assert (smaller.desired, smaller.ready) == (1, 1)

    def test_ensure_zero_releases_the_group_and_is_idempotent(self, h: Harness) -> None:
        h.executor.ensure(WORKLOAD, A, 2)  # type: ignore[attr-defined]
        h.executor.ensure(WORKLOAD, A, 0)  # type: ignore[attr-defined]
        h.executor.ensure(WORKLOAD, A, 0)  # type: ignore[attr-defined]
        assert h.executor.group("chat", A) is None  # type: ignore[attr-defined]
        assert h.executor.groups() == []  # type: ignore[attr-defined]

    def test_groups_lists_what_runs_per_workload(self, h: Harness) -> None:
        h.executor.ensure(WORKLOAD, A, 1)  # type: ignore[attr-defined]
        h.executor.ensure(WORKLOAD, B, 1)  # type: ignore[attr-defined]
        h.executor.ensure(OTHER, A, 1)  # type: ignore[attr-defined]
        assert {g.offer for g in h.executor.groups("chat")} == {A, B}  # type: ignore[attr-defined]
        assert len(h.executor.groups()) == 3  # type: ignore[attr-defined]

    def test_no_capacity_raises_capacity_unavailable_naming_the_offer(self, h: Harness) -> None:
        if h.exhaust is None:
            pytest.skip("this executor never runs out of capacity")
        h.exhaust(A)
        with pytest.raises(CapacityUnavailable) as caught:
            h.executor.ensure(WORKLOAD, A, 1)  # type: ignore[attr-defined]
        assert caught.value.offer_key == A.key
        assert h.executor.group("chat", A) is None  # type: ignore[attr-defined]

    def test_weights_replace_the_previous_split_and_drop_zero_weights(self, h: Harness) -> None:
        a = h.executor.ensure(WORKLOAD, A, 1)  # type: ignore[attr-defined]
        b = h.executor.ensure(WORKLOAD, B, 1)  # type: ignore[attr-defined]
        h.wait_ready()
        h.executor.set_weights("chat", {a.id: 1, b.id: 1})  # type: ignore[attr-defined]
        h.executor.set_weights("chat", {a.id: 0, b.id: 2})  # type: ignore[attr-defined]
        assert h.executor.weights("chat") == {b.id: 2}  # type: ignore[attr-defined]
        assert h.executor.in_flight("chat", a.id) in (0, None)  # type: ignore[attr-defined]
