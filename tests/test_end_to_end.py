"""Real daemons, real replicas, a real proxy: a price change moves a workload between
regions under load with no failed request; a daemon killed with SIGKILL in the middle
of a migration is restarted and finishes it; two daemons on one PostgreSQL hand over a
migration when the leader dies.

Each test runs ``arbiter run`` as a subprocess with the local executor (stand-in
replicas on 127.0.0.1 behind a private nginx) and a replay source playing a small price
file in which the cheaper region changes a few seconds in. Everything is loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).parents[1]
START = datetime(2024, 1, 9, 0, tzinfo=UTC)
SPEED = 600.0  # recorded seconds per real second: the price change lands 36 s in
WEST4 = "gcp:europe-west4:-:g2-standard-4:on-demand"
WEST1 = "gcp:europe-west1:-:g2-standard-4:on-demand"

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
  max_disrupted_replicas_pct: 100
  drain_timeout: 20s
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

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx") and not IN_CI,
    reason="nginx is not installed (scripts/test installs it)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def price_file(path: Path, *, changed: bool = False) -> Path:
    """europe-west4 cheapest at first; six recorded hours in, europe-west1 halves.
    ``changed``: the market after the change, from the start (a replay restarts its
    recording with the daemon, so a restarted daemon is given the market as it is)."""
    at = lambda hours: (START + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    rows = [
        "snapshot_utc,cloud,region,instance_type,ondemand_usd_per_hour,spot_usd_per_hour,status,flag",
        f"{at(0)},gcp,europe-west4,g2-standard-4,1.00,,listed,",
        f"{at(0)},gcp,europe-west1,g2-standard-4,{'0.50' if changed else '1.50'},,listed,",
        f"{at(6)},gcp,europe-west1,g2-standard-4,0.50,,listed,",
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


@dataclass
class Site:
    """One installation: config, policies, workload, executor state, database."""

    root: Path
    database_url: str
    proxy_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def write(self, *, warmup: float = 1.0, steps: int = 1, changed: bool = False) -> None:
        (self.root / "policies").mkdir(exist_ok=True)
        (self.root / "workloads").mkdir(exist_ok=True)
        (self.root / "policies" / "eu.yaml").write_text(POLICY)
        (self.root / "workloads" / "chat.yaml").write_text(WORKLOAD)
        prices = price_file(self.root / f"prices-{changed}.csv", changed=changed)
        self.config.write_text(
            f"""
[database]
url = "{self.database_url}"

[daemon]
mode = "enforce"
reconcile_seconds = 1
tick_seconds = 1
lease_seconds = 5
migration_steps_per_tick = {steps}
kill_switch_file = "{self.root / "KILL"}"

[http]
enabled = false

[policies]
paths = ["{self.root / "policies"}"]
workloads = ["{self.root / "workloads"}"]

[executor]
kind = "local"

[executor.options]
state_dir = "{self.root / "local"}"
listen = "127.0.0.1:{self.proxy_port}"
warmup_seconds = {warmup}
latency_ms = 5

[sources.replay]
kind = "replay"
interval = "1s"
jitter = "0s"
stale_after = "1h"

