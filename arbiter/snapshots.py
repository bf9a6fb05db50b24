"""Building a market snapshot from the store (shell side of
:mod:`arbiter.domain.snapshot`)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from arbiter.domain.market import CapacityKind, CarbonBasis, CarbonUnit, Market
from arbiter.domain.snapshot import MarketSnapshot, OfferState, ZoneCarbon
from arbiter.store.repositories import PriceLevel, Store

DEFAULT_STALE_AFTER = 3600.0
_QUOTA = {True: CapacityKind.QUOTA_SPOT_GPUS_FREE, False: CapacityKind.QUOTA_GPUS_FREE}
"""The quota that bounds an offer, by whether it is spot."""
_BASIS_PREFERENCE = {CarbonBasis.LIFECYCLE: 0, CarbonBasis.DIRECT: 1, CarbonBasis.MARGINAL: 2}


def build_snapshot(store: Store, stale_after: Mapping[str, float], now: datetime) -> MarketSnapshot:
    """The newest price of every offer (the freshest source wins), joined with its
    instance type, capacity signals and its region's carbon intensity, each marked
    stale by its source's ``stale_after``."""
    # Building it makes a few objects per offer, none in a reference cycle; meanwhile
    # the cyclic garbage collector would walk every live object of the process several
    # times over (at 30,000 offers, half the time it takes) and free nothing.
    with _gc_paused():
        return _build(store, stale_after, now)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused (if it runs), to collect later."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _build(store: Store, stale_after: Mapping[str, float], now: datetime) -> MarketSnapshot:
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

    # The freshest price of every offer: fresh before stale, then last seen newest (the
    # first such source in the store's order on ties).
    newest: dict[str, tuple[bool, datetime, PriceLevel]] = {}
    for p in store.prices.newest_levels():
        offer_key = p.offer.key
        rank = (stale(p.source, p.last_seen), p.last_seen, p)
        current = newest.get(offer_key)
        if current is None or (current[0], rank[1]) > (rank[0], current[1]):
            newest[offer_key] = rank

    offers = []
    for offer_key in sorted(newest):
        is_stale, seen, p = newest[offer_key]
        o = p.offer
        # Provider and Market are StrEnums: they look up the same as their values.
        t = types.get((o.provider, o.instance_type))
        spot = o.market is Market.SPOT
        where = (o.provider, o.region, o.instance_type)
        # Both mean GPUs that can still be had, ours already taken out (decide adds ours
        # back): the quota left (limit − usage) of the offer's market, or none at all
        # while the type is unavailable here (an Azure restriction). An availability of
        # 1 is a yes, not a count, and a placement score or an interruption bucket is a
        # likelihood: neither bounds capacity.
        capacity = quota.get((*where, _QUOTA[spot]))
        if available.get(where) == 0:
            capacity = 0.0
        offers.append(
            OfferState(
                offer=o,
                usd_per_hour=p.usd_per_hour,
                seen_at=seen,
                stale=is_stale,
                accelerator=t.accelerator if t else None,
                accelerator_count=t.accelerator_count if t else 0,
                accelerator_memory_gib=t.accelerator_memory_gib if t else None,
                interruption_bucket=bucket.get(where) if spot else None,
                placement_score=score.get((o.provider, o.region, o.zone)) if spot else None,
                capacity_gpus=capacity,
            )
        )

    carbon = choose_carbon(store, stale)
    return MarketSnapshot.make(
        taken_at=now,
        offers=tuple(offers),
        carbon=tuple(carbon[z] for z in sorted(carbon)),
    )


def offers_left_market(
    store: Store, keys: Sequence[str], stale_after: Mapping[str, float], now: datetime
) -> dict[str, str]:
    """Of the offers ``keys``, those the market no longer offers, with why: every source
    that ever priced one has polled successfully since it last listed it, and that
    poll is fresh by the source's own ``stale_after``. Sources report every offer they
    cover on each poll (AWS confirms unchanged spot prices at the poll's time), so an
    offer left out of a successful poll is one the provider no longer lists.

    Says nothing (the offer is not in the result) about an offer no source priced, nor
    when a source that priced it has not succeeded since, or last succeeded so long
    ago that its own data would be stale: a source failing, or the store not being
    polled, must never look like capacity leaving."""
    if not keys:
        return {}
    stale = stale_checker(stale_after, now)
    succeeded = {s.source: s.last_success_at for s in store.sources.all()}
    levels: dict[str, list[tuple[str, datetime]]] = {}
    for level in store.prices.latest(keys=keys):
        levels.setdefault(level.offer.key, []).append((level.source, level.last_seen))
    left = {}
    for key, seen in sorted(levels.items()):
        reasons = []
        for source, last_seen in seen:
            success = succeeded.get(source)
            if success is None or success <= last_seen or stale(source, success):
                break
            reasons.append(
                f"{source} last listed it at {last_seen:%Y-%m-%d %H:%MZ}; its poll at "
                f"{success:%H:%MZ} did not"
            )
        else:
            left[key] = "gone from the market: " + "; ".join(reasons)
    return left


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
    """Whether data a source last saw at a time is stale: older than the source's
    ``stale_after`` (the default for sources not listed)."""
    # now − seen > limit  ⇔  seen < now − limit (datetime arithmetic is exact).
    cutoffs: dict[str, datetime] = {}

    def stale(source: str, seen: datetime) -> bool:
        cutoff = cutoffs.get(source)
        if cutoff is None:
            limit = timedelta(seconds=stale_after.get(source, DEFAULT_STALE_AFTER))
            try:
                cutoff = now - limit
            except OverflowError:  # a limit beyond year 1: nothing is that old
                cutoff = datetime.min.replace(tzinfo=UTC)
            cutoffs[source] = cutoff
        return seen < cutoff

    return stale
