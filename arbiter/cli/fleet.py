"""Read-only fleet views: ``arbiter status``, ``workloads``, ``migrations``, ``decisions``.

Every command opens the store read-only, so it cannot write even by mistake; the JSON
shapes (``--output json``) are documented in docs/cli.md and kept stable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from arbiter.cli.output import OUTPUT_OPTION, emit_json, emit_table


@click.command()
@OUTPUT_OPTION
@click.pass_obj
def status(obj: Any, output: str) -> None:
    """Fleet summary: workloads and replicas by provider, region and market, $/h now
    against the on-demand baseline, carbon, data freshness per source, migrations in
    flight, leader and mode."""
    obj.skip_garbage_collection()
    from arbiter.status import fleet_status

    # the URL, not an engine: the summary reads on the database driver itself (issue 6)
    summary = fleet_status(
        obj.database_url(),
        mode=obj.settings.daemon.mode.value,
        sources=obj.source_configs(),
        catalog=obj.catalog(),
        now=datetime.now(UTC),
    )
    if output == "json":
        emit_json(summary)
        return
    leader = summary["leader"]
    savings = summary["savings_pct"]
    carbon = summary["carbon_g_per_hour"]
    lines = [
        f"mode      {summary['mode']}",
        f"leader    {leader['holder'] if leader else 'none (no daemon is leading)'}",
        f"fleet     {summary['workloads']} workloads, {summary['replicas']} replicas",
        f"cost      ${summary['usd_per_hour']:.2f}/h   on-demand baseline "
        f"${summary['baseline_on_demand_usd_per_hour']:.2f}/h   saving "
        f"${summary['savings_usd_per_hour']:.2f}/h"
        + (f" ({savings:.1f} %)" if savings is not None else ""),
        f"carbon    {f'{carbon / 1000:.2f} kg/h' if carbon is not None else 'unknown'}",
        "migrations "
        + (", ".join(f"{n} {s}" for s, n in summary["migrations_in_flight"].items()) or "none"),
    ]
    click.echo("\n".join(lines))
    if summary["replicas_by"]:
        emit_table(
            ["provider", "region", "market", "replicas"],
            [
                (r["provider"], r["region"], r["market"], r["replicas"])
                for r in summary["replicas_by"]
            ],
        )
    emit_table(
        ["source", "kind", "health", "last success", "fresh"],
        [
            (
                s["source"],
                s["kind"],
                s["health"],
                f"{s['last_success_age_seconds']}s ago"
                if s["last_success_age_seconds"] is not None
                else "never",
                "no (STALE)" if s["stale"] else "yes",
            )
            for s in summary["sources"]
        ],
    )


@click.command()
@OUTPUT_OPTION
@click.pass_obj
def workloads(obj: Any, output: str) -> None:
    """Workloads known to the store, with where their replicas run."""
    store = obj.open_store()
    placed = store.workloads.all_placements()
    rows = [
        {
            "name": w.name,
            "data_class": w.data_class,
            "labels": w.labels,
            "gpus_per_replica": w.gpus_per_replica,
            "replicas_wanted": w.replicas,
            "required_tokens_per_second": w.required_tokens_per_second,
            "placements": [{"offer": k, "replicas": n} for k, n in placed.get(w.name, [])],
        }
        for w in store.workloads.all()
    ]
    if output == "json":
        emit_json(rows)
        return
    emit_table(
        ["workload", "data class", "wanted", "running on"],
        [
            (
                r["name"],
                r["data_class"],
                r["replicas_wanted"] or f"{r['required_tokens_per_second']:g} tok/s",
                ", ".join(f"{p['offer']} ×{p['replicas']}" for p in r["placements"]) or "-",
            )
            for r in rows
        ],
    )


@click.command()
@click.argument("migration_id", required=False)
@click.option("--limit", type=int, default=50, show_default=True)
@OUTPUT_OPTION
@click.pass_obj
def migrations(obj: Any, migration_id: str | None, limit: int, output: str) -> None:
    """Recent migrations, or the timeline of events of one migration."""
    store = obj.open_store()
    if migration_id:
        m = store.migrations.get(migration_id)
        if m is None:
            raise click.ClickException(f"no migration {migration_id!r}")
        events = store.migrations.events(migration_id)
        payload = {
            **m.model_dump(mode="json"),
            "events": [e.model_dump(mode="json") for e in events],
        }
        if output == "json":
            emit_json(payload)
            return
        click.echo(f"migration {m.id}: {m.workload} — {m.state} — {m.reason}")
        emit_table(
            ["at", "from", "to", "reason"],
            [
                (e.at.isoformat(timespec="seconds"), e.from_state or "", e.to_state, e.reason)
                for e in events
            ],
        )
        return
    recent = store.migrations.recent(limit=limit)
    if output == "json":
        emit_json([m.model_dump(mode="json") for m in recent])
        return
    emit_table(
        ["id", "workload", "state", "urgent", "created", "reason"],
        [
            (
                m.id,
                m.workload,
                m.state,
                "yes" if m.urgent else "",
                m.created_at.isoformat(timespec="seconds"),
                m.reason,
            )
            for m in recent
        ],
    )


@click.command()
@click.option("--workload", help="Only this workload's decisions.")
@click.option("--limit", type=int, default=50, show_default=True)
@OUTPUT_OPTION
@click.pass_obj
def decisions(obj: Any, workload: str | None, limit: int, output: str) -> None:
    """Recent placement decisions, newest first, with the snapshot they were made on."""
    store = obj.open_store()
    recent = store.decisions.recent(workload=workload, limit=limit)
    if output == "json":
        emit_json([d.model_dump(mode="json") for d in recent])
        return
    emit_table(
        ["decided", "workload", "placed on", "$/h", "snapshot", "why not"],
        [
            (
                d.decided_at.isoformat(timespec="seconds"),
                d.workload,
                ", ".join(f"{p.offer.key} ×{p.replicas}" for p in d.placements) or "-",
                f"{d.usd_per_hour:.2f}",
                d.snapshot_id,
                "; ".join(d.unplaceable_reasons)[:80],
            )
            for d in recent
        ],
    )
