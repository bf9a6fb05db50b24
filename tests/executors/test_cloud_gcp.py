"""The cloud executor on GCP: the real google-cloud-compute client (REST) against a local
fake of the Compute Engine instance API (tests/fakes/gcp_instances.py), on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.executors.contract as contract
from arbiter.domain.market import Offer
from arbiter.errors import CapacityUnavailable, ExecutorError
from arbiter.executors.cloud import CloudExecutor, short_hash
from arbiter.ports import FakeClock
from tests.executors.contract import START, WORKLOAD, ExecutorContract, Harness
from tests.fakes.gcp_instances import PROJECT, REGIONS, FakeGcpInstances

GCP_A = contract.A  # gcp:us-east4:-:g2-standard-4:spot
GCP_B = Offer(
    provider="gcp",
    region="europe-west4",
    zone="europe-west4-b",
    instance_type="a2-highgpu-1g",
    market="on-demand",
)
IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11"
SCRIPT = "#!/bin/bash\nexec serve --model {{workload}} --replicas {{replicas_per_instance}}\n"


@pytest.fixture(scope="module")
def gcp_fake() -> Iterator[FakeGcpInstances]:
    with FakeGcpInstances() as fake:
        yield fake


@pytest.fixture
def gcp(gcp_fake: FakeGcpInstances) -> FakeGcpInstances:
    gcp_fake.reset()
    return gcp_fake


def gcp_options(fake: FakeGcpInstances, **overrides: Any) -> dict[str, Any]:
    return {
        "project": PROJECT,
        "image": IMAGE,
        "compute_endpoint": fake.url,
        "anonymous": True,
        **overrides,
    }


@pytest.fixture
def make(gcp: FakeGcpInstances) -> Iterator[Callable[..., CloudExecutor]]:
    built: list[CloudExecutor] = []

    def make(**options: Any) -> CloudExecutor:
        section = gcp_options(gcp, **options.pop("gcp", {}))
        merged = {"gcp": section, "startup_script": SCRIPT, **options}
        executor = CloudExecutor(
            FakeClock(START), {k: v for k, v in merged.items() if v is not None}
        )
        built.append(executor)
        return executor

    yield make
    for executor in built:
        executor.close()


def exhaust_everywhere(
    fake: FakeGcpInstances, offer: Offer, code: str = "ZONE_RESOURCE_POOL_EXHAUSTED"
) -> None:
    fake.exhaust(
        offer.instance_type, [offer.zone] if offer.zone else REGIONS[offer.region], code=code
    )


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    return {item["key"]: item["value"] for item in body["metadata"]["items"]}


# -- the contract --------------------------------------------------------------------


class TestGcpCloudExecutor(ExecutorContract):
    @pytest.fixture
    def h(
        self,
        make: Callable[..., CloudExecutor],
        gcp: FakeGcpInstances,
        monkeypatch: pytest.MonkeyPatch,
    ) -> Iterator[Harness]:
        monkeypatch.setattr(contract, "B", GCP_B)  # A is already a GCP offer
        yield Harness(make(), gcp.boot, lambda offer: exhaust_everywhere(gcp, offer))


def test_instances_boot_through_provisioning_and_staging_before_they_are_ready(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    executor = make()
    assert executor.ensure(WORKLOAD, GCP_A, 2).ready == 0
    gcp.tick()
    assert executor.group("chat", GCP_A).ready == 0  # type: ignore[union-attr]
    gcp.tick()
    assert executor.group("chat", GCP_A).ready == 2  # type: ignore[union-attr]


# -- what is launched ----------------------------------------------------------------


def test_a_spot_offer_launches_spot_vms_deleted_on_preemption(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    make().ensure(WORKLOAD, GCP_A, 1)
    (body,) = gcp.inserted()
    assert body["scheduling"] == {
        "provisioningModel": "SPOT",
        "instanceTerminationAction": "DELETE",
        "onHostMaintenance": "TERMINATE",
        "automaticRestart": False,
    }


def test_an_on_demand_offer_launches_standard_vms(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    make().ensure(WORKLOAD, GCP_B, 1)
    (body,) = gcp.inserted()
    assert body["scheduling"]["provisioningModel"] == "STANDARD"
    assert "instanceTerminationAction" not in body["scheduling"]
    assert body["scheduling"]["onHostMaintenance"] == "TERMINATE"  # GPUs cannot live-migrate
    assert body["machineType"] == "zones/europe-west4-b/machineTypes/a2-highgpu-1g"


def test_instances_carry_the_group_labels_the_offer_key_and_the_start_up_script(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    make().ensure(WORKLOAD, GCP_A, 1)
    (body,) = gcp.inserted()
    assert body["labels"] == {
        "arbiter-workload": "chat",
        "arbiter-offer": short_hash(GCP_A.key),
        "arbiter-group": short_hash("chat@" + GCP_A.key),
        "arbiter-replicas": "1",
    }
    metadata = _metadata(body)
    assert metadata["arbiter-offer-key"] == GCP_A.key
    assert metadata["startup-script"] == "#!/bin/bash\nexec serve --model chat --replicas 1\n"
    assert body["disks"][0]["initializeParams"]["sourceImage"] == IMAGE
    assert body["name"] == f"arb-chat-{short_hash('chat@' + GCP_A.key)[:8]}-0"


def test_the_start_up_script_may_come_from_a_file(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances, tmp_path: Path
) -> None:
    script = tmp_path / "boot.sh"
    script.write_text("#!/bin/sh\necho {{workload}} {{offer_key}}\n")
    make(startup_script=None, startup_script_file=str(script)).ensure(WORKLOAD, GCP_A, 1)
    (body,) = gcp.inserted()
    assert _metadata(body)["startup-script"] == f"#!/bin/sh\necho chat {GCP_A.key}\n"


def test_gpus_per_instance_in_the_options_overrides_the_machine_type(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    make(gpus_per_instance={"g2-standard-4": 2}).ensure(WORKLOAD, GCP_A, 2)
    assert len(gcp.inserted()) == 1
    assert not [r for r in gcp.requests if "/machineTypes/" in r.path]


def test_an_offer_without_a_zone_goes_to_the_first_zone_of_the_region(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    make().ensure(WORKLOAD, GCP_A, 2)
    assert {i["zone"].rsplit("/", 1)[-1] for i in gcp.running()} == {"us-east4-a"}


def test_configured_zones_are_tried_in_their_order(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    make(gcp={"zones": {"us-east4": ["us-east4-c", "us-east4-a"]}}).ensure(WORKLOAD, GCP_A, 1)
    assert [i["zone"].rsplit("/", 1)[-1] for i in gcp.running()] == ["us-east4-c"]


def test_a_stocked_out_zone_is_skipped_for_the_next_one(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    gcp.exhaust("g2-standard-4", ["us-east4-a"])
    group = make().ensure(WORKLOAD, GCP_A, 2)
    assert group.desired == 2
    assert {i["zone"].rsplit("/", 1)[-1] for i in gcp.running()} == {"us-east4-b"}


def test_guest_accelerators_are_attached_and_counted_for_general_purpose_types(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    offer = GCP_A.model_copy(update={"instance_type": "n1-standard-8"})
    accelerators = {"n1-standard-8": {"type": "nvidia-tesla-t4", "count": 1}}
    make(gcp={"accelerators": accelerators}).ensure(WORKLOAD, offer, 1)
    (body,) = gcp.inserted()
    assert body["guestAccelerators"] == [
        {
            "acceleratorType": "zones/us-east4-a/acceleratorTypes/nvidia-tesla-t4",
            "acceleratorCount": 1,
        }
    ]


def test_an_instance_with_more_gpus_hosts_several_replicas(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    offer = GCP_A.model_copy(update={"instance_type": "g2-standard-24"})  # 2 × L4
    executor = make()
    executor.ensure(WORKLOAD, offer, 3)
    assert len(gcp.inserted()) == 2  # ceil(3 / 2)
    assert {b["labels"]["arbiter-replicas"] for b in gcp.inserted()} == {"2"}
    assert "--replicas 2" in _metadata(gcp.inserted()[0])["startup-script"]
    gcp.boot()
    assert executor.group("chat", offer).ready == 3  # type: ignore[union-attr]


def test_an_insert_answered_already_exists_counts_as_launched(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    gcp.fail("insert", 409, "alreadyExists", "The resource '...' already exists")
    group = make().ensure(WORKLOAD, GCP_A, 1)
    assert group.desired == 1


# -- restarts, dead instances, release -----------------------------------------------------


def test_after_a_restart_ensure_finds_the_instances_by_label_and_launches_nothing(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    make().ensure(WORKLOAD, GCP_A, 2)
    gcp.boot()
    again = make().ensure(WORKLOAD, GCP_A, 2)
    assert len(gcp.inserted()) == 2
    assert (again.desired, again.ready) == (2, 2)


def test_after_a_restart_groups_reports_what_runs_from_labels_and_metadata(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    make().ensure(WORKLOAD, GCP_A, 2)
    gcp.boot()
    (found,) = make().groups("chat")
    assert (found.offer, found.desired, found.ready) == (GCP_A, 2, 2)


def test_a_terminated_instance_is_deleted_and_replaced(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    executor = make()
    executor.ensure(WORKLOAD, GCP_A, 2)
    gcp.boot()
    victim = gcp.running()[0]["name"]
    gcp.set_status("us-east4-a", victim, "TERMINATED")
    assert executor.group("chat", GCP_A).ready == 1  # type: ignore[union-attr]
    executor.ensure(WORKLOAD, GCP_A, 2)
    assert victim not in {i["name"] for i in gcp.running()}
    assert len(gcp.running()) == 2


def test_scaling_down_drops_instances_still_booting_first_then_the_newest(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    executor = make()
    executor.ensure(WORKLOAD, GCP_A, 1)  # slot 0
    executor.ensure(WORKLOAD, GCP_A, 2)  # slot 1
    gcp.boot()
    executor.ensure(WORKLOAD, GCP_A, 3)  # slot 2, still booting
    assert executor.ensure(WORKLOAD, GCP_A, 2).ready == 2
    assert sorted(i["name"][-1] for i in gcp.running()) == ["0", "1"]
    assert executor.ensure(WORKLOAD, GCP_A, 1).ready == 1
    assert [i["name"][-1] for i in gcp.running()] == ["0"]


def test_release_deletes_every_instance_and_waits_for_the_operations(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    executor = make()
    executor.ensure(WORKLOAD, GCP_A, 2)
    executor.ensure(WORKLOAD, GCP_A, 0)
    assert gcp.running() == []
    waits = [r for r in gcp.requests if r.path.endswith("/wait")]
    assert len(waits) == 4  # two inserts, two deletes


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    ["ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "QUOTA_EXCEEDED"],
)
def test_each_capacity_error_of_the_operation_is_capacity_unavailable(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances, code: str
) -> None:
    exhaust_everywhere(gcp, GCP_A, code)
    with pytest.raises(CapacityUnavailable) as caught:
        make().ensure(WORKLOAD, GCP_A, 1)
    assert (caught.value.code, caught.value.offer_key) == (code, GCP_A.key)
    assert "us-east4-a" in str(caught.value) and "us-east4-c" in str(caught.value)
    assert gcp.running() == []


def test_a_gpu_quota_refused_in_the_answer_is_capacity_unavailable(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    gcp.exhaust("g2-standard-4", REGIONS["us-east4"], in_answer=True)
    with pytest.raises(CapacityUnavailable) as caught:
        make().ensure(WORKLOAD, GCP_A, 1)
    assert caught.value.code == "QUOTA_EXCEEDED"


def test_a_quota_that_is_not_for_gpus_is_an_executor_error(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    gcp.fail("insert", 403, "quotaExceeded", "Quota 'SSD_TOTAL_GB' exceeded.  Limit: 500.0")
    with pytest.raises(ExecutorError, match="SSD_TOTAL_GB") as caught:
        make().ensure(WORKLOAD, GCP_A, 1)
    assert not isinstance(caught.value, CapacityUnavailable)
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in str(caught.value)  # not a credentials problem


def test_permission_denied_is_an_executor_error_saying_what_the_identity_needs(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    gcp.fail("insert", 403, "forbidden", "Required 'compute.instances.create' permission")
    with pytest.raises(ExecutorError, match=r"compute\.instances\.create") as caught:
        make().ensure(WORKLOAD, GCP_A, 1)
    assert "roles/compute.instanceAdmin.v1" in str(caught.value)


def test_any_other_refusal_is_an_executor_error(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    gcp.fail("list", 400, "invalid", "Invalid value for field 'filter'")
    with pytest.raises(ExecutorError, match="listing instances: 400"):
        make().group("chat", GCP_A)


def test_an_unknown_machine_type_is_an_executor_error(
    make: Callable[..., CloudExecutor], gcp: FakeGcpInstances
) -> None:
    offer = GCP_A.model_copy(update={"instance_type": "g9-imaginary-1"})
    with pytest.raises(ExecutorError, match="g9-imaginary-1"):
        make().ensure(WORKLOAD, offer, 1)


def test_missing_application_default_credentials_are_an_executor_error_saying_how_to_fix(
    make: Callable[..., CloudExecutor], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    with pytest.raises(ExecutorError, match="no usable Google credentials") as caught:
        make(gcp={"anonymous": False}).ensure(WORKLOAD, GCP_A, 1)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(caught.value)


# -- closing ------------------------------------------------------------------------------


def test_closing_the_backend_closes_every_client_though_one_fails(
    make: Callable[..., CloudExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = make().backend("gcp")
    instances, regions = backend._client("instances"), backend._client("regions")  # type: ignore[attr-defined]
    closed: list[str] = []

    def failing_close() -> None:
        closed.append("instances")
        raise OSError("session already closed")

    regions_close = regions.transport.close

    def recording_close() -> None:
        closed.append("regions")
        regions_close()

    monkeypatch.setattr(instances.transport, "close", failing_close)
    monkeypatch.setattr(regions.transport, "close", recording_close)
    with pytest.raises(ExecutorError) as caught:
        backend.close()
    assert closed == ["instances", "regions"]
    assert str(caught.value) == (
        "cloud: could not close the Compute Engine instances client: session already closed"
    )
