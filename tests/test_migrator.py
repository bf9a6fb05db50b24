"""Migrations make-before-break, on SQLite and PostgreSQL: every step recorded, a crash
in any state resumed by a new runner, capacity errors rolled back and blocklisted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from arbiter.domain.market import Offer
from arbiter.domain.migrations import MigrationState
from arbiter.domain.planner import MoveKind, PlannedMove
from arbiter.domain.workloads import GpuOption, Placement, Workload
from arbiter.errors import StoreError
from arbiter.migrator import Migrator
from arbiter.ports import FakeClock, FakeExecutor
from arbiter.store.repositories import Store

S = MigrationState
START = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
W = Workload(
    name="chat",
    data_class="internal",
    replicas=2,
    gpu_options=(GpuOption(model="L4", tokens_per_second=500),),
    warmup_seconds=60,
)
A = Offer(provider="gcp", region="europe-west4", instance_type="g2-standard-4", market="spot")
B = Offer(provider="gcp", region="europe-west1", instance_type="g2-standard-4", market="spot")


def placed(o: Offer, n: int) -> Placement:
    return Placement(workload="chat", offer=o, replicas=n)


def move(source: tuple[Placement, ...], target: tuple[Placement, ...]) -> PlannedMove:
    return PlannedMove("chat", MoveKind.MOVE, source, target, urgent=False, reason="cheaper")


class World:
    """One store, one fake cloud, one clock; runners come and go like daemons."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = FakeClock(START)
        self.cloud = FakeExecutor(self.clock, warmup=timedelta(seconds=30))
        store.workloads.upsert(W, now=START)

    def runner(self, name: str = "d1") -> Migrator:
        return Migrator(
            self.store, self.cloud, self.cloud, self.clock, actor=name, drain_timeout={"chat": 60}
        )

    def running_on(self, *ps: Placement) -> None:
        for p in ps:
            self.cloud.ensure(W, p.offer, p.replicas)
        self.cloud.set_weights("chat", {f"chat@{p.offer.key}": p.replicas for p in ps})
        self.store.workloads.set_placements("chat", ps, now=START)
        self.clock.advance(timedelta(minutes=5))


def drive(world: World, runner: Migrator, *, until: MigrationState, rounds: int = 20) -> None:
    for _ in range(rounds):
        (m,) = world.store.migrations.recent(limit=1)
        if m.state is until or m.state.finished:
            return
        runner.run_pending({"chat": W}, max_steps=1)
        world.clock.advance(timedelta(seconds=20))


def test_a_move_runs_make_before_break_and_records_every_step(store: Store) -> None:
    world = World(store)
    world.running_on(placed(A, 2))
    runner = world.runner()
    m = runner.start(move((placed(A, 2),), (placed(B, 2),)))
    drive(world, runner, until=S.DONE)
    events = store.migrations.events(m.id)
    assert [e.to_state for e in events] == [
        S.PLANNED, S.PROVISIONING, S.WARMING, S.SHIFTING, S.DRAINING, S.RELEASING, S.DONE,
    ]  # fmt: skip
    # B was asked for before A was released, and traffic moved in between
    actions = [c for c in world.cloud.calls if c[0] in ("ensure", "route")][2:]  # after setup
    assert actions.index(("ensure", f"chat@{B.key}", 2)) < actions.index(("route", "chat", 2))
    assert actions.index(("route", "chat", 2)) < actions.index(("ensure", f"chat@{A.key}", 0))
    assert [g.offer for g in world.cloud.groups("chat")] == [B]
    assert store.workloads.placements("chat") == [(B.key, 2)]


def test_new_replicas_are_ready_before_traffic_shifts(store: Store) -> None:
    world = World(store)
    world.running_on(placed(A, 2))
    runner = world.runner()
    runner.start(move((placed(A, 2),), (placed(B, 2),)))
    for _ in range(3):  # planned → provisioning → warming, and it stays warming
        runner.run_pending({"chat": W}, max_steps=1)
    (m,) = store.migrations.recent(limit=1)
    assert m.state is S.WARMING
    assert world.cloud.weights("chat") == {f"chat@{A.key}": 2}


