"""Shared fixtures. ``store_url`` / ``engine`` / ``store`` run a test on both backends:
a fresh SQLite file and a fresh database on a real PostgreSQL server.

Under ``CI=true`` the PostgreSQL tests fail when the server cannot start; elsewhere
they are skipped with the reason shown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store
from tests.support.postgres import PostgresServer, PostgresUnavailable

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_pg_state: dict[str, object] = {"server": None, "error": None, "tests": 0}


def pytest_configure(config: pytest.Config) -> None:
    # Tests must never reach a real cloud, even through a stray credential.
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except (PostgresUnavailable, OSError, Exception) as exc:
        _pg_state["error"] = str(exc)
        server.stop()
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true and did not start: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    _pg_state["server"] = server
    yield server
    server.stop()


def _backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'arbiter.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_database()
    yield url
    server.drop_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database, on each backend."""
    yield from _backend_url(request, tmp_path)


@pytest.fixture
def store_url(empty_store_url: str) -> str:
    """A URL to a database upgraded to the newest schema, on each backend."""
    upgrade(empty_store_url)
    return empty_store_url


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    eng = make_engine(store_url)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and "postgres" in report.keywords:
        _pg_state["tests"] = int(_pg_state["tests"]) + 1  # type: ignore[call-overload]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    server = _pg_state["server"]
    if isinstance(server, PostgresServer):
        terminalreporter.write_line(
            f"PostgreSQL: {_pg_state['tests']} tests passed against a real PostgreSQL "
            f"{server.version} server"
        )
    elif _pg_state["error"]:
        terminalreporter.write_line(f"PostgreSQL: NOT RUN: {_pg_state['error']}")
