"""AWS market data: spot and on-demand prices, capacity signals and GPU instance types.

:class:`AwsSource` implements three ports of :mod:`arbiter.ports` — ``PriceSource``,
``CapacitySource`` and ``InstanceTypeSource`` — for the regions named in its options.
Like every source it returns complete, validated domain values or raises one of
``Throttled``, ``Unavailable``, ``AuthFailed`` or ``BadPayload`` (translated at this
boundary with ``raise ... from exc``; botocore and httpx types never leak out). A
malformed row fails the whole fetch: nothing partial is returned. The clock is never
read: the caller passes ``now``.

Calls made, and the IAM actions they need
-----------------------------------------

* ``fetch_instance_types()`` — ``ec2:DescribeInstanceTypes`` in each region (paginated).
  Types with ``GpuInfo``, ``NeuronInfo`` (Trainium, Inferentia) or
  ``InferenceAcceleratorInfo`` become :class:`InstanceType` values; an accelerator that
  :func:`canonical_accelerator` does not know is skipped with a warning. Without the
  ``instance_types`` option the GPU types found here (cached on the source) are the
  types that prices and capacity are asked for.
* ``fetch_prices(since, now)`` —

  - spot: ``ec2:DescribeSpotPriceHistory`` per region, ``Linux/UNIX``, instance types in
    batches, ``StartTime=since`` (or ``now`` when ``since`` is None, which makes AWS
    return the price in force at ``now`` for every type and zone). Each row is a quote
    on its zone (``AvailabilityZoneId``, else ``AvailabilityZone``) at the time AWS
    gives for it.
  - on-demand: ``pricing:GetProducts`` (AmazonEC2; Linux, shared tenancy, no
    pre-installed software, capacity status Used, no licence; paginated). Each product
    must have exactly one on-demand price dimension, in USD per hour. Quotes have no
    zone and are observed at ``now``. Capacity-Block products are left out.

    **Fallback.** When the Pricing API refuses the credentials (``AuthFailed``) or
    cannot be reached or is failing (``Unavailable``), the on-demand prices of that
    region are read from the public bulk price-list file
    ``{pricing_bulk_url}/offers/v1.0/aws/AmazonEC2/current/{region}/index.json`` with
    the same filters, and a warning is logged. Throttling and malformed answers are
    *not* papered over: they raise. The bulk file is large (hundreds of MB for a big
    region) and is read whole into memory, so the Pricing API is the normal path.
    On-demand prices are never derived from the Spot Advisor's savings figure: that
    figure is itself computed from the on-demand price.
* ``fetch_capacity(now)`` —

  - ``ec2:GetSpotPlacementScores`` (unless ``placement_scores = false``): one request
    per region for *all* the source's types together, ``TargetCapacity=1``,
    ``SingleAvailabilityZone=True``. AWS scores the request as a whole — how likely a
    one-instance request that may use *any* of these types is to succeed in each
    zone — so each score becomes one ``placement_score`` signal per zone with
    ``instance_type=None``; it is not claimed for any single type. (Asking per type
    would give a per-type score, but AWS answers requests with fewer than three types
    with a low score regardless of capacity.) One region per request because AWS
    returns only the ten best zones of a request.
  - the public Spot Advisor JSON (no credentials) over HTTPS: for each configured
    region and each of the source's types listed under ``spot_advisor[region]["Linux"]``
    an ``interruption_bucket`` signal with ``value = r`` (0 ``<5%`` … 4 ``>20%``), per
    region and type, observed at ``now``.

Minimum IAM policy: ``ec2:DescribeInstanceTypes``, ``ec2:DescribeSpotPriceHistory``,
``ec2:GetSpotPlacementScores`` (only with placement scores on) and
``pricing:GetProducts`` (optional: the bulk file is used without it). See
``docs/sources/aws.md``.

Errors
------

Clients are built with ``retries={"total_max_attempts": 1, "mode": "standard"}``: the
poller retries temporary errors itself with backoff, so botocore must not retry as
well. (Not ``max_attempts``: in a botocore ``Config`` that key counts *retries*, so
``max_attempts=1`` still sends every failed request twice.)

* ``RequestLimitExceeded``, ``Throttling``, ``ThrottlingException`` (or HTTP 429) →
  ``Throttled`` (with ``Retry-After`` seconds when AWS sends one);
* HTTP 5xx, ``ServiceUnavailable``, ``InternalError``, connection failures, connect and
  read timeouts, and unparseable (HTML) error pages → ``Unavailable``;
* ``AuthFailure``, ``UnauthorizedOperation``, ``AccessDenied*``, ``InvalidClientTokenId``,
  ``SignatureDoesNotMatch``, ``ExpiredToken``, and missing or partial credentials →
  ``AuthFailed``, with what to do about it;
* a malformed row, or any other rejected request → ``BadPayload`` naming the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import Annotated, Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from botocore.parsers import ResponseParserError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
)

from arbiter.domain.accelerators import canonical_accelerator
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
from providers import aws_clients
from providers.http import get_json, make_client, require, retry_after_seconds
from providers.options import (
    SourceOptions,
    check_timeout,
    https_url,
)

DEFAULT_SPOT_ADVISOR_URL = "https://spot-bid-advisor.s3.amazonaws.com/spot-advisor-data.json"
DEFAULT_PRICING_BULK_URL = "https://pricing.us-east-1.amazonaws.com"
PRICING_API_REGIONS = ("us-east-1", "eu-central-1", "ap-south-1")
"""The regions that have a Pricing API endpoint (each serves the prices of every region)."""

_SPOT_HISTORY_BATCH = 50
"""Instance types per DescribeSpotPriceHistory request. AWS documents no maximum; a
modest batch keeps each request and its pages small."""
_DESCRIBE_FILTER_BATCH = 100
_PAGE_SIZE = 100

_LINUX_ON_DEMAND: dict[str, str] = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "licenseModel": "No License required",
}
"""The price-list attributes of a plain Linux on-demand instance hour."""

_THROTTLING_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestThrottledException",
    }
)
_AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "MissingAuthenticationToken",
        "OptInRequired",
    }
)
_UNAVAILABLE_CODES = frozenset(
    {
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Unavailable",
        "InternalError",
        "InternalFailure",
        "InternalErrorException",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_HOW_TO_GIVE_CREDENTIALS = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary "
    "credentials), or name a profile of ~/.aws/credentials or ~/.aws/config with this "
    "source's `profile` option (or AWS_PROFILE), or run with an IAM role (instance "
    "profile, ECS task role, EKS pod identity)"
)

_REGION_ID = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_INSTANCE_TYPE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\.[a-z0-9-]+$")

_T = TypeVar("_T", bound=BaseModel)


# -- options ---------------------------------------------------------------------


def _comma_separated(value: Any) -> Any:
    """Lists may come from an environment variable as ``"us-east-1,eu-west-1"``."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _region_id(value: str) -> str:
    if not _REGION_ID.match(value):
        raise ValueError(f"not an AWS region id (like 'us-east-1'): {value!r}")
    return value


