"""GCP market data: accelerator-optimized machine types and free GPU quota from the
Compute Engine API, on-demand and Spot prices from the Cloud Billing Catalog API.

Contract (the ports in ``arbiter/ports.py``): every method returns complete, validated
domain values or raises a ``ProviderError``; never a partial result.

* ``fetch_instance_types()`` — the machine types of the configured families
  (default a2, a3, g2, g4) that carry ``accelerators[]``, once each however many zones
  offer them: ``vcpus = guestCpus``, ``memory_gib = memoryMb / 1024``, the accelerator
  by its canonical name (``nvidia-tesla-a100`` → ``A100``,
  ``nvidia-h100-mega-80gb`` → ``H100``) and the memory of one card. A type whose GPU
  arbiter has no name for is left out (logged), not invented.
* ``fetch_capacity(now=)`` — per region, the free GPUs under each GPU quota:
  ``max(0, limit - usage)`` as ``QUOTA_GPUS_FREE``. A per-model metric
  (``NVIDIA_L4_GPUS``) yields one signal for every machine type of that GPU offered in
  the region; an aggregate metric (``GPUS_ALL_REGIONS``) one signal with
  ``instance_type=None``. Preemptible quota (``PREEMPTIBLE_NVIDIA_*_GPUS``, which Spot
  VMs use) is reported the same way as ``QUOTA_SPOT_GPUS_FREE``, a series of its own.
  Committed (``COMMITTED_*``) and Virtual Workstation (``*_VWS_*``)
  quotas do not limit on-demand or Spot VMs and are skipped; so are per-model metrics
  for GPUs the region offers in none of our machine types (T4 on n1, say).
* ``fetch_prices(since=, now=)`` — the current price of every (machine type, region,
  market) whose SKUs are all in the catalog. ``since`` is ignored: the Catalog API
  has no change feed, so every call returns the full current state. ``observed_at`` is
  ``now``: a SKU's ``effectiveTime`` says since when a price has applied, not when it
  was seen, and using it would make a price unchanged for a year look a year old.

How a price is composed. An accelerator-optimized VM is billed as separate SKUs, so
for machine *m* in region *r* on market *k* (on-demand or Spot)::

    vCPUs × "<F> Instance Core" + RAM GiB × "<F> Instance Ram" + GPUs × "<GPU> GPU"
      + bundled local SSD GiB × "SSD backed Local Storage" / 730 h

where F is the family (A2, A3, G2, G4) and the local SSD term applies only to types
with ``bundledLocalSsds`` (a2-ultragpu, a3-*; 375 GiB per partition, priced per
GiB-month; 730 hours a month is Google's own convention). A SKU counts for region *r*
when ``serviceRegions`` contains *r* — the region in the description ("Americas") is
never used — and its description, with the Spot wording removed ("Spot Preemptible
…", "… attached to Spot Preemptible VMs …"), names exactly the component: look-alikes
such as "Reserved …", "Commitment v1: …", "… DWS Defined Duration …", "… in Calendar
Mode", "… Virtual Workstation …" or "Sole Tenancy …" never match, and the Mega H100
of a3-megagpu ("Nvidia H100 80GB Mega GPU", also sold as "… Plus GPU") is a different
SKU from the H100 of a3-highgpu. A SKU is Spot when its ``usageType`` is
``Preemptible`` or its description has the Spot wording, on-demand when it is
``OnDemand`` without it; commitments and other usage types are skipped. The unit
price is the first tier's ``units + nanos / 1e9``, in the unit checked against
``usageUnit`` (``h`` for cores and GPUs, ``GiBy.h`` for RAM, ``GiBy.mo`` or
``GiBy.h`` for local SSD).

A machine type whose SKUs are incomplete in a region (or ambiguous: two SKUs for one
component at different prices) is left out there, not guessed. A SKU that would be
used but is malformed — no ``pricingInfo``, an unexpected unit, a currency other than
USD, a negative price — is a BadPayload naming the field, and the whole fetch fails.
SKUs nobody would use are only checked for the envelope (``skus[]`` of objects with a
``description``): a broken rate card for some unrelated product does not stop GPU
prices.

Calls and what they need:

* Compute Engine (``google-cloud-compute``, REST transport, pages followed by the
  pager): ``MachineTypesClient.aggregated_list`` (IAM ``compute.machineTypes.list``)
  and ``RegionsClient.list`` (``compute.regions.list``). Both are in
  ``roles/compute.viewer``. Credentials are Application Default Credentials
  (``GOOGLE_APPLICATION_CREDENTIALS`` or ``gcloud auth application-default login``,
  or the attached service account), or none with ``anonymous = true`` (tests).
  ``AcceleratorTypesClient`` (``compute.acceleratorTypes.list``) is not called: the
  machine type already names its GPU and count, and the card's memory comes from
  arbiter's own accelerator table.
* Cloud Billing Catalog: ``GET {billing_endpoint}/v1/services/6F81-5844-456A/skus
  ?currencyCode=USD&pageSize=5000`` following ``nextPageToken``, with an API key of a
  project where the Cloud Billing API is enabled (no IAM role). The key travels in the
  ``X-Goog-Api-Key`` header rather than ``?key=``, so it never appears in a URL,
  a proxy log or an error message.

Errors are translated at the boundary (``raise ... from exc``): 429 /
``TooManyRequests`` / ``ResourceExhausted`` and a 403 whose reason is a rate or quota
limit → Throttled (with ``Retry-After`` when sent); 5xx, ``DeadlineExceeded``,
timeouts and connection errors → Unavailable; 401/403, missing Application Default
Credentials and an invalid API key → AuthFailed, saying how to provide credentials;
anything else the server refuses, or a body that does not parse → BadPayload. SDK
retries are off (``retry=None``): the poller retries temporary errors itself.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import httpx
import requests
from google.api_core import exceptions as google_exceptions
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.cloud import compute_v1
from google.protobuf import json_format
from pydantic import Field, SecretStr, ValidationError, field_validator

from arbiter.domain.accelerators import CANONICAL, canonical_accelerator
from arbiter.domain.market import (
    CapacityKind,
    CapacitySignal,
    InstanceType,
    Market,
    Offer,
    PriceQuote,
    Provider,
)
from arbiter.errors import (
    AuthFailed,
    BadPayload,
    ProviderError,
    Throttled,
    Unavailable,
)
from arbiter.logs import get_logger
from providers.gcp_clients import compute_client_options, compute_credentials
from providers.http import (
    check_response,
    make_client,
    require,
    response_detail,
    retry_after_seconds,
    translate_transport_errors,
)
from providers.options import LOOPBACK_HOSTS, SourceOptions

COMPUTE_ENGINE_SERVICE = "6F81-5844-456A"
"""Compute Engine's service id in the Cloud Billing Catalog."""
HOURS_PER_MONTH = 730.0
"""Google's conversion for SKUs priced per month (local SSD)."""
LOCAL_SSD_PARTITION_GIB = 375
"""Size of one bundled local SSD partition."""
COMPUTE_READONLY_SCOPE = "https://www.googleapis.com/auth/compute.readonly"

