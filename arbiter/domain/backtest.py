"""Backtest: recorded market snapshots through the real ``decide`` and ``plan``, with a
simulated executor, against baselines.

For every step of a recorded market (one :class:`MarketSnapshot` per step, its
``taken_at`` being ``now``) each strategy runs in its own simulated world:

* **arbiter** — the daemon's own loop: :func:`~arbiter.domain.decide.decide` on the
  market without offers under an interruption notice or blocklisted after a failed
  provisioning, then :func:`~arbiter.domain.planner.plan` against what the strategy
  runs (pending-since memory, cooldown, blackout windows, waves, urgent evacuations, all
  in simulated time); the moves are carried out make-before-break by the simulated
  executor below;
* **greedy** — the same decide, but every change of its answer is carried out at once
  (no saving, payback, sustained-for or cooldown gate), paying the same migration costs;
* **static-on-demand** — the cheapest compliant placement with spot forbidden, chosen
  once (the first step where every replica can be placed) and never moved;
* **static-spot** — the cheapest compliant placement under the policies as written
  (spot where they allow it), chosen once and never moved: a preempted spot replica is
  re-acquired on the same offer when its capacity is back, after its warm-up;
* **hindsight** — at every step the cheapest compliant placement in USD (decide on the
  full market with the policies' objective reduced to price: no carbon price, no risk
  premium, no throughput weighting), with no migration cost, no warm-up and no
  preemption: a per-step lower bound of the cost of any strategy that keeps every
  replica running on compliant capacity. It is not an exact offline optimum with
  migration costs (that one costs at least this bound);
* **hindsight-objective** — the same, but with decide's own answer at every step (the
  policies' objective: carbon price, risk premium, cost per unit of throughput for a
  fixed replica count): what the arbiter would pay if its moves were free and
  instant. The arbiter's gap to it is the price of its guardrails; the gap between the
  two hindsights is the price of the objective itself.

**Simulated executor.** A move starts new replicas at once (billed from then), which
are ready after the workload's ``warmup_seconds``; then traffic shifts to them and the
old replicas are billed for the policy's ``drain_timeout`` more before release — the
double running of a make-before-break move is paid for both sides. Egress
(``model_size_gib × egress_usd_per_gib`` per new region) is paid at the start. A move
onto spot capacity the spot model says is unobtainable rolls back and blocklists the
offer for :attr:`Limits.blocklist_ttl`, as the migrator does on a capacity error.

**Preemptions** come from a :class:`SpotModel` (recorded availability traces, or the
Spot Advisor interruption frequency as a Poisson rate). A preempted replica stops
serving and stops being billed at once; it stays missing until an urgent evacuation
(arbiter, greedy: decide and plan run again at the moment of the preemption, as the
daemon does on an interruption notice) or a re-acquisition (static-spot) has a
replacement ready. Strategies share the spot model's randomness (the same replica slot
on the same offer is preempted at the same time in every world), so they are compared
on the same luck.

**Accounting** per step: cost (USD), carbon (g, from the offer's grid intensity at the
step: ``gpus × board power × PUE × gCO2/kWh``, as the evaluator prices it), migrations,
replica-hours ready against replica-hours required (the replicas of the placement the
strategy means to run), and violations: every replica of every strategy is re-evaluated
against the region rules of its workload (sovereignty, latency, carbon caps) for the
time it runs.

Pure: no clock, no I/O; ``decide`` is memoised on the inputs it reads (the same offers
object, carbon object when the objective or a rule reads carbon, excluded offers and,
when a policy has exceptions, the date), so the shell should pass the same ``offers``
tuple while prices are unchanged.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import pairwise

from arbiter.domain.decide import Outcome, decide
from arbiter.domain.decisions import Decision
from arbiter.domain.evaluation import (
    DATA_CLASS_COVERED,
    WORKLOAD_LATENCY,
    PolicyBook,
    WorkloadEvaluator,
)
from arbiter.domain.market import Market, Offer
from arbiter.domain.planner import Current, Inputs, MoveKind, PlannedMove, plan
from arbiter.domain.policy import Capacity, Objective, Policy, Spot
from arbiter.domain.regions import RegionCatalog
from arbiter.domain.snapshot import MarketSnapshot, OfferState
from arbiter.domain.workloads import Placement, Workload

HOUR = timedelta(hours=1)


class StrategyKind(StrEnum):
    ARBITER = "arbiter"
    GREEDY = "greedy"
    STATIC_ON_DEMAND = "static-on-demand"
    STATIC_SPOT = "static-spot"
    HINDSIGHT = "hindsight"
    HINDSIGHT_OBJECTIVE = "hindsight-objective"


@dataclass(frozen=True)
class StrategySpec:
    """One strategy to simulate: its kind, the name it is reported under and the
    policies it decides with (``static-on-demand`` forbids spot in them itself)."""

    name: str
    kind: StrategyKind
    book: PolicyBook


@dataclass(frozen=True)
class Limits:
    """How the simulated daemon reacts; the defaults mirror the daemon's."""

    notice_memory: timedelta = HOUR
    """An interrupted offer stays out of the market this long (the reconciler's
    ``NOTICE_MEMORY``)."""
    blocklist_ttl: timedelta = HOUR
    """An offer whose capacity could not be obtained is left out this long (the
    migrator's ``DEFAULT_BLOCKLIST_TTL``)."""
    retries: int = 3
    """Reconcile passes at one moment after rolled-back moves (the daemon's next ticks)."""


# ------------------------------------------------------------------ policy variants


def without_spot(book: PolicyBook) -> PolicyBook:
    """The same policies with spot forbidden in every one of them (every policy gets a
    ``capacity`` block, since the first policy that has one decides)."""
    policies = tuple(
        p.model_copy(update={"capacity": Capacity(spot=Spot(allowed=False, max_share=0))})
        for p in book.policies
    )
    return PolicyBook(policies, book.rule_origins, book.policy_origins)


