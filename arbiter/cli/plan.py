"""``arbiter plan``: the migrations the daemon would start now, and why others wait.

Read-only: the same decide-and-plan code as the daemon's reconcile pass, on the store's
newest market (or a snapshot file), against what runs and the migrations in flight —
nothing is recorded, nothing is started. Plan wording follows Terraform: ``+`` place or
scale up, ``~`` move, ``-`` release or scale down, ``!`` evacuate (urgent), ``=`` held,
with ``# because``; ``!!`` marks a hard violation still running past its
``drain_within``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from arbiter.cli.options import snapshot_option
from arbiter.cli.output import OUTPUT_OPTION, emit_json

SYMBOL = {
    "place": "+",
    "scale-up": "+",
    "scale-down": "-",
    "move": "~",
    "release": "-",
    "evacuate": "!",
}


def _placements(ps: Any) -> list[dict[str, Any]]:
    return [{"offer": p.offer.key, "replicas": p.replicas} for p in ps]


def plan_dict(a: Any, *, mode: str, killed: bool) -> dict[str, Any]:
    """The JSON shape of ``arbiter plan --output json`` (docs/cli.md)."""
    return {
        "snapshot": a.snapshot.id,
        "snapshot_taken_at": a.snapshot.taken_at.isoformat(),
        "policy_revision": a.policy.revision,
        "mode": mode,
        "kill_switch": killed,
        "migrations_in_flight": [m.id for m in a.unfinished],
        "moves": [
            {
                "workload": m.workload,
                "kind": m.kind.value,
                "urgent": m.urgent,
                "reason": m.reason,
                "source": _placements(m.source),
                "target": _placements(m.target),
                "saving_usd_per_hour": round(m.saving_usd_per_hour, 6),
                "migration_cost_usd": round(m.migration_cost_usd, 6),
                "wave": list(m.wave),
            }
            for m in a.plan.moves
        ],
        "held": [
            {"workload": h.workload, "gate": h.gate.value, "detail": h.detail} for h in a.plan.holds
        ],
        "overdue": [
            {
                "workload": o.workload,
                "since": o.since.isoformat(),
                "deadline": o.deadline.isoformat(),
                "detail": o.detail,
            }
            for o in a.plan.overdue
        ],
    }


def render_plan(a: Any, *, mode: str, killed: bool) -> str:
    out = [
        f"Plan on snapshot {a.snapshot.id} ({a.snapshot.taken_at:%Y-%m-%d %H:%MZ}) · "
        f"policies {a.policy.revision} · mode {mode}"
        + (" · KILL SWITCH ON: nothing will start" if killed else ""),
        "",
    ]
    for m in a.plan.moves:
        before = {p.offer.key: p.replicas for p in m.source}
        after = {p.offer.key: p.replicas for p in m.target}
        out.append(f"{SYMBOL[m.kind.value]} {m.workload}  {m.kind.value}")
        for key in sorted(before.keys() | after.keys()):
            b, n = before.get(key, 0), after.get(key, 0)
            if n > b:
                out.append(f"    + {key} ×{n - b}")
            elif b > n:
                out.append(f"    - {key} ×{b - n}")
        out.append(f"      # because {m.reason}")
    for h in a.plan.holds:
        out.append(f"= {h.workload}  held by {h.gate.value}")
        out.append(f"      # {h.detail}")
    for o in a.plan.overdue:
        out.append(f"!! {o.workload}  hard violation past on_hard_violation.drain_within")
        out.append(
            f"      # since {o.since:%Y-%m-%d %H:%MZ}, to be drained by "
            f"{o.deadline:%Y-%m-%d %H:%MZ}: {o.detail}"
        )
    counts = {k: sum(1 for m in a.plan.moves if m.kind.value == k) for k in SYMBOL}
    out.append("")
    out.append(
        f"Plan: {counts['place']} to place, {counts['scale-up']} to scale up, "
        f"{counts['scale-down']} to scale down, {counts['move']} to move, "
        f"{counts['evacuate']} to evacuate, {counts['release']} to release; "
        f"{len(a.plan.holds)} held; {len(a.unfinished)} migration(s) in flight"
        + (
            f"; {len(a.plan.overdue)} hard violation(s) past drain_within."
            if a.plan.overdue
            else "."
        )
    )
    if mode == "recommend":
        out.append("Mode recommend: the daemon logs these moves and starts none.")
    elif mode == "observe":
        out.append("Mode observe: the daemon records decisions and plans none of these moves.")
    return "\n".join(out)


@click.command("plan")
@snapshot_option("Decide on this snapshot file instead of the store's newest market.")
@OUTPUT_OPTION
@click.pass_obj
def plan_cmd(obj: Any, snapshot_path: Path | None, output: str) -> None:
    """The migrations the daemon would start now, and why the others are held.

    Read-only: runs the daemon's decide and plan steps on the store (opened read-only)
    against what runs and the migrations in flight, with the policies and workloads
    of the config's [policies] paths. Exit status 0 (1 on error)."""
    from arbiter import logs
    from arbiter.config import effective_source_configs
    from arbiter.policy_testing import load_snapshot_file
    from arbiter.ports import SystemClock
    from arbiter.reconcile import Reconciler

    settings = obj.settings
    logs.configure("warning", settings.logging.format)  # stdout is for the plan
    store = obj.open_store()
    stale = {n: c.stale_after for n, c in effective_source_configs(settings.sources).items()}
    reconciler = Reconciler(store, None, settings, obj.catalog(), SystemClock(), stale_after=stale)
    snapshot = load_snapshot_file(snapshot_path) if snapshot_path else None
    assessment = reconciler.assess(datetime.now(UTC), snapshot=snapshot, strict=True)
    assert assessment is not None  # strict: invalid files raise
    mode = settings.daemon.mode.value
    killed = reconciler.kill_switch()
    if output == "json":
        emit_json(plan_dict(assessment, mode=mode, killed=killed))
    else:
        click.echo(render_plan(assessment, mode=mode, killed=killed))
