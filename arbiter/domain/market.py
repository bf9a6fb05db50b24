"""What the markets tell us: instance types, offers, prices, capacity and carbon.

Money is USD per hour per offer. Carbon intensity is gCO2eq/kWh with its basis
labelled (lifecycle, direct or marginal); an index that is not an intensity (such as
WattTime's percentile) carries its own unit so it is never mistaken for one.
"""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Annotated

from pydantic import Field, model_validator

from arbiter.domain.values import Finite, UtcDatetime, Value

Name = Annotated[str, Field(min_length=1, max_length=200)]


class Provider(StrEnum):
    AWS = "aws"
    GCP = "gcp"
    AZURE = "azure"


class Market(StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on-demand"


class CarbonBasis(StrEnum):
    LIFECYCLE = "lifecycle"
    DIRECT = "direct"
    MARGINAL = "marginal"


class CarbonUnit(StrEnum):
    G_PER_KWH = "gCO2eq/kWh"
    PERCENTILE = "percentile"
    """A relative index (0-100), e.g. WattTime's signal-index; not an intensity."""


class CapacityKind(StrEnum):
    PLACEMENT_SCORE = "placement_score"
    """AWS spot placement score, 1 (unlikely) to 10 (very likely)."""
    INTERRUPTION_BUCKET = "interruption_bucket"
    """AWS Spot Advisor interruption frequency bucket, 0 (<5%) to 4 (>20%)."""
    QUOTA_GPUS_FREE = "quota_gpus_free"
    """GPUs still available under a regional on-demand quota (a ceiling, not a promise):
    limit − usage, so the GPUs our own VMs use are already taken out."""
    QUOTA_SPOT_GPUS_FREE = "quota_spot_gpus_free"
    """GPUs still available under a regional spot / preemptible / low-priority quota
    (limit − usage, like :attr:`QUOTA_GPUS_FREE`)."""
    AVAILABLE = "available"
    """Observed availability: 1 if capacity was obtainable, 0 if not (or a count). Only
    0 bounds an offer's capacity (no *more* can be had; what runs keeps running)."""


_CAPACITY_RANGES: dict[CapacityKind, tuple[float, float]] = {
    CapacityKind.PLACEMENT_SCORE: (1, 10),
    CapacityKind.INTERRUPTION_BUCKET: (0, 4),
    CapacityKind.QUOTA_GPUS_FREE: (0, float("inf")),
    CapacityKind.QUOTA_SPOT_GPUS_FREE: (0, float("inf")),
    CapacityKind.AVAILABLE: (0, float("inf")),
}


class InstanceType(Value):
    """A machine shape of one provider, with its accelerators (if any)."""

    provider: Provider
    name: Name
    vcpus: Annotated[int, Field(gt=0)]
    memory_gib: Annotated[Finite, Field(gt=0)]
    accelerator: str | None = None
    """Accelerator model as arbiter names it, e.g. ``H100``, ``A100-80GB``, ``L4``."""
    accelerator_count: Annotated[Finite, Field(ge=0)] = 0
    """May be fractional (GCP g4 shares one RTX PRO 6000 across sizes)."""
    accelerator_memory_gib: Annotated[Finite, Field(gt=0)] | None = None
    """Memory of one accelerator."""

    @model_validator(mode="after")
    def _accelerator_fields_agree(self) -> InstanceType:
        if (self.accelerator is None) != (self.accelerator_count == 0):
            raise ValueError("accelerator and accelerator_count must be set together")
        if self.accelerator is None and self.accelerator_memory_gib is not None:
            raise ValueError("accelerator_memory_gib given without an accelerator")
        return self


class Offer(Value):
    """One thing that can be bought: an instance type in a region (and zone) on a market."""

    provider: Provider
    region: Name
    zone: Name | None = None
    instance_type: Name
    market: Market

    @property
    def region_key(self) -> str:
        return f"{self.provider}:{self.region}"

    @property
    def key(self) -> str:
        """Stable identifier, e.g. ``aws:us-east-1:use1-az4:p5.48xlarge:spot``."""
        return ":".join(
            (self.provider, self.region, self.zone or "-", self.instance_type, self.market)
        )

    @classmethod
    def from_key(cls, key: str) -> Offer:
        """The offer a :attr:`key` names (ValueError when it is not one). Offers are
        frozen, so one parsed before is returned again: each reconcile pass reads
        every running placement's key."""
        if cls is Offer:
            return _offer_from_key(key)
        return cls._parse_key(key)

    @classmethod
    def _parse_key(cls, key: str) -> Offer:
        parts = key.split(":")
        if len(parts) != 5:
            raise ValueError(f"not an offer key (provider:region:zone:type:market): {key!r}")
        provider, region, zone, instance_type, market = parts
        return cls(
            provider=provider,  # type: ignore[arg-type]
            region=region,
            zone=None if zone == "-" else zone,
            instance_type=instance_type,
            market=market,  # type: ignore[arg-type]
        )


@functools.lru_cache(maxsize=1 << 16)
def _offer_from_key(key: str) -> Offer:
    return Offer._parse_key(key)


class PriceQuote(Value):
    """The price of an offer as seen by a source at a time."""

    offer: Offer
    usd_per_hour: Annotated[Finite, Field(ge=0)]
    observed_at: UtcDatetime
    source: Name


class CapacitySignal(Value):
    """A hint about how obtainable (or how likely to be interrupted) capacity is."""

    provider: Provider
    region: Name
    zone: Name | None = None
    instance_type: Name | None = None
    """None when the signal covers every type (e.g. a regional GPU quota)."""
    kind: CapacityKind
    value: Finite
    observed_at: UtcDatetime
    source: Name

    @model_validator(mode="after")
    def _value_in_range(self) -> CapacitySignal:
        low, high = _CAPACITY_RANGES[self.kind]
        if not low <= self.value <= high:
            raise ValueError(f"{self.kind} must be within [{low:g}, {high:g}], got {self.value:g}")
        return self


class CarbonReading(Value):
    """Grid carbon intensity of a zone for the hour (or interval) starting at ``valid_at``."""

    zone: Name
    """Grid zone key (Electricity Maps style: ``DE``, ``US-CAL-CISO``, ``SE-SE3``)."""
    valid_at: UtcDatetime
    value: Annotated[Finite, Field(ge=0)]
    unit: CarbonUnit = CarbonUnit.G_PER_KWH
    basis: CarbonBasis
    source: Name
    forecast: bool = False

    @model_validator(mode="after")
    def _percentile_in_range(self) -> CarbonReading:
        if self.unit is CarbonUnit.PERCENTILE and self.value > 100:
            raise ValueError(f"a percentile index must be within [0, 100], got {self.value:g}")
        return self
