"""Plan: desired placements vs what runs → the migrations worth doing now.

For every workload the planner compares where it runs (``current``) with where the
decide step would put it (``desired``) and either plans a move or says which gate held
it. Two kinds of gates:

* **saving gates** — the move must save at least ``min_saving`` (percent and $/h) of the
  current cost, must pay back its own cost (new replicas running alongside the old
  during warm-up and drain, the model download/egress) within the planning horizon,
  the better placement must have been *sustained* for ``sustained_for`` (hysteresis
  against flapping prices), and the workload must be out of its ``cooldown``;
* **safety gates** — no non-urgent move during a blackout window, at most
  ``max_concurrent_drains`` migrations in flight, and at most
  ``max_disrupted_replicas_pct`` of a workload's replicas moved per migration (larger
  moves go in waves).

A **hard violation** (a current placement is no longer compliant: sovereignty or any
other enforcing rule; a stale price alone is not one) or an **interruption** (the
provider is reclaiming the capacity) makes the move *urgent*: it skips the saving
gates and, when the policy says so, the blackout; it still moves make-before-break, so
the ready-replica minimum is never broken by the plan. A new workload is placed at
once; one that is gone is released. A workload with no compliant placement keeps
running where it is (and is reported), since taking it down would help nobody.

A workload whose spec asks for another size than runs (its ``replicas`` or
``required_tokens_per_second`` changed) is **resized** without the saving gates,
``sustained_for`` or ``cooldown``: those stop churn for cost, and the spec demands this
change. A **scale-up** keeps the running replicas and adds the missing ones where the
decision places them; like placing a new workload, no safety gate holds it and it is
not split into waves. A **scale-down** releases the replicas the spec no longer needs
(those the decision does not place there first); it drains replicas, so the blackout,
``max_concurrent_drains`` and the disruption budget's waves apply. Either keeps to the
policy's spread and shares (and a scale-up to its budget); when adding or releasing
alone cannot, the decided placement is taken, running replicas included (a scale-up
that moves running replicas waits out a blackout and ``max_concurrent_drains`` too).
Moving the remaining replicas somewhere cheaper afterwards is a cost move like any
other, under every gate.

Spot replicas under an interruption notice are replaced where the decision puts them,
on-demand included, when the policy's ``capacity.spot.fallback`` is ``on_demand``.
With ``none`` an evacuation that would add on-demand replicas is held instead
(:attr:`Gate.WAITING_FOR_SPOT`): the lost replicas stay recorded on their offer, the
workload runs short until spot capacity is back there (the executor re-acquires it) or
the decision finds spot capacity elsewhere for them, which is moved to at once. A
placement that also breaks an enforced rule is evacuated as usual: rules come first.
Spot capacity lost without a notice (:attr:`Current.capacity_lost`: fresh market data
says it is gone and the executor reports the replicas down; the shell judges it) is
treated exactly like capacity under a notice.

A placement that breaks an enforced rule must be drained within the policy's
``on_hard_violation.drain_within``, counted from when the planner first saw it (the
``violating_since`` memory, carried from plan to plan like ``pending_since``). With
``ignore_blackout`` false an evacuation waits out a blackout window only as long as it
can still finish in time (the workload's warm-up plus ``drain_timeout`` before the
deadline); a violation still there at the deadline — no compliant placement, its
evacuation still in flight, moves not started (``recommend`` mode, the kill switch) —
is reported in :attr:`Plan.overdue`. An interruption notice alone does not start the
clock: the provider's deadline governs it.

Pure: everything, including ``now`` and the pending-since memory, is an argument.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from arbiter.domain.decisions import Decision
from arbiter.domain.evaluation import WorkloadEvaluator
from arbiter.domain.market import Market, Offer
from arbiter.domain.snapshot import OfferState
from arbiter.domain.windows import in_blackout
from arbiter.domain.workloads import Placement, Workload

WAVE_MARK = "(wave "
"""How a migration's reason says it is one wave of a larger move."""


