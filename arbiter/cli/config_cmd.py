"""``arbiter config``: show the effective configuration (secrets masked)."""

from __future__ import annotations

import click

from arbiter.cli.output import emit_json


@click.group()
def config() -> None:
    """Inspect the configuration."""


@config.command()
@click.pass_obj
def show(obj: object) -> None:
    """Validate the configuration and print the effective settings as JSON, with where
    each override came from. Passwords in URLs and secret values are masked."""
    from arbiter.config import mask_secrets
    from arbiter.store.db import display_url

    loaded = obj.config  # type: ignore[attr-defined]
    # the effective settings: the embedded default's executor and mode filled in
    data = mask_secrets(obj.settings.model_dump(mode="json"))  # type: ignore[attr-defined]
    data["database"]["url"] = display_url(obj.database_url())  # type: ignore[attr-defined]
    emit_json(
        {
            "file": str(loaded.file) if loaded.file else None,
            "overrides": loaded.origins,
            "settings": data,
        }
    )
