"""Read-only market views: ``arbiter prices``, ``capacity``, ``carbon``, ``sources``.

Every row shows its source and its age; data older than its source's ``stale_after``
is marked stale and is never presented as fresh.
"""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from arbiter.cli.output import OUTPUT_OPTION, emit_json, emit_table

DEFAULT_STALE_AFTER = 3600.0


def _age(now: datetime, then: datetime) -> str:
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _stale_limits(obj: Any) -> dict[str, float]:
    return {name: c.stale_after for name, c in obj.source_configs().items()}


def _age_cell(now: datetime, iso: str, stale: bool) -> str:
    return _age(now, datetime.fromisoformat(iso)) + (" STALE" if stale else "")


def _is_stale(limits: dict[str, float], source: str, now: datetime, seen: datetime) -> bool:
    return now - seen > timedelta(seconds=limits.get(source, DEFAULT_STALE_AFTER))


@click.command()
@click.option("--provider", type=click.Choice(["aws", "gcp", "azure"]))
@click.option("--region", "region_glob", help="Region glob, e.g. 'eu-*' or 'azure:*europe'.")
@click.option("--gpu", help="Accelerator model, e.g. H100, A100-80GB, L4 (case-insensitive).")
@click.option("--market", type=click.Choice(["spot", "on-demand"]))
@click.option(
    "--sort",
    type=click.Choice(["gpu-hour", "hour"]),
    default="gpu-hour",
    show_default=True,
    help="Sort by $/GPU-hour or by $/hour.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Rows to show, cheapest first (0 = all); stderr says when rows were left out.",
)
@click.option(
    "--include-stale",
    is_flag=True,
    help="Also list prices older than their source's stale_after (marked stale).",
)
@OUTPUT_OPTION
@click.pass_obj
def prices(
    obj: Any,
    provider: str | None,
    region_glob: str | None,
    gpu: str | None,
    market: str | None,
    sort: str,
    limit: int,
    include_stale: bool,
    output: str,
) -> None:
    """Latest price of every offer, cheapest per GPU-hour first."""
    obj.skip_garbage_collection()
    # Plain rows, not domain values, read on the database driver itself: a read of every
    # offer must start and answer fast (issue 6); see arbiter.store.reads.
    from arbiter.store import reads

    now = datetime.now(UTC)
    limits = _stale_limits(obj)
    with reads.view(obj.database_url(), "reading prices") as r:
        shapes = reads.instance_shapes(r)
        latest = reads.newest_prices(r, provider=provider)
    rows: list[dict[str, Any]] = []
    for p in latest:
        if market and p.market != market:
            continue
        if region_glob and not (
            fnmatch.fnmatch(p.region, region_glob)
            or fnmatch.fnmatch(f"{p.provider}:{p.region}", region_glob)
        ):
            continue
        accel, count = shapes.get((p.provider, p.instance_type), (None, 0))
        if gpu and (accel or "").upper() != gpu.upper():
            continue
        stale = _is_stale(limits, p.source, now, p.last_seen)
        if stale and not include_stale:
            continue
        rows.append(
            {
                "provider": p.provider,
                "region": p.region,
                "zone": p.zone,
                "instance_type": p.instance_type,
                "market": p.market,
                "gpu": accel,
                "gpu_count": count,
                "usd_per_hour": p.usd_per_hour,
                "usd_per_gpu_hour": round(p.usd_per_hour / count, 6) if count else None,
                "source": p.source,
                "since": p.first_seen.isoformat(),
                "last_seen": p.last_seen.isoformat(),
                "age_seconds": int((now - p.last_seen).total_seconds()),
                "stale": stale,
            }
        )
    key = "usd_per_gpu_hour" if sort == "gpu-hour" else "usd_per_hour"
    rows.sort(key=lambda r: (r[key] is None, r[key] or 0, r["provider"], r["region"]))
    shown = rows[:limit] if limit else rows
    # Never drop rows silently: JSON readers get the same note, on stderr, as people.
    left_out = f"showing {len(shown)} of {len(rows)} offers; --limit 0 for all"
    if output == "json":
        emit_json(shown)
        if len(shown) < len(rows):
            click.echo(f"arbiter: warning: {left_out}", err=True)
        return
    emit_table(
        [
            "provider",
            "region",
            "zone",
            "instance type",
            "gpu",
            "market",
            "$/h",
            "$/GPU-h",
            "age",
            "source",
        ],
        [
            (
                r["provider"],
                r["region"],
                r["zone"] or "",
                r["instance_type"],
                f"{r['gpu']}×{r['gpu_count']:g}" if r["gpu"] else "",
                r["market"],
                f"{r['usd_per_hour']:.4f}",
                f"{r['usd_per_gpu_hour']:.4f}" if r["usd_per_gpu_hour"] is not None else "",
                _age(now, datetime.fromisoformat(r["last_seen"]))
                + (" STALE" if r["stale"] else ""),
                r["source"],
            )
            for r in shown
        ],
    )
    click.echo(left_out if len(shown) < len(rows) else f"{len(rows)} offers", err=True)


