"""Compute Engine instances for the cloud executor (google-cloud-compute, REST).

* launch: ``instances.insert`` per instance, named ``arb-<workload>-<group hash>-<slot>``
  (a retried insert of a name that exists answers 409, taken as done), with
  ``labels`` (the group tags), metadata ``startup-script`` and ``arbiter-offer-key``,
  the machine type (accelerator-optimized types bring their GPUs; ``accelerators``
  attaches guest GPUs to others), a boot disk from ``image``, and scheduling
  ``provisioningModel = SPOT, instanceTerminationAction = DELETE`` for spot offers or
  ``STANDARD`` for on-demand, both with ``onHostMaintenance = TERMINATE`` (required
  with GPUs). Every insert is started first, then each zone operation is waited on
  (``zoneOperations.wait``, up to ``operation_timeout``): a stock-out is reported in
  the operation, not in the HTTP answer.
* zones: the offer's zone; for an offer without one, the zones of ``zones[region]``
  in order, else the region's zones as ``regions.get`` lists them (sorted). Zones where
  the group already runs come first. When a zone is out of capacity the remaining
  instances are tried in the next zone; only when every zone refused is
  CapacityUnavailable raised (instances already created stay: ensure is state-based).
* list: ``instances.aggregatedList`` with a label filter (every zone at once).
  PROVISIONING/STAGING/REPAIRING are starting, RUNNING running, STOPPING/STOPPED/
  SUSPENDING/SUSPENDED/TERMINATED dead.
* terminate: ``instances.delete`` for each (404 = already gone), then every zone
  operation is waited on.
* GPUs per instance: ``machineTypes.get`` (``accelerators[]``) plus ``accelerators``.

IAM: ``compute.instances.create/delete/list/setMetadata/setLabels``,
``compute.disks.create``, ``compute.subnetworks.use``, ``compute.machineTypes.get``,
``compute.regions.get``, ``compute.zoneOperations.get``, and
``iam.serviceAccounts.actAs`` for a ``service_account`` (roles/compute.instanceAdmin.v1
+ roles/iam.serviceAccountUser).

Errors: operation error codes ``ZONE_RESOURCE_POOL_EXHAUSTED``,
``ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS`` and ``QUOTA_EXCEEDED`` for a GPU metric
(``NVIDIA_*_GPUS``, ``PREEMPTIBLE_NVIDIA_*``, ``GPUS_ALL_REGIONS``; also when the HTTP
answer itself is a 403 ``quotaExceeded`` naming a GPU quota) → CapacityUnavailable;
everything else, missing Application Default Credentials included → ExecutorError.
SDK retries are off (``retry=None``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import requests
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import compute_v1

from arbiter.domain.market import Market, Offer, Provider
from arbiter.errors import CapacityUnavailable, ExecutorError
from arbiter.executors.cloud import (
    EXECUTOR,
    TAG_GROUP,
    TAG_OFFER_KEY,
    TAG_REPLICAS,
    TAG_WORKLOAD,
    GcpVmOptions,
    LaunchSpec,
    Vm,
    VmState,
    free_slots,
)
from providers.gcp_clients import compute_client_options, compute_credentials

COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
ZONE_EXHAUSTED_CODES = frozenset(
    {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"}
)
_GPU_QUOTA = re.compile(r"GPUS", re.IGNORECASE)
_LIMIT_REASONS = frozenset(
    {"quotaExceeded", "QUOTA_EXCEEDED", "rateLimitExceeded", "userRateLimitExceeded"}
)
"""403 reasons that are limits, not refused credentials."""
_STATES = {
    "PROVISIONING": VmState.STARTING,
    "STAGING": VmState.STARTING,
    "REPAIRING": VmState.STARTING,
    "RUNNING": VmState.RUNNING,
    "STOPPING": VmState.DEAD,
    "STOPPED": VmState.DEAD,
    "SUSPENDING": VmState.DEAD,
    "SUSPENDED": VmState.DEAD,
    "TERMINATED": VmState.DEAD,
}
_WAIT_SLICE_SECONDS = 110.0
"""zoneOperations.wait returns after at most ~2 minutes; ask for less, loop."""
_CREDENTIALS_HELP = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run "
    "`gcloud auth application-default login`, or run on a VM with a service account "
    "(roles/compute.instanceAdmin.v1)"
)


class GcpVms:
    """The Compute Engine backend of :class:`~arbiter.executors.cloud.CloudExecutor`."""

    provider = Provider.GCP

    def __init__(
        self,
        options: GcpVmOptions,
        *,
        timeout: float,
        operation_timeout: float,
        credentials: Any = None,
    ) -> None:
        self.options = options
        self.project = options.project
        self._timeout = timeout
        self._operation_timeout = operation_timeout
        self._credentials = credentials
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._region_zones: dict[str, list[str]] = {}

    # -- clients ------------------------------------------------------------------------

    def _client(self, kind: str) -> Any:
        with self._lock:
            if kind not in self._clients:
                factory = {
                    "instances": compute_v1.InstancesClient,
                    "operations": compute_v1.ZoneOperationsClient,
                    "machine_types": compute_v1.MachineTypesClient,
                    "regions": compute_v1.RegionsClient,
                }[kind]
                self._clients[kind] = factory(
                    credentials=self._google_credentials(),
                    client_options=compute_client_options(self.options.compute_endpoint),
                )
            return self._clients[kind]

    def _google_credentials(self) -> Any:
        if self._credentials is None:
            with _translated("finding credentials"):
                self._credentials = compute_credentials(
                    anonymous=self.options.anonymous, scope=COMPUTE_SCOPE
                )
        return self._credentials

    def close(self) -> None:
        """Close every client's transport, all of them even when one fails."""
        from arbiter.executors import close_each

        with self._lock:
            clients = dict(self._clients)
            self._clients.clear()
        close_each(
            EXECUTOR,
            [
                (f"the Compute Engine {kind.replace('_', ' ')} client", client.transport.close)
                for kind, client in clients.items()
            ],
        )

    # -- VmBackend -------------------------------------------------------------------

    def gpus_per_instance(self, offer: Offer) -> float:
        zone = self._zones(offer, [])[0]
        with _translated(f"reading machine type {offer.instance_type} in {zone}"):
            machine = self._client("machine_types").get(
                project=self.project,
                zone=zone,
                machine_type=offer.instance_type,
                timeout=self._timeout,
                retry=None,
            )
        gpus = sum(a.guest_accelerator_count for a in machine.accelerators)
        guest = self.options.accelerators.get(offer.instance_type)
        return float(gpus + (guest.count if guest else 0))

    def find(
        self, *, group: str | None = None, workload: str | None = None, region: str | None = None
    ) -> list[Vm]:
        if group is not None:
            expression = f'labels.{TAG_GROUP} = "{group}"'
        elif workload is not None:
            expression = f'labels.{TAG_WORKLOAD} = "{workload}"'
        else:
            expression = f"labels.{TAG_GROUP}:*"
        request = compute_v1.AggregatedListInstancesRequest(
            project=self.project, filter=expression, max_results=500
        )
        vms: list[Vm] = []
        with _translated("listing instances"):
            pager = self._client("instances").aggregated_list(
                request=request, timeout=self._timeout, retry=None
            )
            for scope, scoped in pager:
                if not scope.startswith("zones/"):
                    continue
                zone = scope.removeprefix("zones/")
                if region is not None and _region_of(zone) != region:
                    continue
                for instance in scoped.instances:
                    vm = _vm(instance, zone)
                    if vm is not None:
                        vms.append(vm)
        return vms

    def launch(
        self, spec: LaunchSpec, count: int, present: Sequence[Vm], now: datetime
    ) -> list[Vm]:
        offer = spec.offer
        zones = self._zones(offer, present)
        created: list[Vm] = []
        refusals: list[tuple[str, str]] = []
        taken = [vm.name for vm in present]
        for zone in zones:
            names = free_slots(spec, taken + [vm.name for vm in created], count - len(created))
            started: list[tuple[str, Any]] = []
            for name in names:
                try:
                    operation = self._insert(spec, name, zone)
                except CapacityUnavailable as exc:
                    refusals.append((zone, exc.code))
                    break
                if operation is None:  # it exists: an earlier try got through
                    created.append(_launched(spec, name, zone))
                else:
                    started.append((name, operation))
            for name, operation in started:
                done = self._wait(operation, zone, f"creating {name} in {zone}")
                code = _capacity_code(done)
                if code is not None:
                    refusals.append((zone, code))
                    continue
                _raise_for_operation(done, f"creating {name} in {zone}")
                created.append(_launched(spec, name, zone))
            if len(created) >= count:
                break
        if len(created) < count:
            tried = ", ".join(f"{zone} ({code})" for zone, code in refusals) or ", ".join(zones)
            raise CapacityUnavailable(
                f"{len(created)} of {count} instances created; no capacity in {tried}",
                executor=EXECUTOR,
                offer_key=offer.key,
                code=refusals[0][1] if refusals else "",
            )
        return created

    def terminate(self, vms: Sequence[Vm]) -> None:
        started: list[tuple[Vm, Any]] = []
        for vm in vms:
            with _translated(f"deleting {vm.name} in {vm.zone}"):
                try:
                    operation = self._client("instances").delete_unary(
                        project=self.project,
                        zone=vm.zone,
                        instance=vm.name,
                        timeout=self._timeout,
                        retry=None,
                    )
                except google_exceptions.NotFound:
                    continue  # already gone (a spot VM deleted on preemption)
            started.append((vm, operation))
        for vm, operation in started:
            done = self._wait(operation, vm.zone or "", f"deleting {vm.name} in {vm.zone}")
            _raise_for_operation(done, f"deleting {vm.name} in {vm.zone}", missing_ok=True)

    # -- helpers ---------------------------------------------------------------------

    def _insert(self, spec: LaunchSpec, name: str, zone: str) -> Any | None:
        """The insert operation, or None when the instance already exists."""
        with _translated(f"creating {name} in {zone}", offer_key=spec.offer.key):
            try:
                return self._client("instances").insert_unary(
                    project=self.project,
                    zone=zone,
                    instance_resource=self._instance(spec, name, zone),
                    timeout=self._timeout,
                    retry=None,
                )
            except google_exceptions.Conflict as exc:
                if "alreadyExists" not in _reasons(exc):
                    raise
                return None

    def _zones(self, offer: Offer, present: Sequence[Vm]) -> list[str]:
        """Zones to launch in, in order of preference."""
        if offer.zone is not None:
            return [offer.zone]
        configured = self.options.zones.get(offer.region)
        if configured is None:
            configured = self._zones_of_region(offer.region)
        used = [vm.zone for vm in present if vm.live and vm.zone is not None]
        return list(dict.fromkeys([*(zone for zone in used if zone in configured), *configured]))

    def _zones_of_region(self, region: str) -> list[str]:
        if region not in self._region_zones:
            with _translated(f"reading the zones of {region}"):
                found = self._client("regions").get(
                    project=self.project, region=region, timeout=self._timeout, retry=None
                )
            zones = sorted(url.rstrip("/").rsplit("/", 1)[-1] for url in found.zones)
            if not zones:
                raise ExecutorError(
                    f"region {region} lists no zones; set executor.options.gcp.zones.{region}",
                    executor=EXECUTOR,
                )
            self._region_zones[region] = zones
        return self._region_zones[region]

    def _instance(self, spec: LaunchSpec, name: str, zone: str) -> compute_v1.Instance:
        offer = spec.offer
        metadata = [compute_v1.Items(key=TAG_OFFER_KEY, value=offer.key)]
        if spec.startup_script is not None:
            metadata.append(compute_v1.Items(key="startup-script", value=spec.startup_script))
        if offer.market is Market.SPOT:
            scheduling = compute_v1.Scheduling(
                provisioning_model="SPOT",
                instance_termination_action="DELETE",
                on_host_maintenance="TERMINATE",
                automatic_restart=False,
            )
        else:
            scheduling = compute_v1.Scheduling(
                provisioning_model="STANDARD",
                on_host_maintenance="TERMINATE",
                automatic_restart=True,
            )
        interface = compute_v1.NetworkInterface(network=self.options.network)
        if self.options.subnetwork:
            interface.subnetwork = self.options.subnetwork
        if self.options.external_ip:
            interface.access_configs = [
                compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")
            ]
        instance = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{zone}/machineTypes/{offer.instance_type}",
            labels=spec.tags(),
            metadata=compute_v1.Metadata(items=metadata),
            scheduling=scheduling,
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=self.options.image, disk_size_gb=self.options.disk_gib
                    ),
                )
            ],
            network_interfaces=[interface],
        )
        guest = self.options.accelerators.get(offer.instance_type)
        if guest is not None:
            instance.guest_accelerators = [
                compute_v1.AcceleratorConfig(
                    accelerator_type=f"zones/{zone}/acceleratorTypes/{guest.type}",
                    accelerator_count=guest.count,
                )
            ]
        if self.options.service_account:
            instance.service_accounts = [
                compute_v1.ServiceAccount(
                    email=self.options.service_account, scopes=[CLOUD_PLATFORM_SCOPE]
                )
            ]
        return instance

    def _wait(self, operation: Any, zone: str, doing: str) -> Any:
        """The operation once DONE; ExecutorError after ``operation_timeout``."""
        deadline = time.monotonic() + self._operation_timeout
        while operation.status != compute_v1.Operation.Status.DONE:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExecutorError(
                    f"{doing}: operation {operation.name} not done after "
                    f"{self._operation_timeout:g}s",
                    executor=EXECUTOR,
                )
            with _translated(f"{doing}: waiting for {operation.name}"):
                operation = self._client("operations").wait(
                    project=self.project,
                    zone=zone,
                    operation=operation.name,
                    timeout=min(left, _WAIT_SLICE_SECONDS) + self._timeout,
                    retry=None,
                )
        return operation


