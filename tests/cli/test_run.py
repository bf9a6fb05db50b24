"""``arbiter run`` (arbiter/cli/run.py) before the daemon takes over its sources: a
start that fails there closes the market-data sources already built, each once."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

import arbiter.config
import arbiter.logs
import providers.registry
from arbiter.cli.main import cli
from arbiter.errors import StoreError

CLOSED: list[str] = []
"""The names of the ``closing`` sources closed, in order."""


class ClosingSource:
    """A market-data source holding something to close; ``fail_close`` makes it fail."""

    def __init__(self, name: str, *, fail_close: bool) -> None:
        self.name = name
        self.fail_close = fail_close

    def close(self) -> None:
        CLOSED.append(self.name)
        if self.fail_close:
            raise OSError(f"{self.name}: pool already torn down")


def build(name: str, options: Mapping[str, Any], *, timeout: float) -> ClosingSource:
    return ClosingSource(name, fail_close=bool(options.get("fail_close")))


CONFIG = """\
[daemon]
mode = "observe"

[sources.first]
kind = "closing"

[sources.second]
kind = "closing"
options = { fail_close = true }

[sources.third]
kind = "closing"

[sources.replay]
kind = "replay"
options = { speed = 60, end = "2024-01-01T00:00:00Z" }
"""
"""Three sources that build, the second failing to close, then one that does not build
(its end is before its start)."""


@pytest.fixture(autouse=True)
def closing_sources(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(providers.registry.SOURCES, "closing", f"{__name__}:build")
    monkeypatch.setattr(arbiter.config, "SOURCE_KINDS", (*arbiter.config.SOURCE_KINDS, "closing"))
    # the logs stay with capture_logs rather than going to the runner's stderr
    monkeypatch.setattr(arbiter.logs, "configure", lambda *args, **kwargs: None)
    CLOSED.clear()
    yield
    CLOSED.clear()


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
    result = run(tmp_path, CONFIG.split("[sources.replay]")[0])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == "arbiter: error: the store said no"
    assert CLOSED == ["first", "second", "third"]