def with_carbon_price(book: PolicyBook, usd_per_tonne: float) -> PolicyBook:
    """The same policies with every objective's carbon price set to ``usd_per_tonne``."""
    out: list[Policy] = []
    for p in book.policies:
        objective = (p.objective or Objective()).model_copy(
            update={"carbon_price_usd_per_tonne": float(usd_per_tonne)}
        )
        out.append(p.model_copy(update={"objective": objective}))
    return PolicyBook(tuple(out), book.rule_origins, book.policy_origins)


def price_only(book: PolicyBook) -> PolicyBook:
    """The same policies with an objective of price alone: no carbon price and no
    interruption-risk premium."""
    out: list[Policy] = []
    for p in book.policies:
        objective = (p.objective or Objective()).model_copy(
            update={"carbon_price_usd_per_tonne": 0.0, "interruption_premium": 0.0}
        )
        out.append(p.model_copy(update={"objective": objective}))
    return PolicyBook(tuple(out), book.rule_origins, book.policy_origins)


def priced_by_replica(workload: Workload) -> Workload:
    """A replica-sized workload whose GPU options all count the same, so decide ranks
    its placements by price alone (for a fixed replica count decide otherwise weighs
    price by throughput). A throughput-sized workload is returned as it is: its
    throughput is a constraint, and decide already minimises its price."""
    if workload.replicas is None:
        return workload
    options = tuple(o.model_copy(update={"tokens_per_second": 1.0}) for o in workload.gpu_options)
    return workload.model_copy(update={"gpu_options": options})


# ---------------------------------------------------------------------- spot models


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) fixed by ``parts`` (stable across runs and processes)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class SpotModel:
    """When spot capacity is reclaimed, and whether it can be obtained.

    ``preemption`` answers for one replica *slot* (a workload's n-th replica on an
    offer): the first time in ``[start, end)`` it is reclaimed, or None. The answer
    depends only on its arguments, so every strategy sees the same events. A model
    never reclaims at a time it calls the capacity available (a replica re-acquired
    then would be reclaimed again at once).
    """

    def available(self, offer: Offer, at: datetime) -> bool:
        return True

    def next_available(self, offer: Offer, at: datetime) -> datetime | None:
        """When capacity can next be obtained, from ``at`` on (``at`` itself if now)."""
        return at

    def preemption(
        self, offer: Offer, bucket: float | None, slot: str, start: datetime, end: datetime
    ) -> datetime | None:
        return None

    def describe(self) -> str:
        return "no preemptions"


NO_PREEMPTIONS = SpotModel()

ADVISOR_MONTHLY_RATE: Mapping[int, float] = {0: 0.025, 1: 0.075, 2: 0.125, 3: 0.175, 4: 0.25}
"""Share of spot instances interrupted per month by Spot Advisor bucket: the middle of
each published range (<5 %, 5-10 %, 10-15 %, 15-20 %), and 25 % for ">20 %"."""
UNKNOWN_BUCKET = 2
"""The bucket assumed where the advisor has no data (decide assumes the same)."""
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MONTH_HOURS = 730.0


class AdvisorRates(SpotModel):
    """Each replica slot is reclaimed as a Poisson process whose rate is the Spot
    Advisor bucket's monthly frequency (:data:`ADVISOR_MONTHLY_RATE`); capacity is
    always obtainable again at once. The arrivals are drawn from ``seed`` and the slot
    only, as unit-rate exponentials scaled by the bucket's rate."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._arrivals: dict[str, list[float]] = {}

    @staticmethod
    def hourly_rate(bucket: float | None) -> float:
        b = UNKNOWN_BUCKET if bucket is None else min(4, max(0, round(bucket)))
        return -math.log(1 - ADVISOR_MONTHLY_RATE[b]) / _MONTH_HOURS

    def _unit_times(self, slot: str, upto: float) -> list[float]:
        times = self._arrivals.get(slot)
        if times is None:
            times = self._arrivals[slot] = []
        if not times or times[-1] <= upto:
            rng = random.Random(f"{self.seed}|{slot}|{len(times)}")
            total = times[-1] if times else 0.0
            while total <= upto:
                total += rng.expovariate(1.0)
                times.append(total)
        return times

    def preemption(
        self, offer: Offer, bucket: float | None, slot: str, start: datetime, end: datetime
    ) -> datetime | None:
        if offer.market is not Market.SPOT or end <= start:
            return None
        rate = self.hourly_rate(bucket)
        lo = (start - _EPOCH) / HOUR * rate
        hi = (end - _EPOCH) / HOUR * rate
        times = self._unit_times(f"{offer.key}|{slot}", hi)
        i = bisect_right(times, lo)
        while i < len(times) and times[i] < hi:
            when = _EPOCH + HOUR * (times[i] / rate)
            if start < when < end:  # strictly after start, despite rounding to microseconds
                return when
            i += 1
        return None

    def describe(self) -> str:
        return f"Spot Advisor frequency as a Poisson rate (seed {self.seed})"


@dataclass(frozen=True)
class Trace:
    """A recorded spot availability (or held-instance) series: ``(start, end, up)``
    segments in seconds from the trace's start, covering ``[0, length)``."""

    name: str
    segments: tuple[tuple[float, float, bool], ...]

    @property
    def length(self) -> float:
        return self.segments[-1][1]

    def __post_init__(self) -> None:
        if not self.segments or self.segments[0][0] != 0:
            raise ValueError(f"trace {self.name}: segments must start at 0")
        for (_, end, _), (start, _, _) in zip(self.segments, self.segments[1:], strict=False):
            if start != end:
                raise ValueError(f"trace {self.name}: segments must be contiguous")


_US = timedelta(microseconds=1)