def _region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _vm(instance: Any, zone: str) -> Vm | None:
    labels = dict(instance.labels)
    if TAG_GROUP not in labels or TAG_WORKLOAD not in labels:
        return None
    metadata = {item.key: item.value for item in instance.metadata.items}
    try:
        replicas = max(1, int(labels.get(TAG_REPLICAS, "1")))
    except ValueError:
        replicas = 1
    addresses: dict[str, str] = {}
    if instance.network_interfaces:
        interface = instance.network_interfaces[0]
        if interface.network_i_p:
            addresses["private_ip"] = interface.network_i_p
        if interface.access_configs and interface.access_configs[0].nat_i_p:
            addresses["public_ip"] = interface.access_configs[0].nat_i_p
    return Vm(
        provider=Provider.GCP,
        id=instance.name,
        name=instance.name,
        region=_region_of(zone),
        zone=zone,
        state=_STATES.get(instance.status, VmState.DEAD),
        workload=labels[TAG_WORKLOAD],
        group=labels[TAG_GROUP],
        offer_key=metadata.get(TAG_OFFER_KEY),
        replicas=replicas,
        created=instance.creation_timestamp,
        addresses=addresses,
    )


def _launched(spec: LaunchSpec, name: str, zone: str) -> Vm:
    return Vm(
        provider=Provider.GCP,
        id=name,
        name=name,
        region=_region_of(zone),
        zone=zone,
        state=VmState.STARTING,
        workload=spec.workload,
        group=spec.group,
        offer_key=spec.offer.key,
        replicas=spec.replicas_per_instance,
    )


