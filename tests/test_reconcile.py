"""The reconcile loop end to end on a real store: prices in, decisions recorded, moves
started by mode, the kill switch, invalid policy reloads refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from arbiter.catalog import load_catalog
from arbiter.config import Mode, Settings
from arbiter.domain.market import InstanceType, Offer, PriceQuote
from arbiter.domain.migrations import Migration, MigrationState
from arbiter.domain.workloads import Placement
from arbiter.migrator import Migrator
from arbiter.ports import FakeClock, FakeExecutor
from arbiter.reconcile import Reconciler
from arbiter.store.repositories import Store

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
CATALOG = load_catalog()
WEST4 = Offer(
    provider="gcp", region="europe-west4", instance_type="g2-standard-4", market="on-demand"
)
WEST1 = Offer(
    provider="gcp", region="europe-west1", instance_type="g2-standard-4", market="on-demand"
)
US = Offer(provider="gcp", region="us-east4", instance_type="g2-standard-4", market="on-demand")

POLICY = """\
apiVersion: arbiter/v1
kind: PlacementPolicy
metadata: {name: eu}
select: {data_classes: [internal]}
constraints:
  - id: eu-residency
    sovereignty: {data_classes: [internal], jurisdictions: [EU]}
migration:
  min_saving: {pct: 10}
  sustained_for: 0s
  cooldown: 0s
"""
WORKLOAD = """\
apiVersion: arbiter/v1
kind: Workload
metadata: {name: chat}
spec:
  data_class: internal
  gpu_options: [{model: L4, tokens_per_second: 500}]
  replicas: 2
  warmup_seconds: 30
