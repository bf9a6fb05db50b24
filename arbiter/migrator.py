"""Carrying out migrations, make-before-break, one persisted step at a time.

Each step reads the migration from the store, asks the executor to converge (every
executor call is state-based and idempotent) and, once the step's condition holds,
moves the migration to its next state with an event saying why. A daemon that dies
anywhere simply runs the same step again after restart (or on the next leader):

==============  =====================================================================
planned         nothing has happened yet
provisioning    ensure every target group runs max(old, new) replicas — never fewer
warming         wait until those replicas are ready (bounded by a warm-up timeout)
shifting        route the workload's traffic to the target groups only
draining        wait until the old groups have no request in flight (or the timeout)
releasing       scale every group to its target count; release groups not in target
done            the store records the target as what runs
rolling_back    route back to the source groups; release what was added
rolled_back     the source keeps running; capacity errors blocklist the offer
==============  =====================================================================

Old capacity is never touched before new capacity serves: the only steps that stop
replicas (releasing, rolling_back) come after traffic is routed away from them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from arbiter.domain.fleet import group_id
from arbiter.domain.market import Offer
from arbiter.domain.migrations import Migration, MigrationState
from arbiter.domain.planner import PlannedMove
from arbiter.domain.workloads import Placement, Workload
from arbiter.errors import CapacityUnavailable, ExecutorError, StoreError
from arbiter.logs import get_logger
from arbiter.ports import Clock, Executor, TrafficRouter
from arbiter.store.repositories import Store

S = MigrationState
WARMUP_GRACE = timedelta(seconds=120)
"""Added to a workload's own warm-up time before warming gives up and rolls back."""
DEFAULT_BLOCKLIST_TTL = timedelta(hours=1)


def _counts(placements: Sequence[Placement]) -> Counter[Offer]:
    c: Counter[Offer] = Counter()
    for p in placements:
        c[p.offer] += p.replicas
    return c


