"""Azure market data: retail prices, GPU instance types, availability and quota.

``AzureSource`` implements three ports of :mod:`arbiter.ports`:

* **PriceSource** — ``fetch_prices`` reads the public Azure Retail Prices API (httpx,
  no credentials): ``GET {retail_prices_url}?api-version=2023-01-01-preview&$filter=
  serviceName eq 'Virtual Machines' and armRegionName eq '<region>' and priceType eq
  'Consumption'`` per region (filter values are case-sensitive), following the absolute
  ``NextPageLink`` until it is null. It keeps Linux pay-as-you-go hourly meters of the
  GPU SKUs (``sku_families``, default ``Standard_N[CDV]*``): ``unitOfMeasure == "1 Hour"``,
  ``type == "Consumption"``, and not Windows, "Low Priority" (legacy Batch), Dedicated
  Host, DevTest, reservation or ``*_Promo`` rows. A meter whose ``skuName`` or
  ``meterName`` ends in ``" Spot"`` is the spot market; the others are on-demand.
  Zero-price meters are dropped (no real offer). If one (region, SKU, market) still has
  several different prices, the row of a primary meter region (``isPrimaryMeterRegion``)
  with the newest ``effectiveStartDate`` wins; a remaining tie takes the highest price,
  so a cost is never understated. Quotes are per region (``zone=None``) and carry
  ``observed_at=now``; ``since`` is ignored — every call returns the current level.
* **InstanceTypeSource** — ``fetch_instance_types`` lists resource SKUs per region with
  azure-mgmt-compute (``resource_skus.list(filter="location eq '<region>'")``) and maps
  the GPU ``virtualMachines`` SKUs to :class:`InstanceType` (``vCPUs``, ``MemoryGB``,
  ``GPUs`` capabilities; the GPU model from the SKU name, see :func:`gpu_model`).
  Partitioned sizes (e.g. ``NV6ads_A10_v5`` = 1/6 of an A10) get a fractional count.
  A GPU SKU whose model cannot be named is left out rather than mislabelled.
* **CapacitySource** — ``fetch_capacity`` turns the same SKUs and ``usage.list(region)``
  into signals: ``available`` = 0 for the region when a ``Location`` restriction applies
  to the subscription (reason ``NotAvailableForSubscription`` or ``QuotaId``), else 1;
  plus ``available`` = 0 per zone named by a ``Zone`` restriction. ``quota_gpus_free``
  per instance type = whole VMs that fit in the remaining vCPU quota of the SKU's
  family (capped by the regional ``cores`` quota) × GPUs per VM. Azure quotas are in
  vCPUs and vCPUs per GPU differ within a family (NC4as_T4_v3 4, NC64as_T4_v3 16), so
  the conversion is only honest per instance type. The regional Spot quota
  (``lowPriorityCores``) is reported the same way as ``quota_spot_gpus_free``.

Instance types and capacity need ``subscription_id`` and ``credential = "default"``
(azure-identity ``DefaultAzureCredential``: environment service principal, workload or
managed identity, ``az login``...). With ``credential = "none"`` or no subscription they
return empty lists and make no call.

Permissions (RBAC) of the identity on the subscription: ``Microsoft.Compute/skus/read``
and ``Microsoft.Compute/locations/usages/read`` (the built-in Reader role has both). The
Retail Prices API is public and needs none.

Errors, translated at this boundary (``raise ... from``): HTTP 429 → Throttled (with
``Retry-After``); 5xx, timeouts and connection failures → Unavailable; 401/403 and
missing or refused credentials → AuthFailed; bodies that are not JSON, malformed items
(named, e.g. ``Items[17].retailPrice``) and other 4xx → BadPayload — a fetch is
rejected whole, never partial. SDK retries are off (``retry_total=0``): the poller
retries temporary errors itself. The SDK's Bearer-over-http check is relaxed only for
a loopback ``arm_endpoint`` (a local fake); any other endpoint must be https.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.core.rest import HttpRequest, HttpResponse
from pydantic import Field, ValidationError, field_validator

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
from arbiter.errors import AuthFailed, BadPayload, ConfigError, Throttled, Unavailable
from providers.http import USER_AGENT, get_json, make_client, retry_after_seconds
from providers.options import LOOPBACK_HOSTS, SourceOptions

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.mgmt.compute import ComputeManagementClient

RETAIL_API_VERSION = "2023-01-01-preview"
DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
DEFAULT_RETAIL_PRICES_URL = "https://prices.azure.com/api/retail/prices"
GPU_SKU_FAMILIES = ("Standard_N[CDV]*",)
MAX_PRICE_PAGES = 500
"""A region has a few thousand VM meters (1,000 per page); more pages means a loop."""

_UNAVAILABLE_REASONS = frozenset({"notavailableforsubscription", "quotaid"})
_HOW_TO_AUTHENTICATE = (
    "provide Azure credentials for DefaultAzureCredential: AZURE_TENANT_ID, "
    "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or AZURE_CLIENT_CERTIFICATE_PATH) for a "
    "service principal, a workload or managed identity, or `az login`; or set "
    'credential = "none" to fetch prices only'
)


# -- options ---------------------------------------------------------------------


class AzureOptions(SourceOptions):
    """``[sources.NAME.options]`` of an ``kind = "azure"`` source. Unknown keys are errors."""

    regions: Annotated[tuple[str, ...], Field(min_length=1)]
    """ARM region names, e.g. ``westeurope``."""
    subscription_id: str | None = None
    """Needed only for instance types and capacity (resource SKUs and usages)."""
    arm_endpoint: str = DEFAULT_ARM_ENDPOINT
    retail_prices_url: str = DEFAULT_RETAIL_PRICES_URL
    sku_families: Annotated[tuple[str, ...], Field(min_length=1)] = GPU_SKU_FAMILIES
    """Shell-style patterns of ARM SKU names (case-sensitive)."""
    credential: Literal["default", "none"] = "default"
    """``default``: azure-identity DefaultAzureCredential; ``none``: prices only."""

    @field_validator("regions")
    @classmethod
    def _arm_region_names(cls, regions: tuple[str, ...]) -> tuple[str, ...]:
        for region in regions:
            if not re.fullmatch(r"[a-z][a-z0-9]*", region):
                raise ValueError(
                    f"{region!r} is not an ARM region name (lowercase, no spaces, "
                    "e.g. 'westeurope')"
                )
        if len(set(regions)) != len(regions):
            raise ValueError("a region is listed twice")
        return regions

    @field_validator("subscription_id")
    @classmethod
    def _guid(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(
            r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", value
        ):
            raise ValueError(
                "expected a subscription GUID like 00000000-0000-0000-0000-000000000000"
            )
        return value

    @field_validator("arm_endpoint", "retail_prices_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError(f"expected an https:// URL, got {value!r}")
        if url.scheme == "http" and url.hostname not in LOOPBACK_HOSTS:
            raise ValueError("plain http is allowed only for a loopback test server; use https")
        if url.query or url.fragment:
            raise ValueError("the URL must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("sku_families")
    @classmethod
    def _patterns(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        if any(not p.strip() for p in patterns):
            raise ValueError("a SKU family pattern is empty")
        return patterns


def build(name: str, options: Mapping[str, Any], *, timeout: float) -> AzureSource:
    """The registry factory: validate ``options`` and return an ``AzureSource``.

    Makes no network call and reads no credential. Raises ConfigError naming
    ``sources.<name>.options`` and the key.
    """
    where = f"sources.{name}.options"
    parsed = AzureOptions.parse(name, options)
    explicit = "credential" in parsed.model_fields_set
    if explicit and parsed.credential == "default" and parsed.subscription_id is None:
        raise ConfigError(
            'required when credential = "default" (instance types and capacity are '
            'per subscription); set credential = "none" for prices only',
            source=where,
            key="subscription_id",
        )
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(
            f"must be > 0 seconds, got {timeout!r}", source=f"sources.{name}", key="timeout"
        )
    return AzureSource(name, parsed, timeout=timeout)


# -- GPU models --------------------------------------------------------------------

# (pattern on the ARM SKU name, vendor model, memory per GPU in GiB or None for the
# canonical size). Ordered: the first match wins. Legacy sizes do not name their GPU.
_GPU_MODELS: tuple[tuple[re.Pattern[str], str, float | None], ...] = tuple(
    (re.compile(pattern), model, memory)
    for pattern, model, memory in (
        (r"_GB200_", "GB200", None),
        (r"_B200_", "B200", None),
        (r"_H200_", "H200", None),
        (r"^Standard_NCC?\d+adi?s_H100_v5$", "H100-NVL", None),  # NC(C)ads H100 v5: 94 GB
        (r"_H100_", "H100", None),
        (r"^Standard_NC\d+ads_A100_v4$", "A100", 80),
        (r"^Standard_ND\d+ams?r?_A100_v4$", "A100", 80),  # "m": the 80 GB ND A100 v4
        (r"_A100_", "A100", 40),
        (r"_MI300X_", "MI300X", None),
        (r"_A10_", "A10", None),
        (r"_T4_", "T4", None),
        (r"_V710_", "V710", None),
        (r"_V620_", "V620", None),
        (r"^Standard_NV\d+as_v4$", "MI25", None),
        (r"^Standard_NV\d+(s_v3)?$", "M60", None),
        (r"^Standard_ND40rs_v2$", "V100", 32),
        (r"^Standard_NC\d+r?s_v3$", "V100", 16),
        (r"^Standard_NC\d+r?s_v2$", "P100", None),
        (r"^Standard_ND\d+r?s$", "P40", None),
        (r"^Standard_NC\d+r?$", "K80", None),
    )
)

# Sizes that get a share of one GPU (Microsoft Learn size pages); the SKU API reports
# a whole GPU for them, which would overstate the count sixfold for NV6ads_A10_v5.
_GPU_FRACTIONS: dict[str, float] = {
    "Standard_NV6ads_A10_v5": 1 / 6,
    "Standard_NV12ads_A10_v5": 1 / 3,
    "Standard_NV18ads_A10_v5": 1 / 2,
    "Standard_NV4ads_V710_v5": 1 / 6,
    "Standard_NV8ads_V710_v5": 1 / 3,
    "Standard_NV12ads_V710_v5": 1 / 2,
    "Standard_NV4as_v4": 1 / 8,
    "Standard_NV8as_v4": 1 / 4,
    "Standard_NV16as_v4": 1 / 2,
    "Standard_NG8ads_V620_v1": 1 / 4,
    "Standard_NG16ads_V620_v1": 1 / 2,
}


def gpu_model(sku_name: str) -> tuple[str, float | None] | None:
    """The canonical GPU model of an ARM SKU name and its memory per GPU, or None.

    ``Standard_NC24ads_A100_v4`` → ``("A100-80GB", 80)``; ``Standard_NC4as_T4_v3`` →
    ``("T4", 16)``; ``Standard_D4s_v3`` → None.
    """
    for pattern, model, memory in _GPU_MODELS:
        if pattern.search(sku_name):
            name = canonical_accelerator(model, memory)
            if name is None:
                return None
            return name, memory if memory is not None else CANONICAL.get(name)
    return None


# -- the source ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Sku:
    """A GPU virtual-machine SKU of one region, as far as arbiter needs it."""

    instance_type: InstanceType
    family: str
    location_restricted: bool
    restricted_zones: tuple[str, ...]


@dataclass(frozen=True)
class _Meter:
    region: str
    sku: str
    market: Market
    price: float
    effective: datetime | None
    primary: bool


class AzureSource:
    """Prices (Retail Prices API), instance types and capacity (ARM) for Azure.

    ``credential`` may be any azure-core ``TokenCredential`` (tests and embedders);
    when None and ``options.credential == "default"`` a ``DefaultAzureCredential`` is
    created on first use and closed by :meth:`close`.
    """

    def __init__(
        self,
        name: str,
        options: AzureOptions,
        *,
        timeout: float,
        credential: TokenCredential | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self._timeout = timeout
        self._credential = credential
        self._owns_credential = credential is None

    def close(self) -> None:
        """Release the credential this source created (its token cache and sessions)."""
        if self._owns_credential and self._credential is not None:
            close = getattr(self._credential, "close", None)
            if callable(close):
                close()
            self._credential = None

    # -- PriceSource ---------------------------------------------------------------

    def fetch_prices(self, *, since: datetime | None, now: datetime) -> list[PriceQuote]:
        quotes: list[PriceQuote] = []
        with make_client(self.options.retail_prices_url, timeout=self._timeout) as client:
            for region in self.options.regions:
                meters = list(self._retail_meters(client, region))
                for (sku, market), chosen in sorted(_choose_prices(meters).items()):
                    try:
                        offer = Offer(
                            provider=Provider.AZURE,
                            region=region,
                            zone=None,
                            instance_type=sku,
                            market=market,
                        )
                        quote = PriceQuote(
                            offer=offer, usd_per_hour=chosen, observed_at=now, source=self.name
                        )
                    except ValidationError as exc:
                        raise BadPayload(
                            f"{region}: not a valid offer: {exc.errors()[0]['msg']}",
                            source=self.name,
                            field=f"armSkuName {sku!r}",
                        ) from exc
                    quotes.append(quote)
        return quotes

    def _retail_meters(self, client: httpx.Client, region: str) -> Iterator[_Meter]:
        """The kept meters of every page for ``region``; every item is validated."""
        url = self.options.retail_prices_url
        params: dict[str, str] | None = {
            "api-version": RETAIL_API_VERSION,
            "$filter": (
                f"serviceName eq 'Virtual Machines' and armRegionName eq '{region}' "
                "and priceType eq 'Consumption'"
            ),
        }
        for _page in range(MAX_PRICE_PAGES):
            body = get_json(client, url, source=self.name, params=params)
            if not isinstance(body, dict):
                raise BadPayload(f"{region}: expected a JSON object", source=self.name)
            items = body.get("Items")
            if not isinstance(items, list):
                raise BadPayload(
                    f"{region}: missing or not a list", source=self.name, field="Items"
                )
            for index, item in enumerate(items):
                meter = self._meter(item, f"Items[{index}]", region)
                if meter is not None:
                    yield meter
            next_link = body.get("NextPageLink")
            if next_link is None:
                return
            if not isinstance(next_link, str) or not _same_origin(
                next_link, self.options.retail_prices_url
            ):
                raise BadPayload(
                    f"{region}: expected null or a link on {self.options.retail_prices_url}, "
                    f"got {next_link!r}",
                    source=self.name,
                    field="NextPageLink",
                )
            url, params = next_link, None
        raise BadPayload(
            f"{region}: more than {MAX_PRICE_PAGES} pages", source=self.name, field="NextPageLink"
        )

    def _meter(self, item: Any, where: str, region: str) -> _Meter | None:
        if not isinstance(item, dict):
            raise BadPayload("expected an object", source=self.name, field=where)
        sku = self._text(item, "armSkuName", where)
        price = item.get("retailPrice")
        if price is None:
            raise BadPayload("missing", source=self.name, field=f"{where}.retailPrice")
        if isinstance(price, bool) or not isinstance(price, int | float):
            raise BadPayload(
                f"expected a number, got {price!r}", source=self.name, field=f"{where}.retailPrice"
            )
        if not math.isfinite(price) or price < 0:
            raise BadPayload(
                f"expected a finite price ≥ 0, got {price!r}",
                source=self.name,
                field=f"{where}.retailPrice",
            )
        if not self._wanted_sku(sku):
            return None
        fields = {
            key: self._text(item, key, where)
            for key in (
                "armRegionName",
                "currencyCode",
                "type",
                "unitOfMeasure",
                "productName",
                "meterName",
                "skuName",
            )
        }
        if fields["armRegionName"] != region:
            raise BadPayload(
                f"asked for {region!r}, got {fields['armRegionName']!r}",
                source=self.name,
                field=f"{where}.armRegionName",
            )
        if fields["currencyCode"] != "USD":
            raise BadPayload(
                f"expected USD, got {fields['currencyCode']!r}",
                source=self.name,
                field=f"{where}.currencyCode",
            )
        product, meter, sku_name = fields["productName"], fields["meterName"], fields["skuName"]
        if (
            fields["type"] != "Consumption"  # Reservation, DevTestConsumption
            or fields["unitOfMeasure"] != "1 Hour"
            or "Windows" in product
            or "Dedicated Host" in product
            or "DevTest" in product
            or "Low Priority" in meter
            or "Low Priority" in sku_name
            or item.get("reservationTerm")
            or price == 0
        ):
            return None
        spot = sku_name.endswith(" Spot") or meter.endswith(" Spot")
        primary = item.get("isPrimaryMeterRegion", False)
        if not isinstance(primary, bool):
            raise BadPayload(
                f"expected true or false, got {primary!r}",
                source=self.name,
                field=f"{where}.isPrimaryMeterRegion",
            )
        return _Meter(
            region=region,
            sku=sku,
            market=Market.SPOT if spot else Market.ON_DEMAND,
            price=float(price),
            effective=self._effective_date(item, where),
            primary=primary,
        )

    def _effective_date(self, item: dict[str, Any], where: str) -> datetime | None:
        value = item.get("effectiveStartDate")
        if value is None:
            return None
        try:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise BadPayload(
                f"expected an ISO 8601 time with a zone, got {value!r}",
                source=self.name,
                field=f"{where}.effectiveStartDate",
            )
        return when

    def _text(self, item: dict[str, Any], key: str, where: str) -> str:
        value = item.get(key)
        if value is None:
            raise BadPayload("missing", source=self.name, field=f"{where}.{key}")
        if not isinstance(value, str):
            raise BadPayload(
                f"expected a string, got {type(value).__name__}",
                source=self.name,
                field=f"{where}.{key}",
            )
        return value

    def _wanted_sku(self, sku: str) -> bool:
        return not sku.endswith("_Promo") and any(
            fnmatch.fnmatchcase(sku, pattern) for pattern in self.options.sku_families
        )

    # -- InstanceTypeSource and CapacitySource ----------------------------------------

    @property
    def uses_arm(self) -> bool:
        """Whether instance types and capacity are fetched (subscription and credential)."""
        return self.options.subscription_id is not None and self.options.credential != "none"

    def fetch_instance_types(self) -> list[InstanceType]:
        if not self.uses_arm:
            return []
        found: dict[str, InstanceType] = {}
        with self._arm_client() as client:
            for region in self.options.regions:
                for sku in self._gpu_skus(client, region):
                    found.setdefault(sku.instance_type.name, sku.instance_type)
        return [found[name] for name in sorted(found)]

    def fetch_capacity(self, *, now: datetime) -> list[CapacitySignal]:
        if not self.uses_arm:
            return []
        signals: list[CapacitySignal] = []
        with self._arm_client() as client:
            for region in self.options.regions:
                skus = self._gpu_skus(client, region)
                free_vcpus = self._free_vcpus(client, region)
                signals.extend(self._signals(region, skus, free_vcpus, now))
        return signals

    def _signals(
        self, region: str, skus: Sequence[_Sku], free_vcpus: Mapping[str, float], now: datetime
    ) -> Iterator[CapacitySignal]:
        def signal(
            kind: CapacityKind, value: float, sku: _Sku, zone: str | None = None
        ) -> CapacitySignal:
            return CapacitySignal(
                provider=Provider.AZURE,
                region=region,
                zone=zone,
                instance_type=sku.instance_type.name,
                kind=kind,
                value=value,
                observed_at=now,
                source=self.name,
            )

        regional = free_vcpus.get("cores")
        for sku in skus:
            yield signal(CapacityKind.AVAILABLE, 0 if sku.location_restricted else 1, sku)
            if not sku.location_restricted:
                for zone in sku.restricted_zones:
                    yield signal(CapacityKind.AVAILABLE, 0, sku, zone)
            family = free_vcpus.get(sku.family.lower())
            if family is not None:
                free = family if regional is None else min(family, regional)
                yield signal(
                    CapacityKind.QUOTA_GPUS_FREE, gpus_within(free, sku.instance_type), sku
                )
            spot = free_vcpus.get("lowprioritycores")
            if spot is not None:
                yield signal(
                    CapacityKind.QUOTA_SPOT_GPUS_FREE, gpus_within(spot, sku.instance_type), sku
                )

    @contextmanager
    def _arm_client(self) -> Iterator[ComputeManagementClient]:
        from azure.mgmt.compute import ComputeManagementClient

        assert self.options.subscription_id is not None
        credential = self._token_credential()
        endpoint = urlsplit(self.options.arm_endpoint)
        scope = f"{DEFAULT_ARM_ENDPOINT}/.default"
        kwargs: dict[str, Any] = {}
        if endpoint.hostname in LOOPBACK_HOSTS:
            # A local fake over http: azure-core refuses to send a Bearer token to a
            # non-https URL, so swap ARM's auth policy for one that allows it. Options
            # validation makes every non-loopback endpoint https.
            kwargs["authentication_policy"] = _LoopbackBearerPolicy(credential, scope)
        else:
            scope = f"{endpoint.scheme}://{endpoint.netloc}/.default"  # sovereign clouds
        client = ComputeManagementClient(
            credential,
            self.options.subscription_id,
            base_url=self.options.arm_endpoint,
            credential_scopes=[scope],
            polling_interval=0,
            retry_total=0,
            connection_timeout=self._timeout,
            read_timeout=self._timeout,
            user_agent=USER_AGENT,
            **kwargs,
        )
        with client:
            yield client

    def _token_credential(self) -> TokenCredential:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    def _gpu_skus(self, client: ComputeManagementClient, region: str) -> list[_Sku]:
        where = f"resourceSkus({region})"
        with _translate_azure_errors(self.name, where, self.options.arm_endpoint):
            items = list(client.resource_skus.list(filter=f"location eq '{region}'"))
        skus = []
        for index, item in enumerate(items):
            here = f"{where}.value[{index}]"
            sku = self._gpu_sku(_wire(item, here, self.name), here, region)
            if sku is not None:
                skus.append(sku)
        return skus

    def _gpu_sku(self, item: dict[str, Any], where: str, region: str) -> _Sku | None:
        if item.get("resourceType") != "virtualMachines":
            return None
        name = item.get("name")
        if not isinstance(name, str):
            raise BadPayload("missing or not a string", source=self.name, field=f"{where}.name")
        if not self._wanted_sku(name):
            return None
        locations = item.get("locations") or []
        if not isinstance(locations, list):
            raise BadPayload("expected a list", source=self.name, field=f"{where}.locations")
        if locations and region not in {str(loc).lower() for loc in locations}:
            return None
        capabilities = self._capabilities(item, where)
        gpus = capabilities.get("GPUs", 0.0)
        if gpus <= 0:
            return None
        model = gpu_model(name)
        if model is None:
            return None  # a GPU we cannot name: leave it out rather than mislabel it
        for needed in ("vCPUs", "MemoryGB"):
            if needed not in capabilities:
                raise BadPayload(
                    "missing", source=self.name, field=f"{where}.capabilities.{needed}"
                )
        try:
            instance_type = InstanceType(
                provider=Provider.AZURE,
                name=name,
                vcpus=int(capabilities["vCPUs"]),
                memory_gib=capabilities["MemoryGB"],
                accelerator=model[0],
                accelerator_count=_GPU_FRACTIONS.get(name, gpus),
                accelerator_memory_gib=model[1],
            )
        except ValidationError as exc:
            raise BadPayload(
                f"not a valid instance type: {exc.errors()[0]['msg']}",
                source=self.name,
                field=f"{where}.capabilities",
            ) from exc
        family = item.get("family")
        if not isinstance(family, str) or not family:
            raise BadPayload("missing", source=self.name, field=f"{where}.family")
        location_restricted, zones = self._restrictions(item, where, region)
        return _Sku(instance_type, family, location_restricted, zones)

    def _capabilities(self, item: dict[str, Any], where: str) -> dict[str, float]:
        raw = item.get("capabilities") or []
        if not isinstance(raw, list):
            raise BadPayload("expected a list", source=self.name, field=f"{where}.capabilities")
        found: dict[str, float] = {}
        for entry in raw:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise BadPayload(
                    "expected {name, value} objects",
                    source=self.name,
                    field=f"{where}.capabilities",
                )
            if entry["name"] not in ("GPUs", "vCPUs", "MemoryGB"):
                continue
            try:
                value = float(entry.get("value"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value) or value < 0:
                raise BadPayload(
                    f"expected a number, got {entry.get('value')!r}",
                    source=self.name,
                    field=f"{where}.capabilities.{entry['name']}",
                )
            found[entry["name"]] = value
        return found

    def _restrictions(
        self, item: dict[str, Any], where: str, region: str
    ) -> tuple[bool, tuple[str, ...]]:
        """(the SKU is restricted in the whole region, the zones it is restricted in)."""
        raw = item.get("restrictions") or []
        if not isinstance(raw, list):
            raise BadPayload("expected a list", source=self.name, field=f"{where}.restrictions")
        location, zones = False, set[str]()
        for index, restriction in enumerate(raw):
            here = f"{where}.restrictions[{index}]"
            if not isinstance(restriction, dict):
                raise BadPayload("expected an object", source=self.name, field=here)
            if str(restriction.get("reasonCode", "")).lower() not in _UNAVAILABLE_REASONS:
                continue
            info = restriction.get("restrictionInfo") or {}
            if not isinstance(info, dict):
                raise BadPayload(
                    "expected an object", source=self.name, field=f"{here}.restrictionInfo"
                )
            places = info.get("locations") or restriction.get("values") or []
            if region not in {str(place).lower() for place in places}:
                continue
            kind = str(restriction.get("type", "")).lower()
            if kind == "location":
                location = True
            elif kind == "zone":
                zones.update(str(zone) for zone in info.get("zones") or [])
        return location, tuple(sorted(zones))

    def _free_vcpus(self, client: ComputeManagementClient, region: str) -> dict[str, float]:
        """Remaining vCPU quota per usage name (lowercase): families, ``cores``..."""
        where = f"usages({region})"
        with _translate_azure_errors(self.name, where, self.options.arm_endpoint):
            items = list(client.usage.list(region))
        free: dict[str, float] = {}
        for index, raw in enumerate(items):
            here = f"{where}.value[{index}]"
            item = _wire(raw, here, self.name)
            name = item.get("name")
            value = name.get("value") if isinstance(name, dict) else None
            if not isinstance(value, str):
                raise BadPayload("missing", source=self.name, field=f"{here}.name.value")
            numbers = []
            for key in ("currentValue", "limit"):
                number = item.get(key)
                if isinstance(number, bool) or not isinstance(number, int | float):
                    raise BadPayload(
                        f"expected a number, got {number!r}",
                        source=self.name,
                        field=f"{here}.{key}",
                    )
                numbers.append(float(number))
            current, limit = numbers
            free[value.lower()] = max(0.0, limit - current)
        return free


def gpus_within(free_vcpus: float, instance_type: InstanceType) -> float:
    """GPUs of ``instance_type`` obtainable within ``free_vcpus``: whole VMs × GPUs per VM."""
    vms = math.floor(max(0.0, free_vcpus) / instance_type.vcpus)
    return vms * instance_type.accelerator_count


def _choose_prices(meters: Iterable[_Meter]) -> dict[tuple[str, Market], float]:
    """One price per (SKU, market): see the module docstring for the rule."""
    grouped: dict[tuple[str, Market], list[_Meter]] = {}
    for meter in meters:
        grouped.setdefault((meter.sku, meter.market), []).append(meter)

    def rank(meter: _Meter) -> tuple[bool, float, float]:
        newest = meter.effective.timestamp() if meter.effective else -math.inf
        return meter.primary, newest, meter.price

    return {key: max(candidates, key=rank).price for key, candidates in grouped.items()}


def _same_origin(link: str, base: str) -> bool:
    def origin(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        default = {"https": 443, "http": 80}.get(parts.scheme)
        return parts.scheme, (parts.hostname or "").lower(), parts.port or default

    try:
        return origin(link) == origin(base)
    except ValueError:  # a malformed port
        return False


def _wire(item: Any, where: str, source: str) -> dict[str, Any]:
    """The wire-format JSON object of an SDK model (39.x models are mappings over it).

    Reading the wire keys, not the model attributes, lets this module validate and
    name every field itself: the models deserialize lazily and pass bad shapes through.
    """
    if not isinstance(item, Mapping):
        raise BadPayload(
            f"expected an object, got {type(item).__name__}", source=source, field=where
        )
    return _plain(item)  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    """Nested SDK models (mappings over their JSON) → plain dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


