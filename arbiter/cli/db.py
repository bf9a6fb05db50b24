"""``arbiter db``: create and move the store's schema (Alembic migrations)."""

from __future__ import annotations

import click


@click.group()
def db() -> None:
    """Create, upgrade or downgrade the store's schema."""


def _where(obj: object) -> str:
    from arbiter.store.db import display_url

    url = obj.database_url()  # type: ignore[attr-defined]
    click.echo(f"database: {display_url(url)}", err=True)
    return str(url)


@db.command()
@click.argument("revision", default="head")
@click.pass_obj
def upgrade(obj: object, revision: str) -> None:
    """Upgrade the schema to REVISION (default: head). Safe to run repeatedly."""
    from arbiter.store import db as store_db

    url = _where(obj)
    store_db.upgrade(url, revision)
    click.echo(f"schema at {_current(url)}")


@db.command()
@click.argument("revision", default="-1")
@click.pass_obj
def downgrade(obj: object, revision: str) -> None:
    """Downgrade the schema to REVISION (default: one step back; 'base' drops everything)."""
    from arbiter.store import db as store_db

    url = _where(obj)
    store_db.downgrade(url, revision)
    click.echo(f"schema at {_current(url) or 'base (empty)'}")


@db.command()
@click.pass_obj
def current(obj: object) -> None:
    """Show the schema revision of the database and the one this arbiter needs."""
    from arbiter.store import db as store_db

    url = _where(obj)
    now = _current(url)
    head = store_db.head_revision()
    state = "up to date" if now == head else "needs `arbiter db upgrade`"
    click.echo(f"current: {now or 'none (empty database)'}\nhead:    {head}\n{state}")


def _current(url: str) -> str | None:
    from arbiter.store import db as store_db

    engine = store_db.make_engine(url)
    try:
        with store_db.translate_errors("reading schema revision"), engine.connect() as conn:
            return store_db.current_revision(conn)
    finally:
        engine.dispose()