class MoveKind(StrEnum):
    PLACE = "place"
    """A new workload: nothing runs yet."""
    SCALE_UP = "scale-up"
    """The workload's spec asks for more replicas (or throughput) than run: the missing
    replicas are added where decide places them and the running ones stay. No saving
    gate; like placing, no safety gate either, unless adding alone cannot meet the
    policy's rules and running replicas must move too."""
    SCALE_DOWN = "scale-down"
    """The spec asks for fewer replicas (or less throughput) than run: the ones it no
    longer needs are released. No saving gate; it drains replicas, so the safety gates
    (blackout, max concurrent, waves) apply."""
    MOVE = "move"
    """Cheaper (or cleaner) elsewhere, past every saving gate."""
    EVACUATE = "evacuate"
    """A hard violation or an interruption: urgent."""
    RELEASE = "release"
    """The workload is gone from the workload files."""


class Gate(StrEnum):
    UNCHANGED = "unchanged"
    UNPLACEABLE = "unplaceable"
    MIN_SAVING = "min_saving"
    PAYBACK = "payback"
    SUSTAINED_FOR = "sustained_for"
    COOLDOWN = "cooldown"
    BLACKOUT = "blackout"
    MAX_CONCURRENT = "max_concurrent_drains"
    IN_FLIGHT = "in_flight"
    """A migration of this workload is already under way."""
    WAITING_FOR_SPOT = "waiting_for_spot"
    """Spot replicas lost to an interruption are not replaced on on-demand (the policy's
    ``capacity.spot.fallback`` is ``none``): the workload runs short until spot is back."""


@dataclass(frozen=True)
class Current:
    """What runs for one workload, and its migration history."""

    placements: tuple[Placement, ...]
    last_migration_at: datetime | None = None
    in_flight: bool = False
    interrupted: frozenset[str] = frozenset()
    """Offer keys with an interruption notice."""
    capacity_lost: Mapping[str, str] = field(default_factory=dict)
    """Spot offer keys whose capacity is gone without a notice, with why: fresh market
    data and the executor agree (:func:`arbiter.domain.fleet.spot_capacity_lost`)."""
    mid_waves: bool = False
    """The last migration was one wave of a larger move: the next wave skips
    sustained-for and cooldown (the move was already judged), not the saving gates."""


@dataclass(frozen=True)
class PlannedMove:
    workload: str
    kind: MoveKind
    source: tuple[Placement, ...]
    target: tuple[Placement, ...]
    urgent: bool
    reason: str
    saving_usd_per_hour: float = 0.0
    migration_cost_usd: float = 0.0
    wave: tuple[int, int] = (1, 1)
    """(this wave, waves needed) when a large move is split by the disruption budget."""


@dataclass(frozen=True)
class Hold:
    workload: str
    gate: Gate
    detail: str


@dataclass(frozen=True)
class Overdue:
    """A hard violation still running past its ``drain_within``."""

    workload: str
    since: datetime
    """When the planner first saw the violation."""
    deadline: datetime
    """``since`` + ``on_hard_violation.drain_within``."""
    detail: str
    """Each placement's excluding rules."""


@dataclass(frozen=True)
class Plan:
    moves: tuple[PlannedMove, ...]
    holds: tuple[Hold, ...]
    pending_since: Mapping[str, datetime] = field(default_factory=dict)
    """When each workload's better placement was first seen (carried to the next plan)."""
    violating_since: Mapping[str, datetime] = field(default_factory=dict)
    """When each workload's placements were first seen breaking an enforced rule
    (carried to the next plan)."""
    overdue: tuple[Overdue, ...] = ()
    """Hard violations not drained within ``on_hard_violation.drain_within``."""


@dataclass(frozen=True)
class Inputs:
    workload: Workload
    decision: Decision
    evaluator: WorkloadEvaluator


# ---------------------------------------------------------------------- costing


def _states(evaluator: WorkloadEvaluator) -> dict[str, OfferState]:
    return evaluator.snapshot.by_key


