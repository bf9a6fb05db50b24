from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arbiter.domain.market import Offer
from arbiter.domain.migrations import (
    TRANSITIONS,
    InvalidTransition,
    Migration,
    MigrationState,
)
from arbiter.domain.workloads import Placement

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
A = Offer(provider="aws", region="us-east-1", instance_type="p5.48xlarge", market="spot")
B = Offer(provider="gcp", region="us-east4", instance_type="a3-highgpu-8g", market="spot")


def planned() -> Migration:
    return Migration(
        id="m-1",
        workload="chat-api",
        source=(Placement(workload="chat-api", offer=A, replicas=2),),
        target=(Placement(workload="chat-api", offer=B, replicas=2),),
        reason="saves $12/h",
        created_at=T0,
        updated_at=T0,
    )


HAPPY_PATH = [
    MigrationState.PROVISIONING,
    MigrationState.WARMING,
    MigrationState.SHIFTING,
    MigrationState.DRAINING,
    MigrationState.RELEASING,
    MigrationState.DONE,
]


def test_the_happy_path_is_make_before_break() -> None:
    m = planned()
    events = []
    for i, state in enumerate(HAPPY_PATH, start=1):
        m, event = m.advance(state, at=T0 + timedelta(seconds=i), reason=f"step {i}")
        events.append(event)
    assert m.state is MigrationState.DONE and m.state.finished
    assert [e.to_state for e in events] == HAPPY_PATH
    # Old capacity drains only after traffic has shifted to the new.
    order = [e.to_state for e in events]
    assert order.index(MigrationState.SHIFTING) < order.index(MigrationState.DRAINING)


def test_skipping_a_step_is_refused() -> None:
    with pytest.raises(InvalidTransition, match="cannot go from planned to shifting"):
        planned().advance(MigrationState.SHIFTING, at=T0, reason="hurry")


def test_after_traffic_shifted_there_is_no_rollback() -> None:
    m = planned()
    for state in HAPPY_PATH[:4]:
        m, _ = m.advance(state, at=T0, reason="")
    assert m.state is MigrationState.DRAINING
    with pytest.raises(InvalidTransition):
        m.advance(MigrationState.ROLLING_BACK, at=T0, reason="")


def test_finished_states_have_no_way_out() -> None:
    for state in MigrationState:
        if state.finished:
            assert TRANSITIONS[state] == frozenset()


@given(st.lists(st.sampled_from(list(MigrationState)), max_size=20))
def test_any_sequence_of_requests_only_ever_follows_allowed_transitions(
    requests: list[MigrationState],
) -> None:
    m = planned()
    for target in requests:
        before = m.state
        try:
            m, event = m.advance(target, at=T0, reason="")
        except InvalidTransition:
            assert target not in TRANSITIONS[before]
            continue
        assert target in TRANSITIONS[before]
        assert event.from_state is before and event.to_state is target