[sources.replay.options]
price_files = ["{prices}"]
speed = {SPEED}
start = "{START.isoformat()}"
end = "{(START + timedelta(days=1)).isoformat()}"
loop = false
"""
        )

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARBITER_")}
        env.update(
            {
                "ARBITER_CONFIG": str(self.config),
                "HOME": str(self.root / "home"),
                "XDG_DATA_HOME": str(self.root / "home" / "data"),
                "XDG_CONFIG_HOME": str(self.root / "home" / "config"),
                "ARBITER_LOG_FORMAT": "json",
            }
        )
        return env

    def start(self, name: str) -> subprocess.Popen[bytes]:
        """Start ``arbiter run``; it names itself host:pid in leases and events."""
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop_everything
        self.logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "arbiter", "run"],
            env=self.env(),
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        self.procs.append(proc)
        return proc

    def query(self, sql: str) -> list[tuple[object, ...]]:
        engine = create_engine(self.database_url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql))]
        finally:
            engine.dispose()

    def placements(self) -> dict[str, int]:
        try:
            rows = self.query("SELECT offer_key, replicas FROM placements WHERE workload='chat'")
        except Exception:  # the tables are not created yet
            return {}
        return {str(k): int(n) for k, n in rows}  # type: ignore[call-overload]

    def migrations(self) -> list[tuple[str, str, str]]:
        try:
            rows = self.query("SELECT id, state, reason FROM migrations ORDER BY created_at")
        except Exception:  # the tables are not created yet
            return []
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def events(self, migration: str) -> list[tuple[str, str, str]]:
        rows = self.query(
            "SELECT to_state, reason, actor FROM migration_events "
            f"WHERE migration_id='{migration}' ORDER BY at, id"
        )
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def stop_everything(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self.logs:
            log.close()
        from arbiter.executors.local import LocalExecutor
        from arbiter.ports import SystemClock

        state = self.root / "local"
        if state.exists():
            LocalExecutor(
                SystemClock(),
                {"state_dir": str(state), "listen": f"127.0.0.1:{self.proxy_port}"},
            ).stop_all()

    def replicas_running(self) -> list[str]:
        from arbiter.executors.local import LocalExecutor
        from arbiter.ports import SystemClock

        ex = LocalExecutor(
            SystemClock(),
            {"state_dir": str(self.root / "local"), "listen": f"127.0.0.1:{self.proxy_port}"},
        )
        return sorted(f"{g.offer.key}×{g.desired}" for g in ex.groups())


def wait_for(what: Callable[[], object], timeout: float, why: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {why}")


class Load:
    """A bounded request loop through the proxy: ``rate`` requests per second from a few
    threads, until stopped (or ``limit`` seconds pass); counts answers by region."""

    def __init__(self, url: str, rate: float = 60.0, limit: float = 120.0) -> None:
        self.url = url
        self.rate = rate
        self.limit = limit
        self.ok = 0
        self.failed: list[str] = []
        self.regions: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _one(self) -> None:
        body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}]})
        req = urllib.request.Request(
            self.url + "v1/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                region = resp.headers.get("X-Arbiter-Region", "?")
                resp.read()
            with self._lock:
                self.ok += 1
                self.regions.append((time.monotonic(), region))
        except (urllib.error.URLError, OSError) as exc:
            with self._lock:
                self.failed.append(repr(exc))

    def _run(self, period: float) -> None:
        end = time.monotonic() + self.limit
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < end:
            self._one()
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))

    def start(self, threads: int = 6) -> None:
        for _ in range(threads):
            t = threading.Thread(target=self._run, args=(threads / self.rate,), daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> float:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
        return self.ok


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, f"sqlite:///{tmp_path / 'arbiter.db'}", free_port())
    yield s
    s.stop_everything()


def test_a_price_change_moves_the_workload_under_load_without_a_failed_request(
    site: Site,
) -> None:
    site.write()
    site.start("d1")
    wait_for(lambda: site.placements() == {WEST4: 2}, 60, "the first placement")
    load = Load(f"http://127.0.0.1:{site.proxy_port}/w/chat/")
    started = time.monotonic()
    load.start()
    wait_for(lambda: site.placements() == {WEST1: 2}, 90, "the move to europe-west1")
    time.sleep(2)
    load.stop()
    elapsed = time.monotonic() - started
    assert not load.failed, load.failed[:5]
    assert load.ok / elapsed >= 50, f"{load.ok} requests in {elapsed:.1f} s"
    (_, first), *_ = load.regions
    assert first == "europe-west4" and load.regions[-1][1] == "europe-west1"
    (_place, moved) = site.migrations()
    assert moved[1] == "done" and moved[2].startswith("move: saves")
    states = [e[0] for e in site.events(moved[0])]
    assert states == [
        "planned", "provisioning", "warming", "shifting", "draining", "releasing", "done",
    ]  # fmt: skip
    why = dict((e[0], e[1]) for e in site.events(moved[0]))
    assert why["shifting"] == "every new replica is ready"
    assert site.replicas_running() == [f"{WEST1}×2"]


@pytest.mark.parametrize("kill_in", ["warming", "draining"])
def test_a_daemon_killed_mid_migration_is_restarted_and_finishes_it(
    site: Site, kill_in: str
) -> None:
    site.write(warmup=4.0)
    first = site.start("d1")
    wait_for(lambda: site.placements() == {WEST4: 2}, 60, "the first placement")
    load = Load(f"http://127.0.0.1:{site.proxy_port}/w/chat/", rate=30)
    load.start()

    def in_state() -> bool:
        ms = site.migrations()
        return len(ms) == 2 and ms[1][1] == kill_in

    wait_for(in_state, 60, f"the move to reach {kill_in}")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    site.write(warmup=4.0, changed=True)
    site.start("d2")
    wait_for(lambda: site.placements() == {WEST1: 2}, 90, "the restarted daemon to finish")
    time.sleep(1)
    load.stop()
    assert not load.failed, load.failed[:5]
    (_, moved) = site.migrations()
    actors = {e[2] for e in site.events(moved[0])}
    assert moved[1] == "done" and len(actors) == 2  # both daemons took steps
    assert any(a.endswith(f":{first.pid}") for a in actors)
    assert site.replicas_running() == [f"{WEST1}×2"]  # no orphaned replicas


@pytest.mark.postgres
def test_two_daemons_on_postgresql_hand_over_a_migration_when_the_leader_dies(
    tmp_path: Path, postgres_server: object
) -> None:
    url = postgres_server.new_database()  # type: ignore[attr-defined]
    subprocess.run(
        [sys.executable, "-m", "arbiter", "--database-url", url, "db", "upgrade"],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    site = Site(tmp_path, url, free_port())
    try:
        site.write(warmup=4.0)
        a = site.start("a")
        wait_for(lambda: site.placements() == {WEST4: 2}, 60, "the first placement")
        site.write(warmup=4.0, changed=True)  # b's replay will start from the new market
        b = site.start("b")
        leader = site.query("SELECT holder FROM leases WHERE name='leader'")[0][0]
        assert str(leader).endswith(f":{a.pid}")

        def warming() -> bool:
            ms = site.migrations()
            return len(ms) == 2 and ms[1][1] == "warming"

        wait_for(warming, 60, "the move to start warming")
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
        taken = time.monotonic()

        def b_leads() -> bool:
            holder = site.query("SELECT holder FROM leases WHERE name='leader'")[0][0]
            return str(holder).endswith(f":{b.pid}")

        wait_for(b_leads, 30, "the standby to take over")
        takeover = time.monotonic() - taken
        wait_for(lambda: site.placements() == {WEST1: 2}, 90, "the new leader to finish")
        assert takeover < 15, f"takeover took {takeover:.1f} s"
        ms = site.migrations()
        assert [m[1] for m in ms] == ["done", "done"]  # moved once, not twice
        actors = {e[2] for e in site.events(ms[1][0])}
        assert {x.rsplit(":", 1)[1] for x in actors} == {str(a.pid), str(b.pid)}
        assert site.replicas_running() == [f"{WEST1}×2"]
        assert b.poll() is None
    finally:
        site.stop_everything()
        postgres_server.drop_database(url)  # type: ignore[attr-defined]