def cost_per_hour(
    placements: Sequence[Placement], evaluator: WorkloadEvaluator, *, effective: bool = False
) -> tuple[float, list[str]]:
    """USD/h of these placements at the snapshot's prices (with ``effective``: plus the
    carbon price and interruption-risk premium the objective adds), and the offers it
    could not price (gone from the market)."""
    states = _states(evaluator)
    total = 0.0
    missing = []
    w = evaluator.workload
    fastest = max(o.tokens_per_second for o in w.gpu_options)
    for p in placements:
        state = states.get(p.offer.key)
        cost = evaluator.cost(state) if state is not None else None
        if cost is None:
            missing.append(p.offer.key)
            continue
        if not effective:
            total += cost.usd_per_hour * p.replicas
        elif w.replicas is not None:
            # as decide ranks a replica count: per unit of throughput, priced as one
            # replica on the fastest GPU the workload accepts
            total += cost.effective * fastest / cost.tokens_per_second * p.replicas
        else:
            total += cost.effective * p.replicas
    return total, missing


def violations(placements: Sequence[Placement], evaluator: WorkloadEvaluator) -> list[str]:
    """Why current placements are no longer allowed: each excluding rule, per offer."""
    states = _states(evaluator)
    out = []
    for p in placements:
        state = states.get(p.offer.key)
        if state is None:
            # Region rules can still be judged without a price: a placement in a
            # region that is no longer compliant is a violation even off-market.
            verdicts = evaluator.region_verdicts(p.offer.provider.value, p.offer.region)
        else:
            verdicts = evaluator.verdicts(state)
        for v in verdicts:
            if v.excludes and v.rule_id != "fresh-price":
                out.append(f"{p.offer.key}: {v.rule_id}: {v.reason}")
    return out


def waiting_for_spot(
    current: Current, desired: Sequence[Placement], evaluator: WorkloadEvaluator
) -> str | None:
    """Why an evacuation of lost spot replicas (under an interruption notice, or whose
    capacity is gone without one) must wait for spot capacity, or None when it may go
    ahead: the policy's ``capacity.spot.fallback`` is ``none`` and ``desired`` runs more
    replicas on on-demand than the workload does now (so some of the lost spot replicas
    would be replaced on on-demand)."""
    if evaluator.terms.spot.fallback != "none":
        return None
    gone = current.interrupted | current.capacity_lost.keys()
    lost = [p for p in current.placements if p.offer.key in gone and p.offer.market is Market.SPOT]
    if not lost:
        return None
    on_demand_now = sum(
        p.replicas for p in current.placements if p.offer.market is Market.ON_DEMAND
    )
    on_demand_wanted = sum(p.replicas for p in desired if p.offer.market is Market.ON_DEMAND)
    if on_demand_wanted <= on_demand_now:
        return None
    short = sum(p.replicas for p in lost)
    causes = []
    if any(p.offer.key in current.interrupted for p in lost):
        causes.append("to an interruption notice")
    if any(p.offer.key not in current.interrupted for p in lost):
        causes.append("(spot capacity gone)")
    return (
        f"{short} replica(s) on {', '.join(sorted({p.offer.key for p in lost}))} lost "
        f"{' or '.join(causes)} wait for spot capacity: the decision would put "
        f"{on_demand_wanted - on_demand_now} more on on-demand, and with "
        f"capacity.spot.fallback: none spot replicas are not replaced there; the workload "
        f"runs {short} replica(s) short until spot is back"
    )


def migration_cost_usd(
    source: Sequence[Placement],
    target: Sequence[Placement],
    workload: Workload,
    evaluator: WorkloadEvaluator,
) -> float:
    """What moving costs once: new replicas run alongside the old through warm-up and
    drain (double running), and the model is copied to each new place (egress)."""
    before = _by_offer(source)
    after = _by_offer(target)
    added = [
        Placement(workload=workload.name, offer=offer, replicas=n - before.get(offer, 0))
        for offer, n in after.items()
        if n > before.get(offer, 0)
    ]
    new_cost, _ = cost_per_hour(added, evaluator)
    migration = evaluator.terms.migration
    overlap_hours = (workload.warmup_seconds + migration.drain_timeout) / 3600
    places = len({p.offer.region_key for p in added})
    egress = workload.model_size_gib * migration.egress_usd_per_gib * places
    return new_cost * overlap_hours + egress


def _by_offer(placements: Sequence[Placement]) -> Counter[Offer]:
    c: Counter[Offer] = Counter()
    for p in placements:
        c[p.offer] += p.replicas
    return c


def _same(a: Sequence[Placement], b: Sequence[Placement]) -> bool:
    return _by_offer(a) == _by_offer(b)


