"""The cloud executor on Azure: the real azure-mgmt-compute client against a local fake of
ARM's virtual-machine API (tests/fakes/azure_vms.py), on 127.0.0.1 — long-running
operations, ``Azure-AsyncOperation`` polling and Bearer auth included."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken

import tests.executors.contract as contract
from arbiter.domain.market import Offer
from arbiter.errors import CapacityUnavailable, ExecutorError
from arbiter.executors.cloud import CloudExecutor, short_hash
from arbiter.ports import FakeClock
from tests.executors.contract import START, WORKLOAD, ExecutorContract, Harness
from tests.fakes.azure_vms import RESOURCE_GROUP, SUBSCRIPTION, FakeAzureVms

AZ_A = Offer(provider="azure", region="eastus", instance_type="Standard_NC4as_T4_v3", market="spot")
AZ_B = Offer(
    provider="azure",
    region="westeurope",
    zone="1",
    instance_type="Standard_NV36ads_A10_v5",
    market="on-demand",
)
SUBNET = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/network/providers/Microsoft.Network"
    "/virtualNetworks/inference/subnets/gpu"
)
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvYx0Aw5S6Ykr5aDUNZoqb0Ow2E3rs0Ws7dqsdxS+9k arbiter"
SCRIPT = "#cloud-config\nruncmd:\n  - [serve, --model, {{workload}}]\n"


class FakeCredential:
    """An azure-core TokenCredential that always has a token."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-token", int(time.time()) + 3600)


@pytest.fixture(scope="module")
def azure_fake() -> Iterator[FakeAzureVms]:
    with FakeAzureVms() as fake:
        yield fake


@pytest.fixture
def azure(azure_fake: FakeAzureVms) -> FakeAzureVms:
    azure_fake.reset()
    return azure_fake


def azure_options(fake: FakeAzureVms, **overrides: Any) -> dict[str, Any]:
    return {
        "subscription_id": SUBSCRIPTION,
        "resource_group": RESOURCE_GROUP,
        "subnet_id": SUBNET,
        "image": "Canonical:ubuntu-24_04-lts:server:latest",
        "ssh_public_key": SSH_KEY,
        "arm_endpoint": fake.base_url,
        **overrides,
    }


@pytest.fixture
def make(azure: FakeAzureVms) -> Iterator[Callable[..., CloudExecutor]]:
    built: list[CloudExecutor] = []

    def make(*, credential: Any = None, **options: Any) -> CloudExecutor:
        section = azure_options(azure, **options.pop("azure", {}))
        executor = CloudExecutor(
            FakeClock(START),
            {"azure": section, "startup_script": SCRIPT, **options},
            azure_credential=credential or FakeCredential(),
        )
        built.append(executor)
        return executor

    yield make
    for executor in built:
        executor.close()


# -- the contract --------------------------------------------------------------------


class TestAzureCloudExecutor(ExecutorContract):
    @pytest.fixture
    def h(
        self,
        make: Callable[..., CloudExecutor],
        azure: FakeAzureVms,
        monkeypatch: pytest.MonkeyPatch,
    ) -> Iterator[Harness]:
        monkeypatch.setattr(contract, "A", AZ_A)
        monkeypatch.setattr(contract, "B", AZ_B)
        yield Harness(
            make(), azure.tick, lambda offer: azure.exhaust(offer.instance_type, offer.region)
        )


# -- what is launched ----------------------------------------------------------------


def test_a_spot_offer_creates_spot_vms_deleted_on_eviction_and_never_evicted_for_price(
    make: Callable[..., CloudExecutor], azure: FakeAzureVms
) -> None:
    make().ensure(WORKLOAD, AZ_A, 1)
    (body,) = azure.created()
    properties = body["properties"]
    assert properties["priority"] == "Spot"
    assert properties["evictionPolicy"] == "Delete"
    assert properties["billingProfile"] == {"maxPrice": -1}
    assert properties["hardwareProfile"] == {"vmSize": "Standard_NC4as_T4_v3"}
    assert body["location"] == "eastus" and "zones" not in body


def test_an_on_demand_offer_creates_regular_vms_in_the_offers_zone(
    make: Callable[..., CloudExecutor], azure: FakeAzureVms
) -> None:
    make().ensure(WORKLOAD, AZ_B, 1)
    (body,) = azure.created()
    assert not {"priority", "evictionPolicy", "billingProfile"} & set(body["properties"])
    assert (body["location"], body["zones"]) == ("westeurope", ["1"])


