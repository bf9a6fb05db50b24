"""``arbiter run``: the daemon, in the foreground."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from arbiter.polling import ConfiguredSource


@click.command()
@click.option(
    "--mode",
    type=click.Choice(["observe", "recommend", "enforce"]),
    help="Override daemon.mode: observe records decisions, recommend plans, enforce acts.",
)
@click.pass_obj
def run(obj: object, mode: str | None) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT (then exit 0).

    With no configuration it uses the embedded default: a SQLite file in your data
    directory (its path is printed), recorded real market data replayed at one
    recorded day per minute, and static grid carbon factors.
    """
    from arbiter import logs
    from arbiter.config import Mode
    from arbiter.daemon import Daemon
    from arbiter.store.db import display_url, make_engine

    settings = obj.settings  # type: ignore[attr-defined]
    if mode:
        settings = settings.model_copy(
            update={"daemon": settings.daemon.model_copy(update={"mode": Mode(mode)})}
        )
    logs.configure(settings.logging.level, settings.logging.format)
    url = obj.database_url()  # type: ignore[attr-defined]
    click.echo(f"arbiter: database {display_url(url)}", err=True)
    catalog = obj.catalog()  # type: ignore[attr-defined]
    from arbiter.config import effective_source_configs
    from arbiter.polling import build_sources

    # The sources are the daemon's to close once its run() has them; until then a start
    # that fails (a source that does not build, a daemon that cannot be made) closes
    # those built so far here, before the error is reported.
    sources: dict[str, ConfiguredSource] = {}
    try:
        for name, config in effective_source_configs(settings.sources).items():
            sources.update(build_sources({name: config}))
        daemon = Daemon(settings, make_engine(url), catalog, database_url=url)
        daemon.install_signal_handlers()
    except BaseException:
        _close_sources(sources)
        raise
    raise SystemExit(daemon.run(sources))


def _close_sources(sources: dict[str, ConfiguredSource]) -> None:
    """Close each source that holds something (replay holds nothing), once; a failing
    close is logged, and neither keeps the others open nor hides the error of the start."""
    from arbiter.logs import get_logger

    for name, configured in sources.items():
        close = getattr(configured.adapter, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception as exc:  # any SDK or transport error: the start's error stands
            get_logger("cli").warning(
                "could not close the market-data source", error=str(exc), source=name
            )