class Migrator:
    """Starts planned moves as migrations and drives unfinished ones forward."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        router: TrafficRouter,
        clock: Clock,
        *,
        actor: str,
        drain_timeout: Mapping[str, float] | None = None,
        blocklist_ttl: timedelta = DEFAULT_BLOCKLIST_TTL,
    ) -> None:
        self.store = store
        self.executor = executor
        self.router = router
        self.clock = clock
        self.actor = actor
        self.drain_timeout = dict(drain_timeout or {})
        """Seconds per workload (from its migration policy); 300 when unknown."""
        self.blocklist_ttl = blocklist_ttl
        self.log = get_logger("migrator", daemon=actor)

    # ------------------------------------------------------------------ starting

    def start(self, move: PlannedMove) -> Migration:
        """Record a planned move as a migration in state ``planned`` (the event first:
        nothing changes in the world before the store knows why)."""
        now = self.clock.now()
        migration = Migration(
            id=f"m-{uuid.uuid4().hex[:12]}",
            workload=move.workload,
            source=move.source,
            target=move.target,
            reason=f"{move.kind.value}: {move.reason}",
            urgent=move.urgent,
            created_at=now,
            updated_at=now,
        )
        self.store.migrations.create(migration, actor=self.actor)
        self.log.info(
            "migration planned",
            migration=migration.id,
            workload=move.workload,
            kind=move.kind.value,
            urgent=move.urgent,
            reason=move.reason,
        )
        return migration

    # ------------------------------------------------------------------- driving

    def run_pending(
        self, workloads: Mapping[str, Workload], *, max_steps: int = 20
    ) -> list[Migration]:
        """Advance every unfinished migration as far as it can go now."""
        out = []
        for migration in self.store.migrations.unfinished():
            workload = workloads.get(migration.workload) or _stand_in(migration)
            current = migration
            for _ in range(max_steps):
                try:
                    moved = self.step(current, workload)
                except StoreError as exc:
                    # someone else moved it, or the store is gone: stop, never guess
                    self.log.error(
                        "migration step not recorded", migration=current.id, error=str(exc)
                    )
                    break
                if moved is current or moved.state.finished:
                    current = moved
                    break
                current = moved
            out.append(current)
        return out

    def _advance(self, m: Migration, to: MigrationState, reason: str) -> Migration:
        moved = self.store.migrations.advance(
            m, to, at=self.clock.now(), reason=reason, actor=self.actor
        )
        self.log.info(
            "migration step",
            migration=m.id,
            workload=m.workload,
            from_state=m.state.value,
            to_state=to.value,
            reason=reason,
        )
        return moved

    def _waited(self, m: Migration) -> timedelta:
        return self.clock.now() - m.updated_at

    def step(self, m: Migration, workload: Workload) -> Migration:
        """Take one step if its condition holds; return the migration as it is now."""
        handler = {
            S.PLANNED: self._planned,
            S.PROVISIONING: self._provisioning,
            S.WARMING: self._warming,
            S.SHIFTING: self._shifting,
            S.DRAINING: self._draining,
            S.RELEASING: self._releasing,
            S.ROLLING_BACK: self._rolling_back,
        }.get(m.state)
        if handler is None:
            return m
        return handler(m, workload)

    def _planned(self, m: Migration, w: Workload) -> Migration:
        adds = _counts(m.target) - _counts(m.source)
        what = ", ".join(f"+{n} on {o.key}" for o, n in sorted(adds.items(), key=_by_key))
        return self._advance(m, S.PROVISIONING, f"provisioning {what or 'nothing new'}")

    def _provisioning(self, m: Migration, w: Workload) -> Migration:
        before, after = _counts(m.source), _counts(m.target)
        for offer, n in sorted(after.items(), key=_by_key):
            want = max(n, before.get(offer, 0))
            try:
                self.executor.ensure(w, offer, want)
            except CapacityUnavailable as exc:
                return self._no_capacity(m, offer, exc)
            except ExecutorError as exc:
                if self._waited(m) > self._warm_limit(w):
                    return self._advance(m, S.ROLLING_BACK, f"provisioning kept failing: {exc}")
                self.log.warning("provisioning failed; will retry", migration=m.id, error=str(exc))
                return m
        return self._advance(m, S.WARMING, "capacity requested; waiting for readiness")

    def _no_capacity(self, m: Migration, offer: Offer, exc: CapacityUnavailable) -> Migration:
        until = self.clock.now() + self.blocklist_ttl
        self.store.blocklist.add(offer.key, until=until, reason=str(exc), now=self.clock.now())
        return self._advance(
            m,
            S.ROLLING_BACK,
            f"no capacity for {offer.key} ({exc.code or 'capacity error'}); "
            f"blocklisted until {until:%H:%MZ}",
        )

    def _warm_limit(self, w: Workload) -> timedelta:
        return timedelta(seconds=w.warmup_seconds) + WARMUP_GRACE

    def _warming(self, m: Migration, w: Workload) -> Migration:
        before, after = _counts(m.source), _counts(m.target)
        waiting = []
        for offer, n in sorted(after.items(), key=_by_key):
            need = max(n, before.get(offer, 0))
            try:
                # ensure again (idempotent): replaces replicas that died while warming,
                # and is where a scheduler reports capacity it could not find
                group = self.executor.ensure(w, offer, need)
            except CapacityUnavailable as exc:
                return self._no_capacity(m, offer, exc)
            except ExecutorError as exc:
                waiting.append(f"{offer.key}: {exc}")
                continue
            ready = group.ready if group else 0
            if ready < min(n, need):
                waiting.append(f"{offer.key}: {ready}/{n} ready")
        if not waiting:
            return self._advance(m, S.SHIFTING, "every new replica is ready")
        if self._waited(m) > self._warm_limit(w):
            return self._advance(
                m, S.ROLLING_BACK, f"not ready within {self._warm_limit(w)}: {'; '.join(waiting)}"
            )
        return m

    def _shifting(self, m: Migration, w: Workload) -> Migration:
        weights = {group_id(w.name, o): n for o, n in _counts(m.target).items()}
        try:
            self.router.set_weights(w.name, weights)
        except ExecutorError as exc:
            self.log.warning("traffic shift failed; will retry", migration=m.id, error=str(exc))
            return m
        share = ", ".join(f"{k.split('@', 1)[1]}={v}" for k, v in sorted(weights.items()))
        return self._advance(m, S.DRAINING, f"traffic routed to {share or 'nothing'}")

    def _draining(self, m: Migration, w: Workload) -> Migration:
        leaving = _counts(m.source) - _counts(m.target)
        busy = []
        unknown = False
        for offer in sorted(leaving, key=lambda o: o.key):
            n = self.router.in_flight(w.name, group_id(w.name, offer))
            if n is None:
                unknown = True
            elif n > 0:
                busy.append(f"{offer.key}: {n} in flight")
        limit = timedelta(seconds=self.drain_timeout.get(w.name, 300.0))
        waited = self._waited(m)
        if not busy and not unknown:
            return self._advance(m, S.RELEASING, "old replicas drained")
        if waited >= limit:
            detail = "; ".join(busy) if busy else "in-flight count unknown"
            return self._advance(m, S.RELEASING, f"drain timeout {limit} reached ({detail})")
        return m

    def _releasing(self, m: Migration, w: Workload) -> Migration:
        before, after = _counts(m.source), _counts(m.target)
        try:
            for offer in sorted(set(before) | set(after), key=lambda o: o.key):
                self.executor.ensure(w, offer, after.get(offer, 0))
        except ExecutorError as exc:
            self.log.warning("release failed; will retry", migration=m.id, error=str(exc))
            return m
        self.store.workloads.set_placements(m.workload, m.target, now=self.clock.now())
        released = before - after
        what = ", ".join(f"-{n} on {o.key}" for o, n in sorted(released.items(), key=_by_key))
        return self._advance(m, S.DONE, f"released {what or 'nothing'}; target recorded")

    def _rolling_back(self, m: Migration, w: Workload) -> Migration:
        before, after = _counts(m.source), _counts(m.target)
        try:
            self.router.set_weights(w.name, {group_id(w.name, o): n for o, n in before.items()})
            for offer in sorted(set(before) | set(after), key=lambda o: o.key):
                self.executor.ensure(w, offer, before.get(offer, 0))
        except ExecutorError as exc:
            self.log.warning("rollback failed; will retry", migration=m.id, error=str(exc))
            return m
        self.store.workloads.set_placements(m.workload, m.source, now=self.clock.now())
        return self._advance(m, S.ROLLED_BACK, "traffic back on the source; new capacity released")

    # ------------------------------------------------------------------- orphans

    def orphans(self, placements: Mapping[str, Sequence[Placement]]) -> list[Any]:
        """Groups the executor runs that neither the store's placements nor an
        unfinished migration account for (what a crash between steps can leave)."""
        expected: set[str] = set()
        for name, ps in placements.items():
            expected.update(group_id(name, p.offer) for p in ps)
        for m in self.store.migrations.unfinished():
            for p in (*m.source, *m.target):
                expected.add(group_id(m.workload, p.offer))
        return [g for g in self.executor.groups() if g.id not in expected]


def _by_key(item: tuple[Offer, int]) -> str:
    return item[0].key


def _stand_in(m: Migration) -> Workload:
    """A migration whose workload left the files still needs a Workload value to drive
    the executor: a minimal one named like it."""
    from arbiter.domain.workloads import GpuOption

    return Workload(
        name=m.workload,
        data_class="unknown",
        replicas=max(1, sum(p.replicas for p in m.source) or 1),
        gpu_options=(GpuOption(model="unknown", tokens_per_second=1),),
    )


def placements_from_store(
    rows: Mapping[str, Sequence[tuple[str, int]]],
) -> dict[str, tuple[Placement, ...]]:
    """The store's (offer key, replicas) rows as placements."""
    return {
        name: tuple(
            Placement(workload=name, offer=Offer.from_key(key), replicas=n) for key, n in ps
        )
        for name, ps in rows.items()
    }
