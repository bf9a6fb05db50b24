"""Change-point encoding against its rules, on SQLite and on PostgreSQL.

PostgreSQL writes a batch with one set-based statement (one form when every series is
observed once, another when some are observed several times); SQLite compares in
Python. Random batches run through each and must store exactly what the rules say.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from arbiter.domain.market import Market, Offer, PriceQuote, Provider
from arbiter.errors import StoreError
from arbiter.store import changepoints
from arbiter.store import schema as t
from arbiter.store.changepoints import IngestStats, Observation, Observations
from arbiter.store.db import translate_errors
from arbiter.store.repositories import Store

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
OFFERS = [
    Offer(
        provider=Provider.AWS,
        region=f"region-{i}",
        zone=None,
        instance_type="p5.48xlarge",
        market=Market.SPOT,
    )
    for i in range(50)
]


Series = tuple[Hashable, ...]
Level = list[Any]  # [value, first_seen, last_seen]


class Rules:
    """The rules of the module docstring, applied one observation at a time."""

    def __init__(self) -> None:
        self.levels: dict[Series, list[Level]] = {}

    def apply(self, batch: Sequence[Observation]) -> IngestStats:
        inserted = extended = ignored = 0
        in_order = sorted(batch, key=lambda o: o.at)
        newest_in_batch = {o.series: i for i, o in enumerate(in_order)}
        for i, obs in enumerate(in_order):
            levels = self.levels.setdefault(obs.series, [])
            at = obs.at
            if levels and at < levels[-1][2]:
                if i != newest_in_batch[obs.series]:
                    ignored += 1
                    continue
                at = levels[-1][2]  # the current value: seen when the newest level was
            if levels and levels[-1][0] == obs.value:
                levels[-1][2] = at
                extended += 1
            else:
                if levels:  # a level begins after the one before it
                    at = max(at, levels[-1][1] + MICROSECOND)
                levels.append([obs.value, at, at])
                inserted += 1
        return IngestStats(inserted=inserted, extended=extended, ignored=ignored)

    def rows(self) -> list[tuple[Any, ...]]:
        return sorted(
            (*series, value, first, last)
            for series, levels in self.levels.items()
            for value, first, last in levels
        )


def describe(series: Series) -> dict[str, Any]:
    key, _source = series
    return {
        "provider": "aws",
        "region": str(key).split(":")[1],
        "zone": None,
        "instance_type": None,
        "kind": "spot_placement_score",
    }


def random_batches(seed: int, *, several_per_series: bool) -> list[list[Observation]]:
    """Batches over 40 series, shuffled, with repeated values (extensions), changed
    ones, values returning to an old level, and times older than what is stored
    (ignored, or, for a series' newest in its batch, the current value as after a
    backward clock step). No series is observed twice at one time: which level is the
    newest would be a tie."""
    rng = random.Random(seed)
    series = [(f"aws:region-{i % 7}:zone-{i}:*:kind", f"src{i % 2}") for i in range(40)]
    free_times = {s: rng.sample(range(200), 200) for s in series}
    batches = []
    for _ in range(6):
        batch = []
        for s in rng.sample(series, 30):
            for _ in range(rng.choice((2, 3)) if several_per_series else 1):
                at = T0 + timedelta(minutes=free_times[s].pop())
                batch.append(Observation(s, rng.choice((1, 2.0, 3)), at))  # ints too
        rng.shuffle(batch)
        batches.append(batch)
    return batches


def stored_rows(engine: Engine) -> list[tuple[Any, ...]]:
    cs = t.capacity_signals
    with engine.connect() as conn:
        return sorted(
            tuple(row)
            for row in conn.execute(
                select(cs.c.key, cs.c.source, cs.c.value, cs.c.first_seen, cs.c.last_seen)
            )
        )


def record(engine: Engine, batch: Sequence[Observation]) -> IngestStats:
    with translate_errors("test"), engine.begin() as conn:
        return changepoints.record(
            conn,
            t.capacity_signals,
            ("key", "source"),
            "value",
            batch,
            {o.series: describe(o.series) for o in batch},
        )


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("several_per_series", [False, True], ids=["once", "several"])
def test_random_batches_are_stored_as_the_rules_say(
    engine: Engine, seed: int, several_per_series: bool
) -> None:
    rules = Rules()
    for batch in random_batches(seed, several_per_series=several_per_series):
        assert record(engine, batch) == rules.apply(batch)
        assert stored_rows(engine) == rules.rows()


def test_observations_held_as_columns_read_as_observations() -> None:
    rows = [Observation((1, "a"), 2.0, T0), Observation((3, "a"), 4.0, T0)]
    columns = Observations(([1, 3], ["a", "a"]), [2.0, 4.0], [T0, T0])
    assert list(columns) == rows and columns[1] == rows[1] and columns[::-1] == rows[::-1]
    assert Observations.of(rows, 2).series == ([1, 3], ["a", "a"])
    with pytest.raises(ValueError, match="one entry per row"):
        Observations(([1],), [2.0, 4.0], [T0, T0])


def test_observations_held_as_columns_are_stored_as_the_rules_say(engine: Engine) -> None:
    rules = Rules()
    for batch in random_batches(4, several_per_series=True):
        as_columns = Observations.of(batch, 2)
        assert record(engine, as_columns) == rules.apply(batch)
        assert stored_rows(engine) == rules.rows()


def test_a_new_level_gets_the_described_columns(engine: Engine) -> None:
    series = ("aws:eu-west-1:-:*:spot_placement_score", "em")
    record(engine, [Observation(series, 3.0, T0)])
    with engine.connect() as conn:
        row = conn.execute(select(t.capacity_signals)).one()
    assert (row.provider, row.region, row.zone, row.kind) == (
        "aws",
        "eu-west-1",
        None,
        "spot_placement_score",
    )


def test_recording_the_same_batch_again_only_counts_it_as_unchanged(engine: Engine) -> None:
    batch = [
        Observation(("aws:r:-:*:k", "a"), 1.0, T0),
        Observation(("aws:r:-:*:k", "a"), 2.0, T0 + timedelta(minutes=5)),
        Observation(("aws:s:-:*:k", "a"), 1.0, T0),
    ]
    record(engine, batch)
    before = stored_rows(engine)
    assert record(engine, batch) == IngestStats(extended=2, ignored=1)
    assert record(engine, batch[2:]) == IngestStats(extended=1)
    assert stored_rows(engine) == before


def test_a_new_value_at_the_time_last_seen_starts_a_new_level(engine: Engine) -> None:
    series = ("aws:r:-:*:k", "a")
    later = T0 + timedelta(minutes=5)
    record(engine, [Observation(series, 1.0, T0), Observation(series, 1.0, later)])
    assert record(engine, [Observation(series, 2.0, later)]) == IngestStats(inserted=1)
    assert stored_rows(engine) == [(*series, 1.0, T0, later), (*series, 2.0, later, later)]


def test_after_the_clock_stepped_back_a_changed_value_starts_a_level_where_the_last_ended(
    engine: Engine,
) -> None:
    """The clock stepped back 9 minutes: every observation is now older than what the
    store holds, yet the batch came after it; its newest value is the current one."""
    series = ("aws:r:-:*:k", "a")
    seen = T0 + timedelta(minutes=5)
    record(engine, [Observation(series, 1.0, T0), Observation(series, 1.0, seen)])
    stepped_back = seen - timedelta(minutes=9)
    assert record(engine, [Observation(series, 0.25, stepped_back)]) == IngestStats(inserted=1)
    assert stored_rows(engine) == [(*series, 0.25, seen, seen), (*series, 1.0, T0, seen)]


def test_a_change_at_the_time_its_level_began_starts_a_level_a_microsecond_later(
    engine: Engine,
) -> None:
    """Two levels never begin at one time (which would be the newest?): here the clock
    has not yet caught up with the level recorded after it stepped back."""
    series = ("aws:r:-:*:k", "a")
    seen = T0 + timedelta(minutes=5)
    record(engine, [Observation(series, 1.0, seen)])
    record(engine, [Observation(series, 0.25, T0)])  # stepped back: starts at `seen`...
    assert record(engine, [Observation(series, 0.5, T0)]) == IngestStats(inserted=1)
    assert stored_rows(engine) == [
        (*series, 0.25, seen + MICROSECOND, seen + MICROSECOND),  # ...a microsecond on
        (*series, 0.5, seen + 2 * MICROSECOND, seen + 2 * MICROSECOND),
        (*series, 1.0, seen, seen),
    ]


def test_after_the_clock_stepped_back_an_unchanged_value_leaves_its_level_as_it_is(
    engine: Engine,
) -> None:
    series = ("aws:r:-:*:k", "a")
    record(engine, [Observation(series, 1.0, T0)])
    before = stored_rows(engine)
    stepped_back = T0 - timedelta(minutes=9)
    assert record(engine, [Observation(series, 1.0, stepped_back)]) == IngestStats(extended=1)
    assert stored_rows(engine) == before


def test_an_old_observation_with_a_newer_one_in_its_batch_is_ignored(engine: Engine) -> None:
    """A provider sends the time a price changed again with each answer (AWS spot
    history: the price in force at the start time), and the current price confirmed at
    the poll's time: the old change is history the store already has, even when the
    clock stepped back and the confirmation too is older than the store."""
    series = ("aws:r:-:*:k", "a")
    changed, seen = T0, T0 + timedelta(minutes=10)
    record(
        engine,
        [
            Observation(series, 2.0, T0 - timedelta(hours=1)),
            Observation(series, 3.0, changed),
            Observation(series, 3.0, seen),
        ],
    )
    before = stored_rows(engine)
    stepped_back = seen - timedelta(minutes=9)
    again = [Observation(series, 3.0, changed), Observation(series, 3.0, stepped_back)]
    assert record(engine, again) == IngestStats(extended=1, ignored=1)
    older = [
        Observation(series, 2.0, T0 - timedelta(hours=1)),
        Observation(series, 3.0, stepped_back),
    ]
    assert record(engine, older) == IngestStats(extended=1, ignored=1)
    assert stored_rows(engine) == before


def test_a_batch_that_fails_stores_nothing(store: Store) -> None:
    store.prices.record([PriceQuote(offer=OFFERS[0], usd_per_hour=1.0, observed_at=T0, source="s")])
    before = store.prices.history(OFFERS[0])
    with store.engine.connect() as conn:
        known = conn.execute(select(t.offers.c.id)).scalar_one()
    later = T0 + timedelta(minutes=5)
    with pytest.raises(StoreError), translate_errors("test"), store.engine.begin() as conn:
        changepoints.record(
            conn,
            t.price_history,
            ("offer_id", "source"),
            "usd_per_hour",
            [
                Observation((known, "s"), 1.0, later),  # would move last_seen
                Observation((999_999, "s"), 1.0, later),  # no such offer
            ],
        )
    assert store.prices.history(OFFERS[0]) == before


def test_a_naive_time_is_refused(engine: Engine) -> None:
    naive = T0.replace(tzinfo=None)
    with pytest.raises(StoreError, match="naive datetime"):
        record(engine, [Observation(("aws:r:-:*:k", "a"), 2.0, naive)])
    assert stored_rows(engine) == []


def test_prices_of_many_new_and_known_offers_are_stored(store: Store) -> None:
    first = [PriceQuote(offer=o, usd_per_hour=1.0, observed_at=T0, source="s") for o in OFFERS]
    assert store.prices.record(first[:20]) == IngestStats(inserted=20)
    later = T0 + timedelta(minutes=5)
    # a second repository over the same store knows none of the offer ids yet
    again = Store(store.engine)
    second = [PriceQuote(offer=o, usd_per_hour=2.0, observed_at=later, source="s") for o in OFFERS]
    earlier = T0 - timedelta(minutes=5)
    older = [PriceQuote(offer=o, usd_per_hour=9.0, observed_at=earlier, source="s") for o in OFFERS]
    # the older quotes of offers 10-19 come with newer ones: history, ignored
    assert again.prices.record(second[10:] + older[10:20]) == IngestStats(inserted=40, ignored=10)
    assert again.prices.record(first[:5]) == IngestStats(extended=5)
    latest = {p.offer.key: (p.usd_per_hour, p.first_seen) for p in store.prices.latest()}
    assert latest == {o.key: (2.0, later) for o in OFFERS[10:]} | {
        o.key: (1.0, T0) for o in OFFERS[:10]
    }


@pytest.mark.postgres
def test_a_value_too_long_for_its_column_is_refused_not_cut_short(
    postgres_store: Store,
) -> None:
    quote = PriceQuote(offer=OFFERS[0], usd_per_hour=1.0, observed_at=T0, source="s" * 100)
    with pytest.raises(StoreError, match="recording prices"):
        postgres_store.prices.record([quote])
    assert postgres_store.prices.latest() == []


@pytest.fixture
def postgres_store(store: Store) -> Store:
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce column lengths")
    return store