def wave_target(
    source: Sequence[Placement], target: Sequence[Placement], max_moved: int, workload: str
) -> tuple[tuple[Placement, ...], int]:
    """The first wave toward ``target`` moving at most ``max_moved`` replicas (add that
    many where the target wants more, take as many away where it wants fewer), and how
    many waves the whole move needs."""
    before, after = _by_offer(source), _by_offer(target)
    grow = after - before
    shrink = before - after
    moved = max(sum(grow.values()), sum(shrink.values()))
    if moved <= max_moved:
        return tuple(target), 1
    waves = math.ceil(moved / max_moved)
    result = Counter(before)
    budget = max_moved
    for offer, n in sorted(grow.items(), key=lambda kv: kv[0].key):
        step = min(n, budget)
        result[offer] += step
        budget -= step
    budget = max_moved
    for offer, n in sorted(shrink.items(), key=lambda kv: kv[0].key):
        step = min(n, budget)
        result[offer] -= step
        budget -= step
    placements = tuple(
        Placement(workload=workload, offer=o, replicas=n)
        for o, n in sorted(result.items(), key=lambda kv: kv[0].key)
        if n > 0
    )
    return placements, waves


# ------------------------------------------------------------------------ resizing

_EPS = 1e-9


def _throughput(placements: Sequence[Placement], evaluator: WorkloadEvaluator) -> float | None:
    """Tokens/s these placements serve, or None when an offer's GPU is unknown (gone
    from the snapshot)."""
    states = _states(evaluator)
    total = 0.0
    for p in placements:
        state = states.get(p.offer.key)
        cost = evaluator.cost(state) if state is not None else None
        if cost is None:
            return None
        total += cost.tokens_per_second * p.replicas
    return total


def _unit_cost(offer: Offer, evaluator: WorkloadEvaluator) -> float | None:
    """Effective USD/h per token/s of one replica on ``offer`` (None: cannot price it)."""
    state = _states(evaluator).get(offer.key)
    cost = evaluator.cost(state) if state is not None else None
    return None if cost is None else cost.effective / cost.tokens_per_second


def group_rule_broken(placements: Sequence[Placement], evaluator: WorkloadEvaluator) -> str | None:
    """Which of the rules decide applies to a workload's placement as a whole (spread,
    share per provider, spot share) these placements break, or None. Per-offer rules are
    :func:`violations`; budgets are checked by the caller."""
    total = sum(p.replicas for p in placements)
    if total == 0:
        return None
    terms = evaluator.terms
    spread = terms.redundancy.spread
    if spread is not None and spread.min_distinct > 1:
        if spread.across == "region":
            distinct = len({p.offer.region_key for p in placements})
        else:
            distinct = len({p.offer.provider for p in placements})
        if distinct < spread.min_distinct:
            return (
                f"would hold replicas in {distinct} {spread.across}(s) (redundancy.spread "
                f"needs {spread.min_distinct})"
            )
    share = terms.redundancy.max_share_per_provider
    if share is not None:
        per_provider = Counter[str]()
        for p in placements:
            per_provider[p.offer.provider.value] += p.replicas
        for provider, n in sorted(per_provider.items()):
            if n > share * total + _EPS:
                return (
                    f"would put {n} of {total} replicas on {provider} "
                    f"(redundancy.max_share_per_provider is {share:g})"
                )
    spot_ok, _ = evaluator.spot_allowed()
    max_spot = terms.spot.max_share if spot_ok else 0.0
    spot = sum(p.replicas for p in placements if p.offer.market is Market.SPOT)
    if spot > max_spot * total + _EPS:
        return (
            f"would put {spot} of {total} replicas on spot (capacity.spot.max_share is "
            f"{max_spot:g})"
        )
    return None


def _placements(counts: Counter[Offer], workload: str) -> tuple[Placement, ...]:
    return tuple(
        Placement(workload=workload, offer=o, replicas=n)
        for o, n in sorted(counts.items(), key=lambda kv: kv[0].key)
        if n > 0
    )