class _Replay:
    """One trace looped from ``_EPOCH`` with a phase, in whole microseconds (exact, so
    a change found by :meth:`next_change` is seen by :meth:`up` at that very time)."""

    def __init__(self, trace: Trace, phase: float) -> None:
        self.trace = trace
        self.starts = [round(s * 1e6) for s, _, _ in trace.segments]
        self.ends = [round(e * 1e6) for _, e, _ in trace.segments]
        self.ups = [up for _, _, up in trace.segments]
        self.length = self.ends[-1]
        self.phase = round(phase * 1e6) % self.length

    def _offset(self, at: datetime) -> int:
        return ((at - _EPOCH) // _US + self.phase) % self.length

    def up(self, at: datetime) -> bool:
        return self.ups[bisect_right(self.starts, self._offset(at)) - 1]

    def next_change(self, at: datetime, *, to_up: bool) -> datetime | None:
        """The first time ≥ ``at`` the trace is ``to_up`` (None if it never is)."""
        if to_up not in self.ups:
            return None
        offset = self._offset(at)
        i = bisect_right(self.starts, offset) - 1
        waited = 0
        while self.ups[i] != to_up:
            waited += self.ends[i] - offset
            i = (i + 1) % len(self.ups)
            offset = self.starts[i]
        return at + waited * _US


class TraceReplay(SpotModel):
    """Recorded traces for the offers they match, ``fallback`` for the others.

    ``traces`` maps ``(provider, region, instance_type)`` to the traces recorded for
    it (e.g. one per zone). Spot offers without a match replay one of ``stress`` when
    it is given (a stress test), else follow ``fallback``. An offer replays one trace,
    chosen and phased by a hash of its key, looped over the backtest: while the trace
    is down the offer's capacity is unobtainable, and every replica on it is reclaimed
    when it goes down.
    """

    def __init__(
        self,
        traces: Mapping[tuple[str, str, str], Sequence[Trace]],
        fallback: SpotModel,
        *,
        stress: Sequence[Trace] = (),
    ) -> None:
        self.traces = {k: tuple(v) for k, v in traces.items() if v}
        self.fallback = fallback
        self.stress = tuple(stress)
        self._replays: dict[str, _Replay | None] = {}

    def _replay(self, offer: Offer) -> _Replay | None:
        if offer.market is not Market.SPOT:
            return None
        key = offer.key
        if key not in self._replays:
            found = self.traces.get(
                (offer.provider.value, offer.region, offer.instance_type), self.stress
            )
            if not found:
                self._replays[key] = None
            else:
                trace = found[int(_unit("trace", key) * len(found))]
                self._replays[key] = _Replay(trace, _unit("phase", key) * trace.length)
        return self._replays[key]

    def matched(self, offer: Offer) -> str | None:
        replay = self._replay(offer)
        return None if replay is None else replay.trace.name

    def available(self, offer: Offer, at: datetime) -> bool:
        replay = self._replay(offer)
        return self.fallback.available(offer, at) if replay is None else replay.up(at)

    def next_available(self, offer: Offer, at: datetime) -> datetime | None:
        replay = self._replay(offer)
        if replay is None:
            return self.fallback.next_available(offer, at)
        return replay.next_change(at, to_up=True)

    def preemption(
        self, offer: Offer, bucket: float | None, slot: str, start: datetime, end: datetime
    ) -> datetime | None:
        replay = self._replay(offer)
        if replay is None:
            return self.fallback.preemption(offer, bucket, slot, start, end)
        down = replay.next_change(start, to_up=False)
        return down if down is not None and down < end else None

    def describe(self) -> str:
        what = f"{sum(len(v) for v in self.traces.values())} recorded traces for matching offers"
        if self.stress:
            what = f"{len(self.stress)} recorded GPU traces for every spot offer"
        return f"{what}; otherwise {self.fallback.describe()}"


# ------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Event:
    """Something that happened in one strategy's world: a move started (``place``,
    ``move``, ``evacuate``), a move rolled back, a replica reclaimed or re-acquired."""

    at: datetime
    kind: str
    workload: str
    detail: str


@dataclass(frozen=True)
class StrategyResult:
    name: str
    kind: StrategyKind
    cost_usd: float
    """Everything paid: replica-hours (double running included) and egress."""
    egress_usd: float
    carbon_g: float
    migrations: int
    """Moves started to change a placement (planned moves and evacuations)."""
    evacuations: int
    rollbacks: int
    """Moves abandoned because spot capacity could not be obtained."""
    preemptions: int
    reacquired: int
    """Preempted replicas re-acquired in place (static strategies)."""
    replica_hours_ready: float
    replica_hours_required: float
    carbon_by_workload: Mapping[str, float]
    tokens_by_workload: Mapping[str, float]
    """Tokens the serving replicas could have processed (their GPU's tokens/s)."""
    sovereignty_violation_hours: float
    slo_violation_hours: float
    other_violation_hours: float
    """Replica-hours on a region another region rule (a carbon cap) excluded."""
    unplaced_hours: float
    """Workload-hours with nothing placed (no compliant placement yet)."""
    cost_by_workload: Mapping[str, float]
    migrations_by_workload: Mapping[str, int]
    step_cost_usd: tuple[float, ...]
    step_carbon_g: tuple[float, ...]
    events: tuple[Event, ...] = ()

    @property
    def availability(self) -> float:
        if self.replica_hours_required <= 0:
            return 1.0
        return self.replica_hours_ready / self.replica_hours_required

    def usd_per_million_tokens(self, workload: str) -> float | None:
        """A workload's cost per unit of work (what decide compares for it)."""
        tokens = self.tokens_by_workload.get(workload, 0.0)
        return None if tokens <= 0 else self.cost_by_workload.get(workload, 0.0) / tokens * 1e6

    @property
    def violation_hours(self) -> float:
        """Sovereignty and latency-SLO violations (replica-hours): must be 0."""
        return self.sovereignty_violation_hours + self.slo_violation_hours


@dataclass(frozen=True)
class BacktestResult:
    start: datetime
    end: datetime
    step: timedelta
    times: tuple[datetime, ...]
    workloads: tuple[str, ...]
    strategies: tuple[StrategyResult, ...]
    decide_calls: int
    spot_model: str

    @property
    def days(self) -> float:
        return (self.end - self.start) / timedelta(days=1)

    def strategy(self, name: str) -> StrategyResult:
        for s in self.strategies:
            if s.name == name:
                return s
        raise KeyError(name)

    def migrations_per_workload_day(self, s: StrategyResult) -> float:
        n = len(self.workloads) * self.days
        return s.migrations / n if n > 0 else 0.0


# ------------------------------------------------------------------ the simulation


@dataclass(eq=False)
class _Replica:
    offer: Offer
    slot: int
    billed_from: datetime
    ready_at: datetime
    serves_until: datetime | None = None
    """When traffic left it (a move shifted away, or it was reclaimed)."""
    ends_at: datetime | None = None
    """When billing stops (released after draining, or reclaimed)."""
    lost: bool = False
    """Reclaimed by the provider."""
    replaced: bool = False
    """A replacement for this lost replica is on its way (it leaves the books)."""

    def live_at(self, t: datetime) -> bool:
        return self.billed_from <= t and (self.ends_at is None or t < self.ends_at)

    def serving_at(self, t: datetime) -> bool:
        return (
            self.ready_at <= t
            and (self.serves_until is None or t < self.serves_until)
            and (self.ends_at is None or t < self.ends_at)
        )


@dataclass
class _Fleet:
    """One workload in one strategy's world."""

    workload: Workload
    placement: tuple[Placement, ...] = ()
    """What the store would say runs: the last placement moved to."""
    replicas: list[_Replica] = field(default_factory=list)
    required: list[tuple[datetime, int]] = field(default_factory=list)
    """(from, replicas the placement needs), in time order."""
    last_migration_at: datetime | None = None
    busy_until: datetime | None = None
    mid_waves: bool = False

    def lost_offers(self) -> set[str]:
        """Offers with a reclaimed replica that nothing replaces yet."""
        return {r.offer.key for r in self.replicas if r.lost and not r.replaced}

    def running(self, at: datetime) -> Counter[Offer]:
        """Replicas that run at ``at`` and are not on their way out."""
        c: Counter[Offer] = Counter()
        for r in self.replicas:
            if r.live_at(at) and not r.lost and (r.serves_until is None or r.serves_until > at):
                c[r.offer] += 1
        return c

    def busy(self, at: datetime) -> bool:
        return self.busy_until is not None and self.busy_until > at


def _counts(placements: Iterable[Placement]) -> Counter[Offer]:
    c: Counter[Offer] = Counter()
    for p in placements:
        c[p.offer] += p.replicas
    return c


def _overlap_hours(a0: datetime, a1: datetime | None, b0: datetime, b1: datetime) -> float:
    lo = max(a0, b0)
    hi = b1 if a1 is None else min(a1, b1)
    return max(0.0, (hi - lo) / HOUR)


_STATIC = (StrategyKind.STATIC_ON_DEMAND, StrategyKind.STATIC_SPOT)
_MAX_EVENTS_PER_STEP = 10_000
_DYNAMIC = (StrategyKind.ARBITER, StrategyKind.GREEDY)
_HINDSIGHT = (StrategyKind.HINDSIGHT, StrategyKind.HINDSIGHT_OBJECTIVE)


class _World:
    """One strategy's simulated fleet and its tallies."""

    def __init__(self, spec: StrategySpec, book_key: str, workloads: Sequence[Workload]) -> None:
        self.spec = spec
        self.kind = spec.kind
        self.book_key = book_key
        self.fleets = {w.name: _Fleet(w) for w in workloads}
        self.pending: dict[str, datetime] = {}
        self.violating: dict[str, datetime] = {}
        """Since when each workload breaks an enforced rule (on_hard_violation.drain_within)."""
        self.notices: dict[str, datetime] = {}
        """Offer key → until when it is out of the market (interruption notice)."""
        self.blocked: dict[str, datetime] = {}
        """Offer key → until when it is blocklisted (capacity could not be obtained)."""
        self.cost = 0.0
        self.egress = 0.0
        self.carbon = 0.0
        self.migrations = 0
        self.evacuations = 0
        self.rollbacks = 0
        self.preemptions = 0
        self.reacquired = 0
        self.ready_h = 0.0
        self.required_h = 0.0
        self.tokens_by_workload: defaultdict[str, float] = defaultdict(float)
        self.carbon_by_workload: defaultdict[str, float] = defaultdict(float)
        self.violations: defaultdict[str, float] = defaultdict(float)
        self.unplaced_h = 0.0
        self.cost_by_workload: defaultdict[str, float] = defaultdict(float)
        self.migrations_by_workload: Counter[str] = Counter()
        self.step_cost: list[float] = []
        self.step_carbon: list[float] = []
        self.events: list[Event] = []

    def log(self, at: datetime, kind: str, workload: str, detail: str) -> None:
        self.events.append(Event(at, kind, workload, detail))

    def excluded(self, at: datetime) -> frozenset[str]:
        self.notices = {k: u for k, u in self.notices.items() if u > at}
        self.blocked = {k: u for k, u in self.blocked.items() if u > at}
        return frozenset(self.notices) | frozenset(self.blocked)

    def in_flight(self, at: datetime) -> int:
        return sum(1 for f in self.fleets.values() if f.busy(at))

    def count_migration(self, workload: str, *, evacuation: bool) -> None:
        self.migrations += 1
        self.migrations_by_workload[workload] += 1
        self.evacuations += evacuation


class _Engine:
    def __init__(
        self,
        workloads: Sequence[Workload],
        strategies: Sequence[StrategySpec],
        catalog: RegionCatalog,
        *,
        step: timedelta,
        spot: SpotModel,
        limits: Limits,
    ) -> None:
        if step <= timedelta(0):
            raise ValueError("the step must be positive")
        if not strategies:
            raise ValueError("give at least one strategy")
        names = [s.name for s in strategies]
        if len(set(names)) != len(names):
            raise ValueError(f"strategy names must be unique: {names}")
        self.workloads = tuple(workloads)
        self.catalog = catalog
        self.step = step
        self.spot = spot
        self.limits = limits
        self.books: dict[str, PolicyBook] = {}
        self.worlds: list[_World] = []
        self.decide_workloads: dict[str, tuple[Workload, ...]] = {}
        for s in strategies:
            variant = {
                StrategyKind.STATIC_ON_DEMAND: ":on-demand",
                StrategyKind.HINDSIGHT: ":usd",
            }.get(s.kind, "")
            key = f"{id(s.book)}{variant}"
            if key not in self.books:
                if s.kind is StrategyKind.STATIC_ON_DEMAND:
                    self.books[key] = without_spot(s.book)
                elif s.kind is StrategyKind.HINDSIGHT:
                    self.books[key] = price_only(s.book)
                else:
                    self.books[key] = s.book
                self.decide_workloads[key] = (
                    tuple(priced_by_replica(w) for w in workloads)
                    if s.kind is StrategyKind.HINDSIGHT
                    else tuple(workloads)
                )
            self.worlds.append(_World(s, key, workloads))
        self.terms = {
            (key, w.name): book.terms(w) for key, book in self.books.items() for w in workloads
        }
        self.carbon_sensitive = {
            key: any(
                self.terms[(key, w.name)].objective.carbon_price_usd_per_tonne > 0
                or any(c.carbon is not None for c in self.terms[(key, w.name)].constraints)
                for w in workloads
            )
            for key in self.books
        }
        self.dated = {key: any(p.exceptions for p in b.policies) for key, b in self.books.items()}
        self.primary = self.worlds[0].book_key
        self.rule_kinds = {
            w.name: {c.id: c.kind for c in self.terms[(self.primary, w.name)].constraints}
            for w in workloads
        }
        self._cache: OrderedDict[tuple[object, ...], tuple[object, object, Outcome]] = OrderedDict()
        self._states: tuple[object, dict[str, OfferState]] = (None, {})
        self._verdicts: tuple[object, dict[tuple[str, str], str | None]] = (None, {})
        self._costs: tuple[object, object, dict[tuple[str, str], tuple[float, float, float]]] = (
            None,
            None,
            {},
        )
        self.decide_calls = 0
        self.last_cost: dict[tuple[str, str], tuple[float, float, float]] = {}

    # -- decide, memoised -------------------------------------------------------

    def decided(
        self, book_key: str, snapshot: MarketSnapshot, now: datetime, excluded: frozenset[str]
    ) -> Outcome:
        sensitive = self.carbon_sensitive[book_key]
        key: tuple[object, ...] = (
            book_key,
            id(snapshot.offers),
            id(snapshot.carbon) if sensitive else None,
            now.date() if self.dated[book_key] else None,
            excluded,
        )
        hit = self._cache.get(key)
        if (
            hit is not None
            and hit[0] is snapshot.offers
            and (not sensitive or hit[1] is snapshot.carbon)
        ):
            self._cache.move_to_end(key)
            return hit[2]
        market = snapshot
        if excluded:
            market = MarketSnapshot(
                id=f"{snapshot.id}-x{len(excluded)}",
                taken_at=snapshot.taken_at,
                offers=tuple(o for o in snapshot.offers if o.offer.key not in excluded),
                carbon=snapshot.carbon,
            )
        outcome = decide(
            self.decide_workloads[book_key], self.books[book_key], market, self.catalog, now
        )
        self.decide_calls += 1
        # the entry holds the objects whose ids make its key, so no id can be reused
        self._cache[key] = (snapshot.offers, snapshot.carbon, outcome)
        if len(self._cache) > 64:
            self._cache.popitem(last=False)
        return outcome

    def states(self, snapshot: MarketSnapshot) -> dict[str, OfferState]:
        """The snapshot's offers by key (built once per offers tuple)."""
        if self._states[0] is not snapshot.offers:
            self._states = (snapshot.offers, {o.offer.key: o for o in snapshot.offers})
        return self._states[1]

    # -- the simulated executor ---------------------------------------------------

    @staticmethod
    def _free_slot(fleet: _Fleet, offer: Offer, at: datetime) -> int:
        used = {r.slot for r in fleet.replicas if r.offer == offer and r.live_at(at)}
        return next(i for i in range(len(used) + 1) if i not in used)

    def migrate(
        self,
        world: _World,
        fleet: _Fleet,
        target: Sequence[Placement],
        at: datetime,
        *,
        instant: bool = False,
        why: str = "move",
    ) -> bool:
        """Move ``fleet`` to ``target`` make-before-break from ``at``: new replicas
        billed from ``at`` and serving after the warm-up, the surplus billed through
        the drain. ``instant`` (the fleet in place at the start; the hindsight bound)
        skips warm-up, drain, egress and the capacity check. False, with nothing
        changed and the offer blocklisted, when spot capacity cannot be obtained."""
        w = fleet.workload
        migration = self.terms[(self.primary, w.name)].migration
        want = _counts(target)
        added = want - fleet.running(at)
        if not instant:
            for offer in sorted(added, key=lambda o: o.key):
                if offer.market is Market.SPOT and not self.spot.available(offer, at):
                    world.blocked[offer.key] = at + self.limits.blocklist_ttl
                    world.rollbacks += 1
                    world.log(at, "rollback", w.name, f"{why}: no spot capacity on {offer.key}")
                    return False
        warm = timedelta(0) if instant else timedelta(seconds=w.warmup_seconds)
        drain = timedelta(0) if instant else timedelta(seconds=migration.drain_timeout)
        ready = at + warm
        keep = Counter(want)
        for r in fleet.replicas:
            if r.lost:
                r.replaced = True
            elif r.live_at(at) and (r.serves_until is None or r.serves_until > at):
                if keep[r.offer] > 0:
                    keep[r.offer] -= 1
                else:
                    r.serves_until = ready
                    r.ends_at = ready + drain
        for offer, n in sorted(added.items(), key=lambda kv: kv[0].key):
            for _ in range(n):
                slot = self._free_slot(fleet, offer, at)
                fleet.replicas.append(_Replica(offer, slot, at, ready))
        fleet.required.append((ready, sum(want.values())))
        fleet.placement = tuple(target)
        fleet.busy_until = None if instant else ready + drain
        if not instant:
            regions = {o.region_key for o in added}
            egress = w.model_size_gib * migration.egress_usd_per_gib * len(regions)
            world.egress += egress
            world.cost += egress
            world.cost_by_workload[w.name] += egress
        if not instant or fleet.required[:-1]:
            shown = ", ".join(f"{p.offer.key}×{p.replicas}" for p in target)
            world.log(at, why, w.name, shown)
        return True

    def reacquire(self, world: _World, fleet: _Fleet, lost: _Replica, at: datetime) -> None:
        """Start a replacement for a reclaimed replica on the same offer once its
        capacity is back (what a replica group's own controller does)."""
        back = self.spot.next_available(lost.offer, at)
        lost.replaced = True
        if back is None:
            return
        ready = back + timedelta(seconds=fleet.workload.warmup_seconds)
        fleet.replicas.append(_Replica(lost.offer, lost.slot, back, ready))
        world.reacquired += 1
        world.log(back, "reacquire", fleet.workload.name, lost.offer.key)

    # -- reconcile passes -------------------------------------------------------

    def reconcile(self, world: _World, snapshot: MarketSnapshot, at: datetime, first: bool) -> None:
        if world.kind in _STATIC:
            if all(f.placement for f in world.fleets.values()):
                return
            outcome = self.decided(world.book_key, snapshot, at, frozenset())
            for d in outcome.decisions:
                fleet = world.fleets[d.workload]
                if not fleet.placement and _complete(d):
                    self.migrate(world, fleet, d.placements, at, instant=first, why="place")
            return
        if world.kind in _HINDSIGHT:
            outcome = self.decided(world.book_key, snapshot, at, frozenset())
            for d in outcome.decisions:
                fleet = world.fleets[d.workload]
                if _complete(d) and _counts(d.placements) != _counts(fleet.placement):
                    if fleet.placement:
                        world.count_migration(d.workload, evacuation=False)
                    self.migrate(world, fleet, d.placements, at, instant=True)
            return
        for _ in range(self.limits.retries):
            outcome = self.decided(world.book_key, snapshot, at, world.excluded(at))
            if world.kind is StrategyKind.GREEDY:
                failed = self._greedy(world, outcome, at, first)
            else:
                failed = self._arbiter(world, outcome, at, first)
            if not failed:
                break
        self._heal(world, at)

    def _heal(self, world: _World, at: datetime) -> None:
        """A reclaimed replica that no move replaces, on an offer whose notice has
        expired, is re-created in place: executors keep their groups at size."""
        for fleet in world.fleets.values():
            if fleet.busy(at):
                continue
            for r in list(fleet.replicas):
                if r.lost and not r.replaced and r.offer.key not in world.notices:
                    self.reacquire(world, fleet, r, at)

    def _greedy(self, world: _World, outcome: Outcome, at: datetime, first: bool) -> bool:
        failed = False
        for d in outcome.decisions:
            fleet = world.fleets[d.workload]
            if not _complete(d) or fleet.busy(at):
                continue
            lost = bool(fleet.lost_offers())
            if _counts(d.placements) == _counts(fleet.placement) and not lost:
                continue
            if not fleet.placement:
                failed |= not self.migrate(
                    world, fleet, d.placements, at, instant=first, why="place"
                )
            elif self.migrate(world, fleet, d.placements, at, why="evacuate" if lost else "move"):
                fleet.last_migration_at = at
                world.count_migration(d.workload, evacuation=lost)
            else:
                failed = True
        return failed

    def _arbiter(self, world: _World, outcome: Outcome, at: datetime, first: bool) -> bool:
        current = {
            name: Current(
                placements=fleet.placement,
                last_migration_at=fleet.last_migration_at,
                in_flight=fleet.busy(at),
                interrupted=frozenset(
                    fleet.lost_offers()
                    | {p.offer.key for p in fleet.placement if p.offer.key in world.notices}
                ),
                mid_waves=fleet.mid_waves,
            )
            for name, fleet in world.fleets.items()
        }
        inputs = [
            Inputs(w, outcome.decision(w.name), outcome.evaluator(w.name)) for w in self.workloads
        ]
        result = plan(
            inputs,
            current,
            now=at,
            pending_since=world.pending,
            in_flight_total=world.in_flight(at),
            violating_since=world.violating,
        )
        world.pending = dict(result.pending_since)
        world.violating = dict(result.violating_since)
        failed = False
        for move in result.moves:
            failed |= not self._apply(world, move, at, first)
        return failed

    def _apply(self, world: _World, move: PlannedMove, at: datetime, first: bool) -> bool:
        fleet = world.fleets[move.workload]
        if move.kind is MoveKind.RELEASE:
            return True  # the workload set is fixed for a backtest
        if move.kind is MoveKind.PLACE:
            return self.migrate(world, fleet, move.target, at, instant=first, why="place")
        if not self.migrate(world, fleet, move.target, at, why=move.kind.value):
            return False
        fleet.last_migration_at = at
        fleet.mid_waves = move.wave[1] > 1
        world.count_migration(move.workload, evacuation=move.kind is MoveKind.EVACUATE)
        return True

    # -- preemptions ------------------------------------------------------------

    def next_preemption(
        self, world: _World, snapshot: MarketSnapshot, start: datetime, end: datetime
    ) -> tuple[datetime, list[tuple[_Fleet, _Replica]]] | None:
        """The first reclaim in ``[start, end)`` of a spot replica of this world."""
        states = self.states(snapshot)
        best: datetime | None = None
        hits: list[tuple[_Fleet, _Replica]] = []
        for fleet in world.fleets.values():
            for r in fleet.replicas:
                if r.lost or r.offer.market is not Market.SPOT:
                    continue
                lo = max(start, r.billed_from)
                hi = end if r.ends_at is None else min(end, r.ends_at)
                if hi <= lo:
                    continue
                state = states.get(r.offer.key)
                bucket = None if state is None else state.interruption_bucket
                slot = f"{fleet.workload.name}#{r.slot}"
                when = self.spot.preemption(r.offer, bucket, slot, lo, hi)
                if when is None:
                    continue
                if best is None or when < best:
                    best, hits = when, [(fleet, r)]
                elif when == best:
                    hits.append((fleet, r))
        return None if best is None else (best, hits)

    def preempt(self, world: _World, hits: list[tuple[_Fleet, _Replica]], at: datetime) -> None:
        for fleet, r in hits:
            r.lost = True
            r.serves_until = min(at, r.serves_until or at)
            r.ends_at = at
            world.preemptions += 1
            world.log(at, "preempted", fleet.workload.name, r.offer.key)
            world.notices[r.offer.key] = at + self.limits.notice_memory
            if world.kind in _STATIC:
                self.reacquire(world, fleet, r, at)

    # -- accounting ---------------------------------------------------------------

    def account(
        self,
        world: _World,
        snapshot: MarketSnapshot,
        evaluators: Mapping[str, WorkloadEvaluator],
        start: datetime,
        end: datetime,
    ) -> None:
        step_cost = 0.0
        step_carbon = 0.0
        hours = (end - start) / HOUR
        states = self.states(snapshot)
        for name, fleet in world.fleets.items():
            ev = evaluators[name]
            if not fleet.placement:
                world.unplaced_h += hours
            for r in fleet.replicas:
                h = _overlap_hours(r.billed_from, r.ends_at, start, end)
                if h <= 0:
                    continue
                usd, grams, tps = self._price(ev, states.get(r.offer.key), name, r.offer)
                step_cost += usd * h
                step_carbon += grams * h
                world.cost_by_workload[name] += usd * h
                world.carbon_by_workload[name] += grams * h
                serving = _overlap_hours(r.ready_at, _first(r.serves_until, r.ends_at), start, end)
                world.tokens_by_workload[name] += tps * 3600 * serving
                kind = self._violation(ev, name, r.offer)
                if kind is not None:
                    world.violations[kind] += h
            ready, required = _availability(fleet, start, end)
            world.ready_h += ready
            world.required_h += required
            fleet.replicas = [
                r
                for r in fleet.replicas
                if r.ends_at is None or r.ends_at > end or (r.lost and not r.replaced)
            ]
            fleet.required = _trim(fleet.required, end)
        world.cost += step_cost
        world.carbon += step_carbon
        world.step_cost.append(step_cost)
        world.step_carbon.append(step_carbon)

    def _price(
        self, ev: WorkloadEvaluator, state: OfferState | None, workload: str, offer: Offer
    ) -> tuple[float, float, float]:
        """USD/h, gCO2e/h and tokens/s of one replica on ``offer`` (memoised while the
        snapshot's offers and carbon objects stay the same)."""
        snap = ev.snapshot
        if self._costs[0] is not snap.offers or self._costs[1] is not snap.carbon:
            self._costs = (snap.offers, snap.carbon, {})
        key = (workload, offer.key)
        memo = self._costs[2]
        if state is not None and key in memo:
            return memo[key]
        cost = ev.cost(state) if state is not None else None
        if cost is not None:
            value = (cost.usd_per_hour, cost.carbon_g_per_hour or 0.0, cost.tokens_per_second)
            self.last_cost[key] = memo[key] = value
            return value
        # off the market (delisted, or gone from the recording): the last price known
        return self.last_cost.get(key, (0.0, 0.0, 0.0))

    def _violation(self, ev: WorkloadEvaluator, workload: str, offer: Offer) -> str | None:
        """Which kind of region rule (if any) excludes the region this replica runs in
        (memoised while the carbon data, the one input that changes, stays the same)."""
        if self._verdicts[0] is not ev.snapshot.carbon:
            self._verdicts = (ev.snapshot.carbon, {})
        memo = self._verdicts[1]
        # an exception in force exempts a rule until a date
        day = ev.now.date().isoformat() if self.dated[self.primary] else ""
        key = (workload, f"{offer.region_key}@{day}")
        if key not in memo:
            memo[key] = self._judge(ev, workload, offer)
        return memo[key]

    def _judge(self, ev: WorkloadEvaluator, workload: str, offer: Offer) -> str | None:
        kinds = self.rule_kinds[workload]
        found = None
        for v in ev.region_verdicts(offer.provider.value, offer.region):
            if not v.excludes:
                continue
            kind = kinds.get(v.rule_id)
            if v.rule_id == DATA_CLASS_COVERED or kind == "sovereignty":
                return "sovereignty"
            if v.rule_id == WORKLOAD_LATENCY or kind == "latency":
                found = "slo"
            elif found is None:
                found = "other"
        return found

    # -- the loop ---------------------------------------------------------------------

    def _between(
        self, world: _World, snapshot: MarketSnapshot, start: datetime, end: datetime
    ) -> None:
        """What happens inside a step: reclaims, and (arbiter, greedy) a reconcile pass
        at each reclaim — the daemon acts on an interruption notice at once — and when
        a migration finishes, as the daemon's next tick would (the next wave of a large
        move starts then, not a step later). Prices stay those of the step."""
        at = start
        for _ in range(_MAX_EVENTS_PER_STEP):
            found = self.next_preemption(world, snapshot, at, end)
            done = None
            if world.kind in _DYNAMIC:
                finishing = [
                    f.busy_until
                    for f in world.fleets.values()
                    if f.busy_until is not None and at < f.busy_until < end
                ]
                done = min(finishing, default=None)
            if found is not None and (done is None or found[0] <= done):
                at, hits = found
                self.preempt(world, hits, at)
            elif done is not None:
                at = done
            else:
                return
            if world.kind in _DYNAMIC:
                self.reconcile(world, snapshot, at, False)
        raise RuntimeError(
            f"more than {_MAX_EVENTS_PER_STEP} reclaims and moves within one step at "
            f"{at:%Y-%m-%d %H:%M:%S}: does the spot model reclaim capacity it calls available?"
        )

    def run(self, snapshots: Iterable[MarketSnapshot]) -> tuple[list[datetime], datetime]:
        times: list[datetime] = []
        end: datetime | None = None
        for snapshot in snapshots:
            now = snapshot.taken_at
            if end is not None and now != end:
                raise ValueError(
                    f"snapshots must be one step ({self.step}) apart, in order: "
                    f"{now:%Y-%m-%d %H:%M} after {end - self.step:%Y-%m-%d %H:%M}"
                )
            end = now + self.step
            first = not times
            times.append(now)
            evaluators = {
                w.name: WorkloadEvaluator(
                    w, self.terms[(self.primary, w.name)], snapshot, self.catalog, now
                )
                for w in self.workloads
            }
            for world in self.worlds:
                self.reconcile(world, snapshot, now, first)
                if world.kind not in _HINDSIGHT:
                    self._between(world, snapshot, now, end)
                self.account(world, snapshot, evaluators, now, end)
        if end is None:
            raise ValueError("no snapshots: the backtest window holds no step")
        return times, end


def _complete(decision: Decision) -> bool:
    return decision.placed and not decision.unplaceable_reasons


def _first(*times: datetime | None) -> datetime | None:
    """The earliest of the times given (None = never)."""
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _required_at(fleet: _Fleet, t: datetime) -> int:
    count = 0
    for since, n in fleet.required:
        if since > t:
            break
        count = n
    return count


def _trim(required: list[tuple[datetime, int]], at: datetime) -> list[tuple[datetime, int]]:
    """The changes after ``at`` and the one in force at ``at``."""
    before = [c for c in required if c[0] <= at]
    return before[-1:] + [c for c in required if c[0] > at]


def _availability(fleet: _Fleet, start: datetime, end: datetime) -> tuple[float, float]:
    """Replica-hours serving (at most what is required) and required in [start, end)."""
    cuts = {start, end}
    for r in fleet.replicas:
        for t in (r.billed_from, r.ready_at, r.serves_until, r.ends_at):
            if t is not None and start < t < end:
                cuts.add(t)
    cuts.update(t for t, _ in fleet.required if start < t < end)
    ordered = sorted(cuts)
    ready = required = 0.0
    for a, b in pairwise(ordered):
        h = (b - a) / HOUR
        need = _required_at(fleet, a)
        serving = sum(1 for r in fleet.replicas if r.serving_at(a))
        ready += min(serving, need) * h
        required += need * h
    return ready, required


def run_backtest(
    snapshots: Iterable[MarketSnapshot],
    workloads: Sequence[Workload],
    strategies: Sequence[StrategySpec],
    catalog: RegionCatalog,
    *,
    step: timedelta,
    spot: SpotModel = NO_PREEMPTIONS,
    limits: Limits = Limits(),
) -> BacktestResult:
    """Simulate every strategy over the snapshots: one per step, ``step`` apart, in
    order; each one's ``taken_at`` is that step's ``now`` and its prices hold for the
    step.

    The first strategy's policies are the reference: the accounting (prices, carbon,
    migration terms) and the violation check use them. Raises ValueError for no
    snapshots, snapshots not one step apart, or no or duplicate strategies.
    """
    engine = _Engine(workloads, strategies, catalog, step=step, spot=spot, limits=limits)
    times, end = engine.run(snapshots)
    results = tuple(
        StrategyResult(
            name=world.spec.name,
            kind=world.kind,
            cost_usd=world.cost,
            egress_usd=world.egress,
            carbon_g=world.carbon,
            migrations=world.migrations,
            evacuations=world.evacuations,
            rollbacks=world.rollbacks,
            preemptions=world.preemptions,
            reacquired=world.reacquired,
            replica_hours_ready=world.ready_h,
            replica_hours_required=world.required_h,
            carbon_by_workload=dict(world.carbon_by_workload),
            tokens_by_workload=dict(world.tokens_by_workload),
            sovereignty_violation_hours=world.violations["sovereignty"],
            slo_violation_hours=world.violations["slo"],
            other_violation_hours=world.violations["other"],
            unplaced_hours=world.unplaced_h,
            cost_by_workload=dict(world.cost_by_workload),
            migrations_by_workload=dict(world.migrations_by_workload),
            step_cost_usd=tuple(world.step_cost),
            step_carbon_g=tuple(world.step_carbon),
            events=tuple(sorted(world.events, key=lambda e: e.at)),
        )
        for world in engine.worlds
    )
    return BacktestResult(
        start=times[0],
        end=end,
        step=step,
        times=tuple(times),
        workloads=tuple(w.name for w in workloads),
        strategies=results,
        decide_calls=engine.decide_calls,
        spot_model=spot.describe(),
    )


def default_strategies(
    book: PolicyBook, *, price_only_reference: bool = False
) -> list[StrategySpec]:
    """The arbiter and the four baselines on ``book``; with ``price_only_reference``
    also the arbiter with every carbon price at 0 (what a carbon price changes)."""
    specs = [
        StrategySpec("arbiter", StrategyKind.ARBITER, book),
        StrategySpec("static-on-demand", StrategyKind.STATIC_ON_DEMAND, book),
        StrategySpec("static-spot", StrategyKind.STATIC_SPOT, book),
        StrategySpec("greedy", StrategyKind.GREEDY, book),
        StrategySpec("hindsight", StrategyKind.HINDSIGHT, book),
        StrategySpec("hindsight-objective", StrategyKind.HINDSIGHT_OBJECTIVE, book),
    ]
    if price_only_reference:
        specs.insert(
            1,
            StrategySpec("arbiter-price-only", StrategyKind.ARBITER, with_carbon_price(book, 0.0)),
        )
    return specs


def step_times(start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    """The step times in ``[start, end)``."""
    t = start
    while t < end:
        yield t
        t += step
