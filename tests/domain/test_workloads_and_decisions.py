from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from arbiter.domain.decisions import Candidate, Decision, RuleMode, RuleVerdict, Verdict
from arbiter.domain.market import Offer
from arbiter.domain.workloads import GpuOption, Placement, UserLocation, Workload

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
OFFER = Offer(provider="gcp", region="europe-west4", instance_type="a3-highgpu-8g", market="spot")


def workload(**changes: object) -> Workload:
    fields: dict[str, object] = {
        "name": "chat-api",
        "data_class": "personal-eu",
        "gpu_options": (GpuOption(model="H100", tokens_per_second=2500),),
        "replicas": 3,
    }
    fields.update(changes)
    return Workload(**fields)  # type: ignore[arg-type]


def test_a_workload_is_sized_by_replicas_or_throughput_not_both() -> None:
    assert workload().replicas == 3
    assert workload(replicas=None, required_tokens_per_second=9000).replicas is None
    with pytest.raises(ValidationError, match="exactly one"):
        workload(required_tokens_per_second=9000)
    with pytest.raises(ValidationError, match="exactly one"):
        workload(replicas=None)


def test_user_location_shares_add_up_to_one() -> None:
    paris = UserLocation(name="paris", latitude=48.86, longitude=2.35, share=0.6)
    berlin = UserLocation(name="berlin", latitude=52.52, longitude=13.40, share=0.3)
    with pytest.raises(ValidationError, match="add up to 1"):
        workload(user_locations=(paris, berlin))
    assert (
        len(
            workload(
                user_locations=(paris, berlin.model_copy(update={"share": 0.4}))
            ).user_locations
        )
        == 2
    )


def test_a_workload_name_is_a_dns_label() -> None:
    with pytest.raises(ValidationError):
        workload(name="Chat API")


def test_throughput_is_known_only_for_accepted_gpus() -> None:
    w = workload(
        gpu_options=(
            GpuOption(model="H100", tokens_per_second=2500),
            GpuOption(model="A100-80GB", tokens_per_second=1000),
        )
    )
    assert w.throughput_on("A100-80GB") == 1000
    assert w.throughput_on("L4") is None


def test_a_gpu_model_may_be_listed_once() -> None:
    with pytest.raises(ValidationError, match="twice"):
        workload(
            gpu_options=(
                GpuOption(model="H100", tokens_per_second=1),
                GpuOption(model="H100", tokens_per_second=2),
            )
        )


def test_an_error_verdict_excludes_like_a_fail_when_enforced() -> None:
    error = RuleVerdict(rule_id="carbon-cap", verdict=Verdict.ERROR, reason="carbon data stale")
    assert error.excludes
    audit = error.model_copy(update={"mode": RuleMode.AUDIT})
    assert not audit.excludes
    candidate = Candidate(offer=OFFER, verdicts=(error,))
    assert not candidate.eligible


def test_a_decision_is_placed_or_says_why_not() -> None:
    with pytest.raises(ValidationError, match="must say why"):
        Decision(id="d", workload="chat-api", decided_at=T0, snapshot_id="s")
    unplaced = Decision(
        id="d",
        workload="chat-api",
        decided_at=T0,
        snapshot_id="s",
        unplaceable_reasons=("no EU region has H100 capacity",),
    )
    assert not unplaced.placed
    with pytest.raises(ValidationError, match="belong"):
        Decision(
            id="d",
            workload="chat-api",
            decided_at=T0,
            snapshot_id="s",
            placements=(Placement(workload="other", offer=OFFER, replicas=1),),
        )
