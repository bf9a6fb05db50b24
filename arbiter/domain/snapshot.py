"""A market snapshot: the newest price, capacity and carbon data as one immutable
value with an id, so a decision can always say what it was made on.

Stale data is carried *marked stale*, never dropped silently and never presented as
fresh: rules that need fresh data answer ``error`` on it.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import defaultdict
from functools import cached_property
from typing import Annotated, Any, ClassVar

from pydantic import Field

from arbiter.domain.market import CarbonBasis, Offer
from arbiter.domain.values import Finite, UtcDatetime, Value


class OfferState(Value):
    """What is known about one offer at snapshot time."""

    offer: Offer
    usd_per_hour: Annotated[Finite, Field(ge=0)]
    seen_at: UtcDatetime
    stale: bool = False
    accelerator: str | None = None
    accelerator_count: Annotated[Finite, Field(ge=0)] = 0
    accelerator_memory_gib: Annotated[Finite, Field(gt=0)] | None = None
    interruption_bucket: Annotated[Finite, Field(ge=0, le=4)] | None = None
    """AWS Spot Advisor bucket 0 (<5 %) … 4 (>20 %); None when unknown."""
    placement_score: Annotated[Finite, Field(ge=1, le=10)] | None = None
    capacity_gpus: Annotated[Finite, Field(ge=0)] | None = None
    """GPUs obtainable (quota or availability) for this offer's market; None = unknown."""


class ZoneCarbon(Value):
    """The carbon intensity used for a grid zone."""

    zone: str
    gco2_per_kwh: Annotated[Finite, Field(ge=0)]
    basis: CarbonBasis
    valid_at: UtcDatetime
    source: str
    stale: bool = False


class MarketSnapshot(Value):
    id: str
    taken_at: UtcDatetime
    offers: tuple[OfferState, ...]
    carbon: tuple[ZoneCarbon, ...] = ()

    @staticmethod
    def make(
        *, taken_at: object, offers: tuple[OfferState, ...], carbon: tuple[ZoneCarbon, ...]
    ) -> MarketSnapshot:
        """Build a snapshot whose id is a hash of its content (same data, same id)."""
        body = {
            "offers": [o.model_dump(mode="json") for o in offers],
            "carbon": [c.model_dump(mode="json") for c in carbon],
        }
        digest = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()[:16]
        return MarketSnapshot(id=digest, taken_at=taken_at, offers=offers, carbon=carbon)  # type: ignore[arg-type]

    def carbon_by_zone(self) -> dict[str, ZoneCarbon]:
        return {c.zone: c for c in self.carbon}

    _CACHED: ClassVar[tuple[str, ...]] = ("by_key", "gpu_hour_medians")

    def model_copy(self, *, update: Any = None, deep: bool = False) -> MarketSnapshot:
        """A copy without the derived caches (they would describe the old offers)."""
        copy = super().model_copy(update=update, deep=deep)
        for name in self._CACHED:
            copy.__dict__.pop(name, None)
        return copy

    @cached_property
    def by_key(self) -> dict[str, OfferState]:
        """Each offer's state by :attr:`Offer.key` (built once per snapshot)."""
        return {o.offer.key: o for o in self.offers}

    @cached_property
    def gpu_hour_medians(self) -> dict[tuple[str, str], float]:
        """Median USD per GPU-hour of each (GPU model, market) over the fresh offers."""
        prices: dict[tuple[str, str], list[float]] = defaultdict(list)
        for o in self.offers:
            if o.accelerator and o.accelerator_count > 0 and not o.stale:
                prices[(o.accelerator, o.offer.market.value)].append(
                    o.usd_per_hour / o.accelerator_count
                )
        return {key: statistics.median(values) for key, values in prices.items()}

    def implausibly_cheap(self, state: OfferState) -> float | None:
        """The market median an offer's price per GPU-hour is far below (less than
        :data:`PLAUSIBLE_PRICE_FLOOR` of it), or None when the price is plausible.

        Recorded price lists have such errors (a machine price without its GPUs); an
        arbitrage engine would chase them, so they are treated as bad data."""
        if not state.accelerator or state.accelerator_count <= 0:
            return None
        median = self.gpu_hour_medians.get((state.accelerator, state.offer.market.value))
        per_gpu = state.usd_per_hour / state.accelerator_count
        if median is None or per_gpu >= PLAUSIBLE_PRICE_FLOOR * median:
            return None
        return median


PLAUSIBLE_PRICE_FLOOR = 0.2
"""An offer under 20 % of the median price per GPU-hour of its GPU model and market is
taken as a data error, not a bargain."""
