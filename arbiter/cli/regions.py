"""``arbiter regions``: the region catalog (read-only, needs no database)."""

from __future__ import annotations

import click

from arbiter.cli.output import OUTPUT_OPTION, emit_json, emit_table


@click.command()
@click.option(
    "--provider", type=click.Choice(["aws", "gcp", "azure"]), help="Only this provider's regions."
)
@click.option("--jurisdiction", help="Only regions in this country code or group (e.g. EU, DE).")
@OUTPUT_OPTION
@click.pass_obj
def regions(obj: object, provider: str | None, jurisdiction: str | None, output: str) -> None:
    """List every region arbiter knows, with its country, jurisdiction groups, city,
    coordinates and grid zone. A region missing here has an unknown jurisdiction and is
    never eligible under a sovereignty rule."""
    catalog = obj.catalog()  # type: ignore[attr-defined]
    selected = [
        r
        for r in catalog
        if (provider is None or r.provider == provider)
        and (jurisdiction is None or jurisdiction in r.jurisdictions)
    ]
    if output == "json":
        emit_json(
            [
                {
                    "provider": r.provider.value,
                    "region": r.id,
                    "key": r.key,
                    "name": r.name,
                    "country": r.country,
                    "groups": sorted(r.groups),
                    "city": r.city,
                    "latitude": r.latitude,
                    "longitude": r.longitude,
                    "grid_zone": r.grid_zone,
                }
                for r in selected
            ]
        )
        return
    emit_table(
        ["provider", "region", "country", "groups", "city", "lat", "lon", "grid zone"],
        [
            (
                r.provider.value,
                r.id,
                r.country,
                ",".join(sorted(r.groups)),
                r.city,
                f"{r.latitude:.4f}",
                f"{r.longitude:.4f}",
                r.grid_zone,
            )
            for r in selected
        ],
    )
    click.echo(f"{len(selected)} regions", err=True)