def _capacity_code(operation: Any) -> str | None:
    """The capacity error code of a finished operation, or None."""
    for error in operation.error.errors:
        if error.code in ZONE_EXHAUSTED_CODES:
            return str(error.code)
        if error.code == "QUOTA_EXCEEDED" and _is_gpu_quota(error):
            return "QUOTA_EXCEEDED"
    return None


def _is_gpu_quota(error: Any) -> bool:
    metrics = [d.quota_info.metric_name for d in error.error_details if d.quota_info]
    return any(_GPU_QUOTA.search(text) for text in [error.message, *metrics])


def _raise_for_operation(operation: Any, doing: str, *, missing_ok: bool = False) -> None:
    errors = list(operation.error.errors)
    if not errors:
        return
    if missing_ok and all(error.code == "RESOURCE_NOT_FOUND" for error in errors):
        return
    detail = "; ".join(f"{error.code}: {error.message}" for error in errors)
    raise ExecutorError(f"{doing}: {detail}", executor=EXECUTOR)


@contextmanager
def _translated(doing: str, *, offer_key: str | None = None) -> Iterator[None]:
    """Google SDK and transport errors → CapacityUnavailable / ExecutorError."""
    try:
        yield
    except google_exceptions.GoogleAPICallError as exc:
        reasons = _reasons(exc)
        message = str(exc.message)
        if offer_key is not None and (
            reasons & {"quotaExceeded", "QUOTA_EXCEEDED"} and _GPU_QUOTA.search(message)
        ):
            raise CapacityUnavailable(
                f"{doing}: {message}", executor=EXECUTOR, offer_key=offer_key, code="QUOTA_EXCEEDED"
            ) from exc
        if offer_key is not None and reasons & ZONE_EXHAUSTED_CODES:
            code = sorted(reasons & ZONE_EXHAUSTED_CODES)[0]
            raise CapacityUnavailable(
                f"{doing}: {message}", executor=EXECUTOR, offer_key=offer_key, code=code
            ) from exc
        refused = isinstance(exc, google_exceptions.Unauthorized | google_exceptions.Forbidden)
        if refused and not reasons & _LIMIT_REASONS:
            raise ExecutorError(
                f"{doing}: {exc.code} {message}; {_CREDENTIALS_HELP}", executor=EXECUTOR
            ) from exc
        raise ExecutorError(f"{doing}: {exc.code} {message}", executor=EXECUTOR) from exc
    except google_exceptions.RetryError as exc:
        raise ExecutorError(f"{doing}: {exc.message}", executor=EXECUTOR) from exc
    except auth_exceptions.DefaultCredentialsError as exc:
        raise ExecutorError(
            f"{doing}: no usable Google credentials ({exc}); {_CREDENTIALS_HELP}",
            executor=EXECUTOR,
        ) from exc
    except auth_exceptions.GoogleAuthError as exc:
        raise ExecutorError(
            f"{doing}: Google credentials failed ({exc}); {_CREDENTIALS_HELP}", executor=EXECUTOR
        ) from exc
    except requests.Timeout as exc:
        raise ExecutorError(f"{doing}: timed out", executor=EXECUTOR) from exc
    except requests.RequestException as exc:
        raise ExecutorError(
            f"{doing}: connection failed: {type(exc).__name__}", executor=EXECUTOR
        ) from exc


def _reasons(exc: google_exceptions.GoogleAPICallError) -> set[str]:
    reasons = {exc.reason} if exc.reason else set()
    for error in exc.errors or ():
        if isinstance(error, dict) and error.get("reason"):
            reasons.add(str(error["reason"]))
    return reasons
