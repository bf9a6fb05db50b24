"""``arbiter run`` (arbiter/cli/run.py) before the daemon takes over its sources: a
start that fails there closes the market-data sources already built, each once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

import arbiter.logs
from arbiter.cli.main import cli
from arbiter.errors import StoreError
from tests.fakes import sources
from tests.fakes.sources import CLOSED, CONFIG


@pytest.fixture(autouse=True)
def closing_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    sources.register(monkeypatch)
    # the logs stay with capture_logs rather than going to the runner's stderr
    monkeypatch.setattr(arbiter.logs, "configure", lambda *args, **kwargs: None)


def run(tmp_path: Path, config: str) -> Result:
    path = tmp_path / "config.toml"
    path.write_text(config)
    return CliRunner().invoke(
        cli,
        ["--config", str(path), "--database-url", f"sqlite:///{tmp_path / 'a.db'}", "run"],
        env={"ARBITER_DAEMON__NAME": "test:1", "ARBITER_HTTP__ENABLED": "false"},
    )


def test_a_source_that_fails_to_build_closes_those_built_before_it_each_once(
    tmp_path: Path,
) -> None:
    with capture_logs() as logs:
        result = run(tmp_path, CONFIG)
    assert result.exit_code == 1
    assert CLOSED == ["first", "second", "third"]
    assert result.stderr.splitlines()[-1].startswith("arbiter: error: ")
    assert result.stderr.splitlines()[-1].endswith(
        "sources.replay.options.end: must be after start"
    )
    assert [(e["event"], e["log_level"], e["source"], e["error"]) for e in logs] == [
        (
            "could not close the market-data source",
            "warning",
            "second",
            "second: pool already torn down",
        )
    ]


def test_a_daemon_that_cannot_be_built_closes_the_sources_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import arbiter.daemon

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise StoreError("the store said no")

    monkeypatch.setattr(arbiter.daemon.Daemon, "__init__", refuse)
    result = run(tmp_path, sources.BUILDING)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == "arbiter: error: the store said no"
    assert CLOSED == ["first", "second", "third"]