@dataclass
class _Size:
    """How big a workload's spec asks it to be, and how big placements are, in the
    spec's own unit: replicas, or tokens/s for a throughput target."""

    item: Inputs

    @property
    def by_throughput(self) -> bool:
        return self.item.workload.replicas is None

    def wanted(self) -> float:
        w = self.item.workload
        if w.required_tokens_per_second is not None:
            return w.required_tokens_per_second
        # the decision holds the replica count the spec asks for (with min_replicas)
        return float(sum(p.replicas for p in self.item.decision.placements))

    def of(self, placements: Sequence[Placement]) -> float | None:
        if self.by_throughput:
            return _throughput(placements, self.item.evaluator)
        return float(sum(p.replicas for p in placements))

    def text(self, value: float) -> str:
        if self.by_throughput:
            return f"{value:,.0f} tokens/s"
        return f"{value:.0f} replicas"

    def asks(self, want: float, have: float) -> str:
        if self.by_throughput:
            return f"the workload asks for {want:,.0f} tokens/s, its replicas serve {have:,.0f}"
        return f"the workload asks for {want:.0f} replicas, {have:.0f} run"


def resize(
    current: Sequence[Placement], item: Inputs, budget_slack: dict[str, float]
) -> PlannedMove | None:
    """The move that brings a running workload to the size its spec asks for, or None
    when it has that size (any other difference from the decision is a cost move).

    Scaling up keeps the running replicas and adds the missing ones where the decision
    places more than run: on offers the workload already uses first, then the cheapest
    per token. Scaling down releases, one at a time, the replicas the decision no longer
    places there first, then the dearest per token, each only while the workload keeps
    the size it asks for and the policy's spread and shares. When that cannot meet the
    policy's rules (spread, shares; for a scale-up also the budget, of which
    ``budget_slack`` holds what is left beyond the decisions and is spent here), the
    decided placement is taken instead, and running replicas move with it. No saving
    gate applies: the spec asks for the change."""
    size = _Size(item)
    want, have = size.wanted(), size.of(current)
    if have is None:
        return None  # a running offer's GPU is unknown: nothing to judge the size by
    floor = want - _EPS * max(1.0, want)
    desired = item.decision.placements
    ev = item.evaluator
    name = item.workload.name
    asks = size.asks(want, have)
    before = _by_offer(current)

    def scale(kind: MoveKind, target: Sequence[Placement], reason: str) -> PlannedMove:
        return PlannedMove(name, kind, tuple(current), tuple(target), urgent=False, reason=reason)

    if have < floor:
        pool = _by_offer(desired) - before

        def added_first(offer: Offer) -> tuple[bool, float, str]:
            unit = _unit_cost(offer, ev)
            return (offer not in before, math.inf if unit is None else unit, offer.key)

        grown = Counter(before)
        added = 0
        for offer in sorted(pool, key=added_first):
            for _ in range(pool[offer]):
                if (size.of(_placements(grown, name)) or 0.0) >= floor:
                    break
                grown[offer] += 1
                added += 1
        target = _placements(grown, name)
        reached = size.of(target) or 0.0
        broken = (
            group_rule_broken(target, ev) or _over_budget(target, desired, ev, budget_slack)
            if reached >= floor
            else f"would reach {size.text(reached)}"
        )
        if broken is None:
            return scale(
                MoveKind.SCALE_UP,
                target,
                f"{asks}; adds {added} replica(s) where decide places them, the running ones stay",
            )
        return scale(
            MoveKind.SCALE_UP,
            desired,
            f"{asks}; adding alone {broken}, so the decided placement is taken",
        )

    unwanted = before - _by_offer(desired)

    def released_first(offer: Offer) -> tuple[bool, float, str]:
        unit = _unit_cost(offer, ev)
        return (offer not in unwanted, -(math.inf if unit is None else unit), offer.key)

    kept = Counter(before)
    released = 0
    for offer in sorted(before, key=released_first):
        for _ in range(before[offer]):
            trial = Counter(kept)
            trial[offer] -= 1
            left = _placements(trial, name)
            served = size.of(left)
            if not left or served is None or served < floor or group_rule_broken(left, ev):
                break
            kept = trial
            released += 1
    spare = 0.0 if size.by_throughput else have - want
    if released < spare:
        # replicas to spare, but releasing them alone breaks the spread or a share
        return scale(
            MoveKind.SCALE_DOWN,
            desired,
            f"{asks}; releasing alone would break the policy's spread or "
            "shares, so the decided placement is taken",
        )
    if not released:
        return None
    return scale(
        MoveKind.SCALE_DOWN,
        _placements(kept, name),
        f"{asks}; releases {released} replica(s): those the decision no longer "
        "places there first, then the dearest",
    )


