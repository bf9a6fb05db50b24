"""A reconcile cycle from PostgreSQL at scale, and the daemon's memory over an
accelerated multi-day run.

``cycle``: 1,000 workloads × 30,000 offers (about the whole real three-cloud GPU
catalog) in PostgreSQL; one reconcile pass = build the market snapshot from the store,
decide every workload at once (HiGHS), record changed decisions, plan against what
runs, and drive migrations (dry-run executor). Target (issue 5): ≤ 2 s. The first pass
places every workload (1,000 decisions recorded, 1,000 migrations run); the figure is
the median of the steady passes after it, with prices changing between passes.

``memory``: the same loop on SQLite with a FakeClock advancing 10 minutes per pass for
7 simulated days (1,008 passes) at 100 workloads × 3,000 offers, prices drifting;
resident memory (VmRSS) and tracemalloc's traced peak at day 1 and day 7.

Offers are synthetic but shaped like the real catalog: real regions of the shipped
region catalog, real GPU instance types from the shipped instance-type catalog, per-GPU
prices around list prices, spot at 30-70 % of on-demand.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from arbiter.catalog import load_catalog
from arbiter.config import Settings
from arbiter.domain.market import InstanceType, Market, Offer, PriceQuote, Provider
from arbiter.executors.dry_run import DryRunExecutor
from arbiter.migrator import Migrator
from arbiter.ports import FakeClock
from arbiter.reconcile import Reconciler
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store
from bench.common import postgres_url, write_result

GPU_PRICE = {"H100": 4.0, "A100-80GB": 2.6, "A100": 2.0, "L40S": 1.6, "A10G": 1.1, "L4": 0.75}
POLICIES = {
    "eu.yaml": """\
apiVersion: arbiter/v1
kind: PlacementPolicy
metadata: {name: eu}
select: {data_classes: [personal-eu]}
constraints:
  - id: eu-residency
    sovereignty: {data_classes: [personal-eu], jurisdictions: [EU, EEA]}
redundancy: {spread: {across: region, min_distinct: 2}}
capacity: {spot: {allowed: true, max_share: 0.5}}
migration: {sustained_for: 0s, cooldown: 0s, min_saving: {pct: 5}}
""",
    "anywhere.yaml": """\
apiVersion: arbiter/v1
kind: PlacementPolicy
metadata: {name: anywhere}
select: {data_classes: [public]}
constraints:
  - id: public-anywhere
    sovereignty: {data_classes: [public], jurisdictions: [EU, EEA, US, CA, GB, JP, AU, SG, IN, KR]}