_MAX_SKU_PAGES = 200
_MACHINE_TYPES_PAGE_SIZE = 500

_CREDENTIALS_HELP = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run "
    "`gcloud auth application-default login`, or run on a VM with a service account; "
    "the account needs compute.regions.list and compute.machineTypes.list "
    "(roles/compute.viewer). Tests against a local fake set `anonymous = true`."
)
_API_KEY_HELP = (
    "the Cloud Billing Catalog API needs an API key: create one in a project with the "
    "Cloud Billing API enabled (restrict it to that API) and set it as "
    "`api_key` in the source's options"
)
_RATE_LIMIT_REASONS = frozenset(
    {
        "rateLimitExceeded",
        "userRateLimitExceeded",
        "quotaExceeded",
        "dailyLimitExceeded",
        "RATE_LIMIT_EXCEEDED",
        "RESOURCE_EXHAUSTED",
    }
)


# -- options ------------------------------------------------------------------------

_PROJECT = re.compile(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,61}[a-z0-9]")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_FAMILY = re.compile(r"[a-z][a-z0-9]*")


class GcpOptions(SourceOptions):
    """``[sources.NAME.options]`` of a ``kind = "gcp"`` source. Unknown keys are errors."""

    project: str
    """Project whose quotas are read and in whose name Compute Engine is called."""
    regions: list[str] | None = None
    """Regions to cover; default every region the API returns."""
    compute_endpoint: str | None = None
    """Compute Engine endpoint with its scheme, e.g. ``http://127.0.0.1:8080`` (tests)."""
    billing_endpoint: str = "https://cloudbilling.googleapis.com"
    api_key: SecretStr | None = None
    """Cloud Billing Catalog API key. Required for prices; never logged."""
    anonymous: bool = False
    """Send no credentials to Compute Engine (only for a local fake)."""
    machine_families: list[str] = Field(default_factory=lambda: ["a2", "a3", "g2", "g4"])
    """Accelerator-optimized machine families to cover."""

    @field_validator("project")
    @classmethod
    def _project_id(cls, value: str) -> str:
        if not _PROJECT.fullmatch(value):
            raise ValueError(f"{value!r} is not a GCP project id (e.g. 'my-project-123')")
        return value

    @field_validator("regions")
    @classmethod
    def _region_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one region, or leave regions out for all")
        for region in value:
            if not _REGION.fullmatch(region):
                raise ValueError(f"{region!r} is not a GCP region name (e.g. 'us-central1')")
        return sorted(set(value))

    @field_validator("machine_families")
    @classmethod
    def _family_names(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one machine family, e.g. ['a2', 'g2']")
        for family in value:
            if not _FAMILY.fullmatch(family):
                raise ValueError(f"{family!r} is not a machine family (e.g. 'a3')")
        return sorted(set(value))

    @field_validator("compute_endpoint", "billing_endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"{value!r} is not an http(s) URL with a host, e.g. 'https://compute.googleapis.com'"
            )
        if url.scheme == "http" and url.host not in LOOPBACK_HOSTS:
            # Tokens and the API key would cross the network in clear.
            raise ValueError(
                f"{value!r} must use https (plain http only for a loopback test server)"
            )
        return value.rstrip("/")


def build(name: str, options: Mapping[str, Any], *, timeout: float) -> GcpSource:
    """The registry's factory: validate ``options`` and build the source."""
    return GcpSource(name, GcpOptions.parse(name, options), timeout=timeout)


# -- what the Compute API tells us --------------------------------------------------


@dataclass(frozen=True)
class _Machine:
    """One accelerator-optimized machine type and the regions that offer it."""

    name: str
    family: str
    vcpus: int
    memory_gib: float
    accelerator_type: str
    """GCP's name, e.g. ``nvidia-h100-mega-80gb`` (the canonical name loses Mega)."""
    accelerator_count: int
    local_ssd_gib: int
    regions: frozenset[str]
    instance_type: InstanceType


def _region_of_zone(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _canonical(accelerator_type: str) -> str | None:
    # GCP prefixes older cards with "tesla-" (nvidia-tesla-a100); arbiter's table knows
    # TESLA-T4 but not TESLA-A100, so drop the prefix here.
    name = accelerator_type.lower()
    if name.startswith("nvidia-tesla-"):
        name = "nvidia-" + name.removeprefix("nvidia-tesla-")
    return canonical_accelerator(name)


_GPU_QUOTA = re.compile(r"(?P<preemptible>PREEMPTIBLE_)?NVIDIA_(?P<model>[A-Z0-9_]+?)_GPUS")
"""A per-model GPU quota metric: ``NVIDIA_L4_GPUS``, ``PREEMPTIBLE_NVIDIA_H100_GPUS``."""

_QUOTA_MODEL_OVERRIDES = {
    "nvidia-h100-80gb": "H100",
    "nvidia-h100-mega-80gb": "H100_MEGA",
    "nvidia-h200-141gb": "H200",
}


def _quota_model(accelerator_type: str) -> str:
    """The model part of the GPU quota metric for an accelerator type:
    ``nvidia-tesla-a100`` → ``A100`` (``NVIDIA_A100_GPUS``), ``nvidia-a100-80gb`` →
    ``A100_80GB``, ``nvidia-h100-mega-80gb`` → ``H100_MEGA``."""
    name = accelerator_type.lower()
    if name in _QUOTA_MODEL_OVERRIDES:
        return _QUOTA_MODEL_OVERRIDES[name]
    return name.removeprefix("nvidia-").removeprefix("tesla-").upper().replace("-", "_")


# -- what the Billing Catalog tells us ----------------------------------------------

_Kind = Literal["core", "ram", "gpu", "local_ssd"]


@dataclass(frozen=True)
class _Component:
    kind: _Kind
    key: str
    """Family (``a2``) for core, RAM and family local SSD; GCP accelerator type for a
    GPU; empty for the generic local SSD."""


_GPU_SKU_NAMES = {
    "nvidia tesla a100 gpu": "nvidia-tesla-a100",
    "nvidia tesla a100 80gb gpu": "nvidia-a100-80gb",
    "nvidia h100 80gb gpu": "nvidia-h100-80gb",
    "nvidia h100 80gb mega gpu": "nvidia-h100-mega-80gb",
    "nvidia h100 80gb plus gpu": "nvidia-h100-mega-80gb",
    "nvidia l4 gpu": "nvidia-l4",
    "rtx 6000 96gb": "nvidia-rtx-pro-6000",
}
_SPOT_PREFIXES = ("spot preemptible ", "preemptible ")
_SPOT_INFIXES = (" attached to spot preemptible vms", " attached to preemptible vms")
_LOCAL_SSD = re.compile(r"ssd backed local storage(?: in .+)?")
_UNIT_HOURS: dict[str, float] = {"h": 1.0, "GiBy.h": 1.0, "GiBy.mo": 1.0 / HOURS_PER_MONTH}
_EXPECTED_UNITS: dict[_Kind, frozenset[str]] = {
    "core": frozenset({"h"}),
    "gpu": frozenset({"h"}),
    "ram": frozenset({"GiBy.h"}),
    "local_ssd": frozenset({"GiBy.mo", "GiBy.h"}),
}


def _identify(description: str, families: Sequence[str]) -> tuple[_Component, bool] | None:
    """The component a SKU description names, and whether it uses the Spot wording;
    None for anything else (including every look-alike)."""
    text = " ".join(description.split()).casefold()
    spot = False
    for prefix in _SPOT_PREFIXES:
        if text.startswith(prefix):
            text, spot = text.removeprefix(prefix), True
            break
    for infix in _SPOT_INFIXES:
        if infix in text:
            text, spot = text.replace(infix, "", 1), True
            break
    if _LOCAL_SSD.fullmatch(text):
        return _Component("local_ssd", ""), spot
    what, running, _where = text.partition(" running in ")
    if not running:
        return None
    for family in families:
        if what == f"{family} instance core":
            return _Component("core", family), spot
        if what == f"{family} instance ram":
            return _Component("ram", family), spot
        if what == f"{family} instance local ssd":
            return _Component("local_ssd", family), spot
    if what in _GPU_SKU_NAMES:
        return _Component("gpu", _GPU_SKU_NAMES[what]), spot
    return None


@dataclass
class _RateCard:
    """Unit prices (USD per hour per unit) by (component, market, region)."""

    rates: dict[tuple[_Component, Market, str], dict[float, str]] = field(
        default_factory=lambda: defaultdict(dict)
    )

    def add(
        self, component: _Component, market: Market, regions: Sequence[str], usd: float, sku: str
    ) -> None:
        for region in regions:
            self.rates[(component, market, region)].setdefault(usd, sku)

    def price(self, component: _Component, market: Market, region: str) -> float | None:
        """The unit price, or None when no SKU (or two SKUs at different prices) apply."""
        found = self.rates.get((component, market, region))
        if not found or len(found) > 1:
            return None
        return next(iter(found))

    def has(self, component: _Component, market: Market, region: str) -> bool:
        return bool(self.rates.get((component, market, region)))


# -- the source ---------------------------------------------------------------------


class GcpSource:
    """Prices, capacity and instance types of Google Compute Engine's GPU machines."""

    def __init__(self, name: str, options: GcpOptions, *, timeout: float) -> None:
        self.name = name
        self.options = options
        self._timeout = timeout
        self._credentials: Credentials | None = None
        self._log = get_logger("provider", source=name, kind="gcp")

    def __repr__(self) -> str:
        return f"GcpSource(name={self.name!r}, project={self.options.project!r})"

    # ports -------------------------------------------------------------------------

    def fetch_instance_types(self) -> list[InstanceType]:
        return [m.instance_type for m in self._machines()]

    def fetch_capacity(self, *, now: datetime) -> list[CapacitySignal]:
        machines = self._machines()
        by_region_model: dict[tuple[str, str], list[str]] = defaultdict(list)
        for m in machines:
            for region in m.regions:
                by_region_model[(region, _quota_model(m.accelerator_type))].append(m.name)
        signals: list[CapacitySignal] = []
        for region in self._regions():
            if not self._wanted(region.name):
                continue
            for index, quota in enumerate(region.quotas):
                metric = quota.metric
                if quota.limit < 0:  # -1 would mean unlimited: never report that as 0 free
                    continue
                free = max(0.0, float(quota.limit) - float(quota.usage))
                kind = CapacityKind.QUOTA_GPUS_FREE
                if metric == "GPUS_ALL_REGIONS":
                    targets: list[str | None] = [None]
                else:
                    match = _GPU_QUOTA.fullmatch(metric)
                    if match is None or match["model"].endswith("_VWS"):
                        continue
                    if match["preemptible"]:
                        kind = CapacityKind.QUOTA_SPOT_GPUS_FREE
                    targets = [*sorted(by_region_model.get((region.name, match["model"]), []))]
                for instance_type in targets:
                    signals.append(
                        self._signal(
                            region.name, instance_type, free, now, f"quotas[{index}]", kind
                        )
                    )
        return signals

    def fetch_prices(self, *, since: datetime | None, now: datetime) -> list[PriceQuote]:
        if self.options.api_key is None:
            raise AuthFailed(_API_KEY_HELP, source=self.name)
        machines = self._machines()
        card = self._rate_card()
        quotes: list[PriceQuote] = []
        omitted = 0
        for machine in machines:
            for region in sorted(machine.regions):
                for market in (Market.ON_DEMAND, Market.SPOT):
                    usd = self._compose(machine, region, market, card)
                    if usd is None:
                        omitted += 1
                        continue
                    quotes.append(
                        PriceQuote(
                            offer=Offer(
                                provider=Provider.GCP,
                                region=region,
                                instance_type=machine.name,
                                market=market,
                            ),
                            usd_per_hour=usd,
                            observed_at=now,
                            source=self.name,
                        )
                    )
        self._log.info("gcp prices composed", quotes=len(quotes), omitted=omitted)
        return quotes

    # Compute Engine ------------------------------------------------------------------

    def _wanted(self, region: str) -> bool:
        return self.options.regions is None or region in self.options.regions

    def _credentials_for_compute(self) -> Credentials:
        if self._credentials is None:
            with self._translated("finding credentials"):
                self._credentials = compute_credentials(
                    anonymous=self.options.anonymous, scope=COMPUTE_READONLY_SCOPE
                )
        return self._credentials

    def _client_options(self) -> ClientOptions | None:
        return compute_client_options(self.options.compute_endpoint)

    def _machines(self) -> list[_Machine]:
        """Accelerator-optimized machine types of the configured families, regions."""
        families = self.options.machine_families
        request = compute_v1.AggregatedListMachineTypesRequest(
            project=self.options.project,
            # RE2, must match the whole name; family names are validated [a-z0-9]+.
            filter=f'name eq "({"|".join(families)})-.*"',
            max_results=_MACHINE_TYPES_PAGE_SIZE,
        )
        seen: dict[str, tuple[tuple[object, ...], set[str], _Machine | None]] = {}
        credentials = self._credentials_for_compute()
        with (
            self._translated("listing machine types"),
            compute_v1.MachineTypesClient(
                credentials=credentials, client_options=self._client_options()
            ) as client,
        ):
            pager = client.aggregated_list(request=request, timeout=self._timeout, retry=None)
            for scope, scoped in pager:
                if not scope.startswith("zones/"):
                    continue
                zone = scope.removeprefix("zones/")
                region = _region_of_zone(zone)
                if not self._wanted(region):
                    continue
                for machine_type in scoped.machine_types:
                    if machine_type.name.split("-", 1)[0] not in families:
                        continue
                    if machine_type.deprecated.state in ("OBSOLETE", "DELETED"):
                        continue
                    where = f"items[{scope}].machineTypes[{machine_type.name}]"
                    shape = (
                        machine_type.guest_cpus,
                        machine_type.memory_mb,
                        tuple(
                            (a.guest_accelerator_type, a.guest_accelerator_count)
                            for a in machine_type.accelerators
                        ),
                        machine_type.bundled_local_ssds.partition_count,
                    )
                    if machine_type.name in seen:
                        known_shape, regions, _ = seen[machine_type.name]
                        if known_shape != shape:
                            raise BadPayload(
                                f"differs from the same machine type in another zone: "
                                f"{shape} vs {known_shape}",
                                source=self.name,
                                field=where,
                            )
                        regions.add(region)
                        continue
                    seen[machine_type.name] = (
                        shape,
                        {region},
                        self._machine(machine_type, where),
                    )
        return [
            replace(machine, regions=frozenset(regions))
            for _, regions, machine in (seen[name] for name in sorted(seen))
            if machine is not None
        ]

    def _machine(self, machine_type: Any, where: str) -> _Machine | None:
        """A validated machine, or None for one without (usable) accelerators."""
        accelerators: dict[str, int] = defaultdict(int)
        for accelerator in machine_type.accelerators:
            if accelerator.guest_accelerator_count > 0:
                accelerators[accelerator.guest_accelerator_type] += (
                    accelerator.guest_accelerator_count
                )
        if not accelerators:
            return None
        if machine_type.guest_cpus <= 0:
            raise BadPayload(
                "missing or not positive", source=self.name, field=f"{where}.guestCpus"
            )
        if machine_type.memory_mb <= 0:
            raise BadPayload("missing or not positive", source=self.name, field=f"{where}.memoryMb")
        if len(accelerators) > 1:
            self._log.warning(
                "gcp machine type with mixed accelerators left out",
                machine_type=machine_type.name,
                accelerators=sorted(accelerators),
            )
            return None
        ((accelerator_type, count),) = accelerators.items()
        if not accelerator_type:
            raise BadPayload(
                "missing", source=self.name, field=f"{where}.accelerators[0].guestAcceleratorType"
            )
        canonical = _canonical(accelerator_type)
        if canonical is None:
            self._log.warning(
                "gcp machine type with an unknown accelerator left out",
                machine_type=machine_type.name,
                accelerator=accelerator_type,
            )
            return None
        partitions = machine_type.bundled_local_ssds.partition_count
        memory_gib = machine_type.memory_mb / 1024
        try:
            instance_type = InstanceType(
                provider=Provider.GCP,
                name=machine_type.name,
                vcpus=machine_type.guest_cpus,
                memory_gib=memory_gib,
                accelerator=canonical,
                accelerator_count=count,
                accelerator_memory_gib=CANONICAL.get(canonical),
            )
        except ValidationError as exc:
            error = exc.errors()[0]
            raise BadPayload(
                str(error["msg"]), source=self.name, field=f"{where} ({error['loc']})"
            ) from exc
        return _Machine(
            name=machine_type.name,
            family=machine_type.name.split("-", 1)[0],
            vcpus=machine_type.guest_cpus,
            memory_gib=memory_gib,
            accelerator_type=accelerator_type,
            accelerator_count=count,
            local_ssd_gib=max(0, partitions) * LOCAL_SSD_PARTITION_GIB,
            regions=frozenset(),
            instance_type=instance_type,
        )

    def _regions(self) -> list[Any]:
        credentials = self._credentials_for_compute()
        with (
            self._translated("listing regions"),
            compute_v1.RegionsClient(
                credentials=credentials, client_options=self._client_options()
            ) as client,
        ):
            pager = client.list(project=self.options.project, timeout=self._timeout, retry=None)
            return list(pager)

    def _signal(
        self,
        region: str,
        instance_type: str | None,
        free: float,
        now: datetime,
        where: str,
        kind: CapacityKind = CapacityKind.QUOTA_GPUS_FREE,
    ) -> CapacitySignal:
        try:
            return CapacitySignal(
                provider=Provider.GCP,
                region=region,
                instance_type=instance_type,
                kind=kind,
                value=free,
                observed_at=now,
                source=self.name,
            )
        except ValidationError as exc:
            raise BadPayload(
                str(exc.errors()[0]["msg"]), source=self.name, field=f"regions[{region}].{where}"
            ) from exc

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """Google SDK and transport errors → arbiter's, with what we were doing."""
        source = self.name
        try:
            yield
        except ProviderError:
            raise
        except google_exceptions.TooManyRequests as exc:
            raise Throttled(
                f"{doing}: throttled: {exc.message}", source=source, retry_after=_retry_after(exc)
            ) from exc
        except google_exceptions.Forbidden as exc:
            if _is_rate_limit(exc):
                raise Throttled(
                    f"{doing}: rate or quota limit: {exc.message}",
                    source=source,
                    retry_after=_retry_after(exc),
                ) from exc
            raise AuthFailed(
                f"{doing}: permission denied: {exc.message}; {_CREDENTIALS_HELP}", source=source
            ) from exc
        except google_exceptions.Unauthorized as exc:
            raise AuthFailed(
                f"{doing}: credentials refused: {exc.message}; {_CREDENTIALS_HELP}", source=source
            ) from exc
        except google_exceptions.ServerError as exc:
            raise Unavailable(f"{doing}: {exc.code} {exc.message}", source=source) from exc
        except google_exceptions.RetryError as exc:
            raise Unavailable(f"{doing}: {exc.message}", source=source) from exc
        except google_exceptions.GoogleAPICallError as exc:
            raise BadPayload(f"{doing}: refused: {exc.code} {exc.message}", source=source) from exc
        except auth_exceptions.InvalidOperation as exc:
            # AnonymousCredentials, asked to refresh after a 401
            raise AuthFailed(
                f"{doing}: the server wants credentials and anonymous ones cannot be "
                f"refreshed ({exc}); {_CREDENTIALS_HELP}",
                source=source,
            ) from exc
        except auth_exceptions.DefaultCredentialsError as exc:
            raise AuthFailed(
                f"{doing}: no usable Google credentials ({exc}); {_CREDENTIALS_HELP}", source=source
            ) from exc
        except auth_exceptions.RefreshError as exc:
            raise AuthFailed(
                f"{doing}: credentials could not be refreshed ({exc}); {_CREDENTIALS_HELP}",
                source=source,
            ) from exc
        except auth_exceptions.TransportError as exc:
            raise Unavailable(
                f"{doing}: could not reach the token server: {exc}", source=source
            ) from exc
        except requests.Timeout as exc:
            raise Unavailable(
                f"{doing}: timed out after {self._timeout:g}s", source=source
            ) from exc
        except requests.RequestException as exc:
            raise Unavailable(
                f"{doing}: connection failed: {exc.__class__.__name__}", source=source
            ) from exc
        except json_format.ParseError as exc:
            raise BadPayload(f"{doing}: response does not parse: {exc}", source=source) from exc

    # Cloud Billing Catalog ----------------------------------------------------------

    def _rate_card(self) -> _RateCard:
        assert self.options.api_key is not None
        card = _RateCard()
        headers = {"X-Goog-Api-Key": self.options.api_key.get_secret_value()}
        path = f"/v1/services/{COMPUTE_ENGINE_SERVICE}/skus"
        token: str | None = None
        seen_tokens: set[str] = set()
        with make_client(
            self.options.billing_endpoint, timeout=self._timeout, headers=headers
        ) as client:
            for page in range(_MAX_SKU_PAGES):
                params: dict[str, str | int] = {"currencyCode": "USD", "pageSize": 5000}
                if token:
                    params["pageToken"] = token
                with translate_transport_errors(self.name):
                    response = client.get(path, params=params)
                self._check_billing_response(response)
                try:
                    body = response.json()
                except ValueError as exc:
                    raise BadPayload(
                        f"GET {path} (page {page + 1}): body is not JSON", source=self.name
                    ) from exc
                self._read_sku_page(body, page + 1, card)
                token = body.get("nextPageToken") or None
                if token is None:
                    return card
                if not isinstance(token, str):
                    raise BadPayload("not a string", source=self.name, field="nextPageToken")
                if token in seen_tokens:
                    raise BadPayload(
                        "repeats an earlier page's token", source=self.name, field="nextPageToken"
                    )
                seen_tokens.add(token)
        raise BadPayload(
            f"more than {_MAX_SKU_PAGES} pages", source=self.name, field="nextPageToken"
        )

    def _check_billing_response(self, response: httpx.Response) -> None:
        if response.status_code == 400 and "API_KEY_INVALID" in response.text:
            raise AuthFailed(
                f"the Cloud Billing API refused the API key as invalid; {_API_KEY_HELP}",
                source=self.name,
            )
        if response.status_code in (401, 403):
            detail = response_detail(response)  # never the raw body: it may echo the key
            raise AuthFailed(
                f"the Cloud Billing API refused the request "
                f"(HTTP {response.status_code}): {detail or response.reason_phrase}; "
                f"{_API_KEY_HELP}",
                source=self.name,
            )
        check_response(response, source=self.name)

    def _read_sku_page(self, body: Any, page: int, card: _RateCard) -> None:
        if not isinstance(body, dict):
            raise BadPayload(
                f"page {page}: expected an object, got {type(body).__name__}", source=self.name
            )
        skus = body.get("skus", [])  # proto3 JSON leaves an empty list out
        if not isinstance(skus, list):
            raise BadPayload(
                f"page {page}: expected a list, got {type(skus).__name__}",
                source=self.name,
                field="skus",
            )
        families = self.options.machine_families
        for index, sku in enumerate(skus):
            where = f"skus[{index}]"
            description = require(sku, "description", source=self.name, where=where, kind=str)
            identified = _identify(description, families)
            if identified is None:
                continue
            component, spot_wording = identified
            category = require(sku, "category", source=self.name, where=where, kind=dict)
            usage_type = require(
                category, "usageType", source=self.name, where=f"{where}.category", kind=str
            )
            if usage_type not in ("OnDemand", "Preemptible"):
                continue  # commitments and reservations
            market = (
                Market.SPOT if (usage_type == "Preemptible" or spot_wording) else Market.ON_DEMAND
            )
            regions = sku.get("serviceRegions", [])
            if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
                raise BadPayload(
                    "expected a list of region names",
                    source=self.name,
                    field=f"{where}.serviceRegions",
                )
            usd = self._unit_price(sku, component, where, page)
            card.add(component, market, regions, usd, str(sku.get("skuId", where)))

    def _unit_price(
        self, sku: dict[str, Any], component: _Component, where: str, page: int
    ) -> float:
        """USD per hour per unit (vCPU, GiB, GPU) from the SKU's current pricing."""
        source = self.name
        infos = require(sku, "pricingInfo", source=source, where=where, kind=list)
        if not infos:
            raise BadPayload(
                f"page {page}: empty, SKU {sku.get('skuId')!r}",
                source=source,
                field=f"{where}.pricingInfo",
            )
        # Chronological; without a time range the API returns only the current one.
        last = len(infos) - 1
        info_where = f"{where}.pricingInfo[{last}]"
        expression = require(
            infos[last], "pricingExpression", source=source, where=info_where, kind=dict
        )
        expr_where = f"{info_where}.pricingExpression"
        unit = require(expression, "usageUnit", source=source, where=expr_where, kind=str)
        if unit not in _EXPECTED_UNITS[component.kind]:
            raise BadPayload(
                f"page {page}: {unit!r} for a {component.kind} SKU ({sku.get('description')!r}); "
                f"expected {' or '.join(sorted(_EXPECTED_UNITS[component.kind]))}",
                source=source,
                field=f"{expr_where}.usageUnit",
            )
        tiers = require(expression, "tieredRates", source=source, where=expr_where, kind=list)
        if not tiers:
            raise BadPayload(
                f"page {page}: no tiers", source=source, field=f"{expr_where}.tieredRates"
            )
        tier = tiers[0]
        tier_where = f"{expr_where}.tieredRates[0]"
        money = require(tier, "unitPrice", source=source, where=tier_where, kind=dict)
        money_where = f"{tier_where}.unitPrice"
        currency = money.get("currencyCode", "USD")
        if currency != "USD":
            raise BadPayload(
                f"page {page}: {currency!r}, asked for USD",
                source=source,
                field=f"{money_where}.currencyCode",
            )
        units_raw = money.get("units", "0")  # proto3 JSON omits zero values
        nanos_raw = money.get("nanos", 0)
        try:
            units = int(units_raw)
        except (TypeError, ValueError) as exc:
            raise BadPayload(
                f"page {page}: not an integer: {units_raw!r}",
                source=source,
                field=f"{money_where}.units",
            ) from exc
        if (
            not isinstance(nanos_raw, int)
            or isinstance(nanos_raw, bool)
            or abs(nanos_raw) >= 1_000_000_000
        ):
            raise BadPayload(
                f"page {page}: not an integer below 1e9: {nanos_raw!r}",
                source=source,
                field=f"{money_where}.nanos",
            )
        price = units + nanos_raw / 1e9
        if price < 0:
            raise BadPayload(
                f"page {page}: negative price {price}", source=source, field=money_where
            )
        return price * _UNIT_HOURS[unit]

    def _compose(
        self, machine: _Machine, region: str, market: Market, card: _RateCard
    ) -> float | None:
        family = machine.family
        parts: list[tuple[_Component, float]] = [
            (_Component("core", family), machine.vcpus),
            (_Component("ram", family), machine.memory_gib),
            (_Component("gpu", machine.accelerator_type), machine.accelerator_count),
        ]
        if machine.local_ssd_gib:
            own = _Component("local_ssd", family)
            ssd = own if card.has(own, market, region) else _Component("local_ssd", "")
            parts.append((ssd, machine.local_ssd_gib))
        total = 0.0
        for component, quantity in parts:
            unit_price = card.price(component, market, region)
            if unit_price is None:
                self._log.debug(
                    "gcp price left out: SKU missing or ambiguous",
                    machine_type=machine.name,
                    region=region,
                    market=market.value,
                    component=f"{component.kind}:{component.key}",
                    candidates=len(card.rates.get((component, market, region), {})),
                )
                return None
            total += quantity * unit_price
        return total


def _retry_after(exc: google_exceptions.GoogleAPICallError) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    return retry_after_seconds(headers.get("Retry-After"))


def _is_rate_limit(exc: google_exceptions.GoogleAPICallError) -> bool:
    reasons = {exc.reason} if exc.reason else set()
    for error in exc.errors or ():
        if isinstance(error, dict) and error.get("reason"):
            reasons.add(str(error["reason"]))
    return bool(reasons & _RATE_LIMIT_REASONS)
