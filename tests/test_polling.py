"""The poller: retries temporary errors only, honours Retry-After, keeps stored data on
failure, marks a failing source degraded, and writes what sources return."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from arbiter.catalog import load_catalog
from arbiter.config import SourceConfig, effective_source_configs, load_config
from arbiter.domain.market import CarbonReading, Market, Offer, PriceQuote
from arbiter.errors import AuthFailed, BadPayload, ConfigError, Throttled, Unavailable
from arbiter.polling import (
    DEGRADED_AFTER,
    ConfiguredSource,
    Poller,
    RetryPolicy,
    build_sources,
    call_with_retries,
    close_sources,
)
from arbiter.ports import FakeClock, FakeMarket
from arbiter.store.repositories import Store
from tests.fakes import sources

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
OFFER = Offer(
    provider="aws", region="eu-central-1", instance_type="p5.48xlarge", market=Market.SPOT
)


def quote(price: float, at: datetime) -> PriceQuote:
    return PriceQuote(offer=OFFER, usd_per_hour=price, observed_at=at, source="fake")


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_poller(store: Store, market: FakeMarket, sleeps: Sleeps) -> Poller:
    configured = ConfiguredSource("fake", SourceConfig(kind="replay"), market)
    return Poller(
        store,
        {"fake": configured},
        load_catalog(),
        FakeClock(T0),
        retry=RetryPolicy(attempts=3, initial_wait=1, max_wait=30),
        sleep=sleeps,
    )


def test_throttling_honours_retry_after_then_succeeds() -> None:
    calls = iter([Throttled("slow down", source="x", retry_after=7), "ok"])

    def fn() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    sleeps = Sleeps()
    assert call_with_retries(fn, RetryPolicy(attempts=3), sleep=sleeps) == "ok"
    assert sleeps == [7]


def test_retry_after_is_capped_by_the_policy() -> None:
    calls = iter([Throttled("x", source="x", retry_after=3600)])

    def fn() -> str:
        try:
            raise next(calls)
        except StopIteration:
            return "ok"

    sleeps = Sleeps()
    call_with_retries(fn, RetryPolicy(attempts=2, max_wait=30), sleep=sleeps)
    assert sleeps == [30]


def test_unavailable_backs_off_and_gives_up_after_the_attempts() -> None:
    sleeps = Sleeps()
    attempts = []

    def fn() -> None:
        attempts.append(1)
        raise Unavailable("HTTP 503", source="x")

    with pytest.raises(Unavailable):
        call_with_retries(fn, RetryPolicy(attempts=3, initial_wait=1, max_wait=30), sleep=sleeps)
    assert len(attempts) == 3 and len(sleeps) == 2
    assert all(0 < s <= 30 for s in sleeps)


@pytest.mark.parametrize("error", [AuthFailed("no", source="x"), BadPayload("bad", source="x")])
def test_permanent_errors_are_not_retried(error: Exception) -> None:
    attempts = []

    def fn() -> None:
        attempts.append(1)
        raise error

    with pytest.raises(type(error)):
        call_with_retries(fn, RetryPolicy(attempts=4), sleep=Sleeps())
    assert len(attempts) == 1


def test_a_poll_writes_prices_and_marks_the_source_ok(store: Store) -> None:
    market = FakeMarket()
    market.prices = [quote(30.0, T0)]
    result = make_poller(store, market, Sleeps()).poll("fake")
    assert result.ok and result.prices.inserted == 1
    assert [p.usd_per_hour for p in store.prices.latest()] == [30.0]
    (status,) = store.sources.all()
    assert status.last_success_at == T0 and status.consecutive_failures == 0


def test_a_malformed_response_keeps_what_was_stored(store: Store) -> None:
    market = FakeMarket()
    market.prices = [quote(30.0, T0)]
    poller = make_poller(store, market, Sleeps())
    poller.poll("fake")
    market.failures = [BadPayload("missing", source="fake", field="SpotPriceHistory[3].SpotPrice")]
    with capture_logs() as logs:
        result = poller.poll("fake")
    assert not result.ok
    assert "SpotPriceHistory[3].SpotPrice" in (result.error or "")
    assert [p.usd_per_hour for p in store.prices.latest()] == [30.0]
    assert any(e["event"] == "poll failed; stored data kept" for e in logs)


def test_a_source_failing_repeatedly_is_degraded(store: Store) -> None:
    market = FakeMarket()
    market.failures = [AuthFailed("refused", source="fake")] * DEGRADED_AFTER
    poller = make_poller(store, market, Sleeps())
    for _ in range(DEGRADED_AFTER):
        assert not poller.poll("fake").ok
    (status,) = store.sources.all()
    assert status.consecutive_failures == DEGRADED_AFTER
    assert "refused" in (status.last_error or "")


def test_a_temporary_failure_then_success_is_one_good_poll(store: Store) -> None:
    market = FakeMarket()
    market.prices = [quote(30.0, T0)]
    market.failures = [Unavailable("HTTP 502", source="fake")]
    sleeps = Sleeps()
    result = make_poller(store, market, sleeps).poll("fake")
    assert result.ok and len(sleeps) == 1
    assert store.sources.all()[0].consecutive_failures == 0


def test_the_second_poll_asks_only_for_changes_since_the_first(store: Store) -> None:
    market = FakeMarket()
    market.prices = [quote(30.0, T0 - timedelta(minutes=5))]
    poller = make_poller(store, market, Sleeps())
    poller.poll("fake")
    poller.clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
    market.prices.append(quote(29.0, T0 + timedelta(minutes=1)))
    result = poller.poll("fake")
    assert result.prices.inserted == 1 and result.prices.extended == 0


class RecordedSince(FakeMarket):
    """A market that notes the ``since`` of every price fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.since: list[datetime | None] = []

    def fetch_prices(self, *, since: datetime | None, now: datetime) -> Sequence[PriceQuote]:
        self.since.append(since)
        return super().fetch_prices(since=since, now=now)


