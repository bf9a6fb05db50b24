"""The fleet as operators see it: what runs where, what it costs against the on-demand
baseline, its carbon, data freshness, leadership and migrations in flight.

Read-only: everything comes from the store, read in one read-only transaction through
:mod:`arbiter.store.reads` (plain rows, no domain values). The JSON shape of
:func:`fleet_status` is the stable contract of ``arbiter status -o json`` (documented in
docs/cli.md).

``arbiter status`` must answer within half a second of the process starting (issue 6):
given a database URL the summary reads through the database driver itself, without
importing SQLAlchemy, the repositories or the domain models behind them. The reads
select what the repositories' ``all_placements``, ``prices.latest``,
``instance_types.all``, ``carbon.latest``, ``workloads.all``, ``sources.all``,
``leases.get`` and ``migrations.unfinished`` would, reduced to the columns used; tests
check the summary against one built through the repositories. The newest price of
each placed offer is found through the index on ``(offer_id, source, first_seen)``, so
90 days of price history cost a lookup per offer, not a scan.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from arbiter.domain.accelerators import DEFAULT_POWER_KW, POWER_KW, PUE
from arbiter.store import reads

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from arbiter.domain.regions import RegionCatalog
    from arbiter.store.repositories import Store

DEGRADED_AFTER = 3

DEFAULT_STALE_AFTER = 3600.0
"""For a source with no configured ``stale_after`` (as :mod:`arbiter.snapshots`)."""

FINISHED_MIGRATION_STATES = ("done", "rolled_back", "failed")
"""The values of the finished :class:`~arbiter.domain.migrations.MigrationState` members
(a test keeps them equal): every other migration is in flight."""

CARBON_UNIT = "gCO2eq/kWh"
""":attr:`~arbiter.domain.market.CarbonUnit.G_PER_KWH`: only intensities are used,
never relative indices."""

CARBON_BASIS_PREFERENCE = {"lifecycle": 0, "direct": 1, "marginal": 2}
"""As :func:`arbiter.snapshots.choose_carbon` ranks bases: lifecycle first."""


def _on_demand_key(offer_key: str) -> str:
    provider, region, _zone, itype, _market = offer_key.split(":")
    return ":".join((provider, region, "-", itype, "on-demand"))


def fleet_status(
    store: Store | Engine | str,
    *,
    mode: str,
    sources: Mapping[str, Any],
    catalog: RegionCatalog,
    now: datetime,
) -> dict[str, Any]:
    """The summary of ``arbiter status -o json``, read from ``store`` (a Store, its
    engine, or a database URL, opened read-only for the summary alone) as of ``now``.
    Never writes."""
    limits = {name: c.stale_after for name, c in sources.items()}

    def stale(source: str, seen: datetime) -> bool:
        return now - seen > timedelta(seconds=limits.get(source, DEFAULT_STALE_AFTER))

    with reads.view(store, "reading the fleet summary") as r:
        placed_all = reads.placements(r)
        keys = {k for placed in placed_all.values() for k, _ in placed}
        keys |= {_on_demand_key(k) for k in keys}
        prices = freshest_prices(reads.newest_prices(r, keys=sorted(keys)), stale)
        types = reads.instance_shapes(r)
        carbon = _carbon_by_zone(reads.newest_carbon(r, CARBON_UNIT), stale)
        gpus_per_replica = {
            name: int(spec.get("gpus_per_replica", 1))
            for name, spec in reads.workload_specs(r).items()
        }
        statuses = reads.source_statuses(r)
        lease = reads.lease(r, "leader")
        in_flight = reads.migrations_by_state(r, excluding=FINISHED_MIGRATION_STATES)
    usd = baseline = 0.0
    grams: float | None = 0.0
    by: Counter[tuple[str, str, str]] = Counter()
    unpriced = 0
    for name, placed in placed_all.items():
        gpus = gpus_per_replica.get(name)
        for offer_key, replicas in placed:
            provider, region, _zone, itype, market = offer_key.split(":")
            by[(provider, region, market)] += replicas
            price = prices.get(offer_key)
            shape = types.get((provider, itype))
            if gpus is None or price is None or price[1] or shape is None:
                unpriced += replicas
                continue
            accelerator, accelerator_count = shape
            per_instance = math.floor(accelerator_count / gpus + 1e-9)
            if per_instance < 1:
                unpriced += replicas
                continue
            cost = replicas * price[0] / per_instance
            usd += cost
            on_demand = prices.get(_on_demand_key(offer_key))
            baseline += (
                replicas * on_demand[0] / per_instance
                if on_demand is not None and not on_demand[1]
                else cost
            )
            place = catalog.get(provider, region)
            intensity = carbon.get(place.grid_zone) if place else None
            if intensity is None or grams is None:
                grams = None
            else:
                power = POWER_KW.get(accelerator or "", DEFAULT_POWER_KW)
                grams += replicas * gpus * power * PUE * intensity
    source_rows = []
    for name, config in sorted(sources.items()):
        s = statuses.get(name)
        last_attempt, last_success, failures = s if s else (None, None, 0)
        age = (now - last_success).total_seconds() if last_success else None
        if last_attempt is None:
            health = "never polled"
        elif failures >= DEGRADED_AFTER:
            health = "degraded"
        elif failures:
            health = "failing"
        else:
            health = "ok"
        source_rows.append(
            {
                "source": name,
                "kind": config.kind,
                "health": health,
                "last_success_age_seconds": None if age is None else round(age),
                "stale": age is None or age > config.stale_after,
            }
        )
    return {
        "mode": mode,
        "leader": None
        if lease is None or lease[1] < now
        else {"holder": lease[0], "expires_at": lease[1].isoformat()},
        "workloads": len(gpus_per_replica),
        "replicas": sum(by.values()),
        "replicas_by": [
            {"provider": p, "region": r, "market": m, "replicas": n}
            for (p, r, m), n in sorted(by.items())
        ],
        "unpriced_replicas": unpriced,
        "usd_per_hour": round(usd, 4),
        "baseline_on_demand_usd_per_hour": round(baseline, 4),
        "savings_usd_per_hour": round(baseline - usd, 4),
        "savings_pct": round(100 * (baseline - usd) / baseline, 2) if baseline else None,
        "carbon_g_per_hour": None if grams is None else round(grams, 1),
        "sources": source_rows,
        "migrations_in_flight": dict(sorted(in_flight.items())),
    }


def freshest_prices(
    levels: Iterable[reads.NewestPrice], stale: Callable[[str, datetime], bool]
) -> dict[str, tuple[float, bool]]:
    """Offer key → ($/h, stale) of the price to use for each offer, chosen among its
    sources as :func:`arbiter.snapshots.build_snapshot` chooses: fresh before stale,
    then the one last seen newest (the first in ``levels`` on ties)."""
    chosen: dict[str, tuple[bool, datetime, float]] = {}
    for p in levels:
        is_stale = stale(p.source, p.last_seen)
        current = chosen.get(p.key)
        if current is None or (current[0], p.last_seen) > (is_stale, current[1]):
            chosen[p.key] = (is_stale, p.last_seen, p.usd_per_hour)
    return {key: (usd, is_stale) for key, (is_stale, _seen, usd) in chosen.items()}


def _carbon_by_zone(
    readings: Iterable[tuple[str, str, str, datetime, float]],
    stale: Callable[[str, datetime], bool],
) -> dict[str, float]:
    """Grid zone → gCO2eq/kWh, chosen as :func:`arbiter.snapshots.choose_carbon` does:
    of the newest reading per (zone, source, basis), fresh before stale, lifecycle
    before direct before marginal, newest first; forecasts and indices never."""
    chosen: dict[str, tuple[tuple[bool, int, float], float]] = {}
    for zone, source, basis, valid_at, value in readings:
        rank = (stale(source, valid_at), CARBON_BASIS_PREFERENCE[basis], -valid_at.timestamp())
        if zone not in chosen or rank < chosen[zone][0]:
            chosen[zone] = (rank, value)
    return {zone: value for zone, (_rank, value) in chosen.items()}
