"""CLI start-up: wall time of ``arbiter status`` (and ``prices``) from process start, on
a store holding 90 days of history. Target (issue 6): ≤ 0.5 s for ``status``.

The store is filled by replaying 90 recorded days (hourly polls of the shipped AWS,
Azure and GCP recording; daily price changes become change points) plus 200 workloads
with placements, into SQLite (the embedded default) and PostgreSQL.

Each command runs as a subprocess, as a user runs it: ``python -m arbiter CMD -o json``
with the store's URL in ``ARBITER_DATABASE_URL``. Bytecode caches are warm, as in an
installation (pip compiles every module when it installs it): the commands run with
``PYTHONDONTWRITEBYTECODE`` removed from their environment, and one untimed run of each
command first writes the caches of the modules it imports (and warms the page cache and
the database's buffers). Without that, a module edited since its cache was written (or
never cached, under ``PYTHONDONTWRITEBYTECODE=1``) is compiled again at every start.
The median of RUNS timed runs is the figure; the minimum and the load averages before
and after are recorded too, since on a shared machine a busy moment slows every start.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from arbiter.catalog import load_catalog
from arbiter.config import SourceConfig
from arbiter.domain.market import Offer
from arbiter.domain.workloads import GpuOption, Placement, Workload
from arbiter.polling import ConfiguredSource, Poller
from arbiter.ports import FakeClock
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store
from bench.common import postgres_url, write_result
from providers.replay import build

DAYS = 90
POLLS_PER_DAY = 4
RUNS = 11


def fill(url: str) -> dict[str, int]:
    upgrade(url)
    engine = make_engine(url)
    store = Store(engine)
    start = datetime.now(UTC) - timedelta(days=DAYS)
    clock = FakeClock(start)
    # speed 1: one real day is one recorded day; the poll times span the 90 days
    source = build("replay", {"speed": 1, "loop": True}, timeout=10)
    poller = Poller(
        store,
        {"replay": ConfiguredSource("replay", SourceConfig(kind="replay"), source)},
        load_catalog(),
        clock,
    )
    for _ in range(DAYS * POLLS_PER_DAY):
        assert poller.poll("replay").ok
        clock.advance(timedelta(hours=24 / POLLS_PER_DAY))
    offers = [p.offer for p in store.prices.latest()][:400]
    for i in range(200):
        w = Workload(
            name=f"w{i:03d}",
            data_class="internal",
            gpus_per_replica=1,
            gpu_options=(GpuOption(model="T4", tokens_per_second=500),),
            replicas=2,
        )
        store.workloads.upsert(w, now=clock.now())
        chosen: Offer = offers[i % len(offers)]
        store.workloads.set_placements(
            w.name, [Placement(workload=w.name, offer=chosen, replicas=2)], now=clock.now()
        )
    with engine.connect() as conn:
        from sqlalchemy import func, select

        from arbiter.store import schema

        rows = conn.execute(select(func.count()).select_from(schema.price_history)).scalar_one()
    engine.dispose()
    return {"price_history_rows": int(rows)}


def time_command(url: str, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["ARBITER_DATABASE_URL"] = url
    command = [sys.executable, "-m", "arbiter", *args, "--output", "json"]
    subprocess.run(command, env=env, check=True, capture_output=True)  # warm the caches
    load_before = os.getloadavg()
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return {
        "median_seconds": round(statistics.median(times), 3),
        "min_seconds": round(min(times), 3),
        "all_seconds": [round(t, 3) for t in times],
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }


def run_backend(url: str) -> dict[str, Any]:
    filled = fill(url)
    return {
        **filled,
        "status": time_command(url, "status"),
        "prices": time_command(url, "prices"),
    }


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = run_backend(f"sqlite:///{tmp}/arbiter.db")
    with postgres_url() as url:
        pg = run_backend(url)
    result = {
        "history_days": DAYS,
        "sqlite": sqlite,
        "postgresql": pg,
        "target": {"status_seconds": 0.5},
        "meets_target": max(sqlite["status"]["median_seconds"], pg["status"]["median_seconds"])
        <= 0.5,
    }
    write_result("cli_latency", result)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
