"""The cloud VM executor (``cloud``): replica groups as GPU instances on AWS, GCP, Azure.

A replica group (one per workload and offer) is a set of instances of the offer's
instance type, in the offer's region (and zone, when the offer names one), on the
offer's market (spot or on-demand). Each instance carries, as tags (AWS, Azure) or
labels (GCP)::

    arbiter-workload   the workload name
    arbiter-offer      sha256(offer key)[:16]        (GCP labels cannot hold ':')
    arbiter-group      sha256(group id)[:16]         (group id = ``workload@offer-key``)
    arbiter-replicas   replicas this instance hosts
    arbiter-offer-key  the offer key itself (a tag; on GCP an instance metadata item)

and starts with the start-up script of the options (AWS user data, GCP metadata
``startup-script``, Azure custom data). The tags are the only state: a restarted
daemon finds its groups by tag, so ``ensure`` after a restart launches nothing that
already runs, and ``groups()`` lists groups nobody remembers (what a crash orphaned).

Replicas per instance
---------------------

An instance with ``G`` GPUs hosts ``floor(G / workload.gpus_per_replica)`` replicas
(one when ``G`` equals ``gpus_per_replica``); ``ensure(n)`` keeps
``ceil(n / per_instance)`` instances. ``G`` comes from the provider (EC2
``DescribeInstanceTypes``, the GCP machine type's accelerators plus configured guest
accelerators, the Azure resource SKU's ``GPUs`` capability) unless
``gpus_per_instance`` in the options names the type. An instance type with fewer GPUs
than one replica needs is an ExecutorError (a planning mistake, not a capacity
shortage). The start-up script learns its share through ``{{replicas_per_instance}}``.

Contract (:class:`arbiter.ports.Executor`)
------------------------------------------

* ``ensure(workload, offer, n)`` lists the group's instances and acts on the
  difference: ``+ launch`` what is missing, ``- terminate`` what is surplus (instances
  not yet ready first, then the newest), and always terminates the group's *dead*
  instances (stopped, suspended, failed: they serve nothing and may still cost).
  ``n = 0`` terminates every instance of the group. Launches and terminations are
  awaited to the end of the provider's operation (GCP zone operation, Azure
  long-running operation; EC2 answers at once) — that is when a stock-out is
  reported — but never for readiness.
* ``group()`` reports ``desired`` (what this process last asked for; after a restart,
  the replicas the live instances host) and ``ready``: replicas on instances that are
  *running* — and, with a ``health_check_url`` for that cloud, answer it with a 2xx.
* No capacity → :class:`~arbiter.errors.CapacityUnavailable` with the provider's code;
  anything else → :class:`~arbiter.errors.ExecutorError`; never an SDK exception. SDK
  retries are off: the migration state machine re-issues ``ensure`` (it is idempotent).

Traffic
-------

Cloud VMs have no router here. ``set_weights``/``weights`` keep the split in memory
(``router = "none"``, the only choice) and ``in_flight`` returns None, so the
migration waits out the drain timeout. Put a load balancer in front of the groups and
drive it from outside arbiter until a router adapter exists (docs/executors/cloud.md).
"""

from __future__ import annotations

import hashlib
import math
import string
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import httpx
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from arbiter.domain.fleet import ReplicaGroup, group_id
from arbiter.domain.market import Offer, Provider
from arbiter.domain.values import parse_duration
from arbiter.domain.workloads import Workload
from arbiter.errors import ConfigError, ExecutorError
from arbiter.logs import get_logger
from arbiter.ports import Clock

EXECUTOR = "cloud"

TAG_WORKLOAD = "arbiter-workload"
TAG_OFFER = "arbiter-offer"
TAG_GROUP = "arbiter-group"
TAG_REPLICAS = "arbiter-replicas"
TAG_OFFER_KEY = "arbiter-offer-key"

