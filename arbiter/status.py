"""The fleet as operators see it: what runs where, what it costs against the on-demand
baseline, its carbon, data freshness, leadership and migrations in flight.

Read-only: everything comes from the store, read in one read-only transaction
(:func:`arbiter.store.db.read_session`). The JSON shape of :func:`fleet_status` is the
stable contract of ``arbiter status -o json`` (documented in docs/cli.md).

The summary reads the tables with a few SQLAlchemy Core queries, into plain values,
instead of going through :mod:`arbiter.store.repositories`: ``arbiter status`` must
answer within half a second of the process starting (issue 6), and importing the
repositories with every domain model behind them, then validating each row into one,
is work a one-shot view does not need (for ``arbiter prices``, which reads every
offer through :func:`newest_prices`, it was a fifth of the command's work). The
queries select what the repositories' ``all_placements``, ``prices.latest``,
``instance_types.all``, ``carbon.latest``, ``workloads.all``, ``sources.all``,
``leases.get`` and ``migrations.unfinished`` would, reduced to the columns used;
tests check them against the repositories. The newest price of each placed offer is
found through the index on ``(offer_id, source, first_seen)``, so 90 days of price
history cost a lookup per offer, not a scan.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from arbiter.domain.accelerators import DEFAULT_POWER_KW, POWER_KW, PUE

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

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
    store: Store | Engine,
    *,
    mode: str,
    sources: Mapping[str, Any],
    catalog: RegionCatalog,
    now: datetime,
) -> dict[str, Any]:
    """The summary of ``arbiter status -o json``, read from ``store`` (a Store or its
    engine) as of ``now``. Never writes."""
    from sqlalchemy import Engine

    from arbiter.store.db import read_session

    engine = store if isinstance(store, Engine) else store.engine
    limits = {name: c.stale_after for name, c in sources.items()}

    def stale(source: str, seen: datetime) -> bool:
        return now - seen > timedelta(seconds=limits.get(source, DEFAULT_STALE_AFTER))

    with read_session(engine, "reading the fleet summary") as conn:
        placed_all = _placements(conn)
        keys = {k for placed in placed_all.values() for k, _ in placed}
        keys |= {_on_demand_key(k) for k in keys}
        prices = freshest_prices(newest_prices(conn, keys=sorted(keys)), stale)
        types = instance_shapes(conn)
        carbon = _carbon_by_zone(conn, stale)
        gpus_per_replica = _gpus_per_replica(conn)
        statuses = _source_statuses(conn)
        lease = _leader_lease(conn)
        in_flight = _migrations_in_flight(conn)
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
    levels: Iterable[NewestPrice], stale: Callable[[str, datetime], bool]
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


# ----------------------------------------------------------------- the store's tables


def _placements(conn: Connection) -> dict[str, list[tuple[str, int]]]:
    """Workload → [(offer key, replicas)], by workload then offer key."""
    from sqlalchemy import select

    from arbiter.store.schema import placements as p

    placed: dict[str, list[tuple[str, int]]] = {}
    query = select(p.c.workload, p.c.offer_key, p.c.replicas).order_by(p.c.workload, p.c.offer_key)
    for workload, offer_key, replicas in conn.execute(query):
        placed.setdefault(workload, []).append((offer_key, replicas))
    return placed


class NewestPrice(NamedTuple):
    """The newest price of an offer from one source (a row of the change-point history)."""

    key: str
    provider: str
    region: str
    zone: str | None
    instance_type: str
    market: str
    source: str
    usd_per_hour: float
    first_seen: datetime
    last_seen: datetime


def newest_prices(
    conn: Connection, *, keys: Sequence[str] | None = None, provider: str | None = None
) -> list[NewestPrice]:
    """The newest price level of every offer (or of the offers ``keys``; or of one
    provider's) and source: what ``store.prices.latest(provider=..., keys=...)`` gives,
    without building a domain value per row. By offer key then source; for ``keys``,
    by offer, each offer's sources in the order the database sorts them (as there).

    The newest level of an (offer, source) is the one with the greatest
    ``first_seen``. For a few offers (``keys``), the groups come from the index on
    ``(offer_id, source, first_seen)`` alone and each level's price is looked up
    through the same index: a lookup per offer, however long the history. (Joining
    the groups back to the table, or to ``offers``, lets PostgreSQL choose to scan all
    of the history instead.) For every offer, the history is grouped once and joined
    back.
    """
    from sqlalchemy import and_, func, select

    from arbiter.store import changepoints
    from arbiter.store.schema import offers, price_history

    ph = price_history
    grouped = select(
        ph.c.offer_id, ph.c.source, func.max(ph.c.first_seen).label("first_seen")
    ).group_by(ph.c.offer_id, ph.c.source)
    offer_columns = (
        offers.c.key,
        offers.c.provider,
        offers.c.region,
        offers.c.zone,
        offers.c.instance_type,
        offers.c.market,
    )
    if keys is not None:
        if not keys:
            return []
        wanted = select(offers.c.id, *offer_columns).where(
            changepoints.member_of(conn, offers.c.key, list(keys))
        )
        if provider:
            wanted = wanted.where(offers.c.provider == provider)
        offer_of = {row[0]: tuple(row[1:]) for row in conn.execute(wanted)}
        # one array parameter on PostgreSQL (as the repositories bind lists), not 200
        ids = changepoints.member_of(conn, ph.c.offer_id, sorted(offer_of))
        newest = grouped.where(ids).subquery()
        level = ph.alias("level")

        def at_newest(column: Any) -> Any:
            return (
                select(column)
                .where(
                    level.c.offer_id == newest.c.offer_id,
                    level.c.source == newest.c.source,
                    level.c.first_seen == newest.c.first_seen,
                )
                .scalar_subquery()
            )

        levels = select(
            newest.c.offer_id,
            newest.c.source,
            at_newest(level.c.usd_per_hour),
            newest.c.first_seen,
            at_newest(level.c.last_seen),
        ).order_by(newest.c.offer_id, newest.c.source)
        return [NewestPrice._make((*offer_of[row[0]], *row[1:])) for row in conn.execute(levels)]
    newest = grouped.subquery()
    query = (
        select(*offer_columns, ph.c.source, ph.c.usd_per_hour, ph.c.first_seen, ph.c.last_seen)
        .join(ph, ph.c.offer_id == offers.c.id)
        .join(
            newest,
            and_(
                ph.c.offer_id == newest.c.offer_id,
                ph.c.source == newest.c.source,
                ph.c.first_seen == newest.c.first_seen,
            ),
        )
        .order_by(offers.c.key, ph.c.source)
    )
    if provider:
        query = query.where(offers.c.provider == provider)
    return [NewestPrice._make(row) for row in conn.execute(query)]


def instance_shapes(conn: Connection) -> dict[tuple[str, str], tuple[str | None, float]]:
    """(provider, instance type) → (accelerator, accelerator count)."""
    from sqlalchemy import select

    from arbiter.store.schema import instance_types as it

    query = select(it.c.provider, it.c.name, it.c.accelerator, it.c.accelerator_count)
    return {(p, n): (accelerator, count) for p, n, accelerator, count in conn.execute(query)}


def _carbon_by_zone(conn: Connection, stale: Callable[[str, datetime], bool]) -> dict[str, float]:
    """Grid zone → gCO2eq/kWh, chosen as :func:`arbiter.snapshots.choose_carbon` does:
    of the newest reading per (zone, source, basis), fresh before stale, lifecycle
    before direct before marginal, newest first; forecasts and indices never."""
    from sqlalchemy import and_, func, select

    from arbiter.store.schema import carbon_readings as cr

    readings = cr.c.forecast.is_(False) & (cr.c.unit == CARBON_UNIT)
    newest = (
        select(cr.c.zone, cr.c.source, cr.c.basis, func.max(cr.c.valid_at).label("va"))
        .where(readings)
        .group_by(cr.c.zone, cr.c.source, cr.c.basis)
        .subquery()
    )
    query = (
        select(cr.c.zone, cr.c.source, cr.c.basis, cr.c.valid_at, cr.c.value)
        .join(
            newest,
            and_(
                cr.c.zone == newest.c.zone,
                cr.c.source == newest.c.source,
                cr.c.basis == newest.c.basis,
                cr.c.valid_at == newest.c.va,
            ),
        )
        .where(readings)
        .order_by(cr.c.zone, cr.c.source, cr.c.basis)
    )
    chosen: dict[str, tuple[tuple[bool, int, float], float]] = {}
    for zone, source, basis, valid_at, value in conn.execute(query):
        rank = (stale(source, valid_at), CARBON_BASIS_PREFERENCE[basis], -valid_at.timestamp())
        if zone not in chosen or rank < chosen[zone][0]:
            chosen[zone] = (rank, value)
    return {zone: value for zone, (_rank, value) in chosen.items()}


def _gpus_per_replica(conn: Connection) -> dict[str, int]:
    """Workload name → GPUs per replica, of every workload in the store."""
    from sqlalchemy import select

    from arbiter.store.schema import workloads as w

    return {
        name: int(spec.get("gpus_per_replica", 1))
        for name, spec in conn.execute(select(w.c.name, w.c.spec))
    }


def _source_statuses(
    conn: Connection,
) -> dict[str, tuple[datetime | None, datetime | None, int]]:
    """Source → (last attempt, last success, consecutive failures)."""
    from sqlalchemy import select

    from arbiter.store.schema import source_status as ss

    query = select(
        ss.c.source, ss.c.last_attempt_at, ss.c.last_success_at, ss.c.consecutive_failures
    )
    return {source: (attempt, success, n) for source, attempt, success, n in conn.execute(query)}


def _leader_lease(conn: Connection) -> tuple[str, datetime] | None:
    """(holder, expires at) of the leader lease, if any."""
    from sqlalchemy import select

    from arbiter.store.schema import leases

    row = conn.execute(
        select(leases.c.holder, leases.c.expires_at).where(leases.c.name == "leader")
    ).first()
    return None if row is None else (row[0], row[1])


def _migrations_in_flight(conn: Connection) -> Counter[str]:
    """State → number of migrations in it, of the migrations not finished."""
    from sqlalchemy import func, select

    from arbiter.store.schema import migrations as m

    query = (
        select(m.c.state, func.count())
        .where(m.c.state.not_in(FINISHED_MIGRATION_STATES))
        .group_by(m.c.state)
    )
    return Counter({state: n for state, n in conn.execute(query)})
