"""The ``arbiter`` command line.

Read-only commands (``regions``, ``db current``, and the status views to come) never
write to the store. Heavy modules are imported inside the commands that need them,
so ``arbiter --help`` and the read-only views start fast.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from arbiter.errors import ArbiterError


class Context:
    """What every command needs, loaded on first use."""

    def __init__(self, config_path: str | None, database_url: str | None):
        self.config_path = config_path
        self.database_url_flag = database_url
        self._loaded: Any = None

    @property
    def config(self) -> Any:
        if self._loaded is None:
            from arbiter.config import load_config

            self._loaded = load_config(self.config_path)
        return self._loaded

    @property
    def settings(self) -> Any:
        """The configured settings, with the embedded default filled in."""
        from arbiter.config import effective_settings

        return effective_settings(self.config.settings)

    def database_url(self) -> str:
        """--database-url, then ARBITER_DATABASE_URL / config file, then the embedded default."""
        if self.database_url_flag:
            return str(self.database_url_flag)
        url = self.settings.database.url
        if url is not None:
            return str(url.get_secret_value())
        from arbiter.store.db import default_database_url

        return default_database_url()

    def open_store(self, *, read_only: bool = True) -> Any:
        """A Store on the configured database, checked to be at the current schema.

        Read-only commands open it read-only (SQLite ``mode=ro``; PostgreSQL
        ``default_transaction_read_only``), so they cannot write even by mistake.
        """
        from arbiter.store.db import check_current, make_engine
        from arbiter.store.repositories import Store

        engine = make_engine(self.database_url(), read_only=read_only)
        check_current(engine)
        return Store(engine)

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
    ctx.obj = Context(config_path, database_url)


def _register() -> None:
    from arbiter.cli import (
        config_cmd,
        db,
        explain,
        fleet,
        market,
        plan,
        policy,
        poll,
        regions,
        run,
        snapshot,
    )

    cli.add_command(run.run)
    cli.add_command(poll.poll)
    cli.add_command(db.db)
    cli.add_command(regions.regions)
    cli.add_command(market.prices)
    cli.add_command(market.capacity)
    cli.add_command(market.carbon)
    cli.add_command(market.sources)
    cli.add_command(snapshot.snapshot)
    cli.add_command(fleet.status)
    cli.add_command(fleet.workloads)
    cli.add_command(fleet.migrations)
    cli.add_command(fleet.decisions)
    cli.add_command(config_cmd.config)
    cli.add_command(policy.policy)
    cli.add_command(explain.explain)
    cli.add_command(plan.plan_cmd)
    cli.add_command(__import__("arbiter.cli.backtest", fromlist=["backtest"]).backtest)


_register()


def main() -> None:
    cli(prog_name="arbiter")
