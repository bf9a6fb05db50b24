"""Azure virtual machines for the cloud executor (azure-mgmt-compute).

Every VM lives in one resource group (``resource_group``) and gets one NIC in an
existing subnet (``subnet_id``), created with the VM through the compute API's
``networkInterfaceConfigurations`` (no azure-mgmt-network, no public IP) and deleted
with it, like its OS disk (``deleteOption = Delete``). That is all the networking this
executor does: VNets, NSGs, load balancers and DNS are yours.

* launch: ``virtualMachines.createOrUpdate`` per VM, named ``arb-<workload>-<group hash>-
  <slot>`` (a PUT: retrying one is harmless), in the offer's region (and zone), with the
  group tags plus ``arbiter-offer-key``, the image (``publisher:offer:sku:version`` or a
  resource id), SSH-key-only login, custom data = the start-up script, and for spot
  offers ``priority = Spot, evictionPolicy = Delete, billingProfile.maxPrice = -1``
  (evicted for capacity, never for price). Every PUT is sent first, then each
  long-running operation is awaited (up to ``operation_timeout``): allocation failures
  arrive there. A VM whose allocation failed is deleted at once.
* list: ``virtualMachines.list(resource group, $expand=instanceView)``, filtered by tag
  here (ARM cannot filter VMs by tag). Provisioning ``Succeeded`` + ``PowerState/
  running`` is running; ``Failed`` or stopped/deallocated is dead; ``Deleting`` gone;
  anything else starting.
* terminate: ``virtualMachines.delete`` for each, then every operation is awaited.
* GPUs per instance: the ``GPUs`` capability of the region's resource SKU (as Azure
  reports it: a partitioned size such as NV6ads_A10_v5 counts 1; override with
  ``gpus_per_instance``).

RBAC on the resource group: Virtual Machine Contributor, plus
``Microsoft.Network/virtualNetworks/subnets/join/action`` on the subnet and
``Microsoft.Compute/skus/read`` on the subscription (Reader has it).

Errors: ``SkuNotAvailable``, ``AllocationFailed``, ``ZonalAllocationFailed``,
``OverconstrainedAllocationRequest``, ``OverconstrainedZonalAllocationRequest`` (in the
answer, the operation, or its ``details``), and ``OperationNotAllowed`` for a vCPU
*quota* ("exceeding approved ... Cores quota": the GPU family's or the Spot quota) →
CapacityUnavailable; everything else, missing credentials included → ExecutorError.
SDK retries are off (``retry_total = 0``).
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.core.rest import HttpRequest, HttpResponse

from arbiter.domain.market import Market, Offer, Provider
from arbiter.errors import CapacityUnavailable, ExecutorError
from arbiter.executors.cloud import (
    EXECUTOR,
    TAG_GROUP,
    TAG_OFFER_KEY,
    TAG_REPLICAS,
    TAG_WORKLOAD,
    AzureVmOptions,
    LaunchSpec,
    Vm,
    VmState,
    free_slots,
)

if TYPE_CHECKING:
    from azure.core.polling import LROPoller
    from azure.mgmt.compute import ComputeManagementClient

CAPACITY_CODES = frozenset(
    {
        "SkuNotAvailable",
        "AllocationFailed",
        "ZonalAllocationFailed",
        "OverconstrainedAllocationRequest",
        "OverconstrainedZonalAllocationRequest",
    }
)
_CORES_QUOTA = re.compile(r"exceeding approved .*cores quota", re.IGNORECASE)
_NETWORK_API_VERSION = "2022-11-01"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_HOW_TO_AUTHENTICATE = (
    "provide credentials for azure-identity's DefaultAzureCredential: AZURE_TENANT_ID, "
    "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or a certificate) for a service principal, "
    "a workload or managed identity, or `az login`"
)


class _LoopbackBearer(BearerTokenCredentialPolicy[HttpRequest, HttpResponse]):
    """Bearer auth over plain http: only ever installed for a loopback ``arm_endpoint``."""

    def on_request(self, request: Any) -> None:
        request.context["enforce_https"] = False
        super().on_request(request)


class AzureVms:
    """The Azure backend of :class:`~arbiter.executors.cloud.CloudExecutor`."""

    provider = Provider.AZURE

    def __init__(
        self,
        options: AzureVmOptions,
        *,
        timeout: float,
        operation_timeout: float,
        credential: Any = None,
    ) -> None:
        self.options = options
        self._timeout = timeout
        self._operation_timeout = operation_timeout
        self._credential = credential
        self._lock = threading.Lock()
        self._client: ComputeManagementClient | None = None

    def client(self) -> ComputeManagementClient:
        with self._lock:
            if self._client is None:
                self._client = self._build_client()
            return self._client

    def _build_client(self) -> ComputeManagementClient:
        from azure.mgmt.compute import ComputeManagementClient

        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        endpoint = urlsplit(self.options.arm_endpoint)
        kwargs: dict[str, Any] = {}
        scope = f"{endpoint.scheme}://{endpoint.netloc}/.default"
        if endpoint.hostname in _LOOPBACK:
            scope = "https://management.azure.com/.default"
            kwargs["authentication_policy"] = _LoopbackBearer(self._credential, scope)
        return ComputeManagementClient(
            self._credential,
            self.options.subscription_id,
            base_url=self.options.arm_endpoint,
            credential_scopes=[scope],
            retry_total=0,
            connection_timeout=self._timeout,
            read_timeout=self._timeout,
            user_agent="arbiter/0.1 executor/cloud",
            **kwargs,
        )

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- VmBackend -------------------------------------------------------------------

    def gpus_per_instance(self, offer: Offer) -> float:
        with _translated(f"reading resource SKUs of {offer.region}"):
            for sku in self.client().resource_skus.list(filter=f"location eq '{offer.region}'"):
                if sku.get("resourceType") != "virtualMachines":
                    continue
                if sku.get("name") != offer.instance_type:
                    continue
                for capability in sku.get("capabilities") or []:
                    if capability.get("name") == "GPUs":
                        try:
                            return float(capability.get("value"))
                        except (TypeError, ValueError):
                            break
                return 0.0
        raise ExecutorError(
            f"{offer.key}: Azure lists no VM size {offer.instance_type!r} in {offer.region}",
            executor=EXECUTOR,
        )

    def find(
        self, *, group: str | None = None, workload: str | None = None, region: str | None = None
    ) -> list[Vm]:
        vms: list[Vm] = []
        with _translated(f"listing VMs of resource group {self.options.resource_group}"):
            for item in self.client().virtual_machines.list(
                self.options.resource_group, expand="instanceView"
            ):
                vm = _vm(item)
                if vm is None:
                    continue
                if group is not None and vm.group != group:
                    continue
                if workload is not None and vm.workload != workload:
                    continue
                if region is not None and vm.region != region:
                    continue
                vms.append(vm)
        return vms

    def launch(
        self, spec: LaunchSpec, count: int, present: Sequence[Vm], now: datetime
    ) -> list[Vm]:
        offer = spec.offer
        names = free_slots(spec, [vm.name for vm in present], count)
        started: list[tuple[str, LROPoller[Any]]] = []
        refusals: list[str] = []
        for name in names:
            try:
                with _translated(f"creating {name}", offer_key=offer.key):
                    started.append(
                        (
                            name,
                            self.client().virtual_machines.begin_create_or_update(
                                self.options.resource_group, name, self._vm_model(spec, name)
                            ),
                        )
                    )
            except CapacityUnavailable as exc:
                refusals.append(exc.code)
                break  # the same answer awaits the others
        created: list[Vm] = []
        failed: list[str] = []
        for name, poller in started:
            try:
                with _translated(f"creating {name}", offer_key=offer.key):
                    self._wait(poller, f"creating {name}")
            except CapacityUnavailable as exc:
                refusals.append(exc.code)
                failed.append(name)
                continue
            created.append(_launched(spec, name))
        if failed:
            self._delete(failed, best_effort=True)
        if refusals:
            raise CapacityUnavailable(
                f"{len(created)} of {count} VMs created; Azure refused the rest "
                f"({', '.join(sorted(set(refusals)))})",
                executor=EXECUTOR,
                offer_key=offer.key,
                code=refusals[0],
            )
        return created

    def terminate(self, vms: Sequence[Vm]) -> None:
        self._delete([vm.id for vm in vms], best_effort=False)

    # -- helpers ---------------------------------------------------------------------

    def _delete(self, names: Sequence[str], *, best_effort: bool) -> None:
        started: list[tuple[str, LROPoller[Any]]] = []
        try:
            for name in names:
                with _translated(f"deleting {name}"):
                    try:
                        poller = self.client().virtual_machines.begin_delete(
                            self.options.resource_group, name
                        )
                    except ResourceNotFoundError:
                        continue
                started.append((name, poller))
            for name, poller in started:
                with _translated(f"deleting {name}"):
                    try:
                        self._wait(poller, f"deleting {name}")
                    except ResourceNotFoundError:
                        continue
        except ExecutorError:
            if not best_effort:
                raise

    def _wait(self, poller: LROPoller[Any], doing: str) -> Any:
        result = poller.result(timeout=self._operation_timeout)
        if not poller.done():
            raise ExecutorError(
                f"{doing}: not done after {self._operation_timeout:g}s", executor=EXECUTOR
            )
        return result

    def _vm_model(self, spec: LaunchSpec, name: str) -> Any:
        from azure.mgmt.compute import models as m

        offer = spec.offer
        options = self.options
        image = (
            m.ImageReference(id=options.image)
            if options.image.startswith("/")
            else m.ImageReference(
                **dict(
                    zip(
                        ("publisher", "offer", "sku", "version"),
                        options.image.split(":"),
                        strict=True,
                    )
                )
            )
        )
        os_profile = m.OSProfile(
            computer_name=name,
            admin_username=options.admin_username,
            linux_configuration=m.LinuxConfiguration(
                disable_password_authentication=True,
                ssh=m.SshConfiguration(
                    public_keys=[
                        m.SshPublicKey(
                            path=f"/home/{options.admin_username}/.ssh/authorized_keys",
                            key_data=options.ssh_public_key,
                        )
                    ]
                ),
            ),
        )
        if spec.startup_script is not None:
            os_profile.custom_data = base64.b64encode(spec.startup_script.encode()).decode()
        properties = m.VirtualMachineProperties(
            hardware_profile=m.HardwareProfile(vm_size=offer.instance_type),
            storage_profile=m.StorageProfile(
                image_reference=image,
                os_disk=m.OSDisk(
                    create_option="FromImage",
                    delete_option="Delete",
                    disk_size_gb=options.os_disk_gib,
                    managed_disk=m.ManagedDiskParameters(storage_account_type="StandardSSD_LRS"),
                ),
            ),
            os_profile=os_profile,
            network_profile=m.NetworkProfile(
                network_api_version=_NETWORK_API_VERSION,
                network_interface_configurations=[
                    m.VirtualMachineNetworkInterfaceConfiguration(
                        name=f"{name}-nic",
                        properties=m.VirtualMachineNetworkInterfaceConfigurationProperties(
                            primary=True,
                            delete_option="Delete",
                            ip_configurations=[
                                m.VirtualMachineNetworkInterfaceIPConfiguration(
                                    name="ipconfig1",
                                    properties=m.VirtualMachineNetworkInterfaceIPConfigurationProperties(
                                        primary=True, subnet=m.SubResource(id=options.subnet_id)
                                    ),
                                )
                            ],
                        ),
                    )
                ],
            ),
        )
        if offer.market is Market.SPOT:
            properties.priority = "Spot"
            properties.eviction_policy = "Delete"
            properties.billing_profile = m.BillingProfile(max_price=-1)
        return m.VirtualMachine(
            location=offer.region,
            zones=[offer.zone] if offer.zone else None,
            tags={**spec.tags(), TAG_OFFER_KEY: offer.key},
            properties=properties,
        )


def _vm(item: Mapping[str, Any]) -> Vm | None:
    tags = dict(item.get("tags") or {})
    if TAG_GROUP not in tags or TAG_WORKLOAD not in tags:
        return None
    properties = item.get("properties") or {}
    provisioning = str(properties.get("provisioningState") or "")
    statuses = [
        str(status.get("code") or "")
        for status in (properties.get("instanceView") or {}).get("statuses") or []
    ]
    power = next((code.split("/", 1)[1] for code in statuses if code.startswith("PowerState/")), "")
    if provisioning == "Deleting":
        state = VmState.GONE
    elif provisioning == "Failed" or power in (
        "stopping",
        "stopped",
        "deallocating",
        "deallocated",
    ):
        state = VmState.DEAD
    elif provisioning == "Succeeded" and power == "running":
        state = VmState.RUNNING
    else:
        state = VmState.STARTING
    try:
        replicas = max(1, int(tags.get(TAG_REPLICAS, "1")))
    except ValueError:
        replicas = 1
    zones = item.get("zones") or []
    name = str(item.get("name"))
    return Vm(
        provider=Provider.AZURE,
        id=name,
        name=name,
        region=str(item.get("location")),
        zone=str(zones[0]) if zones else None,
        state=state,
        workload=tags[TAG_WORKLOAD],
        group=tags[TAG_GROUP],
        offer_key=tags.get(TAG_OFFER_KEY),
        replicas=replicas,
        created=str(properties.get("timeCreated") or ""),
    )


def _launched(spec: LaunchSpec, name: str) -> Vm:
    return Vm(
        provider=Provider.AZURE,
        id=name,
        name=name,
        region=spec.offer.region,
        zone=spec.offer.zone,
        state=VmState.STARTING,
        workload=spec.workload,
        group=spec.group,
        offer_key=spec.offer.key,
        replicas=spec.replicas_per_instance,
    )


def _codes(exc: HttpResponseError) -> list[str]:
    """The ARM error code and the codes of its details, outermost first."""
    error = exc.error
    codes: list[str] = []
    if error is not None:
        codes.append(str(error.code or ""))
        codes.extend(str(getattr(detail, "code", "") or "") for detail in error.details or [])
    return [code for code in codes if code]


def _capacity_code(exc: HttpResponseError) -> str | None:
    codes = _codes(exc)
    for code in codes:
        if code in CAPACITY_CODES:
            return code
    text = str(exc.error.message if exc.error else exc.message)
    if "OperationNotAllowed" in codes and _CORES_QUOTA.search(text):
        return "OperationNotAllowed"
    return None


@contextmanager
def _translated(doing: str, *, offer_key: str | None = None) -> Iterator[None]:
    """azure-core / azure-identity errors → CapacityUnavailable / ExecutorError."""
    try:
        yield
    except ClientAuthenticationError as exc:
        raise ExecutorError(
            f"{doing}: Azure authentication failed ({_first_line(exc)}); {_HOW_TO_AUTHENTICATE}",
            executor=EXECUTOR,
        ) from exc
    except HttpResponseError as exc:
        code = _capacity_code(exc)
        if offer_key is not None and code is not None:
            raise CapacityUnavailable(
                f"{doing}: {code}: {_first_line(exc)}",
                executor=EXECUTOR,
                offer_key=offer_key,
                code=code,
            ) from exc
        raise ExecutorError(
            f"{doing}: HTTP {exc.status_code}: {_first_line(exc)}", executor=EXECUTOR
        ) from exc
    except AzureError as exc:
        raise ExecutorError(
            f"{doing}: {type(exc).__name__}: {_first_line(exc)}", executor=EXECUTOR
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
