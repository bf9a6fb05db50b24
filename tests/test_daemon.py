"""The daemon's start-up (without a home directory, with ``database.echo``, failing on
a bad option), its shutdown (the executor and the sources closed once, however it
stops, every step run whichever failed) and its retention of finished migrations and old
decisions."""

from __future__ import annotations

import logging
import os
import pwd
import re
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from arbiter.catalog import load_catalog
from arbiter.config import (
    Settings,
    SourceConfig,
    default_kill_switch_file,
    effective_settings,
    load_config,
)
from arbiter.daemon import LEADER_LEASE, Daemon
from arbiter.domain.decisions import Decision
from arbiter.domain.migrations import Migration, MigrationState
from arbiter.errors import ConfigError, StoreError
from arbiter.executors.dry_run import DryRunExecutor
from arbiter.polling import ConfiguredSource
from arbiter.ports import FakeClock, SystemClock
from arbiter.store.db import default_sqlite_path
from arbiter.store.repositories import Store

CATALOG = load_catalog()


@pytest.fixture
def no_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A user with neither HOME, XDG_DATA_HOME nor a passwd entry (a systemd
    DynamicUser without the unit's HOME, a container run with an arbitrary uid)."""

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    monkeypatch.chdir(tmp_path)  # no policies/ or workloads/ here: nothing to plan
    with pytest.raises(StoreError, match="no home directory"):
        default_sqlite_path()


def daemon(settings: dict[str, object], engine: Engine, url: str) -> Daemon:
    settings = {"http": {"enabled": False}, **settings}
    return Daemon(Settings.model_validate(settings), engine, CATALOG, database_url=url)


def run_until_ready(d: Daemon) -> int:
    return d.run(on_ready=d.stopping.set)


@pytest.mark.usefixtures("no_home")
def test_a_daemon_on_a_database_url_starts_without_a_home_directory(
    engine: Engine, store_url: str
) -> None:
    assert default_kill_switch_file() is None
    assert effective_settings(Settings()).daemon.kill_switch_file is None
    d = daemon({}, engine, store_url)
    with capture_logs() as logs:
        assert run_until_ready(d) == 0
    events = [e["event"] for e in logs]
    assert "started" in events and "reconciling" in events
    (warning,) = [e for e in logs if e["event"].startswith("no kill switch file")]
    assert warning["log_level"] == "warning"
    assert d.settings.daemon.kill_switch_file is None
    assert d.reconciler is not None and d.reconciler.kill_switch() is False


@pytest.mark.usefixtures("no_home")
def test_without_a_home_directory_the_configured_kill_switch_file_still_works(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    kill = tmp_path / "kill-switch"
    d = daemon({"daemon": {"kill_switch_file": str(kill)}}, engine, store_url)
    with capture_logs() as logs:
        assert run_until_ready(d) == 0
    assert not [e for e in logs if e["event"].startswith("no kill switch file")]
    kill.touch()
    assert d.reconciler is not None and d.reconciler.kill_switch() is True


@pytest.fixture
def sql_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("sqlalchemy.engine.Engine")
    level = logger.level
    yield logger
    logger.setLevel(level)


def test_database_echo_logs_every_sql_statement_the_daemon_sends(
    engine: Engine,
    store_url: str,
    sql_logger: logging.Logger,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    settings = {"database": {"echo": True}, "daemon": {"kill_switch_file": str(tmp_path / "k")}}
    with caplog.at_level(logging.NOTSET, logger=sql_logger.name):
        assert run_until_ready(daemon(settings, engine, store_url)) == 0
    statements = [r.getMessage() for r in caplog.records if r.name == sql_logger.name]
    assert any("alembic_version" in s for s in statements)  # the schema check
    assert any("leases" in s for s in statements)  # taking the lease


def test_without_database_echo_no_sql_is_logged(
    engine: Engine,
    store_url: str,
    sql_logger: logging.Logger,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    settings = {"daemon": {"kill_switch_file": str(tmp_path / "k")}}
    with caplog.at_level(logging.WARNING):
        assert run_until_ready(daemon(settings, engine, store_url)) == 0
    assert not [r for r in caplog.records if r.name == sql_logger.name]


# -- a start-up that fails leaves the lease free ---------------------------------------

NOTHING_TO_PLAN = "[policies]\npaths = []\nworkloads = []\n"
BAD_OPTIONS = {
    "executor": (
        f'{NOTHING_TO_PLAN}[executor]\nkind = "local"\n[executor.options]\nlisten = "0.0.0.0:80"\n',
        ":7: executor.options.listen: the proxy binds 127.0.0.1 only",
    ),
    "interruption source": (
        f'{NOTHING_TO_PLAN}[interruptions.sqs]\nkind = "aws-sqs"\n[interruptions.sqs.options]\n'
        'queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/spot"\n'
        "wait_seconds = 21\n",
        ":8: interruptions.sqs.options.wait_seconds: ",
    ),
}


@pytest.mark.parametrize("what", sorted(BAD_OPTIONS))
def test_a_daemon_stopped_by_a_bad_option_does_not_keep_the_leader_lease(
    what: str, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    """The options of the executor and of the interruption sources are checked as they
    are built, at start: a daemon that stops on one leaves the lease free, not held
    until it expires (on SQLite that refused the corrected daemon; on PostgreSQL it
    delayed the next leader)."""
    config, error = BAD_OPTIONS[what]
    path = tmp_path / "config.toml"
    path.write_text(config)
    env = {"ARBITER_HTTP__ENABLED": "false", "ARBITER_DAEMON__NAME": "host-a:1"}
    bad = Daemon(load_config(path, env=env).settings, engine, CATALOG, database_url=store_url)
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{path}{error}')}"):
        run_until_ready(bad)
    assert Store(engine).leases.get(LEADER_LEASE) is None
    fixed = daemon({"daemon": {"name": "host-a:2"}}, engine, store_url)
    assert fixed.try_lead() and fixed.is_leader


# -- the executor is closed once, however the daemon stops ----------------------------


class RecordingExecutor(DryRunExecutor):
    """A dry-run executor that records each ``close()`` (and whether the daemon's jobs
    were still scheduled then), and fails it when asked to."""

    def __init__(self, daemon: Daemon, *, fail: bool = False) -> None:
        super().__init__(SystemClock())
        self.daemon = daemon
        self.fail = fail
        self.closed_while_scheduled: list[bool] = []

    def close(self) -> None:
        scheduler = self.daemon._scheduler
        self.closed_while_scheduled.append(scheduler is not None and scheduler.running)
        if self.fail:
            raise OSError("connection pool already torn down")


def recording_daemon(
    monkeypatch: pytest.MonkeyPatch,
    engine: Engine,
    url: str,
    tmp_path: Path,
    *,
    fail_close: bool = False,
    **settings: object,
) -> tuple[Daemon, RecordingExecutor]:
    d = daemon(
        {
            "daemon": {"kill_switch_file": str(tmp_path / "kill")},
            "policies": {"paths": [], "workloads": []},
            **settings,
        },
        engine,
        url,
    )
    executor = RecordingExecutor(d, fail=fail_close)
    monkeypatch.setattr("arbiter.executors.make_executor", lambda *a, **kw: executor)
    return d, executor


@pytest.fixture
def sigterm_handlers() -> Iterator[None]:
    """The daemon's own SIGTERM, SIGINT and SIGHUP handlers, restored afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.usefixtures("sigterm_handlers")
def test_a_daemon_stopped_by_sigterm_closes_its_executor_once_after_its_jobs_stopped(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    d, executor = recording_daemon(monkeypatch, engine, store_url, tmp_path)
    d.install_signal_handlers()
    assert d.run(on_ready=lambda: os.kill(os.getpid(), signal.SIGTERM)) == 0
    assert executor.closed_while_scheduled == [False]


def test_a_daemon_whose_start_fails_after_building_its_executor_closes_it_once(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    """An interruption source refusing its options stops the start after the executor
    was built: the error is what the daemon raises, and the executor is closed."""
    bad_source = {
        "kind": "aws-sqs",
        "options": {
            "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/spot",
            "wait_seconds": 21,
        },
    }
    d, executor = recording_daemon(
        monkeypatch, engine, store_url, tmp_path, interruptions={"sqs": bad_source}
    )
    with pytest.raises(ConfigError, match="wait_seconds"):
        run_until_ready(d)
    assert executor.closed_while_scheduled == [False]


def test_a_daemon_stopped_by_an_error_while_running_closes_its_executor_once(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    d, executor = recording_daemon(monkeypatch, engine, store_url, tmp_path)

    def fail() -> None:
        raise RuntimeError("readiness callback failed")

    with pytest.raises(RuntimeError, match="readiness callback failed"):
        d.run(on_ready=fail)
    assert executor.closed_while_scheduled == [False]


def test_an_executor_that_fails_to_close_is_logged_and_the_daemon_still_exits_0(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    d, executor = recording_daemon(monkeypatch, engine, store_url, tmp_path, fail_close=True)
    with capture_logs() as logs:
        assert run_until_ready(d) == 0
    assert executor.closed_while_scheduled == [False]
    (failed,) = [e for e in logs if e["event"] == "could not close the executor"]
    assert failed["log_level"] == "warning" and failed["executor"] == "dry-run"
    assert failed["error"] == "connection pool already torn down"
    assert [e["event"] for e in logs][-1] == "stopped"
    assert Store(engine).leases.get(LEADER_LEASE) is None, "the lease is released all the same"


def test_an_executor_that_fails_to_close_does_not_mask_the_error_that_stopped_the_start(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    d, executor = recording_daemon(monkeypatch, engine, store_url, tmp_path, fail_close=True)

    def fail() -> None:
        raise RuntimeError("readiness callback failed")

    with capture_logs() as logs, pytest.raises(RuntimeError, match="readiness callback failed"):
        d.run(on_ready=fail)
    assert executor.closed_while_scheduled == [False]
    assert [e for e in logs if e["event"] == "could not close the executor"]


# -- the interruption and market-data sources are closed once, however it stops --------


class ClosingSource:
    """An interruption or market-data source that finds nothing and records each
    ``close()`` (and whether the daemon's jobs were still scheduled then), failing it
    when asked to."""

    def __init__(self, daemon: Daemon, name: str, *, fail: bool = False) -> None:
        self.daemon = daemon
        self.name = name
        self.fail = fail
        self.closed_while_scheduled: list[bool] = []

    def poll(self, now: object) -> list[object]:
        return []

    def close(self) -> None:
        scheduler = self.daemon._scheduler
        self.closed_while_scheduled.append(scheduler is not None and scheduler.running)
        if self.fail:
            raise OSError(f"{self.name}: connection pool already torn down")


TWO_INTERRUPTION_SOURCES = {
    "imds": {"kind": "aws-imds"},
    "gce": {"kind": "gcp-metadata"},
}


def interruption_daemon(
    monkeypatch: pytest.MonkeyPatch,
    engine: Engine,
    url: str,
    tmp_path: Path,
    *,
    failing_close: tuple[str, ...] = (),
    refused: str | None = None,
) -> tuple[Daemon, dict[str, ClosingSource]]:
    """A daemon watching two interruption sources; ``refused`` names one whose options
    are refused as it is built (the sources are built in the configuration's order)."""
    d, _ = recording_daemon(
        monkeypatch, engine, url, tmp_path, interruptions=TWO_INTERRUPTION_SOURCES
    )
    built: dict[str, ClosingSource] = {}

    def build(kind: str, name: str, options: object, **_: object) -> ClosingSource:
        if name == refused:
            raise ConfigError("bad option", source=f"interruptions.{name}", key="options")
        built[name] = ClosingSource(d, name, fail=name in failing_close)
        return built[name]

    monkeypatch.setattr("arbiter.interruptions.build_interruption_source", build)
    return d, built


def test_a_stopping_daemon_closes_each_interruption_source_once_after_its_jobs_stopped(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    d, built = interruption_daemon(monkeypatch, engine, store_url, tmp_path)
    assert run_until_ready(d) == 0
    assert {name: s.closed_while_scheduled for name, s in built.items()} == {
        "imds": [False],
        "gce": [False],
    }


def test_a_start_stopped_by_an_interruption_source_closes_those_built_before_it(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    d, built = interruption_daemon(monkeypatch, engine, store_url, tmp_path, refused="gce")
    with pytest.raises(ConfigError, match="bad option"):
        run_until_ready(d)
    assert {name: s.closed_while_scheduled for name, s in built.items()} == {"imds": [False]}


def test_an_interruption_source_that_fails_to_close_is_logged_and_the_others_still_close(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    d, built = interruption_daemon(
        monkeypatch, engine, store_url, tmp_path, failing_close=("imds",)
    )
    with capture_logs() as logs:
        assert run_until_ready(d) == 0
    assert built["gce"].closed_while_scheduled == [False]
    (failed,) = [e for e in logs if e["event"] == "could not close the interruption source"]
    assert failed["log_level"] == "warning" and failed["source"] == "imds"
    assert failed["error"] == "imds: connection pool already torn down"
    assert Store(engine).leases.get(LEADER_LEASE) is None, "the lease is released all the same"


def market_sources(
    d: Daemon, *, failing_close: tuple[str, ...] = ()
) -> dict[str, ConfiguredSource]:
    return {
        name: ConfiguredSource(
            name,
            SourceConfig(kind="static-carbon", interval=3600),
            ClosingSource(d, name, fail=name in failing_close),
        )
        for name in ("prices", "carbon")
    }


def closes_of(sources: dict[str, ConfiguredSource]) -> dict[str, list[bool]]:
    return {name: s.adapter.closed_while_scheduled for name, s in sources.items()}


def test_a_stopping_daemon_closes_each_market_data_source_it_ran_once_after_its_jobs_stopped(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    d, _ = recording_daemon(monkeypatch, engine, store_url, tmp_path)
    sources = market_sources(d)
    assert d.run(sources, on_ready=d.stopping.set) == 0
    assert closes_of(sources) == {"prices": [False], "carbon": [False]}


def test_a_market_data_source_that_fails_to_close_is_logged_and_the_others_still_close(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    d, _ = recording_daemon(monkeypatch, engine, store_url, tmp_path)
    sources = market_sources(d, failing_close=("prices",))
    with capture_logs() as logs:
        assert d.run(sources, on_ready=d.stopping.set) == 0
    assert closes_of(sources) == {"prices": [False], "carbon": [False]}
    (failed,) = [e for e in logs if e["event"] == "could not close the market-data source"]
    assert failed["log_level"] == "warning" and failed["source"] == "prices"
    assert failed["error"] == "prices: connection pool already torn down"


def test_market_data_sources_are_closed_when_the_store_check_stops_the_daemon(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    """The sources handed to ``run`` are the daemon's from then on: a store it refuses
    (an out-of-date schema) closes them too."""
    d, _ = recording_daemon(monkeypatch, engine, store_url, tmp_path)
    sources = market_sources(d)

    def out_of_date() -> None:
        raise StoreError("the database schema is out of date: run `arbiter db upgrade`")

    monkeypatch.setattr(d, "prepare_store", out_of_date)
    with pytest.raises(StoreError, match="out of date"):
        d.run(sources, on_ready=d.stopping.set)
    assert closes_of(sources) == {"prices": [False], "carbon": [False]}


# -- every shutdown step runs, whichever failed before it -------------------------------


STEP_ERRORS = {
    "tell systemd": "notifier: no such socket",
    "stop the HTTP endpoint": "endpoint: socket already closed",
    "stop the scheduler": "scheduler: executor already shut down",
    "release the lease": "lease: driver error",
}
"""Shutdown step → the error its broken version raises."""


class FailingEndpoint:
    """An HTTP endpoint whose ``stop()`` fails."""

    def stop(self) -> None:
        raise OSError(STEP_ERRORS["stop the HTTP endpoint"])


def break_notifier(monkeypatch: pytest.MonkeyPatch, d: Daemon) -> None:
    def stopping() -> bool:
        raise OSError(STEP_ERRORS["tell systemd"])

    monkeypatch.setattr(d.notifier, "stopping", stopping)


def break_endpoint(monkeypatch: pytest.MonkeyPatch, d: Daemon) -> None:
    d.endpoint = FailingEndpoint()  # type: ignore[assignment]


def break_scheduler(monkeypatch: pytest.MonkeyPatch, d: Daemon) -> None:
    """The scheduler stops its jobs, then its shutdown raises."""
    shutdown = d._scheduler.shutdown

    def failing(wait: bool = True) -> None:
        shutdown(wait=wait)
        raise RuntimeError(STEP_ERRORS["stop the scheduler"])

    monkeypatch.setattr(d._scheduler, "shutdown", failing)


def break_lease(monkeypatch: pytest.MonkeyPatch, d: Daemon) -> None:
    def release(name: str, holder: str) -> None:
        raise RuntimeError(STEP_ERRORS["release the lease"])

    monkeypatch.setattr(d.store.leases, "release", release)


BROKEN_STEPS = {
    "tell systemd": break_notifier,
    "stop the HTTP endpoint": break_endpoint,
    "stop the scheduler": break_scheduler,
    "release the lease": break_lease,
}
"""Shutdown step → how to make it raise, once the daemon has started."""


def started_with_a_broken_step(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, url: str, tmp_path: Path, step: str
) -> tuple[Daemon, RecordingExecutor, dict[str, ConfiguredSource], Callable[[], None]]:
    """A daemon, its executor, its market-data sources, and an ``on_ready`` that
    breaks ``step``."""
    d, executor = recording_daemon(monkeypatch, engine, url, tmp_path)
    sources = market_sources(d)

    def on_ready() -> None:
        BROKEN_STEPS[step](monkeypatch, d)

    return d, executor, sources, on_ready


@pytest.mark.parametrize("step", list(BROKEN_STEPS))
def test_a_failing_shutdown_step_is_logged_and_every_later_step_still_runs(
    step: str, monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    d, executor, sources, broken = started_with_a_broken_step(
        monkeypatch, engine, store_url, tmp_path, step
    )

    def on_ready() -> None:
        broken()
        d.stopping.set()

    with capture_logs() as logs:
        assert d.run(sources, on_ready=on_ready) == 0, "a signal's stop still exits 0"
    (failed,) = [e for e in logs if e["event"] == "shutdown step failed"]
    assert failed["log_level"] == "error" and failed["step"] == step
    assert failed["error"] == STEP_ERRORS[step]
    assert not d._scheduler.running
    assert executor.closed_while_scheduled == [False]
    assert closes_of(sources) == {"prices": [False], "carbon": [False]}
    if step != "release the lease":
        assert Store(engine).leases.get(LEADER_LEASE) is None
    assert [e["event"] for e in logs][-1] == "stopped"


@pytest.mark.parametrize("step", list(BROKEN_STEPS))
def test_a_failing_shutdown_step_does_not_replace_the_error_that_stopped_the_daemon(
    step: str, monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    d, executor, sources, broken = started_with_a_broken_step(
        monkeypatch, engine, store_url, tmp_path, step
    )

    def on_ready() -> None:
        broken()
        raise RuntimeError("readiness callback failed")

    with capture_logs() as logs, pytest.raises(RuntimeError, match="readiness callback failed"):
        d.run(sources, on_ready=on_ready)
    assert [e["step"] for e in logs if e["event"] == "shutdown step failed"] == [step]
    assert executor.closed_while_scheduled == [False]
    assert closes_of(sources) == {"prices": [False], "carbon": [False]}
    if step != "release the lease":
        assert Store(engine).leases.get(LEADER_LEASE) is None


def test_an_interrupt_inside_a_shutdown_step_still_runs_every_later_step_then_stands(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, store_url: str, tmp_path: Path
) -> None:
    """A second Ctrl-C while the endpoint stops: the scheduler, executor, sources and
    lease are still closed and released, then the interrupt propagates."""
    d, executor = recording_daemon(monkeypatch, engine, store_url, tmp_path)
    sources = market_sources(d)

    class InterruptedEndpoint:
        def stop(self) -> None:
            raise KeyboardInterrupt

    def on_ready() -> None:
        d.endpoint = InterruptedEndpoint()  # type: ignore[assignment]
        d.stopping.set()

    with capture_logs() as logs, pytest.raises(KeyboardInterrupt):
        d.run(sources, on_ready=on_ready)
    (interrupted,) = [e for e in logs if e["event"] == "shutdown step interrupted"]
    assert interrupted["step"] == "stop the HTTP endpoint"
    assert not d._scheduler.running
    assert executor.closed_while_scheduled == [False]
    assert closes_of(sources) == {"prices": [False], "carbon": [False]}
    assert Store(engine).leases.get(LEADER_LEASE) is None
    assert [e["event"] for e in logs][-1] == "stopped"


# -- retention ---------------------------------------------------------------------------

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def finished_migration(store: Store, key: str, days: float) -> None:
    """A rolled-back migration of ``chat``, started and finished ``days`` after T0."""
    at = T0 + timedelta(days=days)
    m = Migration(
        id=key,
        workload="chat",
        source=(),
        target=(),
        reason="saves $1.00/h",
        created_at=at,
        updated_at=at,
    )
    store.migrations.create(m)
    store.migrations.advance(m, MigrationState.ROLLED_BACK, at=at, reason="cancelled")


def test_retention_deletes_migrations_finished_longer_ago_than_store_migration_retention(
    engine: Engine, store_url: str
) -> None:
    store = Store(engine)
    finished_migration(store, "m-old", 5)
    finished_migration(store, "m-recent", 15)
    finished_migration(store, "m-last", 20)
    settings = Settings.model_validate(
        {"http": {"enabled": False}, "store": {"migration_retention": "30d"}}
    )
    d = Daemon(
        settings, engine, CATALOG, database_url=store_url, clock=FakeClock(T0 + timedelta(days=40))
    )
    assert d.try_lead()
    with capture_logs() as logs:
        d.prune()
    assert [m.id for m in store.migrations.recent()] == ["m-last", "m-recent"]
    (applied,) = [e for e in logs if e["event"] == "retention applied"]
    assert (applied["migrations"], applied["migration_events"]) == (1, 2)
    assert applied["migrations_cutoff"] == (T0 + timedelta(days=10)).isoformat()


def test_migrations_are_kept_90_days_by_default() -> None:
    assert Settings().store.migration_retention == 90 * 86400


def decision(store: Store, key: str, days: float) -> None:
    """A decision about ``chat``, decided ``days`` after T0."""
    store.decisions.record(
        Decision(
            id=key,
            workload="chat",
            decided_at=T0 + timedelta(days=days),
            snapshot_id=f"snap-{key}",
            unplaceable_reasons=("no offer passes the policy",),
        )
    )


def test_retention_deletes_decisions_older_than_store_decision_retention(
    engine: Engine, store_url: str
) -> None:
    store = Store(engine)
    decision(store, "d-old", 5)
    decision(store, "d-recent", 15)
    decision(store, "d-last", 0)  # the latest recorded, however old
    settings = Settings.model_validate(
        {"http": {"enabled": False}, "store": {"decision_retention": "30d"}}
    )
    d = Daemon(
        settings, engine, CATALOG, database_url=store_url, clock=FakeClock(T0 + timedelta(days=40))
    )
    assert d.try_lead()
    with capture_logs() as logs:
        d.prune()
    assert [x.id for x in store.decisions.recent()] == ["d-last", "d-recent"]
    (applied,) = [e for e in logs if e["event"] == "retention applied"]
    assert applied["decisions"] == 1
    assert applied["decisions_cutoff"] == (T0 + timedelta(days=10)).isoformat()


def test_decisions_are_kept_90_days_by_default() -> None:
    assert Settings().store.decision_retention == 90 * 86400
