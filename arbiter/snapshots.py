"""Building a market snapshot from the store (shell side of
:mod:`arbiter.domain.snapshot`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from arbiter.domain.market import CapacityKind, CarbonBasis, CarbonUnit, Market
from arbiter.domain.snapshot import MarketSnapshot, OfferState, ZoneCarbon
from arbiter.store.repositories import Store

DEFAULT_STALE_AFTER = 3600.0
_BASIS_PREFERENCE = {CarbonBasis.LIFECYCLE: 0, CarbonBasis.DIRECT: 1, CarbonBasis.MARGINAL: 2}


def build_snapshot(store: Store, stale_after: Mapping[str, float], now: datetime) -> MarketSnapshot:
    """The newest price of every offer (the freshest source wins), joined with its
    instance type, capacity signals and its region's carbon intensity, each marked
    stale by its source's ``stale_after``."""

    stale = stale_checker(stale_after, now)
    types = {(t.provider.value, t.name): t for t in store.instance_types.all()}
    bucket: dict[tuple[str, str, str | None], float] = {}
    score: dict[tuple[str, str, str | None], float] = {}
    quota: dict[tuple[str, str, str | None, CapacityKind], float] = {}
    available: dict[tuple[str, str, str | None], float] = {}
    for latest in store.capacity.latest():
        s = latest.signal
        if stale(s.source, s.observed_at):
            continue
        key = (s.provider.value, s.region, s.instance_type)
        if s.kind is CapacityKind.INTERRUPTION_BUCKET:
            bucket[key] = s.value
        elif s.kind is CapacityKind.PLACEMENT_SCORE:
            score[(s.provider.value, s.region, s.zone)] = max(
                s.value, score.get((s.provider.value, s.region, s.zone), 0)
            )
        elif s.kind is CapacityKind.AVAILABLE and s.zone is None:
            available[key] = s.value
        elif s.kind in (CapacityKind.QUOTA_GPUS_FREE, CapacityKind.QUOTA_SPOT_GPUS_FREE):
            quota[(*key, s.kind)] = s.value

    best: dict[str, OfferState] = {}
    for p in store.prices.latest():
        o = p.offer
        t = types.get((o.provider.value, o.instance_type))
        kind = (
            CapacityKind.QUOTA_SPOT_GPUS_FREE
            if o.market is Market.SPOT
            else CapacityKind.QUOTA_GPUS_FREE
        )
        capacity = quota.get((o.provider.value, o.region, o.instance_type, kind))
        if available.get((o.provider.value, o.region, o.instance_type)) == 0:
            capacity = 0.0
        state = OfferState(
            offer=o,
            usd_per_hour=p.usd_per_hour,
            seen_at=p.last_seen,
            stale=stale(p.source, p.last_seen),
            accelerator=t.accelerator if t else None,
            accelerator_count=t.accelerator_count if t else 0,
            accelerator_memory_gib=t.accelerator_memory_gib if t else None,
            interruption_bucket=bucket.get((o.provider.value, o.region, o.instance_type))
            if o.market is Market.SPOT
            else None,
            placement_score=score.get((o.provider.value, o.region, o.zone))
            if o.market is Market.SPOT
            else None,
            capacity_gpus=capacity,
        )
        current = best.get(o.key)
        if current is None or (current.stale, -current.seen_at.timestamp()) > (
            state.stale,
            -state.seen_at.timestamp(),
        ):
            best[o.key] = state

    carbon = choose_carbon(store, stale)
    return MarketSnapshot.make(
        taken_at=now,
        offers=tuple(best[k] for k in sorted(best)),
        carbon=tuple(carbon[z] for z in sorted(carbon)),
    )


def choose_carbon(store: Store, stale: Callable[[str, datetime], bool]) -> dict[str, ZoneCarbon]:
    """The intensity to use per grid zone: fresh before stale, lifecycle before direct
    before marginal, newest first. Index readings (percentiles) are never used."""
    chosen: dict[str, ZoneCarbon] = {}
    for reading, _fetched in store.carbon.latest():
        if reading.unit is not CarbonUnit.G_PER_KWH:
            continue
        candidate = ZoneCarbon(
            zone=reading.zone,
            gco2_per_kwh=reading.value,
            basis=reading.basis,
            valid_at=reading.valid_at,
            source=reading.source,
            stale=stale(reading.source, reading.valid_at),
        )
        current = chosen.get(reading.zone)
        if current is None or _rank(candidate) < _rank(current):
            chosen[reading.zone] = candidate
    return chosen


def _rank(c: ZoneCarbon) -> tuple[bool, int, float]:
    return (c.stale, _BASIS_PREFERENCE[c.basis], -c.valid_at.timestamp())


def stale_checker(
    stale_after: Mapping[str, float], now: datetime
) -> Callable[[str, datetime], bool]:
    def stale(source: str, seen: datetime) -> bool:
        return now - seen > timedelta(seconds=stale_after.get(source, DEFAULT_STALE_AFTER))

    return stale