class _LoopbackBearerPolicy(BearerTokenCredentialPolicy[HttpRequest, HttpResponse]):
    """Bearer auth that may travel over http — used only for a loopback ``arm_endpoint``."""

    def on_request(self, request: Any) -> None:
        request.context["enforce_https"] = False
        super().on_request(request)


@contextmanager
def _translate_azure_errors(source: str, doing: str, arm_endpoint: str) -> Iterator[None]:
    """azure-core and azure-identity errors → arbiter's ProviderError subclasses."""
    try:
        yield
    except ClientAuthenticationError as exc:
        request = getattr(exc.response, "request", None)
        if request is not None and _same_origin(str(request.url), arm_endpoint):
            raise AuthFailed(
                f"{doing}: ARM refused the credentials (HTTP {exc.status_code}): "
                f"{_first_line(exc)}",
                source=source,
            ) from exc
        raise AuthFailed(
            f"{doing}: could not get an Azure token ({_first_line(exc)}); {_HOW_TO_AUTHENTICATE}",
            source=source,
        ) from exc
    except HttpResponseError as exc:
        status = exc.status_code or 0
        detail = f"{doing}: HTTP {status}: {_first_line(exc)}"
        if isinstance(exc, DecodeError) and 200 <= status < 300:
            raise BadPayload(f"{doing}: body is not JSON", source=source) from exc
        if status == 429:
            headers = getattr(exc.response, "headers", None) or {}
            raise Throttled(
                f"{doing}: throttled",
                source=source,
                retry_after=retry_after_seconds(headers.get("Retry-After")),
            ) from exc
        if status in (401, 403):
            raise AuthFailed(
                f"{detail} (the identity needs Microsoft.Compute/skus/read and "
                "Microsoft.Compute/locations/usages/read on the subscription)",
                source=source,
            ) from exc
        if status >= 500:
            raise Unavailable(detail, source=source) from exc
        raise BadPayload(detail, source=source) from exc
    except (ServiceRequestTimeoutError, ServiceResponseTimeoutError) as exc:
        raise Unavailable(f"{doing}: timed out: {_first_line(exc)}", source=source) from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise Unavailable(f"{doing}: connection failed: {_first_line(exc)}", source=source) from exc
    except DeserializationError as exc:
        raise BadPayload(f"{doing}: malformed response: {exc}", source=source) from exc
    except AzureError as exc:
        raise Unavailable(
            f"{doing}: {type(exc).__name__}: {_first_line(exc)}", source=source
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
