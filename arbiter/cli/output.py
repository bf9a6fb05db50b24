"""Rendering for read-only commands: a table for people, JSON for scripts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from typing import Any

import click

OUTPUT_OPTION = click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json for scripts (a stable shape, documented in docs/cli.md).",
)


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=False, default=str))


def emit_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console(width=max(120, shutil.get_terminal_size().columns)).print(table)
