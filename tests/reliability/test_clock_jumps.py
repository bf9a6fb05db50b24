"""The wall clock jumps: forward by hours (a suspended VM, an NTP step after drift) and
backward by minutes (an NTP correction), between reconcile passes.

What "sane" means here, one behaviour per test:

* a migration in flight is neither stuck nor repeated: every step is recorded once, in
  state-machine order, and it ends (done, or rolled back by its own timeout);
* time-based guards count the clock as it now reads: a forward jump ends a cooldown, a
  warm-up limit or a lease as if the time had passed; a backward jump can only make a
  wait longer (a cooldown, sustained-for, a drain, a takeover), never shorter;
* a forward jump makes the market data stale, so nothing is moved on it until fresh
  prices arrive; after a backward jump the prices polled are the current ones at once
  (recorded, and used by the next decision), not ignored until the clock catches up
  with the times stored before the jump;
* a leader whose lease ran out while the clock jumped steps down before anyone else can
  take the lease, and two daemons never both act.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from arbiter.config import Settings
from arbiter.daemon import Daemon
from arbiter.domain.migrations import MigrationState
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store
from tests.reliability.world import (
    CATALOG,
    World,
    assert_steps_once_in_order,
    offer,
    policy,
    workload,
)

S = MigrationState
WEST4, WEST1 = offer("europe-west4"), offer("europe-west1")
HOURS = timedelta(hours=3)
MINUTES = timedelta(minutes=10)


def placed_on_west4(world: World) -> None:
    warmup, world.cloud.warmup = world.cloud.warmup, timedelta(0)
    world.prices({WEST4: 1.0, WEST1: 1.5})
    for _ in range(10):
        world.tick()
        if world.placements():
            break
    assert world.placements() == [(WEST4.key, 2)]
    world.cloud.warmup = warmup


def start_move(world: World, until: MigrationState) -> Any:
    """West1 halves in price; tick until the move reaches ``until``."""
    world.prices({WEST4: 1.0, WEST1: 0.5})
    for _ in range(10):
        world.tick()
        moves = [m for m in world.migrations() if m.reason.startswith("move")]
        if moves and moves[-1].state is until:
            return moves[-1]
    raise AssertionError(f"the move never reached {until}")


# -- migrations in flight ------------------------------------------------------------------


def test_a_forward_jump_of_hours_while_warming_finishes_the_move_once_in_order(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path, warmup=timedelta(minutes=10))
    placed_on_west4(world)
    m = start_move(world, S.WARMING)
    world.clock.advance(HOURS)  # the replicas are ready by now, and the warm-up limit passed
    world.tick(8)
    (done,) = [x for x in world.migrations() if x.id == m.id]
    assert done.state is S.DONE, "ready replicas are judged before the warm-up timeout"
    assert_steps_once_in_order(world.events(done))
    assert world.placements() == [(WEST1.key, 2)]
    assert world.orphans() == []


def test_a_forward_jump_past_the_warm_up_limit_with_replicas_never_ready_rolls_back_once(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path, warmup=timedelta(minutes=10))
    placed_on_west4(world)
    world.cloud.warmup = timedelta(days=2)
    m = start_move(world, S.WARMING)
    world.clock.advance(HOURS)
    world.tick(4)
    (gone,) = [x for x in world.migrations() if x.id == m.id]
    assert gone.state is S.ROLLED_BACK
    events = world.events(gone)
    assert_steps_once_in_order(events)
    assert "not ready within" in events[-2].reason
    assert world.placements() == [(WEST4.key, 2)]
    assert [g.offer for g in world.cloud.groups()] == [WEST4]
    assert world.cloud.weights("chat") == {f"chat@{WEST4.key}": 2}


def test_a_backward_jump_of_minutes_while_draining_makes_the_drain_longer_never_repeats_a_step(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path, policies=policy(drain_timeout="5m"))
    placed_on_west4(world)
    world.cloud.in_flight_requests[f"chat@{WEST4.key}"] = 3  # never drains: the timeout ends it
    m = start_move(world, S.DRAINING)
    draining_since = world.store.migrations.get(m.id).updated_at  # type: ignore[union-attr]
    world.clock.advance(-MINUTES)
    world.tick(40, every=timedelta(seconds=30))  # 20 minutes: drain 5 m + the 10 m jump
    (done,) = [x for x in world.migrations() if x.id == m.id]
    assert done.state is S.DONE
    events = world.events(done)
    assert_steps_once_in_order(events)
    released = next(e for e in events if e.to_state is S.RELEASING)
    assert "drain timeout" in released.reason
    assert released.at >= draining_since + timedelta(minutes=5), "the drain was not cut short"
    assert world.placements() == [(WEST1.key, 2)]
    assert world.orphans() == []


def test_a_backward_jump_keeps_the_migration_event_log_in_the_order_the_steps_were_taken(
    store: Store, tmp_path: Path
) -> None:
    """`arbiter migrations ID` shows the timeline as recorded, not sorted by a clock that
    went back: the steps after the jump carry earlier times than the ones before it."""
    world = World(store, tmp_path, steps_per_tick=1)
    placed_on_west4(world)
    m = start_move(world, S.SHIFTING)
    world.clock.advance(-MINUTES)
    world.tick(6)
    (done,) = [x for x in world.migrations() if x.id == m.id]
    assert done.state is S.DONE
    assert [e.to_state for e in world.events(done)] == [
        S.PLANNED, S.PROVISIONING, S.WARMING, S.SHIFTING, S.DRAINING, S.RELEASING, S.DONE,
    ]  # fmt: skip


# -- cooldown, sustained-for, stale data ---------------------------------------------


def test_a_backward_jump_makes_a_cooldown_longer_never_shorter(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path, policies=policy(cooldown="1h"))
    placed_on_west4(world)
    (placed,) = world.migrations()
    world.prices({WEST4: 1.0, WEST1: 0.5})
    world.tick(60, every=timedelta(seconds=30))  # 30 minutes into the cooldown
    assert len(world.migrations()) == 1
    world.clock.advance(-MINUTES)
    ends = placed.created_at + timedelta(hours=1)
    while world.clock.now() < ends:
        world.prices({WEST4: 1.0, WEST1: 0.5})
        world.tick(every=timedelta(minutes=1))
        started = [x for x in world.migrations() if x.id != placed.id]
        assert not [x for x in started if x.created_at < ends], "a move started in cooldown"
    world.prices({WEST4: 1.0, WEST1: 0.5})
    world.tick(6)
    assert world.placements() == [(WEST1.key, 2)], "and it moves once the cooldown is over"


def test_a_backward_jump_makes_sustained_for_longer_never_shorter(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path, policies=policy(sustained_for="30m"))
    placed_on_west4(world)
    world.prices({WEST4: 1.0, WEST1: 0.5})
    world.tick()
    first_seen = world.store.pending.all()["chat"]
    world.tick(40, every=timedelta(seconds=30))  # 20 of the 30 minutes
    world.clock.advance(-MINUTES)
    while world.clock.now() < first_seen + timedelta(minutes=30):
        world.prices({WEST4: 1.0, WEST1: 0.5})
        world.tick(every=timedelta(minutes=1))
        assert len(world.migrations()) == 1, "moved before the saving was sustained"
    world.prices({WEST4: 1.0, WEST1: 0.5})
    world.tick(6)
    assert world.placements() == [(WEST1.key, 2)]


def test_a_forward_jump_ends_a_cooldown_but_nothing_moves_until_fresh_prices_arrive(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path, policies=policy(cooldown="1h"), stale_after=3600)
    placed_on_west4(world)
    world.prices({WEST4: 1.0, WEST1: 0.5})
    world.tick()
    world.clock.advance(HOURS)  # every price is now three hours old: stale
    world.tick(4)
    assert len(world.migrations()) == 1, "moved on stale prices"
    assert world.placements() == [(WEST4.key, 2)], "the workload keeps running where it is"
    world.prices({WEST4: 1.0, WEST1: 0.5})
    world.tick(6)
    assert world.placements() == [(WEST1.key, 2)]
    assert_steps_once_in_order(world.events(world.migrations()[-1]))


def test_a_price_change_polled_after_a_backward_jump_is_recorded_and_decides_the_next_move(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path)
    placed_on_west4(world)
    world.clock.advance(2 * HOURS)  # the placement's cooldown long over
    world.prices({WEST4: 1.0, WEST1: 1.5})
    world.tick()  # prices last seen just before the jump
    world.clock.advance(-MINUTES)
    world.prices({WEST4: 1.0, WEST1: 0.5})  # observed at the clock's time: before them
    latest = {p.offer: p.usd_per_hour for p in store.prices.latest()}
    assert latest == {WEST4: 1.0, WEST1: 0.5}, "the change was recorded"
    world.tick()
    chat = store.decisions.latest("chat")
    assert chat is not None and [p.offer for p in chat.placements] == [WEST1]
    world.tick(6)
    assert world.placements() == [(WEST1.key, 2)]


def test_a_backward_jump_between_two_waves_keeps_the_cooldown_after_the_last_wave(
    store: Store, tmp_path: Path
) -> None:
    """The last migration is the last one started, whatever the clock read: the final
    wave, started after the clock stepped back, carries an earlier time than the wave
    before it. Taking that earlier wave for the last would make the move look still in
    waves, and the next move would skip its cooldown."""
    in_two_waves = policy(cooldown="1h").replace(
        "max_disrupted_replicas_pct: 100", "max_disrupted_replicas_pct: 50"
    )
    world = World(store, tmp_path, policies=in_two_waves)
    placed_on_west4(world)
    world.clock.advance(2 * HOURS)  # past the placement's cooldown
    first = start_move(world, S.DONE)
    assert "(wave 1 of 2" in first.reason
    started = {m.id for m in world.migrations()}
    world.clock.advance(-MINUTES)
    world.prices({WEST4: 1.0, WEST1: 0.5})
    world.tick(4)
    (last,) = [m for m in world.migrations() if m.id not in started]
    assert last.state is S.DONE and last.created_at < first.created_at
    assert world.placements() == [(WEST1.key, 2)]
    assessed = world.reconciler.assess(world.clock.now())
    assert assessed is not None
    chat = assessed.current["chat"]
    assert (chat.last_migration_at, chat.mid_waves) == (last.created_at, False)
    # Prices are quoted past the times recorded before the jump: this test is about the
    # last migration, not about quotes that go back in time.
    world.clock.advance(MINUTES)
    world.prices({WEST4: 0.25, WEST1: 0.5})  # moving back saves 50 %, 11 min into the cooldown
    world.tick(8)
    assert len(world.migrations()) == len(started) + 1, "moved back within the cooldown"
    assert world.placements() == [(WEST1.key, 2)]


def test_decisions_are_recorded_only_on_change_across_a_backward_jump(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path)
    placed_on_west4(world)
    chat = world.dir / "workloads" / "chat.yaml"
    chat.write_text(workload(replicas=3))
    world.tick()  # a decision just before the jump
    recorded = len(store.decisions.recent(limit=1000))
    world.clock.advance(-MINUTES)
    world.tick(4, every=timedelta(seconds=30))  # the same market and files
    assert len(store.decisions.recent(limit=1000)) == recorded
    chat.write_text(workload(replicas=2))  # a change, decided before the last decision's time
    world.tick(8, every=timedelta(seconds=30))
    assert len(store.decisions.recent(limit=1000)) == recorded + 1, "one change, one decision"
    latest = store.decisions.latest("chat")
    assert latest is not None and sum(p.replicas for p in latest.placements) == 2


# -- leases ----------------------------------------------------------------------------------


def daemon(engine: Engine, url: str, world: World, name: str, lease: float = 30) -> Daemon:
    settings = Settings.model_validate({"daemon": {"name": name, "lease_seconds": lease}})
    return Daemon(settings, engine, CATALOG, database_url=url, clock=world.clock)


def test_a_forward_jump_past_the_lease_makes_the_leader_step_down_until_it_renews(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    world = World(store, tmp_path)
    a = daemon(store.engine, store_url, world, "host-a:1")
    assert a.try_lead() and a.is_leader
    world.clock.advance(HOURS)
    assert not a.is_leader, "it must not act on a lease that ran out while the clock jumped"
    a.tick()
    assert a.is_leader, "its next tick renews the lease (nobody else took it)"


def test_a_backward_jump_makes_the_leader_hold_longer_on_the_same_clock_as_its_lease(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    world = World(store, tmp_path)
    a = daemon(store.engine, store_url, world, "host-a:1", lease=30)
    assert a.try_lead()
    lease = store.leases.get("leader")
    assert lease is not None
    world.clock.advance(-MINUTES)
    world.clock.advance(MINUTES + timedelta(seconds=23))
    assert a.is_leader  # 23 s after the renewal: inside 80 % of 30 s
    world.clock.advance(timedelta(seconds=2))
    assert not a.is_leader  # 25 s: past the safety margin, still before the lease expires
    assert world.clock.now() < lease.expires_at


@pytest.fixture
def pg(postgres_server: Any) -> Iterator[tuple[Engine, str]]:
    url = postgres_server.new_database()
    upgrade(url)
    engine = make_engine(url)
    yield engine, url
    engine.dispose()
    postgres_server.drop_database(url)


@pytest.mark.postgres
def test_two_daemons_never_both_lead_across_forward_and_backward_jumps(
    pg: tuple[Engine, str], tmp_path: Path
) -> None:
    engine, url = pg
    world = World(Store(engine), tmp_path)
    a = daemon(engine, url, world, "host-a:1")
    b = daemon(engine, url, world, "host-b:2")
    assert a.try_lead() and not b.try_lead()
    leaders = []
    for jump in (timedelta(seconds=10), -MINUTES, HOURS, timedelta(seconds=5), -MINUTES, HOURS):
        world.clock.advance(jump)
        for d in (b, a):  # b first: it may take an expired lease before a renews
            d.tick()
            both = a.is_leader and b.is_leader
            assert not both, f"two leaders after a jump of {jump}"
        leaders.append("a" if a.is_leader else "b" if b.is_leader else "-")
    assert "b" in leaders, "a lease that expired in a forward jump was taken over"


@pytest.mark.postgres
def test_a_backward_jump_delays_the_takeover_of_a_dead_leaders_lease_never_hastens_it(
    pg: tuple[Engine, str], tmp_path: Path
) -> None:
    engine, url = pg
    world = World(Store(engine), tmp_path)
    a = daemon(engine, url, world, "host-a:1", lease=30)
    b = daemon(engine, url, world, "host-b:2", lease=30)
    assert a.try_lead()  # then a dies: it never renews
    expires = Store(engine).leases.get("leader").expires_at  # type: ignore[union-attr]
    world.clock.advance(-MINUTES)
    while world.clock.now() < expires:
        assert not b.try_lead(), f"took a live lease at {world.clock.now()}"
        world.clock.advance(timedelta(seconds=20))
    assert b.try_lead() and b.is_leader
