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
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cached_property
from typing import Annotated, Any, ClassVar

from pydantic import Field, TypeAdapter

from arbiter.domain.market import CarbonBasis, Offer
from arbiter.domain.values import Finite, UtcDatetime, Value


class OfferState(Value):
    """What is known about one offer at snapshot time."""

    offer: Offer
    usd_per_hour: Annotated[Finite, Field(ge=0)]
    seen_at: UtcDatetime
    stale: bool = False
    accelerator: str | None = None
    accelerator_count: Annotated[Finite, Field(ge=0)] = 0.0
    accelerator_memory_gib: Annotated[Finite, Field(gt=0)] | None = None
    interruption_bucket: Annotated[Finite, Field(ge=0, le=4)] | None = None
    """AWS Spot Advisor bucket 0 (<5 %) … 4 (>20 %); None when unknown."""
    placement_score: Annotated[Finite, Field(ge=1, le=10)] | None = None
    capacity_gpus: Annotated[Finite, Field(ge=0)] | None = None
    """GPUs still obtainable (quota or availability) for this offer's market, beyond
    what already runs there — arbiter's own replicas included: a remaining quota
    (limit − usage) or 0 when no more can be had, never a total limit. None = unknown.
    Decide adds back the GPUs arbiter's own replicas hold on the offer
    (:func:`arbiter.domain.fleet.gpus_held`)."""


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
        """Build a snapshot whose id is a hash of its content (same data, same id): of
        ``{"offers": [...], "carbon": [...]}``, each value as ``model_dump(mode="json")``
        gives it, written by ``json.dumps`` with sorted keys and no spaces."""
        return MarketSnapshot(
            id=content_id(offers, carbon),
            taken_at=taken_at,  # type: ignore[arg-type]
            offers=offers,
            carbon=carbon,
        )

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


def content_id(offers: Sequence[OfferState], carbon: Sequence[ZoneCarbon]) -> str:
    """The id :meth:`MarketSnapshot.make` gives these offers and carbon data.

    An offer state is written field by field, the bytes ``json.dumps`` writes for its
    ``model_dump(mode="json")`` (at 30,000 offers, dumping and sorting each one's dict
    took most of building a snapshot): strings escaped as ``json.dumps`` escapes them,
    once per distinct string; datetimes formatted by pydantic, once per distinct value;
    floats as ``json.dumps`` writes them (validated, the fields hold floats, not ints).
    """
    text = _Escaped()
    time = _Formatted()
    number = float.__repr__
    states = ",".join(
        _OFFER_STATE_JSON
        % (
            text[s.accelerator],
            number(s.accelerator_count),
            "null" if s.accelerator_memory_gib is None else number(s.accelerator_memory_gib),
            "null" if s.capacity_gpus is None else number(s.capacity_gpus),
            "null" if s.interruption_bucket is None else number(s.interruption_bucket),
            text[s.offer.instance_type],
            text[s.offer.market],
            text[s.offer.provider],
            text[s.offer.region],
            text[s.offer.zone],
            "null" if s.placement_score is None else number(s.placement_score),
            time[s.seen_at, s.seen_at.tzinfo],
            "true" if s.stale else "false",
            number(s.usd_per_hour),
        )
        for s in offers
    )
    zones = ",".join(
        json.dumps(c.model_dump(mode="json"), sort_keys=True, separators=(",", ":")) for c in carbon
    )
    body = '{"carbon":[' + zones + '],"offers":[' + states + "]}"
    return hashlib.sha256(body.encode()).hexdigest()[:16]


_OFFER_STATE_JSON = (
    '{"accelerator":%s,"accelerator_count":%s,"accelerator_memory_gib":%s,'
    '"capacity_gpus":%s,"interruption_bucket":%s,'
    '"offer":{"instance_type":%s,"market":%s,"provider":%s,"region":%s,"zone":%s},'
    '"placement_score":%s,"seen_at":%s,"stale":%s,"usd_per_hour":%s}'
)
"""An offer state as ``json.dumps(sort_keys=True, separators=(",", ":"))`` writes it."""
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii
"""How ``json.dumps`` (with ``ensure_ascii``, its default) writes a string."""
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


class _Escaped(dict[str | None, str]):
    """Strings as JSON, each escaped once; None as null."""

    def __missing__(self, value: str | None) -> str:
        out = self[value] = "null" if value is None else _json_string(value)
        return out


class _Formatted(dict[tuple[datetime, object], str]):
    """Datetimes as pydantic writes them in JSON, each formatted once. Keyed by time
    and zone: equal times in other zones are written apart."""

    def __missing__(self, key: tuple[datetime, object]) -> str:
        out = self[key] = _json_string(_DATETIME.dump_python(key[0], mode="json"))
        return out


PLAUSIBLE_PRICE_FLOOR = 0.2
"""An offer under 20 % of the median price per GPU-hour of its GPU model and market is
taken as a data error, not a bargain."""
