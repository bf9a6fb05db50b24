"""One full poll cycle of recorded data for all three clouds into the store.
Target (issue 3): ≤ 2 s on PostgreSQL.

The replay source's full state (every GPU offer of AWS, Azure and GCP in the shipped
recording, spot and on-demand, plus Spot Advisor capacity and the instance-type
catalog) is polled through the real Poller into a fresh store: the first cycle (all
new rows) and the median of the next cycles (one recorded day apart, so prices move).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from arbiter.catalog import load_catalog
from arbiter.config import SourceConfig
from arbiter.polling import ConfiguredSource, Poller
from arbiter.ports import FakeClock
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store
from bench.common import postgres_url, write_result
from providers.replay import build

CYCLES = 6


def run_backend(url: str) -> dict[str, Any]:
    upgrade(url)
    engine = make_engine(url)
    store = Store(engine)
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    source = build("replay", {"speed": 1440}, timeout=10)
    poller = Poller(
        store,
        {"replay": ConfiguredSource("replay", SourceConfig(kind="replay"), source)},
        load_catalog(),
        clock,
    )
    timings = []
    quotes = 0
    for _ in range(CYCLES):
        start = time.perf_counter()
        result = poller.poll("replay")
        timings.append(time.perf_counter() - start)
        assert result.ok, result.error
        quotes = result.prices.inserted + result.prices.extended
        clock.advance(timedelta(minutes=1))  # one recorded day at speed 1440
    engine.dispose()
    return {
        "quotes_per_cycle": quotes,
        "first_cycle_seconds": round(timings[0], 3),
        "steady_cycle_seconds_median": round(statistics.median(timings[1:]), 3),
        "all_cycles_seconds": [round(t, 3) for t in timings],
    }


def main() -> dict[str, Any]:
    with postgres_url() as url:
        pg = run_backend(url)
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = run_backend(f"sqlite:///{tmp}/bench.db")
    result = {
        "postgresql": pg,
        "sqlite": sqlite,
        "target": {"cycle_seconds": 2.0},
        "meets_target": max(pg["first_cycle_seconds"], pg["steady_cycle_seconds_median"]) <= 2.0,
    }
    write_result("poll_cycle", result)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
