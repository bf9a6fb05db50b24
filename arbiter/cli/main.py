"""The ``arbiter`` command line.

Read-only commands (``regions``, ``db current``, ``status`` and the other views) never
write to the store. A command's module is imported only when that command runs
(:class:`LazyCommands`), and heavy modules are imported inside the commands that need
them, so ``arbiter --help`` and the read-only views start fast.
"""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, NoReturn

import click

from arbiter.errors import ArbiterError


class Context:
    """What every command needs, loaded on first use.

    ``executable`` is True when this process is the ``arbiter`` executable running one
    command (:func:`main`), not a program calling the CLI in its own process (a test).
    """

    def __init__(
        self, config_path: str | None, database_url: str | None, *, executable: bool = False
    ):
        self.config_path = config_path
        self.database_url_flag = database_url
        self.executable = executable
        self._loaded: Any = None
        self._settings: Any = None

    def skip_garbage_collection(self) -> None:
        """For a read-only view, which answers and exits: switch Python's cyclic garbage
        collector off for the rest of the process, when the process is ours.

        Starting up allocates a great many objects that live until exit (pydantic,
        the configuration models, the region catalog; SQLAlchemy for the other
        views), and the collector walked them again and again while they were made,
        to free next to nothing: about 50 ms of ``arbiter status`` when it still
        imported SQLAlchemy. Exiting frees everything anyway.
        """
        if self.executable:
            gc.disable()

    @property
    def config(self) -> Any:
        if self._loaded is None:
            from arbiter.config import load_config

            self._loaded = load_config(self.config_path)
        return self._loaded

    @property
    def settings(self) -> Any:
        """The configured settings, with the embedded default filled in."""
        if self._settings is None:
            from arbiter.config import effective_settings

            self._settings = effective_settings(self.config.settings)
        return self._settings

    def database_url(self) -> str:
        """--database-url, then ARBITER_DATABASE_URL / config file, then the embedded default."""
        if self.database_url_flag:
            return str(self.database_url_flag)
        url = self.settings.database.url
        if url is not None:
            return str(url.get_secret_value())
        from arbiter.store.db import default_database_url

        return default_database_url()

    def open_engine(self, *, read_only: bool = True) -> Any:
        """An engine on the configured database, checked to be at the current schema.

        Read-only commands open it read-only (SQLite ``mode=ro``; PostgreSQL
        ``default_transaction_read_only``), so they cannot write even by mistake.
        """
        from arbiter.store.db import check_current, make_engine

        engine = make_engine(self.database_url(), read_only=read_only)
        check_current(engine)
        return engine

    def open_store(self, *, read_only: bool = True) -> Any:
        """A Store on :meth:`open_engine`'s engine."""
        from arbiter.store.repositories import Store

        return Store(self.open_engine(read_only=read_only))

    def source_configs(self) -> Any:
        from arbiter.config import effective_source_configs

        return effective_source_configs(self.settings.sources)

    def catalog(self) -> Any:
        from arbiter.catalog import load_catalog

        cat = self.settings.catalog
        return load_catalog(
            regions_file=cat.regions_file, jurisdictions_files=cat.jurisdictions_files
        )


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"arbiter: error: {message}", err=True)
    sys.exit(code)


class ArbiterGroup(click.Group):
    """Turns ArbiterError into a one-line message and exit code 1, never a traceback.

    Usage errors (a missing option, a bad choice) also exit 1, not click's 2: exit codes
    2 and 3 mean "changes" and "blocking" to ``arbiter policy diff`` in CI.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ArbiterError as exc:
            fail(str(exc))

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            exc.show()
            sys.exit(1)


@click.group(cls=ArbiterGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (TOML). Default: $ARBITER_CONFIG, ~/.config/arbiter/config.toml, "
    "/etc/arbiter/config.toml.",
)
@click.option(
    "--database-url",
    help="SQLAlchemy database URL. Overrides ARBITER_DATABASE_URL and the config file. "
    "Default: a SQLite file in the user's data directory.",
)
@click.version_option(package_name="arbiter")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, database_url: str | None) -> None:
    """arbiter: keep GPU inference on the cheapest compliant capacity across AWS, GCP and
    Azure.

    \b
    Daemon:     arbiter run
    Market:     arbiter poll --once [--source NAME]
    Store:      arbiter db upgrade | downgrade | current
    Read-only:  arbiter status | workloads | migrations | decisions | explain | plan
                arbiter prices | capacity | carbon | sources | regions
    Policies:   arbiter policy validate | test | diff | schema
                arbiter snapshot export
    """
    ctx.obj = Context(config_path, database_url, executable=ctx.obj is _EXECUTABLE)


COMMANDS: dict[str, str] = {
    "run": "arbiter.cli.run:run",
    "poll": "arbiter.cli.poll:poll",
    "db": "arbiter.cli.db:db",
    "regions": "arbiter.cli.regions:regions",
    "prices": "arbiter.cli.market:prices",
    "capacity": "arbiter.cli.market:capacity",
    "carbon": "arbiter.cli.market:carbon",
    "sources": "arbiter.cli.market:sources",
    "snapshot": "arbiter.cli.snapshot:snapshot",
    "status": "arbiter.cli.fleet:status",
    "workloads": "arbiter.cli.fleet:workloads",
    "migrations": "arbiter.cli.fleet:migrations",
    "decisions": "arbiter.cli.fleet:decisions",
    "config": "arbiter.cli.config_cmd:config",
    "policy": "arbiter.cli.policy:policy",
    "explain": "arbiter.cli.explain:explain",
    "plan": "arbiter.cli.plan:plan_cmd",
    "backtest": "arbiter.cli.backtest:backtest",
}
"""Every command: its name, and where it lives (``module:attribute``)."""


class LazyCommands(MutableMapping[str, click.Command]):
    """The group's commands, each imported from its module on first use.

    ``arbiter status`` then imports the fleet views and nothing else (not the policy,
    solver or backtest modules), while ``--help``, completion and ``cli.commands``
    still see every command: listing the names imports nothing, reading a command
    imports its module.
    """

    def __init__(self, where: Mapping[str, str]):
        self._where = dict(where)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        command = self._loaded.get(name)
        if command is None:
            module, _, attribute = self._where[name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            self._loaded[name] = command
        return command

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._where.setdefault(name, "")
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._where[name]
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where


cli.commands = LazyCommands(COMMANDS)


_EXECUTABLE = object()
"""What :func:`main` hands the command line as its context object: this process is the
``arbiter`` executable (see :attr:`Context.executable`)."""


def main() -> None:
    """The ``arbiter`` executable (console script and ``python -m arbiter``)."""
    cli(prog_name="arbiter", obj=_EXECUTABLE)