def _over_budget(
    target: Sequence[Placement],
    desired: Sequence[Placement],
    evaluator: WorkloadEvaluator,
    budget_slack: dict[str, float],
) -> str | None:
    """Why ``target`` would not fit the workload's budget: it costs more than the
    decided placement by more than the budget leaves (``budget_slack``, spent here when
    it fits), or None."""
    budget = evaluator.terms.budget
    if budget is None:
        return None
    name, _ = budget
    target_cost, missing = cost_per_hour(target, evaluator, effective=True)
    if missing:
        return f"cannot be priced ({', '.join(missing)}) against the budget of policy {name!r}"
    desired_cost, _ = cost_per_hour(desired, evaluator, effective=True)
    extra = target_cost - desired_cost
    left = budget_slack.get(name, 0.0)
    if extra > left + 1e-6:
        return (
            f"would cost ${extra:,.2f}/h more than the decided placement, beyond what the "
            f"budget of policy {name!r} leaves (${max(left, 0.0):,.2f}/h)"
        )
    budget_slack[name] = left - max(extra, 0.0)
    return None


def budget_slack(inputs: Sequence[Inputs]) -> dict[str, float]:
    """What each policy budget leaves (USD/h, at effective cost as decide charges it)
    once every workload taking its budget from that policy runs its decided placement."""
    slack: dict[str, float] = {}
    for item in inputs:
        budget = item.evaluator.terms.budget
        if budget is None:
            continue
        name, limit = budget
        cost, _ = cost_per_hour(item.decision.placements, item.evaluator, effective=True)
        slack[name] = slack.get(name, limit.max_usd_per_hour) - cost
    return slack


# ------------------------------------------------------------------------ planning


