"""Options shared by the commands that decide placements from files and a market:
``--snapshot``, ``--policies`` and ``--workloads``, spelled and explained the same way
in every command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def snapshot_option(help: str) -> Callable[[F], F]:
    """``--snapshot FILE`` (an ``arbiter snapshot export`` file) as ``snapshot_path``."""
    return click.option(
        "--snapshot",
        "snapshot_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help=help,
    )


def placement_options(*, snapshot_help: str) -> Callable[[F], F]:
    """``--snapshot`` (see :func:`snapshot_option`), then ``--policies`` as
    ``policy_paths`` and ``--workloads`` as ``workload_paths``, both repeatable and
    defaulting to the config's [policies] paths."""

    def decorate(command: F) -> F:
        command = click.option(
            "--workloads",
            "workload_paths",
            multiple=True,
            help="Workload files or directories (default: the config's [policies] workloads).",
        )(command)
        command = click.option(
            "--policies",
            "policy_paths",
            multiple=True,
            help="Policy files or directories (default: the config's [policies] paths).",
        )(command)
        return snapshot_option(snapshot_help)(command)

    return decorate
