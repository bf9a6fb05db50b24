"""The interfaces between the core and the world, each with its contract.

Every port has an in-memory fake (in this module or next to it), and one contract
test suite runs against the fake and every real implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from arbiter.domain.fleet import InterruptionNotice, ReplicaGroup
from arbiter.domain.market import (
    CapacitySignal,
    CarbonReading,
    InstanceType,
    Offer,
    PriceQuote,
)
from arbiter.domain.workloads import Workload


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
    offer the source covers. With ``since`` it may also return the changes after that
    time, as AWS spot history does, and still the current level of every offer it
    covers, unchanged ones observed at ``now`` (the AWS adapter confirms them so): a
    price not seen again ages into stale, and an offer that a successful, fresh poll
    leaves out counts as gone from the market
    (:func:`arbiter.snapshots.offers_left_market`).
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


# ------------------------------------------------------------------------ executors


class Executor(Protocol):
    """Runs the replicas of workloads, one *replica group* per (workload, offer).

    Contract (tests/executors/test_contract.py runs it against every implementation):

    * ``ensure(workload, offer, replicas)`` makes the group run exactly ``replicas``
      replicas, creating it when missing; ``replicas=0`` releases it. It is
      state-based, so idempotent: calling it again with the same arguments starts and
      stops nothing (a restarted daemon simply re-issues the step it was in).
    * It raises :class:`~arbiter.errors.CapacityUnavailable` when the provider has no
      capacity for the offer, :class:`~arbiter.errors.ExecutorError` for any other
      failure; never an SDK exception.
    * ``group`` reports the group's desired and *ready* replicas (ready = serving
      requests); ``groups`` lists what actually runs, including groups the store does
      not know about (what a crash may have orphaned).
    * Nothing here waits for readiness: the caller polls ``group``.
    """

    name: str

    def ensure(self, workload: Workload, offer: Offer, replicas: int) -> ReplicaGroup: ...

    def group(self, workload: str, offer: Offer) -> ReplicaGroup | None: ...

    def groups(self, workload: str | None = None) -> Sequence[ReplicaGroup]: ...


class TrafficRouter(Protocol):
    """Splits a workload's requests across its replica groups by weight.

    Contract:

    * ``set_weights(workload, weights)`` replaces the weights of the workload's groups
      (keys are :attr:`ReplicaGroup.id`; a group left out gets no new requests) in one
      step, without dropping a request in flight; idempotent.
    * ``in_flight(workload, group_id)`` is the number of requests a group is still
      serving, or None when the router cannot tell (the caller then waits out the
      drain timeout).
    """

    def set_weights(self, workload: str, weights: Mapping[str, int]) -> None: ...

    def weights(self, workload: str) -> dict[str, int]: ...

    def in_flight(self, workload: str, group_id: str) -> int | None: ...


class FakeExecutor:
    """In-memory executor and router. Replicas become ready ``warmup`` after they are
    asked for (by the clock it is given); ``no_capacity`` offers raise
    CapacityUnavailable; ``reclaimed`` offers' groups report no replica ready (the
    provider took them back); ``calls`` records every action."""

    name = "fake"

    def __init__(self, clock: Clock, *, warmup: timedelta = timedelta(0)) -> None:
        self.clock = clock
        self.warmup = warmup
        self.no_capacity: set[str] = set()
        self.reclaimed: set[str] = set()
        self.calls: list[tuple[str, str, int]] = []
        self._groups: dict[tuple[str, str], tuple[Offer, int, datetime]] = {}
        self._weights: dict[str, dict[str, int]] = {}
        self.in_flight_requests: dict[str, int] = {}

    def ensure(self, workload: Workload, offer: Offer, replicas: int) -> ReplicaGroup:
        from arbiter.errors import CapacityUnavailable

        key = (workload.name, offer.key)
        current = self._groups.get(key)
        if replicas > (current[1] if current else 0) and offer.key in self.no_capacity:
            raise CapacityUnavailable("no capacity", executor=self.name, offer_key=offer.key)
        self.calls.append(("ensure", f"{workload.name}@{offer.key}", replicas))
        if replicas == 0:
            self._groups.pop(key, None)
            return ReplicaGroup(workload=workload.name, offer=offer, desired=0, ready=0)
        if current is None or current[1] != replicas:
            since = current[2] if current and replicas < current[1] else self.clock.now()
            self._groups[key] = (offer, replicas, since)
        found = self.group(workload.name, offer)
        assert found is not None
        return found

    def group(self, workload: str, offer: Offer) -> ReplicaGroup | None:
        entry = self._groups.get((workload, offer.key))
        if entry is None:
            return None
        _, desired, since = entry
        ready = desired if self.clock.now() - since >= self.warmup else 0
        if offer.key in self.reclaimed:
            ready = 0
        return ReplicaGroup(workload=workload, offer=offer, desired=desired, ready=ready)

    def groups(self, workload: str | None = None) -> list[ReplicaGroup]:
        out = []
        for (name, _), (offer, _, _) in sorted(self._groups.items()):
            if workload is None or name == workload:
                found = self.group(name, offer)
                if found is not None:
                    out.append(found)
        return out

    def set_weights(self, workload: str, weights: Mapping[str, int]) -> None:
        self.calls.append(("route", workload, sum(weights.values())))
        self._weights[workload] = {k: v for k, v in weights.items() if v > 0}

    def weights(self, workload: str) -> dict[str, int]:
        return dict(self._weights.get(workload, {}))

    def in_flight(self, workload: str, group_id: str) -> int | None:
        return self.in_flight_requests.get(group_id, 0)


# -------------------------------------------------------------------- interruptions


class InterruptionSource(Protocol):
    """Notices that a provider is about to reclaim spot capacity.

    Contract: ``poll(now)`` returns the notices seen since the last call (each notice
    at least once; duplicates are harmless), never raises for "no notice", and raises
    :class:`~arbiter.errors.ProviderError` subclasses for failures (temporary ones are
    retried by the caller on its next poll).
    """

    name: str

    def poll(self, now: datetime) -> Sequence[InterruptionNotice]: ...


class FakeInterruptions:
    """In-memory interruption source: tests append notices to ``pending``."""

    name = "fake-interruptions"

    def __init__(self) -> None:
        self.pending: list[InterruptionNotice] = []

    def poll(self, now: datetime) -> list[InterruptionNotice]:
        out, self.pending = self.pending, []
        return out