SCRIPT_PLACEHOLDERS = (
    "workload",
    "group_id",
    "offer_key",
    "provider",
    "region",
    "zone",
    "instance_type",
    "market",
    "replicas_per_instance",
    "gpus_per_replica",
)
"""``{{name}}`` placeholders replaced in the start-up script (anything else is left
alone, so shell ``${VAR}`` and ``{a,b}`` are safe)."""


def short_hash(text: str) -> str:
    """The first 16 hex digits of sha256(text): fits a GCP label value."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- options -----------------------------------------------------------------------


def _check_url_template(value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ValueError(f"not a URL template: {exc}") from None
    unknown = sorted(fields - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{unknown[0]}}}; this cloud knows "
            + ", ".join("{" + name + "}" for name in allowed)
        )
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL template, got {value!r}")
    return value


def _https_or_loopback(value: str | None) -> str | None:
    """An API endpoint: https, or plain http only on a loopback test server."""
    if value is None:
        return None
    parsed = httpx.URL(value)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"expected an https:// URL, got {value!r}")
    if parsed.scheme == "http" and parsed.host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"must use https (plain http only on 127.0.0.1/localhost): {value!r}")
    return value.rstrip("/")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
"""Seconds, as a number or a duration string (``"90s"``, ``"15m"``)."""


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


AWS_HEALTH_PLACEHOLDERS = ("id", "name", "zone", "private_ip", "public_ip")
GCP_HEALTH_PLACEHOLDERS = ("id", "name", "zone", "private_ip", "public_ip")
AZURE_HEALTH_PLACEHOLDERS = ("id", "name", "zone")


class AwsVmOptions(_Closed):
    """``[executor.options.aws]``: EC2 instances."""

    image_ids: Annotated[dict[str, str], Field(min_length=1)]
    """AMI per region (a GPU image with drivers, e.g. a Deep Learning AMI). The regions
    listed here are the regions ``groups()`` scans."""
    subnet_ids: dict[str, str] = Field(default_factory=dict)
    """Subnet per zone (name or id) or per region; default: the default VPC."""
    security_group_ids: tuple[str, ...] = ()
    key_name: str | None = None
    instance_profile: str | None = None
    """IAM instance profile name, or its ARN."""
    endpoint_url: str | None = None
    """EC2 endpoint for every region (a VPC endpoint, or a local fake)."""
    profile: str | None = None
    """Named profile of the shared AWS config; default: the standard credential chain."""
    health_check_url: str | None = None

    _endpoint = field_validator("endpoint_url")(_https_or_loopback)

    @field_validator("image_ids")
    @classmethod
    def _amis(cls, value: dict[str, str]) -> dict[str, str]:
        for region, ami in value.items():
            if not ami.startswith("ami-"):
                raise ValueError(f"{region}: not an AMI id (like 'ami-0abc...'): {ami!r}")
        return value

    @field_validator("health_check_url")
    @classmethod
    def _health(cls, value: str | None) -> str | None:
        return _check_url_template(value, AWS_HEALTH_PLACEHOLDERS)


class GuestAccelerator(_Closed):
    type: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")]
    """GCP accelerator type, e.g. ``nvidia-tesla-t4``."""
    count: Annotated[int, Field(gt=0)]


class GcpVmOptions(_Closed):
    """``[executor.options.gcp]``: Compute Engine instances."""

    project: Annotated[str, Field(pattern=r"^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,61}[a-z0-9]$")]
    image: Annotated[str, Field(min_length=1)]
    """Boot image, e.g. ``projects/deeplearning-platform-release/global/images/family/
    common-cu124-debian-11``."""
    zones: dict[str, Annotated[list[str], Field(min_length=1)]] = Field(default_factory=dict)
    """Zones to try, in order, per region, for offers without a zone; default: the
    region's zones as the API lists them, sorted."""
    disk_gib: Annotated[int, Field(ge=10)] = 100
    network: str = "global/networks/default"
    subnetwork: str | None = None
    external_ip: bool = False
    service_account: str | None = None
    """E-mail of the service account the instances run as (cloud-platform scope)."""
    accelerators: dict[str, GuestAccelerator] = Field(default_factory=dict)
    """Guest accelerators to attach per machine type (N1 + T4, say); accelerator-
    optimized types (a2, a3, g2, g4) bring their GPUs themselves."""
    compute_endpoint: str | None = None
    """Compute Engine endpoint with its scheme (a local fake in tests)."""
    anonymous: bool = False
    """Send no credentials (only for a local fake)."""
    health_check_url: str | None = None

    _endpoint = field_validator("compute_endpoint")(_https_or_loopback)

    @field_validator("health_check_url")
    @classmethod
    def _health(cls, value: str | None) -> str | None:
        return _check_url_template(value, GCP_HEALTH_PLACEHOLDERS)

    @field_validator("zones")
    @classmethod
    def _zones_in_region(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for region, zones in value.items():
            for zone in zones:
                if zone.rsplit("-", 1)[0] != region:
                    raise ValueError(f"{region}: zone {zone!r} is not in that region")
        return value


class AzureVmOptions(_Closed):
    """``[executor.options.azure]``: virtual machines in one resource group."""

    subscription_id: Annotated[
        str, Field(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
    ]
    resource_group: Annotated[str, Field(min_length=1, max_length=90)]
    subnet_id: Annotated[str, Field(pattern=r"(?i)^/subscriptions/.+/subnets/[^/]+$")]
    """An existing subnet: each VM gets one NIC there, deleted with the VM."""
    image: Annotated[str, Field(min_length=1)]
    """``publisher:offer:sku:version`` (as ``az vm create --image`` takes it) or an
    image resource id (``/subscriptions/...``)."""
    ssh_public_key: Annotated[str, Field(min_length=1)]
    admin_username: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "arbiter"
    os_disk_gib: Annotated[int, Field(ge=30)] | None = None
    arm_endpoint: str = "https://management.azure.com"
    health_check_url: str | None = None

    _endpoint = field_validator("arm_endpoint")(_https_or_loopback)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not value.startswith("/") and len(value.split(":")) != 4:
            raise ValueError(
                "expected publisher:offer:sku:version "
                "(e.g. 'Canonical:ubuntu-24_04-lts:server:latest') or an image resource id"
            )
        return value

    @field_validator("health_check_url")
    @classmethod
    def _health(cls, value: str | None) -> str | None:
        return _check_url_template(value, AZURE_HEALTH_PLACEHOLDERS)


class CloudOptions(_Closed):
    """``[executor.options]`` of ``kind = "cloud"``. Unknown keys are errors."""

    aws: AwsVmOptions | None = None
    gcp: GcpVmOptions | None = None
    azure: AzureVmOptions | None = None
    startup_script: Annotated[str, StringConstraints(strip_whitespace=False)] | None = None
    """Start-up script (cloud-init or ``#!`` script) for every instance."""
    startup_script_file: Path | None = None
    """…or the file it is read from (when the executor is built)."""
    gpus_per_instance: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    """GPUs per instance type, overriding what the provider reports."""
    router: Literal["none"] = "none"
    """``none``: weights are only recorded (no router for cloud VMs yet)."""
    timeout: Duration = 30.0
    """Per API request (seconds, or a duration such as ``"30s"``)."""
    operation_timeout: Duration = 900.0
    """How long to wait for a GCP zone operation or an Azure long-running operation."""
    health_check_timeout: Duration = 2.0

    @model_validator(mode="after")
    def _some_cloud_and_one_script(self) -> CloudOptions:
        if self.aws is None and self.gcp is None and self.azure is None:
            raise ValueError("configure at least one of aws, gcp, azure")
        if self.startup_script is not None and self.startup_script_file is not None:
            raise ValueError("give startup_script or startup_script_file, not both")
        return self

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> CloudOptions:
        """Validate; raise ConfigError naming ``executor.options.KEY``."""
        if not isinstance(options, Mapping):
            raise ConfigError("expected a table of options", source="config", key="executor")
        try:
            return cls.model_validate(dict(options))
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = ".".join(str(part) for part in error["loc"])
            key = "executor.options" + (f".{loc}" if loc else "")
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown option"
            raise ConfigError(message, source="config", key=key) from None


# -- what every cloud backend deals in ------------------------------------------------


class VmState(StrEnum):
    STARTING = "starting"
    """Being created or booting: counted as a replica asked for, not yet ready."""
    RUNNING = "running"
    DEAD = "dead"
    """Stopped, suspended or failed: serves nothing; terminated at the next ensure."""
    GONE = "gone"
    """Terminating or terminated: ignored (AWS lists terminated instances for a while)."""


@dataclass(frozen=True)
class Vm:
    """One instance of a replica group, as its cloud reports it."""

    provider: Provider
    id: str
    """What terminating it needs: EC2 instance id, GCP name, Azure VM name."""
    name: str
    region: str
    zone: str | None
    state: VmState
    workload: str
    group: str
    """The ``arbiter-group`` hash."""
    offer_key: str | None
    replicas: int
    created: str = ""
    """Creation time as the cloud writes it (ISO 8601: sorts in time order)."""
    addresses: Mapping[str, str] = field(default_factory=dict)
    """Health-check placeholders: private_ip, public_ip where known."""

    @property
    def live(self) -> bool:
        return self.state in (VmState.STARTING, VmState.RUNNING)


@dataclass(frozen=True)
class LaunchSpec:
    """What to launch: instances of one group, all alike."""

    workload: str
    offer: Offer
    replicas_per_instance: int
    startup_script: str | None

    @property
    def group_id(self) -> str:
        return group_id(self.workload, self.offer)

    @property
    def group(self) -> str:
        return short_hash(self.group_id)

    def tags(self) -> dict[str, str]:
        """Tags/labels every instance of the group carries (GCP: without the offer key)."""
        return {
            TAG_WORKLOAD: self.workload,
            TAG_OFFER: short_hash(self.offer.key),
            TAG_GROUP: self.group,
            TAG_REPLICAS: str(self.replicas_per_instance),
        }

    def instance_name(self, slot: int) -> str:
        """A name unique in the group, valid on GCP (starts with a letter, at most 63
        characters) and Azure: ``arb-<workload>-<group hash>-<slot>``."""
        return f"arb-{self.workload[:40].rstrip('-')}-{self.group[:8]}-{slot}"


def free_slots(spec: LaunchSpec, taken: Sequence[str], count: int) -> list[str]:
    """``count`` instance names of the group not in ``taken`` (lowest slots first)."""
    names: list[str] = []
    slot = 0
    used = set(taken)
    while len(names) < count:
        name = spec.instance_name(slot)
        if name not in used:
            names.append(name)
        slot += 1
    return names


class VmBackend(Protocol):
    """One cloud's instances. Raises only ExecutorError (CapacityUnavailable on launch)."""

    def gpus_per_instance(self, offer: Offer) -> float: ...

    def find(
        self, *, group: str | None = None, workload: str | None = None, region: str | None = None
    ) -> list[Vm]:
        """Instances carrying arbiter's tags: of one group, or one workload, or all."""
        ...

    def launch(
        self, spec: LaunchSpec, count: int, present: Sequence[Vm], now: datetime
    ) -> list[Vm]:
        """Start ``count`` instances of ``spec``; ``present`` is what the group has."""
        ...

    def terminate(self, vms: Sequence[Vm]) -> None: ...

    def close(self) -> None: ...


def offer_from_key(key: str) -> Offer | None:
    """The offer an ``arbiter-offer-key`` tag names, or None if it is not one."""
    parts = key.split(":")
    if len(parts) != 5:
        return None
    provider, region, zone, instance_type, market = parts
    try:
        return Offer.model_validate(
            {
                "provider": provider,
                "region": region,
                "zone": None if zone == "-" else zone,
                "instance_type": instance_type,
                "market": market,
            }
        )
    except ValidationError:
        return None


# -- the executor --------------------------------------------------------------------


class CloudExecutor:
    """Replica groups as GPU instances (see the module docstring); also the (no-op) router.

    ``aws_session``, ``gcp_credentials`` and ``azure_credential`` replace the SDKs'
    standard credential chains (tests; embedding). Call ``close()`` when done.
    """

    name = EXECUTOR

    def __init__(
        self,
        clock: Clock,
        options: Mapping[str, Any] | None = None,
        *,
        aws_session: Any = None,
        gcp_credentials: Any = None,
        azure_credential: Any = None,
    ) -> None:
        self.clock = clock
        self.options = CloudOptions.parse(options or {})
        self._script = self._read_script()
        self._injected = {
            Provider.AWS: aws_session,
            Provider.GCP: gcp_credentials,
            Provider.AZURE: azure_credential,
        }
        self._lock = threading.Lock()
        self._backends: dict[Provider, VmBackend] = {}
        self._gpus: dict[tuple[Provider, str], float] = {}
        self._desired: dict[str, tuple[str, Offer, int]] = {}
        """group id → (workload, offer, replicas) last ensured by this process."""
        self._weights: dict[str, dict[str, int]] = {}
        self._http: httpx.Client | None = None
        self._log = get_logger("executor", executor=self.name)

    def _read_script(self) -> str | None:
        path = self.options.startup_script_file
        if path is None:
            return self.options.startup_script
        try:
            return path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {path}: {exc.strerror or exc}",
                source="config",
                key="executor.options.startup_script_file",
            ) from None

    # -- backends -------------------------------------------------------------------

    def backend(self, provider: Provider | str) -> VmBackend:
        """The backend of a cloud (built on first use, so unused SDKs are never imported)."""
        provider = Provider(provider)
        with self._lock:
            if provider not in self._backends:
                self._backends[provider] = self._build_backend(provider)
            return self._backends[provider]

    def _build_backend(self, provider: Provider) -> VmBackend:
        common: dict[str, Any] = {
            "timeout": self.options.timeout,
            "operation_timeout": self.options.operation_timeout,
        }
        if provider is Provider.AWS and self.options.aws is not None:
            from arbiter.executors.cloud_aws import AwsVms

            return AwsVms(self.options.aws, session=self._injected[provider], **common)
        if provider is Provider.GCP and self.options.gcp is not None:
            from arbiter.executors.cloud_gcp import GcpVms

            return GcpVms(self.options.gcp, credentials=self._injected[provider], **common)
        if provider is Provider.AZURE and self.options.azure is not None:
            from arbiter.executors.cloud_azure import AzureVms

            return AzureVms(self.options.azure, credential=self._injected[provider], **common)
        configured = ", ".join(self._configured()) or "none"
        raise ExecutorError(
            f"cannot run {provider} offers: executor.options.{provider} is not configured "
            f"(configured: {configured})",
            executor=self.name,
        )

    def _configured(self) -> list[Provider]:
        sections = (self.options.aws, self.options.gcp, self.options.azure)
        return [p for p, s in zip(Provider, sections, strict=True) if s is not None]

    def close(self) -> None:
        """Close every backend's clients and the health-check HTTP client, all of them
        even when one fails; ExecutorError naming each failure afterwards."""
        from arbiter.executors import close_each

        with self._lock:
            backends = dict(self._backends)
            self._backends.clear()
            http, self._http = self._http, None
        closes: list[tuple[str, Callable[[], object]]] = [
            (f"the {provider} backend", backend.close) for provider, backend in backends.items()
        ]
        if http is not None:
            closes.append(("the health-check HTTP client", http.close))
        close_each(self.name, closes)

    def __enter__(self) -> CloudExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Executor ----------------------------------------------------------------------

    def ensure(self, workload: Workload, offer: Offer, replicas: int) -> ReplicaGroup:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        gid = group_id(workload.name, offer)
        backend = self.backend(offer.provider)
        vms = self._group_vms(backend, gid, offer)
        log = self._log.bind(workload=workload.name, group=gid)
        present = [vm for vm in vms if vm.state is not VmState.GONE]
        dead = [vm for vm in present if vm.state is VmState.DEAD]
        live = [vm for vm in present if vm.live]
        if replicas == 0:
            if present:
                log.info("- terminate", instances=[vm.id for vm in present], because="release")
                backend.terminate(present)
            self._desired.pop(gid, None)
            return ReplicaGroup(workload=workload.name, offer=offer, desired=0, ready=0)

        per_instance = self._replicas_per_instance(workload, offer, backend)
        ready = {vm.id for vm in live if self._is_ready(vm)}
        hosted = sum(vm.replicas for vm in live)
        surplus: list[Vm] = []
        if hosted < replicas:
            count = math.ceil((replicas - hosted) / per_instance)
            spec = LaunchSpec(
                workload.name, offer, per_instance, self._render(workload, offer, per_instance)
            )
            log.info(
                "+ launch",
                instances=count,
                instance_type=offer.instance_type,
                market=str(offer.market),
                because=f"{hosted} of {replicas} replicas run",
            )
            backend.launch(spec, count, vms, self.clock.now())
        elif hosted > replicas:
            # Keep the ready and the oldest: drop starting instances first, then the newest.
            newest_first = sorted(live, key=lambda v: (v.created, v.id), reverse=True)
            for vm in sorted(newest_first, key=lambda v: v.id in ready):  # stable
                if hosted - vm.replicas >= replicas:
                    surplus.append(vm)
                    hosted -= vm.replicas
            if surplus:
                log.info(
                    "- terminate",
                    instances=[vm.id for vm in surplus],
                    because=f"{sum(v.replicas for v in live)} replicas run, {replicas} wanted",
                )
        if dead:
            log.info("- terminate", instances=[vm.id for vm in dead], because="stopped or failed")
        if surplus or dead:
            backend.terminate([*surplus, *dead])
        self._desired[gid] = (workload.name, offer, replicas)
        kept = [vm for vm in live if vm not in surplus]
        ready_replicas = sum(vm.replicas for vm in kept if vm.id in ready)
        return ReplicaGroup(
            workload=workload.name,
            offer=offer,
            desired=replicas,
            ready=min(replicas, ready_replicas),
        )

    def group(self, workload: str, offer: Offer) -> ReplicaGroup | None:
        gid = group_id(workload, offer)
        live = [vm for vm in self._group_vms(self.backend(offer.provider), gid, offer) if vm.live]
        return self._report(workload, offer, live)

    def groups(self, workload: str | None = None) -> list[ReplicaGroup]:
        found: dict[str, tuple[str, Offer, list[Vm]]] = {}
        for provider in self._configured():
            for vm in self.backend(provider).find(workload=workload):
                if not vm.live:
                    continue
                offer = offer_from_key(vm.offer_key or "")
                if offer is None or short_hash(group_id(vm.workload, offer)) != vm.group:
                    self._log.warning(
                        "instance with arbiter tags but no readable offer key left out",
                        instance=vm.id,
                        provider=str(provider),
                    )
                    continue
                entry = found.setdefault(group_id(vm.workload, offer), (vm.workload, offer, []))
                entry[2].append(vm)
        for gid, (name, offer, _) in self._desired.items():
            if workload in (None, name):
                found.setdefault(gid, (name, offer, []))
        out = []
        for _, (name, offer, vms) in sorted(found.items()):
            reported = self._report(name, offer, vms)
            if reported is not None:
                out.append(reported)
        return out

    def _report(self, workload: str, offer: Offer, live: Sequence[Vm]) -> ReplicaGroup | None:
        remembered = self._desired.get(group_id(workload, offer))
        if not live and remembered is None:
            return None
        desired = remembered[2] if remembered else sum(vm.replicas for vm in live)
        ready = sum(vm.replicas for vm in live if self._is_ready(vm))
        return ReplicaGroup(
            workload=workload, offer=offer, desired=desired, ready=min(desired, ready)
        )

    def _group_vms(self, backend: VmBackend, gid: str, offer: Offer) -> list[Vm]:
        group = short_hash(gid)
        # The hash alone finds them; the key tag guards against a (2^-64) collision.
        return [
            vm
            for vm in backend.find(group=group, region=offer.region)
            if vm.offer_key in (None, offer.key)
        ]

    def _replicas_per_instance(self, workload: Workload, offer: Offer, backend: VmBackend) -> int:
        key = (offer.provider, offer.instance_type)
        gpus = self.options.gpus_per_instance.get(offer.instance_type)
        if gpus is None:
            gpus = self._gpus.get(key)
        if gpus is None:
            gpus = backend.gpus_per_instance(offer)
            self._gpus[key] = gpus
        per_instance = math.floor(gpus / workload.gpus_per_replica)
        if per_instance < 1:
            raise ExecutorError(
                f"{offer.key}: {offer.instance_type} has {gpus:g} GPU(s); {workload.name} "
                f"needs {workload.gpus_per_replica} per replica",
                executor=self.name,
            )
        return per_instance

    def _render(self, workload: Workload, offer: Offer, per_instance: int) -> str | None:
        if self._script is None:
            return None
        values = {
            "workload": workload.name,
            "group_id": group_id(workload.name, offer),
            "offer_key": offer.key,
            "provider": str(offer.provider),
            "region": offer.region,
            "zone": offer.zone or "",
            "instance_type": offer.instance_type,
            "market": str(offer.market),
            "replicas_per_instance": str(per_instance),
            "gpus_per_replica": str(workload.gpus_per_replica),
        }
        script = self._script
        for name in SCRIPT_PLACEHOLDERS:
            script = script.replace("{{" + name + "}}", values[name])
        return script

    # -- readiness -------------------------------------------------------------------

    def _is_ready(self, vm: Vm) -> bool:
        if vm.state is not VmState.RUNNING:
            return False
        template = self._health_template(vm.provider)
        if template is None:
            return True
        values = {"id": vm.id, "name": vm.name, "zone": vm.zone or "", **vm.addresses}
        try:
            url = template.format(**values)
        except KeyError:
            return False  # e.g. no public IP: cannot be checked, so not ready
        try:
            response = self._http_client().get(url)
        except httpx.HTTPError:
            return False
        return response.is_success

    def _health_template(self, provider: Provider) -> str | None:
        section = {
            Provider.AWS: self.options.aws,
            Provider.GCP: self.options.gcp,
            Provider.AZURE: self.options.azure,
        }[provider]
        return section.health_check_url if section is not None else None

    def _http_client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    timeout=self.options.health_check_timeout, follow_redirects=False
                )
            return self._http

    # -- TrafficRouter (router = "none") ------------------------------------------

    def set_weights(self, workload: str, weights: Mapping[str, int]) -> None:
        kept = {gid: weight for gid, weight in weights.items() if weight > 0}
        if kept != self._weights.get(workload):
            self._log.info("~ route (recorded only: no router)", workload=workload, weights=kept)
        self._weights[workload] = kept

    def weights(self, workload: str) -> dict[str, int]:
        return dict(self._weights.get(workload, {}))

    def in_flight(self, workload: str, group_id: str) -> int | None:
        return None  # no router to ask: the caller waits out the drain timeout