@pytest.mark.parametrize(
    "crash_in", [S.PLANNED, S.PROVISIONING, S.WARMING, S.SHIFTING, S.DRAINING, S.RELEASING]
)
def test_a_restarted_runner_finishes_a_migration_left_in_any_state(
    store: Store, crash_in: MigrationState
) -> None:
    world = World(store)
    world.running_on(placed(A, 2))
    first = world.runner("d1")
    m = first.start(move((placed(A, 2),), (placed(B, 2),)))
    drive(world, first, until=crash_in)
    assert store.migrations.get(m.id).state is crash_in  # type: ignore[union-attr]
    # the first daemon dies here; a new one (same store, same cloud) takes over
    second = world.runner("d2")
    drive(world, second, until=S.DONE)
    assert store.migrations.get(m.id).state is S.DONE  # type: ignore[union-attr]
    assert [g.offer for g in world.cloud.groups("chat")] == [B]
    assert second.orphans({"chat": (placed(B, 2),)}) == []


def test_a_capacity_error_rolls_back_keeps_the_old_and_blocklists_the_offer(
    store: Store,
) -> None:
    world = World(store)
    world.running_on(placed(A, 2))
    world.cloud.no_capacity.add(B.key)
    runner = world.runner()
    m = runner.start(move((placed(A, 2),), (placed(B, 2),)))
    drive(world, runner, until=S.ROLLED_BACK)
    assert store.migrations.get(m.id).state is S.ROLLED_BACK  # type: ignore[union-attr]
    assert [g.offer for g in world.cloud.groups("chat")] == [A]
    assert world.cloud.weights("chat") == {f"chat@{A.key}": 2}
    assert B.key in store.blocklist.active(world.clock.now())


def test_replicas_that_never_become_ready_are_rolled_back(store: Store) -> None:
    world = World(store)
    world.running_on(placed(A, 2))
    world.cloud.warmup = timedelta(days=1)
    runner = world.runner()
    m = runner.start(move((placed(A, 2),), (placed(B, 2),)))
    drive(world, runner, until=S.ROLLED_BACK, rounds=40)
    events = store.migrations.events(m.id)
    assert events[-1].to_state is S.ROLLED_BACK
    assert "not ready within" in events[-2].reason
    assert [g.offer for g in world.cloud.groups("chat")] == [A]


def test_draining_waits_for_in_flight_requests_then_for_the_timeout(store: Store) -> None:
    world = World(store)
    world.running_on(placed(A, 2))
    world.cloud.in_flight_requests[f"chat@{A.key}"] = 3
    runner = world.runner()
    m = runner.start(move((placed(A, 2),), (placed(B, 2),)))
    drive(world, runner, until=S.DRAINING)
    runner.run_pending({"chat": W}, max_steps=1)
    assert store.migrations.get(m.id).state is S.DRAINING  # type: ignore[union-attr]
    world.clock.advance(timedelta(seconds=61))
    runner.run_pending({"chat": W}, max_steps=1)
    events = store.migrations.events(m.id)
    assert events[-1].to_state is S.RELEASING and "drain timeout" in events[-1].reason


def test_two_runners_never_take_the_same_step_twice(store: Store) -> None:
    world = World(store)
    world.running_on(placed(A, 2))
    one, two = world.runner("d1"), world.runner("d2")
    m = one.start(move((placed(A, 2),), (placed(B, 2),)))
    stale = store.migrations.get(m.id)
    assert stale is not None
    one.step(stale, W)  # planned → provisioning
    with pytest.raises(StoreError, match="another actor moved it"):
        two.step(stale, W)  # a second actor with an old view: refused, nothing recorded
    assert [e.to_state for e in store.migrations.events(m.id)] == [S.PLANNED, S.PROVISIONING]


def test_orphans_are_groups_nothing_accounts_for(store: Store) -> None:
    world = World(store)
    world.running_on(placed(A, 2))
    world.cloud.ensure(W, B, 1)  # started by a daemon that crashed before recording it
    assert [g.offer for g in world.runner().orphans({"chat": (placed(A, 2),)})] == [B]


def test_capacity_found_missing_while_warming_rolls_back_and_blocklists(store: Store) -> None:
    """A scheduler may accept the request and only later say it cannot place the pods."""
    world = World(store)
    world.running_on(placed(A, 2))
    world.cloud.warmup = timedelta(hours=1)
    runner = world.runner()
    m = runner.start(move((placed(A, 2),), (placed(B, 2),)))
    drive(world, runner, until=S.WARMING)
    world.cloud.no_capacity.add(B.key)
    world.cloud.ensure(W, B, 0)  # the pods were never scheduled
    drive(world, runner, until=S.ROLLED_BACK)
    events = store.migrations.events(m.id)
    assert events[-1].to_state is S.ROLLED_BACK
    assert "no capacity" in events[-2].reason
    assert B.key in store.blocklist.active(world.clock.now())
