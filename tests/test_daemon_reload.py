"""SIGHUP re-reads policies and workloads: a valid change is taken, a broken one is
refused with its file:line and the daemon keeps running on the set it had."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _wait(log: Path, event: str, timeout: float = 60) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in _events(log) if e.get("event") == event]
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {event!r} in {log.read_text()[-2000:]}")


def test_sighup_refuses_a_broken_policy_and_keeps_running_then_takes_a_fixed_one(
    tmp_path: Path,
) -> None:
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    shutil.copytree(ROOT / "workloads", tmp_path / "workloads")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARBITER_")}
    env.update(
        {
            "HOME": str(tmp_path),
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "ARBITER_HTTP__PORT": "0",
            "ARBITER_EXECUTOR__KIND": "dry-run",
            "ARBITER_LOG_FORMAT": "json",
        }
    )
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "arbiter", "run"], env=env, cwd=tmp_path, stdout=out, stderr=out
        )
        try:
            (loaded,) = _wait(log, "policies loaded")
            policy = tmp_path / "policies" / "eu-personal-data.yaml"
            good = policy.read_text()
            policy.write_text(good.replace("jurisdictions: [EU, EEA]", "jurisdiction: [EU]"))
            proc.send_signal(signal.SIGHUP)
            refused = _wait(log, "reload refused: keeping the policies in force")[0]
            assert refused["revision"] == loaded["revision"]
            errors = refused["errors"]
            assert any("eu-personal-data.yaml:16" in e and "jurisdictions" in e for e in errors)  # type: ignore[union-attr]
            time.sleep(1)
            assert proc.poll() is None  # still running, on the old set

            policy.write_text(good.replace("cooldown: 6h", "cooldown: 5h"))
            proc.send_signal(signal.SIGHUP)
            (reloaded,) = _wait(log, "policies reloaded")
            assert reloaded["revision"] != loaded["revision"]
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