@click.command()
@click.option("--provider", type=click.Choice(["aws", "gcp", "azure"]))
@click.option("--region", "region_glob", help="Region glob.")
@OUTPUT_OPTION
@click.pass_obj
def capacity(obj: Any, provider: str | None, region_glob: str | None, output: str) -> None:
    """Latest capacity signals: placement scores (1-10), interruption buckets (0 <5% … 4 >20%),
    free GPU quota and availability."""
    store = obj.open_store()
    now = datetime.now(UTC)
    limits = _stale_limits(obj)
    rows = []
    for c in store.capacity.latest():
        s = c.signal
        if provider and s.provider != provider:
            continue
        if region_glob and not fnmatch.fnmatch(s.region, region_glob):
            continue
        rows.append(
            {
                "provider": s.provider.value,
                "region": s.region,
                "zone": s.zone,
                "instance_type": s.instance_type,
                "kind": s.kind.value,
                "value": s.value,
                "source": s.source,
                "last_seen": s.observed_at.isoformat(),
                "age_seconds": int((now - s.observed_at).total_seconds()),
                "stale": _is_stale(limits, s.source, now, s.observed_at),
            }
        )
    if output == "json":
        emit_json(rows)
        return
    emit_table(
        ["provider", "region", "zone", "instance type", "signal", "value", "age", "source"],
        [
            (
                r["provider"],
                r["region"],
                r["zone"] or "",
                r["instance_type"] or "*",
                r["kind"],
                f"{r['value']:g}",
                _age(now, datetime.fromisoformat(r["last_seen"]))
                + (" STALE" if r["stale"] else ""),
                r["source"],
            )
            for r in rows
        ],
    )
    click.echo(f"{len(rows)} signals", err=True)


@click.command()
@click.option("--zone", "zone_glob", help="Grid zone glob, e.g. 'US-*'.")
@OUTPUT_OPTION
@click.pass_obj
def carbon(obj: Any, zone_glob: str | None, output: str) -> None:
    """Latest grid carbon intensity per zone and source, with its unit and basis."""
    store = obj.open_store()
    now = datetime.now(UTC)
    limits = _stale_limits(obj)
    catalog = obj.catalog()
    regions_by_zone: dict[str, list[str]] = {}
    for r in catalog:
        regions_by_zone.setdefault(r.grid_zone, []).append(r.key)
    rows = []
    for reading, fetched in store.carbon.latest():
        if zone_glob and not fnmatch.fnmatch(reading.zone, zone_glob):
            continue
        rows.append(
            {
                "zone": reading.zone,
                "value": reading.value,
                "unit": reading.unit.value,
                "basis": reading.basis.value,
                "valid_at": reading.valid_at.isoformat(),
                "source": reading.source,
                "fetched_at": fetched.isoformat(),
                "age_seconds": int((now - reading.valid_at).total_seconds()),
                "stale": _is_stale(limits, reading.source, now, reading.valid_at),
                "regions": sorted(regions_by_zone.get(reading.zone, [])),
            }
        )
    if output == "json":
        emit_json(rows)
        return
    emit_table(
        ["zone", "value", "unit", "basis", "valid for", "age", "source", "regions"],
        [
            (
                r["zone"],
                f"{r['value']:.0f}",
                r["unit"],
                r["basis"],
                r["valid_at"][:16],
                _age(now, datetime.fromisoformat(r["valid_at"])) + (" STALE" if r["stale"] else ""),
                r["source"],
                len(r["regions"]),
            )
            for r in rows
        ],
    )
    click.echo(f"{len(rows)} readings", err=True)


@click.command()
@OUTPUT_OPTION
@click.pass_obj
def sources(obj: Any, output: str) -> None:
    """Configured market-data sources and their health: ok, degraded (failing
    repeatedly) or never polled."""
    from arbiter.polling import DEGRADED_AFTER

    store = obj.open_store()
    now = datetime.now(UTC)
    status = {s.source: s for s in store.sources.all()}
    rows = []
    for name, config in sorted(obj.source_configs().items()):
        s = status.get(name)
        if s is None or s.last_attempt_at is None:
            health = "never polled"
        elif s.consecutive_failures >= DEGRADED_AFTER:
            health = "degraded"
        elif s.consecutive_failures:
            health = "failing"
        else:
            health = "ok"
        rows.append(
            {
                "source": name,
                "kind": config.kind,
                "enabled": config.enabled,
                "interval_seconds": config.interval,
                "stale_after_seconds": config.stale_after,
                "health": health,
                "last_success_at": s.last_success_at.isoformat()
                if s and s.last_success_at
                else None,
                "consecutive_failures": s.consecutive_failures if s else 0,
                "last_error": s.last_error if s and s.consecutive_failures else None,
            }
        )
    if output == "json":
        emit_json(rows)
        return
    emit_table(
        ["source", "kind", "health", "last success", "failures", "last error"],
        [
            (
                r["source"],
                r["kind"],
                r["health"],
                _age(now, datetime.fromisoformat(r["last_success_at"])) + " ago"
                if r["last_success_at"]
                else "never",
                r["consecutive_failures"],
                (r["last_error"] or "")[:80],
            )
            for r in rows
        ],
    )
