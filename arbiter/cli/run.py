"""``arbiter run``: the daemon, in the foreground."""

from __future__ import annotations

import click


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
    from arbiter.polling import build_sources, close_sources

    # A source that does not build: build_sources has closed those built before it.
    sources = build_sources(effective_source_configs(settings.sources))
    # The sources are the daemon's to close once its run() has them; until then a start
    # that fails (a daemon that cannot be made) closes them here, before the error is
    # reported.
    try:
        daemon = Daemon(settings, make_engine(url), catalog, database_url=url)
        daemon.install_signal_handlers()
    except BaseException:
        close_sources(sources)
        raise
    raise SystemExit(daemon.run(sources))