def _instance_type_name(value: str) -> str:
    if not _INSTANCE_TYPE_NAME.match(value):
        raise ValueError(f"not an EC2 instance type (like 'g5.xlarge'): {value!r}")
    return value


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    duplicates = sorted({value for value in values if values.count(value) > 1})
    if duplicates:
        raise ValueError(f"listed more than once: {', '.join(duplicates)}")
    return values


def _pricing_region(value: str) -> str:
    if value not in PRICING_API_REGIONS:
        raise ValueError(
            f"the Pricing API has endpoints only in {', '.join(PRICING_API_REGIONS)}; got {value!r}"
        )
    return value


RegionIdStr = Annotated[str, AfterValidator(_region_id)]
InstanceTypeStr = Annotated[str, AfterValidator(_instance_type_name)]
HttpUrlStr = Annotated[str, AfterValidator(https_url)]


class AwsOptions(SourceOptions):
    """``[sources.NAME.options]`` of a source of kind ``aws``. Unknown keys are errors."""

    regions: Annotated[
        tuple[RegionIdStr, ...],
        BeforeValidator(_comma_separated),
        Field(min_length=1),
        AfterValidator(_unique),
    ]
    """AWS region ids to price and score, e.g. ``["us-east-1", "eu-west-1"]``."""
    instance_types: (
        Annotated[
            tuple[InstanceTypeStr, ...],
            BeforeValidator(_comma_separated),
            Field(min_length=1),
            AfterValidator(_unique),
        ]
        | None
    ) = None
    """Instance types to follow; default: every GPU/accelerator type AWS describes."""
    endpoint_url: HttpUrlStr | None = None
    """EC2 endpoint for every region (a proxy, a VPC endpoint, or a local fake)."""
    pricing_endpoint_url: HttpUrlStr | None = None
    """Pricing API endpoint; default: the one of ``pricing_region``."""
    pricing_region: Annotated[str, AfterValidator(_pricing_region)] = "us-east-1"
    pricing_bulk_url: HttpUrlStr = DEFAULT_PRICING_BULK_URL
    """Base URL of the public bulk price-list files (the Pricing API fallback)."""
    spot_advisor_url: HttpUrlStr = DEFAULT_SPOT_ADVISOR_URL
    placement_scores: bool = True
    """Ask for spot placement scores (needs ec2:GetSpotPlacementScores)."""
    profile: Annotated[str, Field(min_length=1)] | None = None
    """A named profile of the shared AWS config; default: the standard credential chain."""


