"""The interfaces between the core and the world, each with its contract.

Every port has an in-memory fake (in this module or next to it), and one contract
test suite runs against the fake and every real implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from arbiter.domain.market import CapacitySignal, CarbonReading, InstanceType, PriceQuote


class Clock(Protocol):
    """Where the shell gets the time. The core never reads a clock: it is given ``now``.

    Contract: ``now()`` returns a timezone-aware UTC datetime and never goes backwards
    by more than the host's clock does.
    """

    def now(self) -> datetime: ...


class SystemClock:
    """The host's wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told to (tests, backtests, accelerated soaks)."""

    def __init__(self, start: datetime):
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now


# -- market data -----------------------------------------------------------------
#
# A source object may implement several of these ports (the AWS adapter gives prices,
# capacity and instance types). Every method:
#
# * returns complete, validated domain values, or raises — never a partial result:
#   a malformed or partial response raises BadPayload naming the source and field;
# * raises only ProviderError subclasses: Throttled (temporary, may carry
#   retry_after) and Unavailable (temporary: 5xx, timeouts, connection errors) are
#   retried by the poller with backoff; AuthFailed and BadPayload are not;
# * never reads the clock for the data's time: quotes carry the time the provider
#   gives (or ``now`` when the provider gives none).


class PriceSource(Protocol):
    """Spot and on-demand prices.

    Contract: ``fetch_prices(since=None, now=...)`` returns the current price of every
    offer the source covers. With ``since`` it may return only the changes after that
    time (plus the current level of anything changed), as AWS spot history does.
    """

    name: str

    def fetch_prices(self, *, since: datetime | None, now: datetime) -> Sequence[PriceQuote]: ...


class CapacitySource(Protocol):
    """Capacity signals: placement scores, interruption buckets, free GPU quota."""

    name: str

    def fetch_capacity(self, *, now: datetime) -> Sequence[CapacitySignal]: ...


class CarbonSource(Protocol):
    """Grid carbon intensity per zone.

    Contract: ``fetch_carbon(zones, now=...)`` returns readings for those of ``zones``
    the source covers (never invented values for the others). Each reading names its
    unit and basis; a forecast is marked ``forecast=True``.
    """

    name: str

    def fetch_carbon(self, zones: Sequence[str], *, now: datetime) -> Sequence[CarbonReading]: ...


class InstanceTypeSource(Protocol):
    """Catalog discovery: instance types with accelerator model, count and memory."""

    name: str

    def fetch_instance_types(self) -> Sequence[InstanceType]: ...


class FakeMarket:
    """In-memory fake of every market-data port; tests set what it returns or raises."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.prices: list[PriceQuote] = []
        self.capacity: list[CapacitySignal] = []
        self.carbon: list[CarbonReading] = []
        self.instance_types: list[InstanceType] = []
        self.failures: list[Exception] = []
        """Raised, one per call, before answering (to test retries and degradation)."""
        self.calls: list[str] = []

    def _maybe_fail(self, call: str) -> None:
        self.calls.append(call)
        if self.failures:
            raise self.failures.pop(0)

    def fetch_prices(self, *, since: datetime | None, now: datetime) -> Sequence[PriceQuote]:
        self._maybe_fail("prices")
        return [q for q in self.prices if since is None or q.observed_at > since]

    def fetch_capacity(self, *, now: datetime) -> Sequence[CapacitySignal]:
        self._maybe_fail("capacity")
        return list(self.capacity)

    def fetch_carbon(self, zones: Sequence[str], *, now: datetime) -> Sequence[CarbonReading]:
        self._maybe_fail("carbon")
        wanted = set(zones)
        return [r for r in self.carbon if r.zone in wanted]

    def fetch_instance_types(self) -> Sequence[InstanceType]:
        self._maybe_fail("instance_types")
        return list(self.instance_types)