def test_after_the_clock_stepped_back_every_current_price_is_asked_for_and_recorded(
    store: Store,
) -> None:
    """Changes since the last poll's time, now in the future, would be none."""
    market = RecordedSince()
    market.prices = [quote(30.0, T0)]
    poller = make_poller(store, market, Sleeps())
    poller.poll("fake")
    poller.clock.advance(-timedelta(minutes=10))  # type: ignore[attr-defined]
    stepped_back = poller.clock.now()
    market.prices = [quote(29.0, stepped_back)]
    with capture_logs() as logs:
        result = poller.poll("fake")
    assert market.since == [None, None]
    assert result.prices.inserted == 1
    assert [p.usd_per_hour for p in store.prices.latest()] == [29.0]
    assert [e for e in logs if e["event"] == "the clock went back since the last poll"] == [
        {
            "event": "the clock went back since the last poll",
            "log_level": "warning",
            "component": "poller",
            "source": "fake",
            "last_poll": T0.isoformat(),
            "now": stepped_back.isoformat(),
        }
    ]


def test_carbon_is_asked_for_the_zones_of_regions_with_offers(store: Store) -> None:
    market = FakeMarket()
    market.prices = [quote(30.0, T0)]
    market.carbon = [
        CarbonReading(zone="DE", valid_at=T0, value=380, basis="lifecycle", source="fake"),
        CarbonReading(zone="FR", valid_at=T0, value=50, basis="lifecycle", source="fake"),
    ]
    make_poller(store, market, Sleeps()).poll("fake")
    assert [r.zone for r, _ in store.carbon.latest()] == ["DE"]


# -- building the sources --------------------------------------------------------------


def configs(config: str, tmp_path: Path) -> dict[str, SourceConfig]:
    path = tmp_path / "config.toml"
    path.write_text(config)
    return effective_source_configs(load_config(path, env={}).settings.sources)


def test_a_source_that_fails_to_build_closes_those_built_before_it_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = sources.register(monkeypatch)
    with capture_logs() as logs, pytest.raises(ConfigError, match="must be after start"):
        build_sources(configs(sources.CONFIG, tmp_path))
    assert closed == ["first", "second", "third"]
    assert [(e["event"], e["log_level"], e["source"], e["error"]) for e in logs] == [
        (
            "could not close the market-data source",
            "warning",
            "second",
            "second: pool already torn down",
        )
    ]


def test_sources_that_all_build_are_left_open_for_their_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = sources.register(monkeypatch)
    built = build_sources(configs(sources.BUILDING, tmp_path))
    assert list(built) == ["first", "second", "third"] and closed == []
    with capture_logs():
        close_sources(built)
    assert closed == ["first", "second", "third"]
