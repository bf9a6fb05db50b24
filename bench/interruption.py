"""Interruption notice → replacement requested, wall clock, through the daemon's jobs.
Target: ≤ 5 s (median).

Each run builds a fresh SQLite store with one workload (1 replica) running on an AWS
spot offer, and a dearer fallback: the on-demand offer of the same type.
A Daemon leads, with the ``aws-imds`` interruption source polling a local fake of the
instance metadata service every 5 s (the default ``interval``) through
``Daemon.add_interruption_jobs``, and the real Reconciler and Migrator driving a
FakeExecutor (ready at once). At a random moment within the poll interval the fake
starts serving a ``spot/instance-action`` notice; the run ends when the executor is
asked to ``ensure`` the replacement group on the on-demand offer.

Reported per run, and as medians:

* ``notice_to_replacement`` — from the moment the notice exists at the "provider" to
  the replacement's ``ensure`` call: what an operator sees, including the wait for the
  next poll (on average half the interval);
* ``poll_to_replacement`` — from the poll that saw the notice to the ``ensure`` call:
  arbiter's own processing (record the notice, reconcile: snapshot, decide, plan,
  start the urgent migration, its provisioning step).
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from arbiter.catalog import load_catalog
from arbiter.config import InterruptionSourceConfig, Mode, Settings
from arbiter.domain.market import InstanceType, Market, Offer, PriceQuote, Provider
from arbiter.domain.workloads import Workload
from arbiter.migrator import Migrator
from arbiter.ports import Clock, FakeExecutor, SystemClock
from arbiter.reconcile import Reconciler
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store
from bench.common import write_result
from tests.fakes.metadata import FakeMetadata

RUNS = 7
INTERVAL = 5.0
"""The default poll interval of an ``[interruptions.NAME]`` source."""
TARGET_SECONDS = 5.0
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"

SPOT = Offer(
    provider=Provider.AWS,
    region="us-east-1",
    zone="use1-az1",
    instance_type="g5.xlarge",
    market=Market.SPOT,
)
ON_DEMAND = Offer(
    provider=Provider.AWS, region="us-east-1", instance_type="g5.xlarge", market=Market.ON_DEMAND
)
G5 = InstanceType(
    provider=Provider.AWS,
    name="g5.xlarge",
    vcpus=4,
    memory_gib=16,
    accelerator="A10G",
    accelerator_count=1,
    accelerator_memory_gib=24,
)
POLICY = """\
apiVersion: arbiter/v1
kind: PlacementPolicy
metadata: {name: us}
select: {data_classes: [internal]}
constraints:
  - id: us-only
    sovereignty: {data_classes: [internal], jurisdictions: [US]}
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
  gpu_options: [{model: A10G, tokens_per_second: 500}]
  replicas: 1
  warmup_seconds: 0
"""


class TimedExecutor(FakeExecutor):
    """FakeExecutor noting when the replacement group is first asked for."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.replacement_at: float | None = None

    def ensure(self, workload: Workload, offer: Offer, replicas: int) -> Any:
        if offer == ON_DEMAND and replicas > 0 and self.replacement_at is None:
            self.replacement_at = time.perf_counter()
        return super().ensure(workload, offer, replicas)


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


def one_run(tmp: Path, rng: random.Random) -> dict[str, float]:
    from apscheduler.schedulers.background import BackgroundScheduler

    from arbiter.daemon import Daemon

    url = f"sqlite:///{tmp / 'arbiter.db'}"
    upgrade(url)
    engine = make_engine(url)
    store = Store(engine)
    clock = SystemClock()
    (tmp / "policies").mkdir()
    (tmp / "workloads").mkdir()
    (tmp / "policies" / "us.yaml").write_text(POLICY)
    (tmp / "workloads" / "chat.yaml").write_text(WORKLOAD)
    catalog = load_catalog()
    store.instance_types.upsert([G5], now=clock.now())
    store.prices.record(
        [
            PriceQuote(offer=SPOT, usd_per_hour=0.40, observed_at=clock.now(), source="bench"),
            PriceQuote(offer=ON_DEMAND, usd_per_hour=1.01, observed_at=clock.now(), source="bench"),
        ]
    )
    with FakeMetadata() as metadata:
        settings = Settings.model_validate(
            {
                "daemon": {"mode": Mode.ENFORCE.value, "kill_switch_file": str(tmp / "KILL")},
                "policies": {
                    "paths": [str(tmp / "policies")],
                    "workloads": [str(tmp / "workloads")],
                },
                "http": {"enabled": False},
            }
        ).model_copy(
            update={
                "interruptions": {
                    "imds": InterruptionSourceConfig(
                        kind="aws-imds", interval=INTERVAL, options={"endpoint": metadata.url}
                    )
                }
            }
        )
        executor = TimedExecutor(clock)
        migrator = Migrator(store, executor, executor, clock, actor="bench")
        reconciler = Reconciler(
            store, migrator, settings, catalog, clock, stale_after={"bench": 3600}
        )
        for _ in range(4):
            reconciler.tick()
        assert store.workloads.placements("chat") == [(SPOT.key, 1)], "not placed on spot"

        daemon = Daemon(settings, engine, catalog, database_url=url, clock=clock)
        daemon.try_lead()
        daemon.reconciler = reconciler
        daemon._scheduler = BackgroundScheduler(timezone="UTC")
        daemon._scheduler.add_job(
            daemon.reconcile,
            "interval",
            seconds=settings.daemon.reconcile_seconds,
            id="reconcile",
            next_run_time=clock.now() + timedelta(seconds=settings.daemon.reconcile_seconds),
            max_instances=1,
            coalesce=True,
        )
        daemon.add_interruption_jobs()
        daemon._scheduler.start()
        try:
            assert _wait(lambda: INSTANCE_ACTION_PATH in metadata.paths("GET"), 10)
            time.sleep(rng.uniform(0, INTERVAL))  # the notice comes at any moment
            action = {"action": "terminate", "time": (clock.now() + timedelta(minutes=2))}
            metadata.aws_instance_action = json.dumps(action, default=lambda t: t.isoformat())
            noticed = time.perf_counter()
            assert _wait(lambda: executor.replacement_at is not None, INTERVAL * 4), (
                "no replacement"
            )
        finally:
            daemon._scheduler.shutdown(wait=True)
            engine.dispose()
        replaced = executor.replacement_at
        assert replaced is not None
        polled = min(
            r.at for r in metadata.requests if r.path == INSTANCE_ACTION_PATH and r.at >= noticed
        )
    return {
        "notice_to_replacement": replaced - noticed,
        "poll_to_replacement": replaced - polled,
    }


def main() -> dict[str, Any]:
    rng = random.Random(11)
    runs = []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp), rng))
    notice = [r["notice_to_replacement"] for r in runs]
    poll = [r["poll_to_replacement"] for r in runs]
    median = statistics.median(notice)
    result = {
        "workload": {
            "runs": RUNS,
            "backend": "sqlite",
            "source": "aws-imds (local fake)",
            "poll_interval_seconds": INTERVAL,
            "executor": "FakeExecutor (ready at once)",
        },
        "notice_to_replacement_seconds_median": round(median, 3),
        "notice_to_replacement_seconds_max": round(max(notice), 3),
        "notice_to_replacement_seconds_all": [round(v, 3) for v in notice],
        "poll_to_replacement_seconds_median": round(statistics.median(poll), 4),
        "poll_to_replacement_seconds_all": [round(v, 4) for v in poll],
        "target": {"notice_to_replacement_seconds_median": TARGET_SECONDS},
        "meets_target": median <= TARGET_SECONDS,
    }
    write_result("interruption", result)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