migration: {sustained_for: 0s, cooldown: 0s, min_saving: {pct: 5}}
""",
}


def _instance_types() -> list[InstanceType]:
    out = []
    for provider in Provider:
        for model in GPU_PRICE:
            for count in (1, 2, 4, 8):
                out.append(
                    InstanceType(
                        provider=provider,
                        name=f"bench-{model.lower()}-{count}",
                        vcpus=8 * count,
                        memory_gib=32 * count,
                        accelerator=model,
                        accelerator_count=count,
                        accelerator_memory_gib=80,
                    )
                )
    return out


def _offers(n: int, rng: random.Random) -> list[tuple[Offer, float]]:
    catalog = load_catalog()
    regions = [(str(r.provider), r.id) for r in catalog]
    types = _instance_types()
    out: list[tuple[Offer, float]] = []
    seen: set[str] = set()
    while len(out) < n:
        provider, region = rng.choice(regions)
        it = rng.choice([t for t in types if t.provider.value == provider])
        market = rng.choice((Market.SPOT, Market.ON_DEMAND))
        offer = Offer(
            provider=provider, region=region, zone=f"{region}-{rng.choice('abcdefgh')}",
            instance_type=it.name, market=market,
        )  # fmt: skip
        if offer.key in seen:
            continue
        seen.add(offer.key)
        per_gpu = GPU_PRICE[it.accelerator or "L4"] * rng.lognormvariate(0, 0.12)
        if market is Market.SPOT:
            per_gpu *= rng.uniform(0.3, 0.7)
        out.append((offer, round(per_gpu * it.accelerator_count, 4)))
    return out


def _workloads(root: Path, n: int, rng: random.Random) -> None:
    (root / "policies").mkdir()
    (root / "workloads").mkdir()
    for name, text in POLICIES.items():
        (root / "policies" / name).write_text(text)
    docs = []
    for i in range(n):
        eu = i % 3 == 0
        models = rng.sample(list(GPU_PRICE), 2)
        options = ", ".join(
            f"{{model: {m}, tokens_per_second: {int(1000 * GPU_PRICE[m])}}}" for m in models
        )
        docs.append(
            "apiVersion: arbiter/v1\nkind: Workload\n"
            f"metadata: {{name: w{i:05d}}}\n"
            "spec:\n"
            f"  data_class: {'personal-eu' if eu else 'public'}\n"
            f"  gpus_per_replica: {rng.choice([1, 1, 2, 4])}\n"
            f"  gpu_options: [{options}]\n"
            f"  replicas: {rng.randint(1, 4)}\n"
            "  warmup_seconds: 0\n"
        )
    for start in range(0, n, 200):
        (root / "workloads" / f"w{start:05d}.yaml").write_text(
            "---\n".join(docs[start : start + 200])
        )


def _world(url: str, root: Path, workloads: int, offers: int, clock: FakeClock, seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    upgrade(url)
    store = Store(make_engine(url))
    store.instance_types.upsert(_instance_types(), now=clock.now())
    priced = _offers(offers, rng)
    store.prices.record(
        [
            PriceQuote(offer=o, usd_per_hour=p, observed_at=clock.now(), source="bench")
            for o, p in priced
        ]
    )
    _workloads(root, workloads, rng)
    settings = Settings.model_validate(
        {
            "daemon": {"mode": "enforce", "kill_switch_file": str(root / "KILL")},
            "policies": {"paths": [str(root / "policies")], "workloads": [str(root / "workloads")]},
        }
    )
    executor = DryRunExecutor(clock)
    migrator = Migrator(store, executor, executor, clock, actor="bench")
    reconciler = Reconciler(
        store, migrator, settings, load_catalog(), clock, stale_after={"bench": 7 * 86400}
    )
    return store, reconciler, priced, rng


def _drift(
    store: Store, priced: list[tuple[Offer, float]], rng: random.Random, now: datetime
) -> None:
    """Move 5 % of the prices by up to ±30 %."""
    sample = rng.sample(range(len(priced)), len(priced) // 20)
    quotes = []
    for i in sample:
        offer, price = priced[i]
        price = round(price * rng.uniform(0.7, 1.3), 4)
        priced[i] = (offer, price)
        quotes.append(PriceQuote(offer=offer, usd_per_hour=price, observed_at=now, source="bench"))
    store.prices.record(quotes)


def cycle(workloads: int = 1_000, offers: int = 30_000, passes: int = 5) -> dict[str, Any]:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with postgres_url() as url, tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock(datetime(2025, 6, 2, 9, tzinfo=UTC))
        store, reconciler, priced, rng = _world(url, Path(tmp), workloads, offers, clock, 7)
        start = time.perf_counter()
        first = reconciler.tick()
        first_s = time.perf_counter() - start
        placed = sum(1 for d in first.outcome.decisions if d.placed) if first.outcome else 0
        times = []
        solver = []
        for _ in range(passes):
            clock.advance(timedelta(minutes=5))
            _drift(store, priced, rng, clock.now())
            t = time.perf_counter()
            result = reconciler.tick()
            times.append(time.perf_counter() - t)
            if result.outcome:
                solver.append(result.outcome.solution.solve_seconds)
        store.engine.dispose()
    median = statistics.median(times)
    return {
        "workloads": workloads,
        "offers": offers,
        "placed": placed,
        "first_pass_seconds": round(first_s, 3),
        "steady_pass_seconds": [round(x, 3) for x in times],
        "median_seconds": round(median, 3),
        "solver_seconds_median": round(statistics.median(solver), 3) if solver else None,
        "target_seconds": 2.0,
        "meets_target": median <= 2.0,
    }


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory(days: int = 7, workloads: int = 100, offers: int = 3_000) -> dict[str, Any]:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'soak.db'}"
        clock = FakeClock(datetime(2025, 6, 2, 9, tzinfo=UTC))
        store, reconciler, priced, rng = _world(url, Path(tmp), workloads, offers, clock, 11)
        passes_per_day = 24 * 6
        tracemalloc.start()
        marks: dict[int, dict[str, float]] = {}
        started = time.perf_counter()
        for p in range(days * passes_per_day):
            clock.advance(timedelta(minutes=10))
            if p % 3 == 0:
                _drift(store, priced, rng, clock.now())
            reconciler.tick()
            day = (p + 1) // passes_per_day
            if (p + 1) % passes_per_day == 0:
                current, peak = tracemalloc.get_traced_memory()
                marks[day] = {
                    "rss_mib": round(_rss_mib(), 1),
                    "traced_mib": round(current / 2**20, 2),
                    "traced_peak_mib": round(peak / 2**20, 2),
                }
        tracemalloc.stop()
        wall = time.perf_counter() - started
        migrations = len(store.migrations.recent(limit=100_000))
        store.engine.dispose()
    growth = marks[days]["traced_mib"] - marks[1]["traced_mib"]
    return {
        "simulated_days": days,
        "passes": days * passes_per_day,
        "workloads": workloads,
        "offers": offers,
        "wall_seconds": round(wall, 1),
        "migrations": migrations,
        "by_day": marks,
        "traced_growth_day1_to_day7_mib": round(growth, 2),
        "rss_growth_day1_to_day7_mib": round(marks[days]["rss_mib"] - marks[1]["rss_mib"], 1),
    }


def main() -> dict[str, Any]:
    result = {"cycle": cycle(), "memory": memory()}
    write_result("reconcile", result)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
