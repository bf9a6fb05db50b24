"""``arbiter explain WORKLOAD``: why a workload is placed where it is, and why not
anywhere else — every region, every rule that excluded it, and the file:line that
wrote the rule.

Read-only. The market is the store's newest data (opened read-only), decided against
the store's fleet as the daemon decides (the GPUs our replicas hold count back into
their offers' capacity), or a snapshot file with ``--snapshot``, decided without a
fleet; policies and workloads come from the config's [policies] paths unless given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from arbiter.cli.options import placement_options
from arbiter.cli.output import OUTPUT_OPTION, emit_json


def _money(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def solver_summary(solution: Any) -> dict[str, Any]:
    """How the placement was solved: the optimality HiGHS proved and what it cost."""
    return {
        "optimal": solution.optimal,
        "gap": solution.gap,
        "time_limited": solution.time_limited,
        "seconds": round(solution.solve_seconds, 4),
        "columns": solution.columns_after,
    }


def render_explanation(
    ex: Any, *, revision: str, taken_at: Any, solver: dict[str, Any] | None = None
) -> str:
    """The explanation as a table: placed, then eligible by rank, then excluded."""
    d = ex.decision
    placed = sum(p.replicas for p in d.placements)
    carbon = (
        f"{d.carbon_g_per_hour / 1000:,.2f} kgCO2e/h" if d.carbon_g_per_hour is not None else "—"
    )
    head = [
        f"{d.workload} · decision {d.id[:8]} · snapshot {d.snapshot_id} "
        f"({taken_at:%Y-%m-%d %H:%MZ}) · policies {revision} "
        f"({', '.join(ex.policies) or 'none apply'})",
        f"placed {placed} replica{'s' if placed != 1 else ''} · ${d.usd_per_hour:,.2f}/h · "
        f"{carbon}",
    ]
    if solver is not None:
        proof = "optimal" if solver["optimal"] else "NOT proven optimal"
        head.append(
            f"solver: {proof}, gap {solver['gap'] * 100:.2f}%"
            + (" (time limit reached)" if solver["time_limited"] else "")
        )
    head.extend(f"not placed: {r}" for r in d.unplaceable_reasons)
    rows: list[tuple[str, ...]] = []
    for r in ex.rows:
        if r.placed:
            for i, line in enumerate(r.placed):
                rows.append(
                    (
                        r.region if i == 0 else "",
                        f"PLACED ×{line.replicas} {line.market}",
                        _money(line.usd_per_hour),
                        _money(line.effective_usd_per_hour),
                        _money(line.usd_per_million_tokens),
                        line.instance_type,
                    )
                )
        elif r.best is not None:
            rows.append(
                (
                    r.region,
                    f"ranked {r.rank} ({r.best.market})",
                    _money(r.best.usd_per_hour),
                    _money(r.best.effective_usd_per_hour),
                    _money(r.best.usd_per_million_tokens),
                    r.best.instance_type,
                )
            )
        else:
            reasons = [
                f"{e.rule_id}: {e.reason}"
                + (f" ({e.offers} of {r.offers} offers)" if e.offers < r.offers else "")
                + (f"  {Path(e.origin).name}" if e.origin else "")
                for e in r.exclusions
            ] or ["no offer can host one replica"]
            rows.append((r.region, "EXCLUDED", "—", "—", "—", reasons[0]))
            rows.extend(("", "", "", "", "", reason) for reason in reasons[1:])
        for e in r.audit:
            rows.append(("", "", "", "", "", f"! audit {e.rule_id}: {e.reason} (not enforced)"))
        for e in r.exempt:
            rows.append(("", "", "", "", "", f"~ {e.rule_id}: {e.reason}"))
    header = ("region", "result", "$/h", "$/h eff.", "$/Mtok", "offer / reasons")
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(5)]
    out = [*head, ""]
    for row in [header, *rows]:
        out.append(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
            f"{row[3]:>{widths[3]}}  {row[4]:>{widths[4]}}  {row[5]}".rstrip()
        )
    out.append("")
    out.append(
        "$/h is one replica's price; eff. adds the carbon price and spot risk premium; "
        "$/Mtok is eff. per million tokens, what the solver ranks by."
    )
    return "\n".join(out)


@click.command()
@click.argument("workload")
@placement_options(
    snapshot_help="Decide on this snapshot file (`arbiter snapshot export`) instead of the store."
)
@OUTPUT_OPTION
@click.pass_obj
def explain(
    obj: Any,
    workload: str,
    snapshot_path: Path | None,
    policy_paths: tuple[str, ...],
    workload_paths: tuple[str, ...],
    output: str,
) -> None:
    """Why WORKLOAD is placed where it is: every region of the market with its result
    (PLACED, ranked N, EXCLUDED), one replica's price and effective cost ($/h with the
    carbon price and interruption risk) and that cost per million tokens (what the
    solver ranks by), and for each excluded region every rule that excluded it with
    the file:line that wrote it. Audit-mode rules that fail are listed, marked not
    enforced; rules an exception exempts are listed with the exception. All workloads
    are decided together, as the daemon does, since they share capacity and budgets."""
    from arbiter.domain.decide import decide
    from arbiter.domain.explain import explain as explain_workload
    from arbiter.errors import ArbiterError
    from arbiter.placement_inputs import configured_paths, load_inputs
    from arbiter.policy_testing import load_snapshot_file

    policies, workloads = configured_paths(obj, policy_paths, workload_paths)
    snapshot = load_snapshot_file(snapshot_path) if snapshot_path else None
    inputs = load_inputs(obj, policy_paths=policies, workload_paths=workloads, snapshot=snapshot)
    names = [w.name for w in inputs.workloads]
    if workload not in names:
        raise ArbiterError(
            f"unknown workload {workload!r}; known: {', '.join(sorted(names)) or 'none'} "
            f"(from {', '.join(workloads)})"
        )
    held = None
    if snapshot is None:
        # The store's market, against the store's fleet: the GPUs our replicas hold
        # come back to their offers' capacity, as in the daemon's pass.
        from arbiter.migrator import placements_from_store
        from arbiter.reconcile import fleet_gpus_held

        store = obj.open_store()
        running = placements_from_store(store.workloads.all_placements())
        held = fleet_gpus_held(store, inputs.workloads, running, store.migrations.unfinished())
    outcome = decide(
        inputs.workloads,
        inputs.book,
        inputs.snapshot,
        inputs.catalog,
        inputs.snapshot.taken_at,
        policy_revision=inputs.revision,
        held_gpus=held,
    )
    ex = explain_workload(outcome.evaluator(workload), outcome.decision(workload))
    solver = solver_summary(outcome.solution)
    if output == "json":
        emit_json(
            {
                **ex.as_dict(),
                "snapshot_taken_at": inputs.snapshot.taken_at.isoformat(),
                "solver": solver,
            }
        )
    else:
        click.echo(
            render_explanation(
                ex, revision=inputs.revision, taken_at=inputs.snapshot.taken_at, solver=solver
            )
        )
