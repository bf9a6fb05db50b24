"""``arbiter poll --once``: run market-data sources once into the store."""

from __future__ import annotations

import click


@click.command()
@click.option("--once", is_flag=True, required=True, help="Poll once and exit (required).")
@click.option("--source", "only", multiple=True, help="Only this source (repeatable).")
@click.pass_obj
def poll(obj: object, once: bool, only: tuple[str, ...]) -> None:
    """Run each configured source once into the store, then exit.

    For cron-style use, debugging and first runs. Exit code 1 if any source failed
    (what was stored before is kept).
    """
    from arbiter import logs
    from arbiter.polling import Poller, build_sources, close_sources
    from arbiter.ports import SystemClock
    from arbiter.store.db import display_url, make_engine, upgrade
    from arbiter.store.repositories import Store

    settings = obj.settings  # type: ignore[attr-defined]
    logs.configure(settings.logging.level, settings.logging.format)
    url = obj.database_url()  # type: ignore[attr-defined]
    click.echo(f"database: {display_url(url)}", err=True)
    configs = obj.source_configs()  # type: ignore[attr-defined]
    unknown = [name for name in only if name not in configs]
    if unknown:
        raise click.UsageError(
            f"unknown source {unknown[0]!r}; configured: {', '.join(sorted(configs))}"
        )
    selected = {n: c for n, c in configs.items() if not only or n in only}
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        upgrade(url)
    store = Store(engine)
    from arbiter.store.db import check_current

    check_current(engine)
    # A source that does not build: build_sources has closed those built before it.
    sources = build_sources(selected)
    failed = 0
    try:
        poller = Poller(store, sources, obj.catalog(), SystemClock())  # type: ignore[attr-defined]
        for name in poller.sources:
            result = poller.poll(name)
            if result.ok:
                click.echo(
                    f"{name}: ok in {result.seconds:.2f}s — prices {result.prices.inserted} "
                    f"new, {result.prices.extended} unchanged; capacity "
                    f"{result.capacity.inserted} new, {result.capacity.extended} unchanged; "
                    f"carbon {result.carbon}; instance types {result.instance_types}"
                )
            else:
                failed += 1
                click.echo(f"{name}: FAILED — {result.error}")
    finally:
        close_sources(sources)
    engine.dispose()
    raise SystemExit(1 if failed else 0)
