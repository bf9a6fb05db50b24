"""Ingest speed: price quotes per second into PostgreSQL (and SQLite) with change-point
dedup. Target (issue 3): ≥ 50,000 quotes/s into PostgreSQL.

Workload: OFFERS offers polled POLLS times; each poll changes CHANGED of the prices,
the rest are unchanged (their last_seen moves). The first poll (all new) and the steady
state are reported separately; the figure is the median over the steady-state polls.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from arbiter.domain.market import Market, Offer, PriceQuote, Provider
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store
from bench.common import postgres_url, write_result

OFFERS = 20_000
POLLS = 6
CHANGED = 0.05


def _offers() -> list[Offer]:
    regions = [f"region-{i:02d}" for i in range(40)]
    out = []
    for i in range(OFFERS):
        out.append(
            Offer(
                provider=(Provider.AWS, Provider.GCP, Provider.AZURE)[i % 3],
                region=regions[i % len(regions)],
                zone=f"z{i % 4}",
                instance_type=f"type-{i // 120}",
                market=(Market.SPOT, Market.ON_DEMAND)[i % 2],
            )
        )
    return out


def run_backend(url: str) -> dict[str, Any]:
    upgrade(url)
    engine = make_engine(url)
    store = Store(engine)
    rng = random.Random(7)
    offers = _offers()
    prices = [round(rng.uniform(0.2, 90), 4) for _ in offers]
    t0 = datetime(2025, 6, 2, tzinfo=UTC)
    rates = []
    first = None
    for poll in range(POLLS):
        at = t0 + timedelta(minutes=5 * poll)
        if poll:
            for i in rng.sample(range(OFFERS), int(OFFERS * CHANGED)):
                prices[i] = round(prices[i] * rng.uniform(0.9, 1.1), 4)
        quotes = [
            PriceQuote(offer=o, usd_per_hour=p, observed_at=at, source="bench")
            for o, p in zip(offers, prices, strict=True)
        ]
        start = time.perf_counter()
        stats = store.prices.record(quotes)
        seconds = time.perf_counter() - start
        if poll == 0:
            first = {"seconds": round(seconds, 3), "quotes_per_second": round(OFFERS / seconds)}
            assert stats.inserted == OFFERS
        else:
            rates.append(OFFERS / seconds)
            assert stats.inserted + stats.extended == OFFERS
    engine.dispose()
    rates.sort()
    return {
        "first_poll": first,
        "steady_state_quotes_per_second_median": round(rates[len(rates) // 2]),
        "steady_state_quotes_per_second_all": [round(r) for r in rates],
    }


def main() -> dict[str, Any]:
    import tempfile

    with postgres_url() as url:
        pg = run_backend(url)
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = run_backend(f"sqlite:///{tmp}/bench.db")
    result = {
        "workload": {"offers": OFFERS, "polls": POLLS, "changed_per_poll": CHANGED},
        "postgresql": pg,
        "sqlite": sqlite,
        "target": {"postgresql_quotes_per_second": 50_000},
        "meets_target": pg["steady_state_quotes_per_second_median"] >= 50_000,
    }
    write_result("ingest", result)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