def plan(
    inputs: Sequence[Inputs],
    current: Mapping[str, Current],
    *,
    now: datetime,
    pending_since: Mapping[str, datetime],
    in_flight_total: int = 0,
    violating_since: Mapping[str, datetime] | None = None,
) -> Plan:
    """The moves to start now and the reasons others wait.

    ``current`` holds every workload that runs (including ones no longer in the
    workload files, which are released); ``pending_since`` and ``violating_since`` are
    the previous plan's.
    The decisions must have been made on a market without the interrupted and
    blocklisted offers (the shell takes them out), so they point elsewhere.
    Urgent moves come first; within a kind, the largest saving first.
    """
    moves: list[PlannedMove] = []
    holds: list[Hold] = []
    pending: dict[str, datetime] = {}
    violating: dict[str, datetime] = {}
    overdue: list[Overdue] = []
    known = {i.workload.name for i in inputs}
    for name in sorted(set(current) - known):
        cur = current[name]
        if cur.in_flight:
            holds.append(Hold(name, Gate.IN_FLIGHT, "a migration is under way"))
        elif cur.placements:
            moves.append(
                PlannedMove(
                    name,
                    MoveKind.RELEASE,
                    cur.placements,
                    (),
                    urgent=False,
                    reason="the workload is no longer in the workload files",
                )
            )

    candidates: list[PlannedMove] = []
    slack = budget_slack(inputs)
    for item in inputs:
        name = item.workload.name
        cur = current.get(name, Current(()))
        desired = item.decision.placements
        broken = violations(cur.placements, item.evaluator)
        if broken:
            since = (violating_since or {}).get(name, now)
            violating[name] = since
            deadline = since + timedelta(
                seconds=item.evaluator.terms.migration.on_hard_violation.drain_within
            )
            if now >= deadline:
                overdue.append(Overdue(name, since, deadline, "; ".join(broken)))
        if cur.in_flight:
            holds.append(Hold(name, Gate.IN_FLIGHT, "a migration is under way"))
            continue
        lost = [
            f"{p.offer.key}: interruption notice"
            if p.offer.key in cur.interrupted
            else f"{p.offer.key}: {cur.capacity_lost[p.offer.key]}"
            for p in cur.placements
            if p.offer.key in cur.interrupted or p.offer.key in cur.capacity_lost
        ]
        bad = lost + broken
        complete = item.decision.placed and not item.decision.unplaceable_reasons
        if not cur.placements:
            if complete:
                candidates.append(
                    PlannedMove(name, MoveKind.PLACE, (), desired, True, "new workload: place it")
                )
            else:
                holds.append(
                    Hold(name, Gate.UNPLACEABLE, "; ".join(item.decision.unplaceable_reasons))
                )
            continue
        if not complete:
            detail = "; ".join(item.decision.unplaceable_reasons)
            if bad:
                detail = f"VIOLATING and no compliant placement: {'; '.join(bad)} — {detail}"
            holds.append(Hold(name, Gate.UNPLACEABLE, f"keeps running where it is: {detail}"))
            continue
        if _same(cur.placements, desired):
            if bad:
                holds.append(
                    Hold(name, Gate.UNPLACEABLE, f"violating, and decide chose the same: {bad}")
                )
            continue
        terms = item.evaluator.terms.migration
        if bad:
            wait = None if broken else waiting_for_spot(cur, desired, item.evaluator)
            if wait is not None:
                holds.append(Hold(name, Gate.WAITING_FOR_SPOT, wait))
                continue
            candidates.append(
                PlannedMove(
                    name,
                    MoveKind.EVACUATE,
                    cur.placements,
                    desired,
                    urgent=True,
                    reason=("hard violation: " if broken else "spot capacity lost: ")
                    + "; ".join(bad),
                )
            )
            continue
        resized = resize(cur.placements, item, slack)
        if resized is not None:
            candidates.append(resized)
            continue
        # judged on the objective's cost (price + carbon price + risk), so a move to a
        # cleaner grid can pass when the policy prices carbon
        now_cost, missing = cost_per_hour(cur.placements, item.evaluator, effective=True)
        new_cost, _ = cost_per_hour(desired, item.evaluator, effective=True)
        if missing:
            holds.append(Hold(name, Gate.MIN_SAVING, f"no current price for {', '.join(missing)}"))
            continue
        saving = now_cost - new_cost
        pct = 100 * saving / now_cost if now_cost > 0 else 0.0
        minimum = terms.min_saving
        if saving <= 0 or pct < minimum.pct or saving < minimum.usd_per_hour:
            holds.append(
                Hold(
                    name,
                    Gate.MIN_SAVING,
                    f"best move saves ${saving:,.2f}/h ({pct:.1f}%); needs "
                    f"{minimum.pct:g}% and ${minimum.usd_per_hour:,.2f}/h",
                )
            )
            continue
        cost = migration_cost_usd(cur.placements, desired, item.workload, item.evaluator)
        horizon_h = terms.planning_horizon / 3600
        if saving * horizon_h <= cost:
            holds.append(
                Hold(
                    name,
                    Gate.PAYBACK,
                    f"saves ${saving * horizon_h:,.2f} over {horizon_h:g} h but moving costs "
                    f"${cost:,.2f}",
                )
            )
            continue
        since = pending_since.get(name, now)
        pending[name] = since
        if not cur.mid_waves and now - since < timedelta(seconds=terms.sustained_for):
            holds.append(
                Hold(
                    name,
                    Gate.SUSTAINED_FOR,
                    f"cheaper since {since:%H:%M:%SZ}; waiting until it holds for "
                    f"{terms.sustained_for / 60:g} min",
                )
            )
            continue
        if (
            not cur.mid_waves
            and cur.last_migration_at is not None
            and now - cur.last_migration_at < timedelta(seconds=terms.cooldown)
        ):
            holds.append(
                Hold(
                    name,
                    Gate.COOLDOWN,
                    f"last migration at {cur.last_migration_at:%Y-%m-%d %H:%MZ}; cooldown "
                    f"{terms.cooldown / 3600:g} h",
                )
            )
            continue
        candidates.append(
            PlannedMove(
                name,
                MoveKind.MOVE,
                cur.placements,
                desired,
                urgent=False,
                reason=f"saves ${saving:,.2f}/h ({pct:.1f}%), pays back its ${cost:,.2f} "
                f"within {horizon_h:g} h",
                saving_usd_per_hour=saving,
                migration_cost_usd=cost,
            )
        )

    by_name = {i.workload.name: i for i in inputs}
    # urgent moves first, then what the workloads' specs ask for, then the savings
    candidates.sort(
        key=lambda m: (not m.urgent, m.kind is MoveKind.MOVE, -m.saving_usd_per_hour, m.workload)
    )
    running = in_flight_total
    for move in candidates:
        terms = by_name[move.workload].evaluator.terms.migration
        # placing replicas disrupts nothing: a new workload, and a scale-up that only adds
        if move.kind is not MoveKind.PLACE and not _only_adds(move):
            window = in_blackout(terms.blackout, now)
            if window and not (move.urgent and terms.on_hard_violation.ignore_blackout):
                # an evacuation of a rule violation waits out the window only while it
                # can still be drained within on_hard_violation.drain_within
                violated = violating.get(move.workload) if move.urgent else None
                due = _latest_start(by_name[move.workload], violated)
                if due is None or now < due[1]:
                    detail = f"in blackout {window!r}"
                    if due is not None:
                        detail += (
                            f"; the hard violation must be drained by {due[0]:%Y-%m-%d %H:%MZ} "
                            f"(on_hard_violation.drain_within), so the evacuation starts by "
                            f"{due[1]:%H:%MZ} at the latest"
                        )
                    holds.append(Hold(move.workload, Gate.BLACKOUT, detail))
                    continue
                move = replace(
                    move,
                    reason=f"{move.reason} (starts inside blackout {window!r}: "
                    f"on_hard_violation.drain_within ends at {due[0]:%Y-%m-%d %H:%MZ})",
                )
            if not move.urgent and running >= terms.max_concurrent_drains:
                holds.append(
                    Hold(
                        move.workload,
                        Gate.MAX_CONCURRENT,
                        f"{running} migration(s) in flight; at most {terms.max_concurrent_drains}",
                    )
                )
                continue
            total = sum(p.replicas for p in move.source)
            max_moved = max(1, math.floor(total * terms.max_disrupted_replicas_pct / 100))
            # An evacuation is not split into waves: a wave that kept replicas on the
            # reclaimed or forbidden offer would be asked of capacity that is gone. It
            # is still make-before-break: new replicas serve before old ones drain.
            waves = 1
            target = move.target
            # a scale-up is not split either: a wave would not add what the spec asks for
            if not move.urgent and move.kind is not MoveKind.SCALE_UP:
                target, waves = wave_target(move.source, move.target, max_moved, move.workload)
            if waves > 1:
                move = PlannedMove(
                    move.workload,
                    move.kind,
                    move.source,
                    target,
                    move.urgent,
                    f"{move.reason} {WAVE_MARK}1 of {waves}: at most {max_moved} replicas at once)",
                    move.saving_usd_per_hour,
                    move.migration_cost_usd,
                    (1, waves),
                )
        pending.pop(move.workload, None)
        moves.append(move)
        running += 1
    return Plan(
        moves=tuple(moves),
        holds=tuple(holds),
        pending_since=pending,
        violating_since=violating,
        overdue=tuple(overdue),
    )


def _only_adds(move: PlannedMove) -> bool:
    """A scale-up that keeps every running replica where it is."""
    if move.kind is not MoveKind.SCALE_UP:
        return False
    after = _by_offer(move.target)
    return all(after[offer] >= n for offer, n in _by_offer(move.source).items())


def _latest_start(item: Inputs, since: datetime | None) -> tuple[datetime, datetime] | None:
    """For a workload breaking an enforced rule since ``since``: when it must be drained
    (``drain_within`` later) and the latest time its evacuation can start to finish by
    then (the new replicas' warm-up and the old ones' drain); None without a violation."""
    if since is None:
        return None
    terms = item.evaluator.terms.migration
    deadline = since + timedelta(seconds=terms.on_hard_violation.drain_within)
    takes = timedelta(seconds=item.workload.warmup_seconds + terms.drain_timeout)
    return deadline, deadline - takes
