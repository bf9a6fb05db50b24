"""``arbiter snapshot export``: freeze the market as a JSON file (for policy tests,
PR checks and backtests: they run with no database and no cloud credentials)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.group()
def snapshot() -> None:
    """Market snapshots: the newest prices, capacity and carbon as one value."""


@snapshot.command("export")
@click.option(
    "--output",
    "-o",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (default: standard output).",
)
@click.pass_obj
def export(obj: Any, path: Path | None) -> None:
    """Export the current market snapshot from the store as JSON. Stale data is kept,
    marked stale."""
    from datetime import UTC, datetime

    from arbiter.snapshots import build_snapshot

    store = obj.open_store()
    limits = {name: c.stale_after for name, c in obj.source_configs().items()}
    snap = build_snapshot(store, limits, datetime.now(UTC))
    text = snap.model_dump_json(indent=1)
    if path is None:
        click.echo(text)
    else:
        path.write_text(text + "\n", encoding="utf-8")
        click.echo(
            f"snapshot {snap.id}: {len(snap.offers)} offers, {len(snap.carbon)} carbon zones "
            f"→ {path}",
            err=True,
        )
