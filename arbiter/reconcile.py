"""The reconcile loop (leader only): snapshot → decide → plan → start migrations.

One :meth:`Reconciler.tick`:

1. reads the policies and workloads — validated first; an invalid change keeps the
   last good set running and logs every error with its file:line (SIGHUP and each tick
   re-read the files only when they changed);
2. builds the market snapshot from the store, without blocklisted offers (capacity
   errors), offers with an interruption notice and spot offers whose capacity is lost
   without one: fresh market data says it is gone (the offer left the market; a
   capacity signal of 0 is not enough) *and* the executor reports the replicas
   running there as not ready (:mod:`arbiter.domain.fleet`). Stale data never counts,
   and neither does a missing price alone while the replicas serve;
3. decides every workload at once — each offer's known capacity (what can still be
   obtained) plus the GPUs arbiter's own replicas hold there, running or migrating
   (:func:`arbiter.domain.fleet.gpus_held`) — and records each decision that differs
   from the workload's last one (the decision log ``arbiter decisions`` and
   ``explain`` read);
4. plans against what runs (the store's placements) and the migrations in flight;
5. acts by mode, globally (``[daemon] mode``) or per workload (``[daemon]
   workload_modes``) — ``observe``: the workload is decided and its decision recorded,
   and it is left out of the plan (no move, no hold, no planner memory);
   ``recommend``: it is planned, and each planned move is logged ("would migrate",
   with the reason, source and target; ``arbiter plan`` shows the same plan) and
   nothing runs; ``enforce``: planned moves start as migrations. The kill switch (a
   file, ``[daemon] kill_switch_file``) stops new migrations and parks the ones in
   flight where they are;
6. drives every unfinished migration one step further (also after a restart), in
   every mode.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from arbiter.config import Mode, Settings
from arbiter.domain.decide import Outcome, decide
from arbiter.domain.evaluation import PolicyBook
from arbiter.domain.fleet import (
    InterruptionNotice,
    gpus_held,
    spot_capacity_gone,
    spot_capacity_lost,
)
from arbiter.domain.market import Market, Offer
from arbiter.domain.migrations import Migration, MigrationState
from arbiter.domain.planner import WAVE_MARK, Current, Gate, Inputs, Plan, PlannedMove, plan
from arbiter.domain.regions import RegionCatalog
from arbiter.domain.snapshot import MarketSnapshot
from arbiter.domain.workloads import Placement, Workload
from arbiter.errors import ExecutorError, unknown_name_message
from arbiter.logs import get_logger
from arbiter.migrator import Migrator, placements_from_store
from arbiter.ports import Clock
from arbiter.store.repositories import Store

NOTICE_MEMORY = timedelta(hours=1)


@dataclass
class PolicyState:
    """The policies and workloads in force, and what they were read from."""

    book: PolicyBook
    workloads: tuple[Workload, ...]
    revision: str
    fingerprint: tuple[tuple[str, float, int], ...]
    errors: list[str] = field(default_factory=list)
    """The last refused reload's errors (empty when the files in force are current)."""
    changed: bool = False
    """New since the store last recorded the workloads."""


def _fingerprint(paths: list[str]) -> tuple[tuple[str, float, int], ...]:
    """(path, mtime, size) of every file under the paths: cheap change detection."""
    out = []
    for given in paths:
        p = Path(given)
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            out.append((str(f), st.st_mtime, st.st_size))
    return tuple(out)


def fleet_gpus_held(
    store: Store,
    workloads: Sequence[Workload],
    running: Mapping[str, Sequence[Placement]],
    unfinished: Sequence[Migration],
) -> dict[str, float]:
    """Per offer key, the GPUs arbiter's own replicas hold there — running
    (``running``: the store's placements) or migrating (``unfinished``) — for decide to
    give back to the offer's capacity (:func:`arbiter.domain.fleet.gpus_held`). A
    workload's GPUs per replica come from ``workloads`` (the files in force), else, for
    one that left them and still runs, from the spec the store last recorded."""
    sizes = {w.name: w.gpus_per_replica for w in workloads}
    if (set(running) | {m.workload for m in unfinished}) - sizes.keys():
        for w in store.workloads.all():
            sizes.setdefault(w.name, w.gpus_per_replica)
    return gpus_held(running, unfinished, sizes)


