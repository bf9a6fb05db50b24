"""``arbiter poll --once`` (arbiter/cli/poll.py) closes every market-data source it
built, each once: after polling, and when a source does not build (those built before
it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

import arbiter.logs
from arbiter.cli.main import cli
from tests.fakes import sources


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    # the logs stay with capture_logs rather than going to the runner's stderr
    monkeypatch.setattr(arbiter.logs, "configure", lambda *args, **kwargs: None)
    return sources.register(monkeypatch)


def poll(tmp_path: Path, config: str) -> Result:
    path = tmp_path / "config.toml"
    path.write_text(config)
    database = f"sqlite:///{tmp_path / 'a.db'}"
    return CliRunner().invoke(
        cli, ["--config", str(path), "--database-url", database, "poll", "--once"]
    )


def test_a_source_that_fails_to_build_closes_those_built_before_it_each_once(
    tmp_path: Path, closed: list[str]
) -> None:
    with capture_logs() as logs:
        result = poll(tmp_path, sources.CONFIG)
    assert result.exit_code == 1
    assert closed == ["first", "second", "third"]
    assert result.stderr.splitlines()[-1].startswith("arbiter: error: ")
    assert result.stderr.splitlines()[-1].endswith(
        "sources.replay.options.end: must be after start"
    )
    assert [(e["event"], e["source"], e["error"]) for e in logs] == [
        ("could not close the market-data source", "second", "second: pool already torn down")
    ]


def test_every_source_is_closed_once_after_polling(tmp_path: Path, closed: list[str]) -> None:
    with capture_logs() as logs:
        result = poll(tmp_path, sources.BUILDING)
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        "first",
        "second",
        "third",
    ]
    assert closed == ["first", "second", "third"]
    failed = [e for e in logs if e["event"] == "could not close the market-data source"]
    assert [e["source"] for e in failed] == ["second"]
