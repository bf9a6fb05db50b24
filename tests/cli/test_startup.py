"""What the command line loads to start: every command is listed, and a command imports
only what it runs on. ``arbiter status`` must answer within half a second of the process
starting (issue 6); bench/cli_latency.py measures that, these tests keep the heavy
imports that would break it from creeping back, without timing anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from arbiter.cli.main import COMMANDS, cli
from arbiter.store.db import make_engine, upgrade

HEAVY = (
    # the solver, policy and backtest side of arbiter
    "highspy",
    "scipy",
    "numpy",
    "arbiter.domain.solver",
    "arbiter.domain.decide",
    "arbiter.policy_loader",
    "arbiter.backtest",
    "arbiter.reconcile",
    "arbiter.daemon",
    # clouds, HTTP, scheduling, logging, rendering, migrations
    "boto3",
    "botocore",
    "httpx",
    "apscheduler",
    "kubernetes",
    "structlog",
    "rich",
    "alembic",
    # the repositories and the domain models behind them: the views read tables
    "arbiter.store.repositories",
    "arbiter.snapshots",
    "arbiter.domain.workloads",
    "arbiter.domain.decisions",
    "arbiter.domain.migrations",
    # SQLAlchemy and the table definitions: the views read on the database driver
    # itself (arbiter.store.reads); importing SQLAlchemy alone took about 0.2 s
    "sqlalchemy",
    "arbiter.store.schema",
    "arbiter.store.changepoints",
)

NOT_ON_SQLITE = ("psycopg",)
"""Not for a SQLite store either: PostgreSQL's driver."""


def loaded_after(*args: str, heavy: tuple[str, ...] = HEAVY + NOT_ON_SQLITE) -> list[str]:
    """The ``heavy`` modules in sys.modules after running ``arbiter ARGS`` in a fresh
    interpreter (the command must succeed)."""
    code = (
        "import json, sys\n"
        "from arbiter.cli.main import cli\n"
        f"cli.main({list(args)!r}, prog_name='arbiter', standalone_mode=False)\n"
        f"heavy = [m for m in {heavy!r} if m in sys.modules]\n"
        "print(json.dumps(heavy), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stderr.strip().splitlines()[-1])
    return loaded


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'arbiter.db'}"
    upgrade(url)
    engine = make_engine(url)  # as `arbiter db upgrade` leaves it: in WAL mode
    with engine.connect():
        pass
    engine.dispose()
    return url


def test_status_loads_none_of_the_heavy_modules(sqlite_url: str) -> None:
    assert loaded_after("--database-url", sqlite_url, "status", "-o", "json") == []


def test_status_as_a_table_loads_only_the_table_renderer(sqlite_url: str) -> None:
    assert loaded_after("--database-url", sqlite_url, "status") == ["rich"]


def test_prices_loads_none_of_the_heavy_modules(sqlite_url: str) -> None:
    assert loaded_after("--database-url", sqlite_url, "prices", "-o", "json") == []


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["status", "prices"])
def test_a_view_on_postgresql_loads_none_of_the_heavy_modules(
    postgres_server: object, command: str
) -> None:
    url = postgres_server.new_database()  # type: ignore[attr-defined]
    try:
        upgrade(url)
        assert loaded_after("--database-url", url, command, "-o", "json", heavy=HEAVY) == []
    finally:
        postgres_server.drop_database(url)  # type: ignore[attr-defined]


def test_a_view_on_a_url_only_sqlalchemy_opens_still_answers(sqlite_url: str) -> None:
    """A SQLite URI (or several PostgreSQL hosts) is opened through SQLAlchemy."""
    uri = sqlite_url.replace("sqlite:///", "sqlite:///file:") + "?mode=ro&uri=true"
    assert loaded_after("--database-url", uri, "status", "-o", "json") == ["sqlalchemy"]


def test_listing_the_commands_imports_none_of_their_modules() -> None:
    code = (
        "import sys\n"
        "from arbiter.cli.main import cli\n"
        "names = sorted(cli.commands)\n"
        "print(len(names), sorted(m for m in sys.modules if m.startswith('arbiter.cli.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split(" ", 1) == [str(len(COMMANDS)), "['arbiter.cli.main']\n"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_listed_name_is_the_command_of_that_name(name: str) -> None:
    command = cli.commands[name]
    assert isinstance(command, click.Command)
    assert command.name == name


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "arbiter", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listed = out.stdout.split("Commands:", 1)[1].split()
    for name in COMMANDS:
        assert name in listed


@pytest.mark.parametrize("command", [["status", "-o", "json"], ["prices", "-o", "json"]])
def test_a_view_run_by_the_executable_skips_garbage_collection(
    sqlite_url: str, command: list[str]
) -> None:
    code = (
        "import gc, sys\n"
        f"sys.argv = ['arbiter', '--database-url', {sqlite_url!r}, *{command!r}]\n"
        "from arbiter.cli.main import main\n"
        "main()\n"
        "print(gc.isenabled(), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "False"


def test_a_view_run_in_another_program_leaves_garbage_collection_alone(sqlite_url: str) -> None:
    import gc

    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["--database-url", sqlite_url, "status", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert gc.isenabled()
