"""A real ``arbiter run`` as a subprocess, for the reliability and security suites: one
directory with its config, policies, workload, recorded prices and log; loopback only.

The daemon uses the dry-run executor (every action logged as ``would ...``, groups
ready at once) and a replay source playing a small price file, so a workload is placed
within seconds of the start and nothing runs outside the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2024, 1, 9, 0, tzinfo=UTC)
WEST4 = "gcp:europe-west4:-:g2-standard-4:on-demand"
WEST1 = "gcp:europe-west1:-:g2-standard-4:on-demand"

POLICY = """\
apiVersion: arbiter/v1
kind: PlacementPolicy
metadata: {{name: eu}}
select: {{data_classes: [internal]}}
constraints:
  - id: eu-residency
    sovereignty:
      data_classes: [internal]
      jurisdictions: [EU]
      exclude_regions: [{excluded}]
migration:
  min_saving: {{pct: 10}}
  sustained_for: 0s
  cooldown: 0s
  max_disrupted_replicas_pct: 100
  drain_timeout: 0s
"""
WORKLOAD = """\
apiVersion: arbiter/v1
kind: Workload
metadata: {name: chat}
spec:
  data_class: internal
  gpu_options: [{model: L4, tokens_per_second: 500}]
  replicas: 2
  warmup_seconds: 1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: Callable[[], object], timeout: float, why: str) -> Any:
    """Poll ``what`` every 0.2 s until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {why}")


@dataclass
class Site:
    """One installation: config, policies, workload, prices, database and log."""

    root: Path
    database_url: str
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def policy(self) -> Path:
        return self.root / "policies" / "eu.yaml"

    def write(
        self,
        *,
        extra: str = "",
        http: str = "enabled = false",
        executor: str = 'kind = "dry-run"',
    ) -> None:
        """Write the policies, the workload, a price file (europe-west4 cheapest) and the
        config. ``extra`` is appended to the config (more sources, options); ``http`` and
        ``executor`` are the bodies of the ``[http]`` and ``[executor]`` tables."""
        (self.root / "policies").mkdir(exist_ok=True)
        (self.root / "workloads").mkdir(exist_ok=True)
        self.exclude()
        (self.root / "workloads" / "chat.yaml").write_text(WORKLOAD)
        at = lambda hours: (START + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
        prices = self.root / "prices.csv"
        prices.write_text(
            "snapshot_utc,cloud,region,instance_type,ondemand_usd_per_hour,"
            "spot_usd_per_hour,status,flag\n"
            f"{at(0)},gcp,europe-west4,g2-standard-4,1.00,,listed,\n"
            f"{at(0)},gcp,europe-west1,g2-standard-4,1.50,,listed,\n"
        )
        self.config.write_text(
            f"""
[database]
url = "{self.database_url}"

[daemon]
mode = "enforce"
reconcile_seconds = 1
tick_seconds = 1
lease_seconds = 5
kill_switch_file = "{self.root / "KILL"}"

[http]
{http}

[policies]
paths = ["{self.root / "policies"}"]
workloads = ["{self.root / "workloads"}"]

[executor]
{executor}

[sources.replay]
kind = "replay"
interval = "1s"
jitter = "0s"
stale_after = "1h"

[sources.replay.options]
price_files = ["{prices}"]
speed = 60
start = "{START.isoformat()}"
end = "{(START + timedelta(days=1)).isoformat()}"
loop = false
{extra}
"""
        )

    def exclude(self, *regions: str) -> None:
        """Rewrite the policy so that ``regions`` (``gcp:europe-west4``) are refused:
        a workload running there is then in violation and moved at once."""
        self.policy.write_text(POLICY.format(excluded=", ".join(regions)))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARBITER_")}
        env.update(
            {
                "ARBITER_CONFIG": str(self.config),
                "HOME": str(self.root / "home"),
                "XDG_DATA_HOME": str(self.root / "home" / "data"),
                "XDG_CONFIG_HOME": str(self.root / "home" / "config"),
                "ARBITER_LOG_FORMAT": "json",
                **self.extra_env,
            }
        )
        return env

    def start(self) -> subprocess.Popen[bytes]:
        self._log = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "arbiter", "run"],
            env=self.env(),
            stdout=self._log,
            stderr=self._log,
            cwd=ROOT,
        )
        return self.proc

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; returns the exit status."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    # -- reading what happened ----------------------------------------------------

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """The daemon's JSON log lines from byte offset ``since`` (other lines, such as a
        traceback, are returned as ``{"event": "<raw>", "raw": line}``)."""
        if not self.log.exists():
            return []
        out = []
        with self.log.open("rb") as f:
            f.seek(since)
            for raw in f.read().decode("utf-8", "replace").splitlines():
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                out.append(parsed if isinstance(parsed, dict) else {"event": raw, "raw": raw})
        return out

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        engine = create_engine(self.database_url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql))]
        finally:
            engine.dispose()

    def try_query(self, sql: str) -> list[tuple[Any, ...]] | None:
        """Like :meth:`query`, or None while the database cannot answer."""
        try:
            return self.query(sql)
        except Exception:
            return None

    def placements(self) -> dict[str, int]:
        rows = self.try_query("SELECT offer_key, replicas FROM placements WHERE workload='chat'")
        return {str(k): int(n) for k, n in rows or []}


@contextmanager
def running(site: Site) -> Iterator[subprocess.Popen[bytes]]:
    proc = site.start()
    try:
        yield proc
    finally:
        site.stop()
