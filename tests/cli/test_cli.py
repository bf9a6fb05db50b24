"""The arbiter command as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from arbiter.cli.main import cli
from arbiter.store.db import make_engine
from arbiter.store.repositories import Store

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """A user with no config and an empty data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARBITER_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["HOME"] = str(tmp_path)
    env["ARBITER_HTTP__PORT"] = "0"  # an ephemeral port: tests run daemons side by side
    # the daemon's lifecycle is tested here; real replicas behind nginx (the embedded
    # default's local executor) are tested in tests/executors and tests/test_end_to_end
    env["ARBITER_EXECUTOR__KIND"] = "dry-run"
    return env


def arbiter(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arbiter", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_lists_the_commands(user_env: dict[str, str]) -> None:
    result = arbiter("--help", env=user_env)
    assert result.returncode == 0
    for command in ("run", "db", "regions", "config"):
        assert f"  {command} " in result.stdout


def test_db_upgrade_creates_the_embedded_default_and_prints_its_path(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    result = arbiter("db", "upgrade", env=user_env)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "data" / "arbiter" / "arbiter.db"
    assert f"database: sqlite:///{path}" in result.stderr
    assert path.exists()
    current = arbiter("db", "current", env=user_env)
    assert "up to date" in current.stdout


def test_db_downgrade_to_base_and_back(user_env: dict[str, str]) -> None:
    assert arbiter("db", "upgrade", env=user_env).returncode == 0
    down = arbiter("db", "downgrade", "base", env=user_env)
    assert down.returncode == 0 and "base (empty)" in down.stdout
    assert "needs `arbiter db upgrade`" in arbiter("db", "current", env=user_env).stdout


def test_the_database_url_flag_beats_the_environment(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    flag_db, env_db = tmp_path / "flag.db", tmp_path / "env.db"
    env = {**user_env, "ARBITER_DATABASE_URL": f"sqlite:///{env_db}"}
    result = arbiter("--database-url", f"sqlite:///{flag_db}", "db", "upgrade", env=env)
    assert result.returncode == 0, result.stderr
    assert flag_db.exists() and not env_db.exists()
    assert arbiter("db", "upgrade", env=env).returncode == 0
    assert env_db.exists()


@pytest.mark.postgres
def test_db_upgrade_on_postgresql_masks_the_password(
    user_env: dict[str, str], postgres_server: object
) -> None:
    url = postgres_server.new_database()  # type: ignore[attr-defined]
    with_password = url.replace("arbiter@", "arbiter:s3cret@")  # trust auth ignores it
    result = arbiter("--database-url", with_password, "db", "upgrade", env=user_env)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "arbiter:***@" in result.stderr


def test_an_unreachable_database_is_one_clear_line(user_env: dict[str, str]) -> None:
    result = arbiter(
        "--database-url", "postgresql://arbiter:pw@127.0.0.1:1/x", "db", "current", env=user_env
    )
    assert result.returncode == 1
    assert result.stderr.startswith("database: postgresql://arbiter:***@127.0.0.1:1/x")
    assert "arbiter: error: reading schema revision: database unreachable" in result.stderr
    assert "Traceback" not in result.stderr and ":pw@" not in result.stderr


def test_a_bad_config_file_is_one_clear_line(user_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[daemon]\nmode = 'yolo'\n")
    result = arbiter("--config", str(config), "run", env=user_env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"arbiter: error: {config}: daemon.mode: Input should be")
    assert "Traceback" not in result.stderr


def test_regions_json_lists_the_catalog() -> None:
    result = CliRunner().invoke(cli, ["regions", "--provider", "azure", "--output", "json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert {r["provider"] for r in rows} == {"azure"}
    (sweden,) = [r for r in rows if r["region"] == "swedencentral"]
    assert sweden["country"] == "SE" and "EU" in sweden["groups"]
    assert set(sweden) == {
        "provider",
        "region",
        "key",
        "name",
        "country",
        "groups",
        "city",
        "latitude",
        "longitude",
        "grid_zone",
    }


def test_regions_table_matches_the_golden_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    result = CliRunner().invoke(cli, ["regions", "--provider", "gcp", "--jurisdiction", "EEA"])
    assert result.exit_code == 0
    expected = (GOLDEN / "regions_gcp_eea.txt").read_text()
    assert result.stdout == expected


@pytest.fixture
def three_prices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A database holding three fresh on-demand prices; no config file, no ARBITER_*."""
    from datetime import UTC, datetime

    from arbiter.domain.market import Offer, PriceQuote
    from arbiter.store.db import upgrade

    for name in [k for k in os.environ if k.startswith("ARBITER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    url = f"sqlite:///{tmp_path / 'prices.db'}"
    upgrade(url)
    engine = make_engine(url)
    now = datetime.now(UTC)
    Store(engine).prices.record(
        PriceQuote(
            offer=Offer(
                provider="aws", region=region, instance_type="g5.xlarge", market="on-demand"
            ),
            usd_per_hour=price,
            observed_at=now,
            source="aws",
        )
        for region, price in (("us-east-1", 1.006), ("eu-west-1", 1.123), ("eu-central-1", 1.2))
    )
    engine.dispose()
    return url


def _prices(url: str, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["--database-url", url, "prices", "--sort", "hour", *args])
    assert result.exit_code == 0, result.output
    return result


def test_prices_json_says_on_stderr_when_the_limit_left_rows_out(three_prices: str) -> None:
    result = _prices(three_prices, "--limit", "2", "-o", "json")
    rows = json.loads(result.stdout)
    assert [r["region"] for r in rows] == ["us-east-1", "eu-west-1"]
    assert result.stderr == "arbiter: warning: showing 2 of 3 offers; --limit 0 for all\n"


def test_prices_json_is_silent_on_stderr_when_every_row_is_shown(three_prices: str) -> None:
    result = _prices(three_prices, "-o", "json")
    assert len(json.loads(result.stdout)) == 3
    assert result.stderr == ""


def test_prices_limit_0_shows_every_row(three_prices: str) -> None:
    result = _prices(three_prices, "--limit", "0", "-o", "json")
    assert len(json.loads(result.stdout)) == 3
    assert result.stderr == ""


def test_prices_table_notes_the_rows_the_limit_left_out(three_prices: str) -> None:
    result = _prices(three_prices, "--limit", "1")
    assert "us-east-1" in result.stdout and "eu-west-1" not in result.stdout
    assert result.stderr == "showing 1 of 3 offers; --limit 0 for all\n"


def test_prices_table_counts_the_offers_when_none_are_left_out(three_prices: str) -> None:
    assert _prices(three_prices).stderr == "3 offers\n"


def test_prices_refuses_a_negative_limit(three_prices: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", three_prices, "prices", "--limit", "-1"])
    assert result.exit_code == 1  # usage errors exit 1 (2 and 3 mean changes to policy diff)
    assert "--limit" in result.stderr


def _wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def _start_daemon(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "arbiter", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _leader(db: Path) -> str | None:
    engine = make_engine(f"sqlite:///{db}")
    try:
        lease = Store(engine).leases.get("leader")
        return lease.holder if lease else None
    except Exception:
        return None
    finally:
        engine.dispose()


def test_run_on_the_embedded_default_exits_cleanly_on_sigterm(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "data" / "arbiter" / "arbiter.db"
    daemon = _start_daemon(user_env)
    try:
        _wait_for(lambda: _leader(db) is not None)
        daemon.send_signal(signal.SIGTERM)
        _out, err = daemon.communicate(timeout=30)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, err
    assert f"arbiter: database sqlite:///{db}" in err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert events[-1] == "stopped"
    assert "regions synced" in events and "leading" in events
    assert _leader(db) is None, "the lease is released on a clean stop"


def test_a_second_daemon_on_the_same_sqlite_file_is_refused(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "data" / "arbiter" / "arbiter.db"
    first = _start_daemon(user_env)
    try:
        _wait_for(lambda: _leader(db) is not None)
        second = arbiter("run", env=user_env)
        assert second.returncode == 1
        assert "another arbiter daemon" in second.stderr
        assert "use PostgreSQL" in second.stderr
        assert first.poll() is None, "the first daemon keeps running"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0


def test_a_restart_after_kill_9_takes_over_the_dead_daemons_lease(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "data" / "arbiter" / "arbiter.db"
    first = _start_daemon(user_env)
    _wait_for(lambda: _leader(db) is not None)
    first.kill()
    first.communicate(timeout=30)
    second = _start_daemon(user_env)
    try:
        _wait_for(lambda: _leader(db) not in (None, _leader_name(first.pid)))
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    assert "taking over lease of a dead daemon" in err


def _leader_name(pid: int) -> str:
    import socket

    return f"{socket.gethostname()}:{pid}"


def test_config_show_masks_source_secrets(user_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "arbiter.toml"
    config.write_text(
        '[sources.em]\nkind = "electricitymaps"\n'
        'options = { token = "em-s3cret", base_url = "http://u:pw-s3cret@127.0.0.1/v3" }\n'
    )
    result = arbiter("--config", str(config), "config", "show", env=user_env)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    shown = json.loads(result.stdout)["settings"]["sources"]["em"]["options"]
    assert shown == {"token": "***", "base_url": "http://u:***@127.0.0.1/v3"}


def test_run_on_the_embedded_default_fills_the_store_with_prices_capacity_and_carbon(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "data" / "arbiter" / "arbiter.db"
    daemon = _start_daemon(user_env)
    try:
        _wait_for(lambda: _polled(db) >= 2, timeout=60)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    prices = json.loads(arbiter("prices", "--gpu", "H100", "-o", "json", env=user_env).stdout)
    assert {"aws", "azure"} <= {p["provider"] for p in prices}
    assert all(p["gpu"] == "H100" and p["source"] == "replay" for p in prices)
    assert all(p["age_seconds"] >= 0 and not p["stale"] for p in prices)
    capacity = json.loads(arbiter("capacity", "-o", "json", env=user_env).stdout)
    assert {c["kind"] for c in capacity} == {"interruption_bucket"}
    carbon = json.loads(arbiter("carbon", "-o", "json", env=user_env).stdout)
    assert {"DE", "FR"} <= {c["zone"] for c in carbon}
    assert all(c["stale"] for c in carbon), "annual factors are never shown as live data"
    sources = json.loads(arbiter("sources", "-o", "json", env=user_env).stdout)
    assert {s["source"]: s["health"] for s in sources} == {
        "replay": "ok",
        "static-carbon": "ok",
    }


def _polled(db: Path) -> int:
    engine = make_engine(f"sqlite:///{db}")
    try:
        return sum(1 for s in Store(engine).sources.all() if s.last_success_at)
    except Exception:
        return 0
    finally:
        engine.dispose()


def _port_from(err_lines: list[str]) -> int:
    for line in err_lines:
        if line.startswith("{") and json.loads(line).get("event") == "serving":
            return int(json.loads(line)["port"])
    raise AssertionError("the daemon did not say where it serves")


def test_the_daemon_serves_health_readiness_and_metrics_on_localhost(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    import socket as socketlib
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    notify_path = str(tmp_path / "notify")
    notify = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(30)
    env = {**user_env, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "2000000"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "arbiter", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        ready = notify.recv(4096).decode()
        assert "READY=1" in ready and "STATUS=leader" in ready
        assert daemon.stderr is not None
        while not any('"serving"' in line for line in lines):
            lines.append(daemon.stderr.readline())
        port = _port_from(lines)
        base = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _polled(tmp_path / "data" / "arbiter" / "arbiter.db") >= 2, 60)
        assert urllib.request.urlopen(f"{base}/healthz", timeout=10).read() == b"ok\n"
        readyz = json.loads(urllib.request.urlopen(f"{base}/readyz", timeout=10).read())
        assert readyz == {"ready": True, "reasons": []}
        text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["arbiter_leader"].samples[0].value == 1
        assert families["arbiter_store_up"].samples[0].value == 1
        healthy = {s.labels["source"]: s.value for s in families["arbiter_source_healthy"].samples}
        assert healthy == {"replay": 1.0, "static-carbon": 1.0}

        def fleet_metrics() -> dict[str, float]:
            body = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
            got = {f.name: f.samples[0].value for f in text_string_to_metric_families(body)
                   if f.samples and not f.samples[0].labels}  # fmt: skip
            return got if got.get("arbiter_reconcile_passes", 0) >= 1 else {}

        _wait_for(lambda: bool(fleet_metrics()), 60)
        got = fleet_metrics()
        # the embedded default places its workloads (dry-run here): cost, baseline, carbon
        assert got["arbiter_fleet_usd_per_hour"] > 0
        assert (
            got["arbiter_fleet_on_demand_baseline_usd_per_hour"]
            >= got["arbiter_fleet_usd_per_hour"]
        )
        assert "arbiter_fleet_carbon_g_per_hour" in got and "arbiter_solver_seconds" in got
        seen = set()
        while "WATCHDOG=1" not in seen:
            seen.update(notify.recv(4096).decode().splitlines())
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
        notify.close()
    assert daemon.returncode == 0


def test_endpoints_bind_localhost_by_default() -> None:
    from arbiter.config import Settings

    assert Settings().http.host == "127.0.0.1"