# -- the factory -----------------------------------------------------------------


def build(name: str, options: Mapping[str, Any], *, timeout: float) -> AwsSource:
    """The registry's factory for ``kind = "aws"``; raises ConfigError for bad options."""
    parsed = AwsOptions.parse(name, options)
    check_timeout(name, timeout)
    session = aws_clients.session(parsed.profile, source=f"sources.{name}.options", key="profile")
    return AwsSource(name, parsed, timeout=timeout, session=session)


# -- the source ------------------------------------------------------------------


class AwsSource:
    """Prices, capacity signals and instance types from AWS (see the module docstring).

    Thread-safe: the poller may call the ports from different threads. ``close()``
    releases the clients' connections.
    """

    def __init__(
        self, name: str, options: AwsOptions, *, timeout: float, session: boto3.session.Session
    ) -> None:
        self.name = name
        self.options = options
        self.timeout = timeout
        self._discovered: tuple[str, ...] | None = None
        self._clients = aws_clients.Clients(
            session,
            aws_clients.client_config(connect_timeout=timeout, read_timeout=timeout),
        )

    # -- clients (created lazily and reused) ---------------------------------------

    def ec2_client(self, region: str) -> Any:
        """The EC2 client of ``region`` (one per region, reused)."""
        return self._clients.get("ec2", region, endpoint_url=self.options.endpoint_url)

    def pricing_client(self) -> Any:
        """The Pricing API client (``pricing_region``, or ``pricing_endpoint_url``)."""
        return self._clients.get(
            "pricing",
            self.options.pricing_region,
            endpoint_url=self.options.pricing_endpoint_url,
        )

    def close(self) -> None:
        self._clients.close()

    def __enter__(self) -> AwsSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- InstanceTypeSource --------------------------------------------------------

    def fetch_instance_types(self) -> Sequence[InstanceType]:
        """Accelerator instance types described by AWS in the configured regions."""
        wanted = self.options.instance_types
        found: dict[str, InstanceType] = {}
        seen: set[str] = set()
        unknown: dict[str, list[str]] = {}
        for region in self.options.regions:
            if wanted is not None and seen.issuperset(wanted):
                break
            for item in self._describe_instance_types(region, wanted):
                name = require(
                    item, "InstanceType", source=self.name, where="InstanceTypes[]", kind=str
                )
                if name in seen:
                    continue
                seen.add(name)
                instance_type = self._instance_type(name, item, unknown)
                if instance_type is not None:
                    found[name] = instance_type
                elif wanted is not None and not _has_accelerator(item):
                    self._log.warning(
                        "listed instance type has no accelerator; left out of the catalog",
                        instance_type=name,
                    )
        for accelerator, names in sorted(unknown.items()):
            self._log.warning(
                "unknown accelerator; instance types skipped",
                accelerator=accelerator,
                instance_types=sorted(names),
            )
        for name in sorted(set(wanted or ()) - seen):
            self._log.warning(
                "listed instance type is not described in any configured region",
                instance_type=name,
                regions=list(self.options.regions),
            )
        if wanted is None:
            self._discovered = tuple(sorted(found))
        return [found[name] for name in sorted(found)]

    def _describe_instance_types(
        self, region: str, wanted: tuple[str, ...] | None
    ) -> Iterator[dict[str, Any]]:
        # A filter, not InstanceTypes=: a type not offered in one region is then simply
        # absent instead of failing the whole request with InvalidInstanceType.
        requests = (
            [{}]
            if wanted is None
            else [
                {"Filters": [{"Name": "instance-type", "Values": list(batch)}]}
                for batch in _batches(wanted, _DESCRIBE_FILTER_BATCH)
            ]
        )
        with self._calling("ec2:DescribeInstanceTypes", region):
            paginator = self.ec2_client(region).get_paginator("describe_instance_types")
            for request in requests:
                pages = paginator.paginate(**request, PaginationConfig={"PageSize": _PAGE_SIZE})
                for page in pages:
                    yield from page.get("InstanceTypes", [])

    def _instance_type(
        self, name: str, item: dict[str, Any], unknown: dict[str, list[str]]
    ) -> InstanceType | None:
        """The domain value of one described type; None (noted in ``unknown``) if skipped."""
        where = f"InstanceTypes[{name}]"
        accelerator = _accelerator_of(item, where=where, source=self.name)
        if accelerator is None:
            return None
        vendor_names, count, memory_gib = accelerator
        canonical = (
            canonical_accelerator(vendor_names[0], memory_gib) if len(vendor_names) == 1 else None
        )
        if canonical is None:
            unknown.setdefault(" + ".join(vendor_names), []).append(name)
            return None
        vcpu_info = require(item, "VCpuInfo", source=self.name, where=where, kind=dict)
        memory_info = require(item, "MemoryInfo", source=self.name, where=where, kind=dict)
        vcpus = require(
            vcpu_info, "DefaultVCpus", source=self.name, where=f"{where}.VCpuInfo", kind=int
        )
        memory_mib = require(
            memory_info, "SizeInMiB", source=self.name, where=f"{where}.MemoryInfo", kind=int
        )
        return self._value(
            InstanceType,
            where,
            provider=Provider.AWS,
            name=name,
            vcpus=vcpus,
            memory_gib=memory_mib / 1024,
            accelerator=canonical,
            accelerator_count=count,
            accelerator_memory_gib=memory_gib,
        )

    def _types(self) -> tuple[str, ...]:
        """The instance types prices and capacity are asked for."""
        if self.options.instance_types is not None:
            return self.options.instance_types
        if self._discovered is None:
            self.fetch_instance_types()  # sets self._discovered
        return self._discovered or ()

    # -- PriceSource ----------------------------------------------------------------

    def fetch_prices(self, *, since: datetime | None, now: datetime) -> Sequence[PriceQuote]:
        """Spot quotes (changes since ``since``, or current, each newest one confirmed at
        ``now``) and current on-demand quotes."""
        spot = self.fetch_spot_prices(since=since, now=now)
        return [*spot, *_still_current(spot, now), *self.fetch_on_demand_prices(now=now)]

    def fetch_spot_prices(self, *, since: datetime | None, now: datetime) -> list[PriceQuote]:
        _require_aware(now=now, since=since)
        start = since if since is not None else now
        types = self._types()
        quotes: list[PriceQuote] = []
        for region in self.options.regions:
            with self._calling("ec2:DescribeSpotPriceHistory", region, now=now):
                paginator = self.ec2_client(region).get_paginator("describe_spot_price_history")
                for batch in _batches(types, _SPOT_HISTORY_BATCH):
                    pages = paginator.paginate(
                        InstanceTypes=list(batch),
                        ProductDescriptions=["Linux/UNIX"],
                        StartTime=start,
                    )
                    index = 0
                    for page in pages:
                        for row in page.get("SpotPriceHistory", []):
                            quotes.append(self._spot_quote(region, row, index))
                            index += 1
        return quotes

    def _spot_quote(self, region: str, row: Any, index: int) -> PriceQuote:
        """One history row as a quote observed when AWS says the price changed."""
        where = f"SpotPriceHistory[{index}]"
        instance_type = require(row, "InstanceType", source=self.name, where=where, kind=str)
        zone = row.get("AvailabilityZoneId") or require(
            row, "AvailabilityZone", source=self.name, where=where, kind=str
        )
        price = _usd(
            require(row, "SpotPrice", source=self.name, where=where),
            source=self.name,
            field=f"{where}.SpotPrice",
        )
        timestamp = require(row, "Timestamp", source=self.name, where=where, kind=datetime)
        if timestamp.tzinfo is None:
            raise BadPayload(
                "timestamp has no time zone", source=self.name, field=f"{where}.Timestamp"
            )
        offer = self._value(
            Offer,
            where,
            provider=Provider.AWS,
            region=region,
            zone=zone,
            instance_type=instance_type,
            market=Market.SPOT,
        )
        return self._value(
            PriceQuote,
            where,
            offer=offer,
            usd_per_hour=price,
            observed_at=timestamp,
            source=self.name,
        )

    def fetch_on_demand_prices(self, *, now: datetime) -> list[PriceQuote]:
        _require_aware(now=now)
        types = self._types()
        if not types:
            return []
        quotes: list[PriceQuote] = []
        for region in self.options.regions:
            try:
                prices = self._on_demand_from_pricing_api(region, set(types), now)
            except (AuthFailed, Unavailable) as exc:
                self._log.warning(
                    "Pricing API unusable; reading the public bulk price list instead",
                    region=region,
                    error=str(exc),
                )
                prices = self._on_demand_from_bulk_file(region, set(types))
            for instance_type, price in sorted(prices.items()):
                offer = Offer(
                    provider=Provider.AWS,
                    region=region,
                    zone=None,
                    instance_type=instance_type,
                    market=Market.ON_DEMAND,
                )
                quotes.append(
                    PriceQuote(offer=offer, usd_per_hour=price, observed_at=now, source=self.name)
                )
        return quotes

    def _on_demand_from_pricing_api(
        self, region: str, types: set[str], now: datetime
    ) -> dict[str, float]:
        filters = [
            {"Type": "TERM_MATCH", "Field": field, "Value": value}
            for field, value in (("regionCode", region), *_LINUX_ON_DEMAND.items())
        ]
        prices: dict[str, float] = {}
        with self._calling("pricing:GetProducts", region, now=now):
            paginator = self.pricing_client().get_paginator("get_products")
            pages = paginator.paginate(
                ServiceCode="AmazonEC2",
                FormatVersion="aws_v1",
                Filters=filters,
                PaginationConfig={"PageSize": _PAGE_SIZE},
            )
            index = 0
            for page in pages:
                for item in page.get("PriceList", []):
                    where = f"PriceList[{index}]"
                    index += 1
                    document = _json_document(item, source=self.name, field=where)
                    product = require(document, "product", source=self.name, where=where, kind=dict)
                    attributes = require(
                        product, "attributes", source=self.name, where=f"{where}.product", kind=dict
                    )
                    instance_type = attributes.get("instanceType")
                    if instance_type not in types or not _is_linux_on_demand(attributes, region):
                        continue
                    terms = require(document, "terms", source=self.name, where=where, kind=dict)
                    on_demand = require(
                        terms, "OnDemand", source=self.name, where=f"{where}.terms", kind=dict
                    )
                    price = _hourly_usd(
                        on_demand, source=self.name, where=f"{where}.terms.OnDemand"
                    )
                    self._keep_one(prices, instance_type, price, where=where)
        return prices

    def _on_demand_from_bulk_file(self, region: str, types: set[str]) -> dict[str, float]:
        url = (
            f"{self.options.pricing_bulk_url}/offers/v1.0/aws/AmazonEC2/current/{region}/index.json"
        )
        with make_client("", timeout=self.timeout) as client:
            data = get_json(client, url, source=self.name)
        products = require(data, "products", source=self.name, where="", kind=dict)
        terms = require(data, "terms", source=self.name, where="", kind=dict)
        on_demand = require(terms, "OnDemand", source=self.name, where="terms", kind=dict)
        prices: dict[str, float] = {}
        for sku, product in products.items():
            where = f"products.{sku}"
            attributes = require(product, "attributes", source=self.name, where=where, kind=dict)
            instance_type = attributes.get("instanceType")
            if instance_type not in types or not _is_linux_on_demand(attributes, region):
                continue
            offers = require(on_demand, sku, source=self.name, where="terms.OnDemand", kind=dict)
            price = _hourly_usd(offers, source=self.name, where=f"terms.OnDemand.{sku}")
            self._keep_one(prices, instance_type, price, where=where)
        return prices

    def _keep_one(
        self, prices: dict[str, float], instance_type: str, price: float, *, where: str
    ) -> None:
        if prices.setdefault(instance_type, price) != price:
            raise BadPayload(
                f"two different Linux on-demand prices for {instance_type}: "
                f"{prices[instance_type]} and {price}",
                source=self.name,
                field=where,
            )

    # -- CapacitySource -------------------------------------------------------------

    def fetch_capacity(self, *, now: datetime) -> Sequence[CapacitySignal]:
        """Spot placement scores per zone, and Spot Advisor interruption buckets per type."""
        return [
            *self.fetch_placement_scores(now=now),
            *self.fetch_interruption_buckets(now=now),
        ]

    def fetch_placement_scores(self, *, now: datetime) -> list[CapacitySignal]:
        _require_aware(now=now)
        if not self.options.placement_scores:
            return []
        types = self._types()
        if not types:
            return []
        signals: list[CapacitySignal] = []
        for region in self.options.regions:
            with self._calling("ec2:GetSpotPlacementScores", region, now=now):
                paginator = self.ec2_client(region).get_paginator("get_spot_placement_scores")
                pages = paginator.paginate(
                    InstanceTypes=list(types),
                    TargetCapacity=1,
                    TargetCapacityUnitType="units",
                    SingleAvailabilityZone=True,
                    RegionNames=[region],
                )
                index = 0
                for page in pages:
                    for row in page.get("SpotPlacementScores", []):
                        where = f"SpotPlacementScores[{index}]"
                        index += 1
                        score = require(row, "Score", source=self.name, where=where, kind=int)
                        signals.append(
                            self._value(
                                CapacitySignal,
                                where,
                                provider=Provider.AWS,
                                region=require(
                                    row, "Region", source=self.name, where=where, kind=str
                                ),
                                zone=require(
                                    row,
                                    "AvailabilityZoneId",
                                    source=self.name,
                                    where=where,
                                    kind=str,
                                ),
                                instance_type=None,
                                kind=CapacityKind.PLACEMENT_SCORE,
                                value=score,
                                observed_at=now,
                                source=self.name,
                            )
                        )
        return signals

    def fetch_interruption_buckets(self, *, now: datetime) -> list[CapacitySignal]:
        _require_aware(now=now)
        types = self._types()
        with make_client("", timeout=self.timeout) as client:
            data = get_json(client, self.options.spot_advisor_url, source=self.name)
        buckets = self._advisor_buckets(data)
        advisor = require(data, "spot_advisor", source=self.name, where="", kind=dict)
        signals: list[CapacitySignal] = []
        for region in self.options.regions:
            if region not in advisor:
                self._log.info("region not in the Spot Advisor data", region=region)
                continue
            where = f"spot_advisor.{region}"
            linux = require(advisor[region], "Linux", source=self.name, where=where, kind=dict)
            for instance_type in types:
                if instance_type not in linux:
                    continue
                field = f"{where}.Linux.{instance_type}"
                bucket = require(linux[instance_type], "r", source=self.name, where=field, kind=int)
                if isinstance(bucket, bool) or bucket not in buckets:
                    raise BadPayload(
                        f"{bucket!r} is not one of the ranges' indexes {sorted(buckets)}",
                        source=self.name,
                        field=f"{field}.r",
                    )
                signals.append(
                    CapacitySignal(
                        provider=Provider.AWS,
                        region=region,
                        zone=None,
                        instance_type=instance_type,
                        kind=CapacityKind.INTERRUPTION_BUCKET,
                        value=bucket,
                        observed_at=now,
                        source=self.name,
                    )
                )
        return signals

    def _advisor_buckets(self, data: Any) -> set[int]:
        """The bucket indexes of the advisor's ``ranges``: 0 (<5%) to 4 (>20%)."""
        ranges = require(data, "ranges", source=self.name, where="", kind=list)
        if not ranges:
            raise BadPayload("empty", source=self.name, field="ranges")
        indexes: set[int] = set()
        for position, entry in enumerate(ranges):
            where = f"ranges[{position}]"
            index = require(entry, "index", source=self.name, where=where, kind=int)
            require(entry, "label", source=self.name, where=where, kind=str)
            if isinstance(index, bool) or not 0 <= index <= 4 or index in indexes:
                raise BadPayload(
                    f"expected a distinct bucket from 0 to 4, got {index!r}",
                    source=self.name,
                    field=f"{where}.index",
                )
            indexes.add(index)
        return indexes

    # -- the boundary ---------------------------------------------------------------

    @property
    def _log(self) -> Any:
        return get_logger("provider.aws", source=self.name)

    def _value(self, model: type[_T], where: str, **fields: Any) -> _T:
        """Build a domain value; a value the domain refuses is a bad payload."""
        try:
            return model(**fields)
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = ".".join(str(part) for part in error["loc"])
            raise BadPayload(
                f"{loc}: {error['msg']}" if loc else str(error["msg"]),
                source=self.name,
                field=where,
            ) from exc

    @contextmanager
    def _calling(self, action: str, region: str, *, now: datetime | None = None) -> Iterator[None]:
        """Translate botocore failures of ``action`` into arbiter's exception tree."""
        call = f"{action} ({region})"
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            raise self._client_error(exc, call, action, now) from exc
        except aws_clients.CREDENTIAL_ERRORS as exc:
            raise AuthFailed(
                f"{call}: no usable AWS credentials ({exc}); {_HOW_TO_GIVE_CREDENTIALS}",
                source=self.name,
            ) from exc
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
            # Connection refused, DNS, TLS, connect and read timeouts, dropped connections.
            raise Unavailable(f"{call}: {exc}", source=self.name) from exc
        except ResponseParserError as exc:
            # In practice an HTML error page from a proxy or load balancer in front of
            # the endpoint (botocore itself says a retry may succeed), not bad data.
            raise Unavailable(
                f"{call}: unreadable response: {_short(str(exc))}", source=self.name
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise BadPayload(f"{call}: {_short(str(exc))}", source=self.name) from exc

    def _client_error(
        self,
        exc: botocore.exceptions.ClientError,
        call: str,
        action: str,
        now: datetime | None,
    ) -> ProviderError:
        response = aws_clients.ErrorResponse.of(exc)
        code, status = response.code, response.status
        text = f"{call}: {code or f'HTTP {status}'}: {_short(response.message)}"
        if code in _THROTTLING_CODES or status == 429:
            return Throttled(
                text,
                source=self.name,
                retry_after=_retry_after(response.headers.get("retry-after"), now),
            )
        if code in _AUTH_CODES or code.startswith("AccessDenied") or status in (401, 403):
            return AuthFailed(
                f"{text}; AWS refused the credentials or they lack the IAM permission "
                f"{action} (check the policy, the profile or the session token)",
                source=self.name,
            )
        if status >= 500 or code in _UNAVAILABLE_CODES:
            return Unavailable(text, source=self.name)
        return BadPayload(f"{text} (request rejected)", source=self.name)


# -- payload helpers ---------------------------------------------------------------


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _require_aware(**moments: datetime | None) -> None:
    for name, moment in moments.items():
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _retry_after(value: str | None, now: datetime | None) -> float | None:
    if now is not None:
        return retry_after_seconds(value, now=now)
    try:  # without ``now`` an HTTP date cannot be turned into seconds (no clock reads)
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _usd(value: Any, *, source: str, field: str) -> float:
    """A price as AWS writes it (a decimal string), checked to be a finite number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadPayload(
            f"expected a decimal string, got {type(value).__name__}", source=source, field=field
        )
    try:
        price = float(value)
    except ValueError:
        raise BadPayload(f"not a number: {value!r}", source=source, field=field) from None
    if not math.isfinite(price) or price < 0:
        raise BadPayload(f"not a price: {value!r}", source=source, field=field)
    return price


def _json_document(item: Any, *, source: str, field: str) -> Any:
    """A PriceList entry: a JSON document in a string."""
    if isinstance(item, dict):
        return item
    if not isinstance(item, str):
        raise BadPayload(
            f"expected a JSON string, got {type(item).__name__}", source=source, field=field
        )
    try:
        return json.loads(item)
    except ValueError as exc:
        raise BadPayload(f"not JSON: {exc}", source=source, field=field) from None


def _is_linux_on_demand(attributes: Mapping[str, Any], region: str) -> bool:
    """Plain Linux, shared tenancy, on-demand (not a Capacity Block) in ``region``."""
    return (
        all(attributes.get(key) == value for key, value in _LINUX_ON_DEMAND.items())
        and attributes.get("regionCode", region) == region
        and attributes.get("marketoption", "OnDemand") == "OnDemand"
    )


def _hourly_usd(offers: Mapping[str, Any], *, source: str, where: str) -> float:
    """The price of ``terms.OnDemand`` of one product: exactly one dimension, USD per hour."""
    dimensions: list[tuple[str, Any]] = []
    for term_code, term in offers.items():
        term_where = f"{where}.{term_code}"
        for code, dimension in require(
            term, "priceDimensions", source=source, where=term_where, kind=dict
        ).items():
            dimensions.append((f"{term_where}.priceDimensions.{code}", dimension))
    if len(dimensions) != 1:
        raise BadPayload(
            f"expected exactly one on-demand price dimension, got {len(dimensions)}",
            source=source,
            field=where,
        )
    field, dimension = dimensions[0]
    unit = require(dimension, "unit", source=source, where=field, kind=str)
    if unit not in ("Hrs", "Hr", "Hours"):
        raise BadPayload(
            f"expected a price per hour, got unit {unit!r}", source=source, field=f"{field}.unit"
        )
    per_unit = require(dimension, "pricePerUnit", source=source, where=field, kind=dict)
    return _usd(
        require(per_unit, "USD", source=source, where=f"{field}.pricePerUnit"),
        source=source,
        field=f"{field}.pricePerUnit.USD",
    )


def _has_accelerator(item: Mapping[str, Any]) -> bool:
    return any(item.get(key) for key in ("GpuInfo", "NeuronInfo", "InferenceAcceleratorInfo"))


def _accelerator_of(
    item: Mapping[str, Any], *, where: str, source: str
) -> tuple[list[str], float, float | None] | None:
    """(vendor names, count, GiB per accelerator) of an instance type, or None if it has none.

    GPUs first, then Neuron devices (Trainium, Inferentia), then the older inference
    accelerator block. A fractional GPU (``Count`` 0, ``GpuPartitionSize`` 0.125) counts
    as that fraction of one accelerator whose memory is the whole GPU's.
    """
    for info_key, list_key in (
        ("GpuInfo", "Gpus"),
        ("NeuronInfo", "NeuronDevices"),
        ("InferenceAcceleratorInfo", "Accelerators"),
    ):
        info = item.get(info_key)
        if not info:
            continue
        devices = require(info, list_key, source=source, where=f"{where}.{info_key}", kind=list)
        if not devices:
            continue
        names: list[str] = []
        count = 0.0
        memory_gib: float | None = None
        for position, device in enumerate(devices):
            device_where = f"{where}.{info_key}.{list_key}[{position}]"
            name = require(device, "Name", source=source, where=device_where, kind=str)
            whole = require(device, "Count", source=source, where=device_where, kind=int)
            partition = device.get("GpuPartitionSize")
            fraction = float(partition) if isinstance(partition, int | float) else 1.0
            if whole == 0 and 0 < fraction < 1:
                count += fraction * int(device.get("LogicalGpuCount") or 1)
            else:
                count += whole
            mib = (device.get("MemoryInfo") or {}).get("SizeInMiB")
            if isinstance(mib, int | float) and mib > 0:
                memory_gib = mib / 1024 / (fraction if 0 < fraction < 1 else 1.0)
            if name not in names:
                names.append(name)
        return names, count, memory_gib
    return None


def _still_current(quotes: Sequence[PriceQuote], now: datetime) -> list[PriceQuote]:
    """The newest price of each offer, observed again at ``now``.

    Spot history rows carry the time the price *changed*, which may be days ago; the
    price is still the current one now. Confirming it at ``now`` keeps the change's own
    time as the start of the level and lets freshness reflect this poll, so a price
    that has not moved for a week is not mistaken for stale data.
    """
    newest: dict[str, PriceQuote] = {}
    for quote in quotes:
        seen = newest.get(quote.offer.key)
        if seen is None or quote.observed_at > seen.observed_at:
            newest[quote.offer.key] = quote
    return [
        q.model_copy(update={"observed_at": now}) for q in newest.values() if q.observed_at < now
    ]