@dataclass
class Assessment:
    policy: PolicyState
    snapshot: MarketSnapshot
    outcome: Outcome
    plan: Plan
    current: dict[str, Current]
    unfinished: list[Migration]
    capacity_lost: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per workload, the spot offers whose capacity is lost without a notice, with why
    (taken out of the market the decisions were made on)."""


@dataclass
class TickResult:
    outcome: Outcome | None
    plan: Plan | None
    started: list[str]
    skipped: str | None = None
    recorded: int = 0
    """Decisions recorded (those that changed)."""
    recommended: list[PlannedMove] = field(default_factory=list)
    """Planned moves only logged (``recommend`` mode, or the kill switch)."""


class Reconciler:
    def __init__(
        self,
        store: Store,
        migrator: Migrator | None,
        settings: Settings,
        catalog: RegionCatalog,
        clock: Clock,
        *,
        stale_after: Mapping[str, float],
    ) -> None:
        self.store = store
        self.migrator = migrator
        self.settings = settings
        self.catalog = catalog
        self.clock = clock
        self.stale_after = dict(stale_after)
        self.notices: list[InterruptionNotice] = []
        """Interruption notices still in force (the watchers add them)."""
        self.policy: PolicyState | None = None
        self.waiting_for_spot: set[str] = set()
        """Workloads the last tick held because their lost spot replicas wait for spot."""
        self.overdue: set[str] = set()
        """Workloads whose hard violation the last tick found past its drain_within."""
        self.capacity_lost: set[tuple[str, str]] = set()
        """(workload, offer key) whose spot capacity the last tick found lost without a
        notice."""
        self.log = get_logger("reconcile")

    # ------------------------------------------------------------------ policies

    def paths(self) -> tuple[list[str], list[str]]:
        conf = self.settings.policies
        return [str(p) for p in conf.paths], [str(p) for p in conf.workloads]

    def reload(self, *, force: bool = False, strict: bool = False) -> PolicyState | None:
        """Re-read policies and workloads when they changed. An invalid set is refused
        whole: the set in force stays, and every finding is logged with file:line
        (``strict``: raised instead, for the CLI). Reads files only."""
        from arbiter.placement_inputs import files_revision
        from arbiter.policy_loader import InvalidPolicyFiles, load_policies, load_workloads

        policy_paths, workload_paths = self.paths()
        fingerprint = _fingerprint(policy_paths + workload_paths)
        if not force and self.policy is not None and self.policy.fingerprint == fingerprint:
            return self.policy
        try:
            workloads = load_workloads(workload_paths)
            policies = load_policies(
                policy_paths,
                today=self.clock.now().date(),
                workloads=workloads.workloads,
                catalog=self.catalog,
            )
        except InvalidPolicyFiles as exc:
            if strict:
                raise
            errors = [str(f) + (f" ({f.hint})" if f.hint else "") for f in exc.errors]
            for text in errors:
                self.log.error("policy reload refused", finding=text)
            if self.policy is not None:
                self.policy.errors = errors
                self.policy.fingerprint = fingerprint  # do not re-log until they change
            return self.policy
        state = PolicyState(
            book=PolicyBook(policies.policies, rule_origins=policies.rule_origins),
            workloads=workloads.workloads,
            revision=files_revision(policy_paths + workload_paths),
            fingerprint=fingerprint,
        )
        if self.policy is None or state.revision != self.policy.revision:
            self.log.info(
                "policies loaded",
                revision=state.revision,
                policies=len(policies.policies),
                workloads=len(workloads.workloads),
            )
            self._check_workload_modes(state.workloads)
            state.changed = True
        self.policy = state
        return state

    def _check_workload_modes(self, workloads: tuple[Workload, ...]) -> None:
        """Warn about each ``daemon.workload_modes`` entry that names no workload: a
        mistyped name would otherwise leave its workload in the global mode unnoticed."""
        known = [w.name for w in workloads]
        for name in sorted(set(self.settings.daemon.workload_modes) - set(known)):
            self.log.warning(
                "daemon.workload_modes names no workload: its mode is not applied",
                workload=name,
                detail=unknown_name_message("workload", name, known),
            )

    # ---------------------------------------------------------------------- tick

    def kill_switch(self) -> bool:
        path = self.settings.daemon.kill_switch_file
        return path is not None and os.path.exists(path)

    def mode_for(self, workload: str) -> Mode:
        return self.settings.daemon.workload_modes.get(workload, self.settings.daemon.mode)

    def notice(self, notice: InterruptionNotice) -> bool:
        """Take an interruption notice into account; True if it is new."""
        if notice in self.notices:
            return False
        self.notices.append(notice)
        self.log.warning(
            "interruption notice",
            provider=notice.provider.value,
            region=notice.region,
            instance_type=notice.instance_type,
            deadline=notice.deadline.isoformat(),
            source=notice.source,
            detail=notice.detail,
        )
        return True

    def interrupted(self, offer: Offer) -> bool:
        return any(n.matches(offer) for n in self.notices)

    def market(self, now: datetime, snapshot: MarketSnapshot | None = None) -> MarketSnapshot:
        """The market to decide on: the store's newest data (or ``snapshot``) without
        blocklisted offers and offers under an interruption notice."""
        from arbiter.snapshots import build_snapshot

        # a notice stays in force for an hour past its deadline: the capacity is gone
        self.notices = [n for n in self.notices if n.deadline + NOTICE_MEMORY > now]
        snap: MarketSnapshot = snapshot or build_snapshot(self.store, self.stale_after, now)
        blocked = set(self.store.blocklist.active(now))
        if not blocked and not self.notices:
            return snap
        return MarketSnapshot.make(
            taken_at=snap.taken_at,
            offers=tuple(
                o
                for o in snap.offers
                if o.offer.key not in blocked and not self.interrupted(o.offer)
            ),
            carbon=snap.carbon,
        )

    def assess(
        self,
        now: datetime,
        *,
        snapshot: MarketSnapshot | None = None,
        strict: bool = False,
        plan_observed: bool = True,
    ) -> Assessment | None:
        """Decide and plan without acting or writing: what ``arbiter plan`` shows and
        what a tick then acts on. None when no valid policies are loaded yet.

        Every workload is decided. ``plan_observed=False`` (the tick) leaves the
        workloads in ``observe`` mode out of the plan — including running ones no longer
        in the workload files, which would otherwise be released."""
        state = self.reload(strict=strict)
        if state is None:
            return None
        snap = self.market(now, snapshot)
        running = placements_from_store(self.store.workloads.all_placements())
        unfinished = self.store.migrations.unfinished()
        busy = {m.workload for m in unfinished}
        lost = self.spot_capacity_lost(running, busy, snap, now, market_from_store=snapshot is None)
        gone = {key for per_offer in lost.values() for key in per_offer}
        if gone:
            snap = MarketSnapshot.make(
                taken_at=snap.taken_at,
                offers=tuple(o for o in snap.offers if o.offer.key not in gone),
                carbon=snap.carbon,
            )
        outcome = decide(
            state.workloads,
            state.book,
            snap,
            self.catalog,
            now,
            policy_revision=state.revision,
            held_gpus=fleet_gpus_held(self.store, state.workloads, running, unfinished),
        )
        last = self.store.migrations.latest_per_workload()

        def planned(name: str) -> bool:
            return plan_observed or self.mode_for(name) is not Mode.OBSERVE

        current = {
            name: Current(
                placements=running.get(name, ()),
                last_migration_at=last[name].created_at if name in last else None,
                mid_waves=name in last
                and last[name].state is MigrationState.DONE
                and WAVE_MARK in last[name].reason,
                in_flight=name in busy,
                interrupted=frozenset(
                    p.offer.key for p in running.get(name, ()) if self.interrupted(p.offer)
                ),
                capacity_lost=lost.get(name, {}),
            )
            for name in set(running) | busy | {w.name for w in state.workloads}
            if planned(name)
        }
        inputs = [
            Inputs(w, outcome.decision(w.name), outcome.evaluator(w.name))
            for w in state.workloads
            if planned(w.name)
        ]
        result = plan(
            inputs,
            current,
            now=now,
            pending_since=self.store.pending.all(),
            in_flight_total=len(unfinished),
            violating_since=self.store.violations.all(),
        )
        return Assessment(state, snap, outcome, result, current, unfinished, lost)

    def spot_capacity_lost(
        self,
        running: Mapping[str, tuple[Placement, ...]],
        busy: set[str],
        snapshot: MarketSnapshot,
        now: datetime,
        *,
        market_from_store: bool,
    ) -> dict[str, dict[str, str]]:
        """Per workload, the spot offers whose capacity is lost without an interruption
        notice, with why: fresh market data says the capacity is gone (the store's
        newest successful polls no longer list the offer — only when ``snapshot`` is the
        store's — or its fresh capacity signal is 0 GPUs) and the executor reports fewer
        replicas ready there than run. Only the executor is asked (and only about those
        offers), so without one (``arbiter plan``) nothing is lost. Workloads with a
        migration in flight (``busy``) and offers under a notice are left to those."""
        executor = self.migrator.executor if self.migrator is not None else None
        spot = {
            name: placements
            for name, placements in running.items()
            if name not in busy
            and any(
                p.offer.market is Market.SPOT and not self.interrupted(p.offer) for p in placements
            )
        }
        if executor is None or not spot:
            return {}
        from arbiter.snapshots import offers_left_market

        keys = sorted({p.offer.key for ps in spot.values() for p in ps})
        left = (
            offers_left_market(self.store, keys, self.stale_after, now) if market_from_store else {}
        )
        lost: dict[str, dict[str, str]] = {}
        for name, placements in sorted(spot.items()):
            candidates = [p for p in placements if not self.interrupted(p.offer)]
            gone = spot_capacity_gone(candidates, snapshot, left)
            ready: dict[str, int] = {}
            for p in candidates:
                if p.offer.key not in gone:
                    continue
                try:
                    group = executor.group(name, p.offer)
                except ExecutorError as exc:
                    self.log.warning(
                        "could not ask the executor whether replicas run",
                        workload=name,
                        offer=p.offer.key,
                        error=str(exc),
                    )
                    continue
                ready[p.offer.key] = 0 if group is None else group.ready
            found = spot_capacity_lost(candidates, gone, ready)
            if found:
                lost[name] = found
        return lost

    def tick(self) -> TickResult:
        now = self.clock.now()
        a = self.assess(now, plan_observed=False)
        if a is None:
            return TickResult(None, None, [], skipped="no valid policies and workloads yet")
        state, outcome, result, unfinished = a.policy, a.outcome, a.plan, a.unfinished
        if state.changed:
            for w in state.workloads:
                self.store.workloads.upsert(w, now=now)
            state.changed = False
        recorded = self._record(outcome)
        self.store.pending.replace(result.pending_since)
        self.store.violations.replace(result.violating_since)
        self._report_capacity_lost(a)
        self._report_holds(result)
        self._report_overdue(result)

        started: list[str] = []
        recommended: list[PlannedMove] = []
        killed = self.kill_switch()
        for move in result.moves:
            mode = self.mode_for(move.workload)  # never observe: those are not planned
            if killed or mode is not Mode.ENFORCE:
                self.log.info(
                    "would migrate" if mode is not Mode.ENFORCE else "kill switch: not migrating",
                    workload=move.workload,
                    kind=move.kind.value,
                    mode=mode.value,
                    urgent=move.urgent,
                    reason=move.reason,
                    source=[f"{p.offer.key}×{p.replicas}" for p in move.source],
                    target=[f"{p.offer.key}×{p.replicas}" for p in move.target],
                )
                recommended.append(move)
                continue
            if self.migrator is None:
                continue
            started.append(self.migrator.start(move).id)
        if killed:
            if unfinished:
                self.log.warning("kill switch: migrations parked", migrations=len(unfinished))
        elif self.migrator is not None:
            by_name = {w.name: w for w in state.workloads}
            self.migrator.drain_timeout = {
                w.name: state.book.terms(w).migration.drain_timeout for w in state.workloads
            }
            self.migrator.run_pending(
                by_name, max_steps=self.settings.daemon.migration_steps_per_tick
            )
        return TickResult(outcome, result, started, recorded=recorded, recommended=recommended)

    def _report_holds(self, result: Plan) -> None:
        """Log why workloads are held; a workload that starts running short because its
        spot replicas wait for spot capacity (``capacity.spot.fallback: none``) is a
        warning, once, and its end is logged too."""
        waiting = set()
        for hold in result.holds:
            if hold.gate is not Gate.WAITING_FOR_SPOT:
                self.log.debug(
                    "held", workload=hold.workload, gate=hold.gate.value, detail=hold.detail
                )
                continue
            waiting.add(hold.workload)
            if hold.workload not in self.waiting_for_spot:
                self.log.warning(
                    "waiting for spot capacity", workload=hold.workload, detail=hold.detail
                )
        for name in sorted(self.waiting_for_spot - waiting):
            self.log.info("spot capacity back", workload=name)
        self.waiting_for_spot = waiting

    def _report_capacity_lost(self, a: Assessment) -> None:
        """A warning, once, for each spot placement found lost without a notice, and an
        info line when a placement that still runs there is no longer lost."""
        found = {(name, key) for name, per_offer in a.capacity_lost.items() for key in per_offer}
        for name, key in sorted(found - self.capacity_lost):
            self.log.warning(
                "spot capacity lost without a notice",
                workload=name,
                offer=key,
                detail=a.capacity_lost[name][key],
            )
        for name, key in sorted(self.capacity_lost - found):
            still_there = any(
                p.offer.key == key for p in a.current.get(name, Current(())).placements
            )
            if still_there:
                self.log.info("spot capacity no longer reported lost", workload=name, offer=key)
        self.capacity_lost = found

    def _report_overdue(self, result: Plan) -> None:
        """An error, once, for each workload whose hard violation outlasts its
        ``on_hard_violation.drain_within`` (and when it is drained at last)."""
        overdue = {o.workload for o in result.overdue}
        for o in result.overdue:
            if o.workload not in self.overdue:
                self.log.error(
                    "hard violation not drained in time",
                    workload=o.workload,
                    since=o.since.isoformat(),
                    deadline=o.deadline.isoformat(),
                    violations=o.detail,
                )
        for name in sorted(self.overdue - overdue):
            if name not in result.violating_since:
                self.log.info("hard violation drained", workload=name)
        self.overdue = overdue

    def _record(self, outcome: Outcome) -> int:
        """Record each decision that differs from the workload's last one."""
        last_by_workload = self.store.decisions.latest_all()
        changed = []
        for d in outcome.decisions:
            last = last_by_workload.get(d.workload)
            same = (
                last is not None
                and last.placements == d.placements
                and last.unplaceable_reasons == d.unplaceable_reasons
                and last.policy_revision == d.policy_revision
            )
            if not same:
                changed.append(d)
        self.store.decisions.record_many(changed)
        return len(changed)
