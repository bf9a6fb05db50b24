"""The fleet as operators see it: what runs where, what it costs against the on-demand
baseline, its carbon, data freshness, leadership and migrations in flight.

Read-only: everything comes from the store (and a snapshot built from it). The JSON
shape of :func:`fleet_status` is the stable contract of ``arbiter status -o json``
(documented in docs/cli.md).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from arbiter.domain.accelerators import DEFAULT_POWER_KW, POWER_KW, PUE
from arbiter.domain.regions import RegionCatalog
from arbiter.snapshots import choose_carbon, stale_checker
from arbiter.store.repositories import Store

DEGRADED_AFTER = 3


def _on_demand_key(offer_key: str) -> str:
    provider, region, _zone, itype, _market = offer_key.split(":")
    return ":".join((provider, region, "-", itype, "on-demand"))


def fleet_status(
    store: Store,
    *,
    mode: str,
    sources: Mapping[str, Any],
    catalog: RegionCatalog,
    now: datetime,
) -> dict[str, Any]:
    limits = {name: c.stale_after for name, c in sources.items()}
    stale = stale_checker(limits, now)
    placed_all = store.workloads.all_placements()
    keys = {k for placed in placed_all.values() for k, _ in placed}
    keys |= {_on_demand_key(k) for k in keys}
    prices: dict[str, tuple[float, bool]] = {}
    for p in store.prices.latest(keys=sorted(keys)):
        fresh = not stale(p.source, p.last_seen)
        if p.offer.key not in prices or (fresh and prices[p.offer.key][1] is False):
            prices[p.offer.key] = (p.usd_per_hour, not fresh)
    types = {(t.provider.value, t.name): t for t in store.instance_types.all()}
    carbon = choose_carbon(store, stale)
    workloads = {w.name: w for w in store.workloads.all()}
    usd = baseline = 0.0
    grams: float | None = 0.0
    by: Counter[tuple[str, str, str]] = Counter()
    unpriced = 0
    for name, placed in placed_all.items():
        w = workloads.get(name)
        for offer_key, replicas in placed:
            provider, region, _zone, itype, market = offer_key.split(":")
            by[(provider, region, market)] += replicas
            price = prices.get(offer_key)
            shape = types.get((provider, itype))
            if w is None or price is None or price[1] or shape is None:
                unpriced += replicas
                continue
            per_instance = math.floor(shape.accelerator_count / w.gpus_per_replica + 1e-9)
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
            zc = carbon.get(place.grid_zone) if place else None
            if zc is None or grams is None:
                grams = None
            else:
                power = POWER_KW.get(shape.accelerator or "", DEFAULT_POWER_KW)
                grams += replicas * w.gpus_per_replica * power * PUE * zc.gco2_per_kwh
    statuses = {s.source: s for s in store.sources.all()}
    source_rows = []
    for name, config in sorted(sources.items()):
        s = statuses.get(name)
        age = (now - s.last_success_at).total_seconds() if s and s.last_success_at else None
        if s is None or s.last_attempt_at is None:
            health = "never polled"
        elif s.consecutive_failures >= DEGRADED_AFTER:
            health = "degraded"
        elif s.consecutive_failures:
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
    lease = store.leases.get("leader")
    in_flight = Counter(m.state.value for m in store.migrations.unfinished())
    return {
        "mode": mode,
        "leader": None
        if lease is None or lease.expires_at < now
        else {"holder": lease.holder, "expires_at": lease.expires_at.isoformat()},
        "workloads": len(workloads),
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