def test_vms_carry_the_group_tags_the_start_up_script_and_one_nic_in_the_subnet(
    make: Callable[..., CloudExecutor], azure: FakeAzureVms
) -> None:
    make().ensure(WORKLOAD, AZ_A, 1)
    (body,) = azure.created()
    assert body["tags"] == {
        "arbiter-workload": "chat",
        "arbiter-offer": short_hash(AZ_A.key),
        "arbiter-group": short_hash("chat@" + AZ_A.key),
        "arbiter-replicas": "1",
        "arbiter-offer-key": AZ_A.key,
    }
    profile = body["properties"]["osProfile"]
    assert base64.b64decode(profile["customData"]).decode() == (
        "#cloud-config\nruncmd:\n  - [serve, --model, chat]\n"
    )
    assert profile["linuxConfiguration"]["disablePasswordAuthentication"] is True
    (nic,) = body["properties"]["networkProfile"]["networkInterfaceConfigurations"]
    assert nic["properties"]["deleteOption"] == "Delete"
    assert nic["properties"]["ipConfigurations"][0]["properties"]["subnet"] == {"id": SUBNET}
    storage = body["properties"]["storageProfile"]
    assert storage["imageReference"] == {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    assert storage["osDisk"]["deleteOption"] == "Delete"


def test_an_instance_with_more_gpus_hosts_several_replicas(
    make: Callable[..., CloudExecutor], azure: FakeAzureVms
) -> None:
    offer = AZ_A.model_copy(update={"instance_type": "Standard_NC64as_T4_v3"})  # 4 × T4
    executor = make()
    executor.ensure(WORKLOAD, offer, 6)
    assert len(azure.created()) == 2  # ceil(6 / 4)
    azure.tick()
    assert executor.group("chat", offer).ready == 6  # type: ignore[union-attr]


# -- restarts, dead VMs ----------------------------------------------------------------


def test_after_a_restart_ensure_finds_the_vms_by_tag_and_creates_nothing(
    make: Callable[..., CloudExecutor], azure: FakeAzureVms
) -> None:
    make().ensure(WORKLOAD, AZ_A, 2)
    azure.tick()
    restarted = make()
    again = restarted.ensure(WORKLOAD, AZ_A, 2)
    assert len(azure.created()) == 2
    assert (again.desired, again.ready) == (2, 2)
    (found,) = restarted.groups()
    assert (found.offer, found.desired, found.ready) == (AZ_A, 2, 2)


def test_a_deallocated_vm_is_deleted_and_replaced(
    make: Callable[..., CloudExecutor], azure: FakeAzureVms
) -> None:
    executor = make()
    executor.ensure(WORKLOAD, AZ_A, 2)
    azure.tick()
    victim = next(iter(azure.vms.values()))["name"]
    azure.set_power(victim, "deallocated")
    assert executor.group("chat", AZ_A).ready == 1  # type: ignore[union-attr]
    executor.ensure(WORKLOAD, AZ_A, 2)
    assert victim.lower() not in {name for _, name in azure.vms}
    assert len(azure.vms) == 2


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "in_answer"),
    [
        ("SkuNotAvailable", True),
        ("AllocationFailed", False),
        ("ZonalAllocationFailed", False),
        ("OverconstrainedAllocationRequest", False),
        ("OverconstrainedZonalAllocationRequest", True),
    ],
)
def test_each_capacity_error_is_capacity_unavailable_with_its_code(
    make: Callable[..., CloudExecutor], azure: FakeAzureVms, code: str, in_answer: bool
) -> None:
    azure.exhaust("Standard_NC4as_T4_v3", "eastus", code=code, in_answer=in_answer)
    with pytest.raises(CapacityUnavailable) as caught:
        make().ensure(WORKLOAD, AZ_A, 2)
    assert (caught.value.code, caught.value.offer_key) == (code, AZ_A.key)
    assert azure.vms == {}  # a VM whose allocation failed is deleted at once


def test_an_exhausted_vcpu_quota_is_capacity_unavailable(
    make: Callable[..., CloudExecutor], azure: FakeAzureVms
) -> None:
    azure.exhaust("Standard_NC4as_T4_v3", "eastus", code="OperationNotAllowed", in_answer=True)
    with pytest.raises(CapacityUnavailable) as caught:
        make().ensure(WORKLOAD, AZ_A, 1)
    assert caught.value.code == "OperationNotAllowed"


def test_any_other_refusal_is_an_executor_error(
    make: Callable[..., CloudExecutor], azure: FakeAzureVms
) -> None:
    azure.exhaust("Standard_NC4as_T4_v3", "eastus", code="InvalidParameter", in_answer=True)
    with pytest.raises(ExecutorError, match="InvalidParameter") as caught:
        make().ensure(WORKLOAD, AZ_A, 1)
    assert not isinstance(caught.value, CapacityUnavailable)


def test_a_size_azure_does_not_list_is_an_executor_error(
    make: Callable[..., CloudExecutor],
) -> None:
    offer = AZ_A.model_copy(update={"instance_type": "Standard_ND96_imaginary"})
    with pytest.raises(ExecutorError, match="no VM size 'Standard_ND96_imaginary'"):
        make().ensure(WORKLOAD, offer, 1)


def test_missing_credentials_are_an_executor_error_saying_how_to_provide_them(
    make: Callable[..., CloudExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.identity import DefaultAzureCredential

    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    # Only the environment credential: the others would probe IMDS or run `az`.
    credential = DefaultAzureCredential(
        exclude_workload_identity_credential=True,
        exclude_managed_identity_credential=True,
        exclude_shared_token_cache_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        exclude_interactive_browser_credential=True,
        exclude_broker_credential=True,
    )
    try:
        with pytest.raises(ExecutorError, match="Azure authentication failed") as caught:
            make(credential=credential).ensure(WORKLOAD, AZ_A, 1)
    finally:
        credential.close()
    assert "AZURE_CLIENT_ID" in str(caught.value)
