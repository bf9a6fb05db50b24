"""The interfaces between the core and the world, each with its contract.

Every port has an in-memory fake (in this module or next to it), and one contract
test suite runs against the fake and every real implementation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


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
