"""``arbiter backtest`` on a small committed slice of the recorded GCP prices."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from arbiter.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "arbiter" / "data" / "backtest"
SAMPLE = [
    "--data",
    str(DATA / "sample"),
    "--data",
    str(DATA / "gcp_gpu_price_snapshots.csv"),
]
SCENARIO = [
    "--policies",
    str(DATA / "scenarios" / "gcp" / "policies"),
    "--workloads",
    str(ROOT / "workloads"),
]
WINDOW = ["--from", "2024-08-01", "--to", "2024-08-08"]
STRATEGIES = [
    "arbiter",
    "static-on-demand",
    "static-spot",
    "greedy",
    "hindsight",
    "hindsight-objective",
]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):
        if name.startswith("ARBITER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "config.toml").write_text("")
    monkeypatch.setenv("ARBITER_CONFIG", str(tmp_path / "config.toml"))
    return CliRunner()


def test_the_backtest_prints_a_table_of_every_strategy(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["backtest", *WINDOW, *SCENARIO, *SAMPLE])
    assert result.exit_code == 0, result.output
    for name in STRATEGIES:
        assert name in result.output
    assert "saved vs static OD" in result.output
    assert "gcp_gpu_price_changes_2024-06_2024-08.csv" in result.output


def test_the_backtest_writes_json_and_plots(runner: CliRunner, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    result = runner.invoke(
        cli,
        ["backtest", *WINDOW, *SCENARIO, *SAMPLE, "--output", "json", "--plots", str(plots)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["steps"] == 7 * 24
    assert [s["strategy"] for s in report["strategies"]] == STRATEGIES
    by_name = {s["strategy"]: s for s in report["strategies"]}
    assert by_name["static-on-demand"]["savings_vs_static_on_demand_pct"] == 0
    for s in report["strategies"]:
        assert s["violations_replica_hours"] == 0
        assert s["sovereignty_violation_replica_hours"] == 0
        assert by_name["hindsight"]["cost_usd"] <= s["cost_usd"] + 0.01
    assert len(report["daily"]["dates"]) == 7
    assert {p.name for p in plots.iterdir()} == {"cost.png", "carbon.png"}
    for name in ("cost.png", "carbon.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(report["plots"]) == sorted(str(p) for p in plots.iterdir())


def test_a_carbon_price_adds_the_price_only_arbiter_for_comparison(runner: CliRunner) -> None:
    result = runner.invoke(
        cli,
        ["backtest", *WINDOW, *SCENARIO, *SAMPLE, "--carbon-price", "100", "-o", "json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    names = [s["strategy"] for s in report["strategies"]]
    assert names[:2] == ["arbiter", "arbiter-price-only"]
    assert report["settings"]["carbon_price_usd_per_tonne"] == 100


def test_a_missing_data_path_is_an_error_naming_the_option(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["backtest", *WINDOW, *SCENARIO, "--data", "/nonexistent"])
    assert result.exit_code == 1
    assert "--data" in result.output and "/nonexistent" in result.output


def test_the_end_must_come_after_the_start(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["backtest", "--from", "2024-08-08", "--to", "2024-08-01"])
    assert result.exit_code == 1
    assert "--to" in result.output