"""


class World:
    def __init__(
        self,
        store: Store,
        tmp: Path,
        mode: Mode = Mode.ENFORCE,
        workload_modes: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.clock = FakeClock(NOW)
        self.cloud = FakeExecutor(self.clock, warmup=timedelta(seconds=10))
        (tmp / "policies").mkdir()
        (tmp / "workloads").mkdir()
        self.policy_file = tmp / "policies" / "eu.yaml"
        self.policy_file.write_text(POLICY)
        (tmp / "workloads" / "chat.yaml").write_text(WORKLOAD)
        settings = Settings.model_validate(
            {
                "daemon": {
                    "mode": mode.value,
                    "kill_switch_file": str(tmp / "KILL"),
                    "workload_modes": workload_modes or {},
                },
                "policies": {
                    "paths": [str(tmp / "policies")],
                    "workloads": [str(tmp / "workloads")],
                },
            }
        )
        self.kill = tmp / "KILL"
        self.workload_file = tmp / "workloads" / "chat.yaml"
        store.instance_types.upsert(
            [
                InstanceType(
                    provider="gcp",
                    name="g2-standard-4",
                    vcpus=4,
                    memory_gib=16,
                    accelerator="L4",
                    accelerator_count=1,
                    accelerator_memory_gib=24,
                )
            ],
            now=NOW,
        )
        migrator = Migrator(store, self.cloud, self.cloud, self.clock, actor="test")
        self.reconciler = Reconciler(
            store, migrator, settings, CATALOG, self.clock, stale_after={"test": 3600}
        )

    def prices(self, **by_region: float) -> None:
        offers = {"west4": WEST4, "west1": WEST1, "us": US}
        self.store.prices.record(
            [
                PriceQuote(
                    offer=offers[k], usd_per_hour=v, observed_at=self.clock.now(), source="test"
                )
                for k, v in by_region.items()
            ]
        )

    def tick(self, times: int = 1):  # type: ignore[no-untyped-def]
        result = None
        for _ in range(times):
            result = self.reconciler.tick()
            self.clock.advance(timedelta(seconds=15))
        return result


def test_a_new_workload_is_placed_and_a_cheaper_region_later_wins(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path)
    world.prices(west4=1.0, west1=1.5, us=0.3)
    world.tick(8)
    assert store.workloads.placements("chat") == [(WEST4.key, 2)]
    world.prices(west4=1.0, west1=0.5, us=0.3)
    world.tick(10)
    assert store.workloads.placements("chat") == [(WEST1.key, 2)]
    kinds = [m.reason.split(":")[0] for m in reversed(store.migrations.recent())]
    assert kinds == ["place", "move", "move"]  # two waves: 34 % of 2 replicas is 1 at a time
    assert all(m.state is MigrationState.DONE for m in store.migrations.recent())
    # never the cheaper non-EU region
    assert all(g.offer != US for g in world.cloud.groups())


def test_a_workload_keeps_its_cooldown_however_many_other_workloads_moved_since(
    store: Store, tmp_path: Path
) -> None:
    """The cooldown counts from the workload's own last migration, however many other
    workloads' migrations were started after it (600 here: more than any fixed window of
    recent migrations the reconciler might read)."""
    world = World(store, tmp_path)
    world.policy_file.write_text(POLICY.replace("cooldown: 0s", "cooldown: 1h"))
    world.prices(west4=1.0, west1=1.5, us=0.3)
    world.tick(8)
    assert store.workloads.placements("chat") == [(WEST4.key, 2)]
    for n in range(600):
        other = f"other-{n:03d}"
        store.migrations.create(
            Migration(
                id=f"m-{other}",
                workload=other,
                source=(),
                target=(Placement(workload=other, offer=US, replicas=1),),
                state=MigrationState.DONE,
                reason="place: new workload",
                created_at=world.clock.now(),
                updated_at=world.clock.now(),
            )
        )
    world.prices(west4=1.0, west1=0.5, us=0.3)  # moving saves 50 %, minutes into the cooldown
    world.tick(10)
    assert store.workloads.placements("chat") == [(WEST4.key, 2)], "moved within the cooldown"
    world.clock.advance(timedelta(hours=1))
    world.prices(west4=1.0, west1=0.5, us=0.3)
    world.tick(10)
    assert store.workloads.placements("chat") == [(WEST1.key, 2)], "and moves once it is over"


def test_observe_records_decisions_and_changes_nothing(store: Store, tmp_path: Path) -> None:
    world = World(store, tmp_path, Mode.OBSERVE)
    world.prices(west4=1.0, west1=1.5)
    world.tick(3)
    assert store.decisions.latest("chat") is not None
    assert len(store.decisions.recent(workload="chat")) == 1  # recorded once, not per tick
    assert store.migrations.recent() == [] and world.cloud.groups() == []


def test_observe_does_not_plan(store: Store, tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    world = World(store, tmp_path, Mode.OBSERVE)
    world.prices(west4=1.0)
    with capture_logs() as logs:
        result = world.tick()
    assert result.outcome is not None and result.outcome.decision("chat").placed
    assert result.plan.moves == () and result.plan.holds == ()
    assert result.recommended == []
    assert [e for e in logs if e["event"] == "would migrate"] == []
    assert store.pending.all() == {}


def test_recommend_plans_and_logs_each_move_but_executes_nothing(
    store: Store, tmp_path: Path
) -> None:
    from structlog.testing import capture_logs

    world = World(store, tmp_path, Mode.RECOMMEND)
    world.prices(west4=1.0)
    with capture_logs() as logs:
        result = world.tick()
    (logged,) = [e for e in logs if e["event"] == "would migrate"]
    assert logged["workload"] == "chat" and logged["mode"] == "recommend"
    assert logged["kind"] == "place" and logged["source"] == []
    assert logged["target"] == [f"{WEST4.key}×2"]
    assert [m.workload for m in result.recommended] == ["chat"]
    assert store.migrations.recent() == [] and world.cloud.groups() == []


def test_a_workload_in_observe_mode_is_not_planned_while_the_others_are_enforced(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path, Mode.ENFORCE, workload_modes={"chat": "observe"})
    world.prices(west4=1.0)
    result = world.tick(3)
    assert result.plan.moves == () and result.recommended == []
    assert store.migrations.recent() == []
    assert store.decisions.latest("chat") is not None


def test_observe_does_not_release_a_running_workload_removed_from_the_files(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path)
    world.prices(west4=1.0)
    world.tick(8)
    assert store.workloads.placements("chat") == [(WEST4.key, 2)]
    daemon = world.reconciler.settings.daemon.model_copy(update={"mode": Mode.OBSERVE})
    world.reconciler.settings = world.reconciler.settings.model_copy(update={"daemon": daemon})
    world.workload_file.unlink()
    migrations = len(store.migrations.recent())
    result = world.tick(3)
    assert result.plan.moves == ()
    assert len(store.migrations.recent()) == migrations
    assert store.workloads.placements("chat") == [(WEST4.key, 2)]


def test_a_workload_modes_entry_naming_no_workload_is_logged_with_a_suggestion(
    store: Store, tmp_path: Path
) -> None:
    from structlog.testing import capture_logs

    world = World(store, tmp_path, Mode.OBSERVE, workload_modes={"chta": "enforce"})
    world.prices(west4=1.0)
    with capture_logs() as logs:
        world.tick(2)
    warnings = [e for e in logs if e["event"].startswith("daemon.workload_modes names no")]
    assert len(warnings) == 1  # once per policy set, not every pass
    assert warnings[0]["log_level"] == "warning" and warnings[0]["workload"] == "chta"
    assert "did you mean 'chat'?" in warnings[0]["detail"]
    assert store.migrations.recent() == []  # the mistyped entry enforces nothing


def test_the_kill_switch_stops_new_migrations(store: Store, tmp_path: Path) -> None:
    world = World(store, tmp_path)
    world.kill.write_text("")
    world.prices(west4=1.0)
    world.tick(3)
    assert store.migrations.recent() == []
    world.kill.unlink()
    world.tick(5)
    assert store.workloads.placements("chat") == [(WEST4.key, 2)]


def test_an_invalid_policy_change_is_refused_and_the_old_set_keeps_running(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path)
    world.prices(west4=1.0)
    world.tick(5)
    before = world.reconciler.policy
    assert before is not None
    world.policy_file.write_text(POLICY.replace("jurisdictions", "jurisdiction"))
    state = world.reconciler.reload(force=True)
    assert state is not None and state.revision == before.revision
    assert any("did you mean 'jurisdictions'" in e for e in state.errors)
    assert any("eu.yaml:7" in e for e in state.errors)
    world.tick(2)
    assert store.workloads.placements("chat") == [(WEST4.key, 2)]


def test_a_blocklisted_offer_is_left_out_of_the_market(store: Store, tmp_path: Path) -> None:
    world = World(store, tmp_path)
    world.prices(west4=1.0, west1=1.2)
    store.blocklist.add(WEST4.key, until=NOW + timedelta(hours=1), reason="no capacity", now=NOW)
    world.tick(6)
    assert store.workloads.placements("chat") == [(WEST1.key, 2)]


def test_a_hard_violation_not_drained_within_drain_within_is_logged_counted_and_remembered(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    from structlog.testing import capture_logs

    from arbiter.daemon import Daemon

    world = World(store, tmp_path)
    strict = POLICY + "  on_hard_violation: {drain_within: 10m}\n"
    world.policy_file.write_text(strict)
    world.prices(west4=1.0, us=0.3)
    world.tick(8)
    assert store.workloads.placements("chat") == [(WEST4.key, 2)]
    daemon = Daemon(
        world.reconciler.settings, store.engine, CATALOG, database_url=store_url, clock=world.clock
    )
    assert daemon.try_lead()
    daemon.reconciler = world.reconciler

    # europe-west4 is excluded; nothing else in the EU has a price: it cannot be drained
    world.policy_file.write_text(
        strict.replace(
            "jurisdictions: [EU]}", "jurisdictions: [EU], exclude_regions: [gcp:europe-west4]}"
        )
    )
    first_seen = world.clock.now()
    with capture_logs() as logs:
        daemon.try_lead()
        daemon.reconcile()
        world.clock.advance(timedelta(minutes=9))
        world.prices(west4=1.0, us=0.3)
        daemon.try_lead()
        daemon.reconcile()
    assert store.violations.all() == {"chat": first_seen}
    assert [e for e in logs if e["event"] == "hard violation not drained in time"] == []
    assert daemon.reconcile_stats["violations_overdue"] == 0

    world.clock.advance(timedelta(minutes=2))
    world.prices(west4=1.0, us=0.3)
    with capture_logs() as logs:
        daemon.try_lead()
        daemon.reconcile()
        daemon.try_lead()
        daemon.reconcile()
    (error,) = [e for e in logs if e["event"] == "hard violation not drained in time"]  # once
    assert error["log_level"] == "error" and error["workload"] == "chat"
    assert error["since"] == first_seen.isoformat()
    assert error["deadline"] == (first_seen + timedelta(minutes=10)).isoformat()
    assert error["violations"] == f"{WEST4.key}: eu-residency: gcp:europe-west4 is excluded by name"
    assert daemon.reconcile_stats["violations_overdue"] == 1

    # a restarted daemon keeps the first sighting: the deadline does not move
    restarted = Reconciler(
        store,
        world.reconciler.migrator,
        world.reconciler.settings,
        CATALOG,
        world.clock,
        stale_after={"test": 3600},
    )
    with capture_logs() as logs:
        result = restarted.tick()
    assert [o.since for o in result.plan.overdue] == [first_seen]
    assert store.violations.all() == {"chat": first_seen}
    again = [e["workload"] for e in logs if e["event"] == "hard violation not drained in time"]
    assert again == ["chat"]  # said again by the new process

    # the rule is lifted: nothing violates any more and the memory is cleared
    world.policy_file.write_text(strict)
    with capture_logs() as logs:
        result = restarted.tick()
    assert result.plan.overdue == () and store.violations.all() == {}
    assert any(e["event"] == "hard violation drained" for e in logs)


GUARDED_POLICY = POLICY.replace("min_saving: {pct: 10}", "min_saving: {pct: 10, usd_per_hour: 5}")
"""No resize saves $5/h here: the saving gate holds every resize it is applied to."""


def test_a_workload_whose_spec_asks_for_more_replicas_gets_them_without_a_saving_gate(
    store: Store, tmp_path: Path
) -> None:
    from structlog.testing import capture_logs

    world = World(store, tmp_path)
    world.policy_file.write_text(GUARDED_POLICY)
    world.prices(west4=1.0, west1=1.5)
    world.tick(8)
    assert store.workloads.placements("chat") == [(WEST4.key, 2)]
    world.workload_file.write_text(WORKLOAD.replace("replicas: 2", "replicas: 3"))
    with capture_logs() as logs:
        world.tick(8)
    assert store.workloads.placements("chat") == [(WEST4.key, 3)]
    (planned,) = [e for e in logs if e["event"] == "migration planned"]
    assert planned["kind"] == "scale-up" and not planned["urgent"]
    assert planned["reason"].startswith("the workload asks for 3 replicas, 2 run")
    latest = store.migrations.recent()[0]
    assert latest.reason.startswith("scale-up: the workload asks for 3 replicas")
    assert latest.state is MigrationState.DONE
    assert world.cloud.group("chat", WEST4) is not None
    assert world.cloud.group("chat", WEST4).desired == 3  # type: ignore[union-attr]


def test_a_workload_whose_spec_asks_for_fewer_replicas_releases_them_without_a_saving_gate(
    store: Store, tmp_path: Path
) -> None:
    world = World(store, tmp_path)
    world.policy_file.write_text(GUARDED_POLICY)
    world.prices(west4=1.0, west1=1.5)
    world.tick(8)
    world.workload_file.write_text(WORKLOAD.replace("replicas: 2", "replicas: 1"))
    world.tick(8)
    assert store.workloads.placements("chat") == [(WEST4.key, 1)]
    assert store.migrations.recent()[0].reason.startswith("scale-down: the workload asks for 1")
    assert world.cloud.group("chat", WEST4).desired == 1  # type: ignore[union-attr]


def test_recommend_logs_a_scale_up_as_what_it_would_do(store: Store, tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    world = World(store, tmp_path)
    world.prices(west4=1.0)
    world.tick(8)
    daemon = world.reconciler.settings.daemon.model_copy(update={"mode": Mode.RECOMMEND})
    world.reconciler.settings = world.reconciler.settings.model_copy(update={"daemon": daemon})
    world.workload_file.write_text(WORKLOAD.replace("replicas: 2", "replicas: 4"))
    with capture_logs() as logs:
        world.tick()
    (logged,) = [e for e in logs if e["event"] == "would migrate"]
    assert logged["kind"] == "scale-up" and logged["target"] == [f"{WEST4.key}×4"]
    assert store.workloads.placements("chat") == [(WEST4.key, 2)]


def test_a_workload_whose_replicas_use_up_the_remaining_quota_is_decided_where_it_runs(
    store: Store, tmp_path: Path
) -> None:
    """GCP reports quota as limit − usage: with chat's two L4s running in europe-west4,
    0 GPUs remain there. They are chat's own, so the decision keeps it there; nothing
    is held back by a saving gate, nothing moves."""
    from arbiter.domain.market import CapacityKind, CapacitySignal

    world = World(store, tmp_path)
    world.prices(west4=1.0, west1=1.5)
    world.tick(8)
    assert store.workloads.placements("chat") == [(WEST4.key, 2)]
    store.capacity.record(
        [
            CapacitySignal(
                provider="gcp",
                region="europe-west4",
                instance_type="g2-standard-4",
                kind=CapacityKind.QUOTA_GPUS_FREE,
                value=0,
                observed_at=world.clock.now(),
                source="test",
            )
        ]
    )
    world.prices(west4=1.0, west1=1.5)
    result = world.tick()
    decision = result.outcome.decision("chat")
    assert [(p.offer.key, p.replicas) for p in decision.placements] == [(WEST4.key, 2)]
    assert result.plan.moves == () and result.plan.holds == ()
    assert store.workloads.placements("chat") == [(WEST4.key, 2)]


def test_a_running_workload_removed_from_the_files_still_holds_its_gpus(store: Store) -> None:
    """Its replicas run until released: their size comes from the spec the store last
    recorded."""
    from arbiter.domain.workloads import GpuOption, Workload
    from arbiter.reconcile import fleet_gpus_held

    gone = Workload(
        name="chat",
        data_class="internal",
        gpus_per_replica=2,
        replicas=2,
        gpu_options=(GpuOption(model="L4", tokens_per_second=500),),
    )
    store.workloads.upsert(gone, now=NOW)
    running = {"chat": (Placement(workload="chat", offer=WEST4, replicas=3),)}
    assert fleet_gpus_held(store, (), running, []) == {WEST4.key: 6.0}
