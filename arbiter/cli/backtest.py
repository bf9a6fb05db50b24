"""``arbiter backtest``: replay recorded real market data through the daemon's own
decide and plan, with a simulated executor, and compare with baselines.

Reads only the files it is given (and the recordings shipped with arbiter); writes
nothing but the ``--plots`` directory. See ``docs/backtest.md``.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from arbiter.cli.output import emit_json

STEPS = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}


def _moment(value: str, *, option: str) -> datetime:
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date (2024-01-31) or UTC time (2024-01-31T12:00Z)",
            param_hint=option,
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)


def _table(columns: list[str], rows: list[list[str]], *, title: str) -> None:
    """The figures right-aligned, and strategy names never cut short."""
    import shutil

    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_edge=False, header_style="bold")
    for i, column in enumerate(columns):
        table.add_column(column, no_wrap=True, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    # the table takes only the width it needs; a narrow terminal must not cut it short
    Console(width=max(200, shutil.get_terminal_size().columns)).print(table)


@click.command("backtest")
@click.option("--from", "start", required=True, help="First day (UTC), e.g. 2024-01-10.")
@click.option("--to", "end", required=True, help="End (UTC, exclusive), e.g. 2024-03-28.")
@click.option(
    "--policies",
    "policy_paths",
    multiple=True,
    type=click.Path(exists=True),
    help="Policy files or directories (repeatable). Default: the config's [policies].",
)
@click.option(
    "--workloads",
    "workload_paths",
    multiple=True,
    type=click.Path(exists=True),
    help="Workload files or directories (repeatable). Default: the config's [policies].",
)
@click.option(
    "--data",
    "data_paths",
    multiple=True,
    help="Recorded data: files or directories (repeatable); 'default' is the shipped "
    "recordings, used when --data is not given.",
)
@click.option(
    "--providers",
    default="",
    help="Only offers of these providers, comma-separated (e.g. gcp).",
)
@click.option(
    "--step",
    type=click.Choice(list(STEPS)),
    default="1h",
    show_default=True,
    help="Simulated time between two decide-and-plan passes.",
)
@click.option(
    "--carbon-price",
    type=click.FloatRange(min=0),
    default=None,
    help="USD per tonne CO2e set in every policy's objective; the table then also "
    "shows the arbiter with a carbon price of 0 (arbiter-price-only).",
)
@click.option(
    "--preemptions",
    type=click.Choice(["auto", "advisor", "stress", "none"]),
    default="auto",
    show_default=True,
    help="auto: recorded spot traces for the offers they match, else the Spot Advisor "
    "rate; advisor: the rate only; stress: a recorded GPU trace for every spot offer.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the rate model.")
@click.option(
    "--stale-after",
    type=click.IntRange(min=1),
    default=17,
    show_default=True,
    help="Days a recording's prices stay fresh after its newest observation.",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json for scripts (its shape is in docs/backtest.md).",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write cost.png and carbon.png (per day and cumulative) to this directory.",
)
@click.pass_obj
def backtest(
    obj: Any,
    start: str,
    end: str,
    policy_paths: tuple[str, ...],
    workload_paths: tuple[str, ...],
    data_paths: tuple[str, ...],
    providers: str,
    step: str,
    carbon_price: float | None,
    preemptions: str,
    seed: int,
    stale_after: int,
    output: str,
    plots_dir: Path | None,
) -> None:
    """Replay recorded market data through decide and plan, against baselines.

    Strategies: the arbiter (decide + plan with every guardrail, simulated
    make-before-break migrations), static cheapest on-demand, static cheapest under
    the policies (spot where allowed, never moved), greedy (every change of decide's
    answer, no guardrails) and two hindsight references with free migrations: the
    cheapest placement in USD at every step (a lower bound) and decide's own answer
    at every step. Exit status 0 (1 on error)."""
    from arbiter import backtest as shell
    from arbiter.domain.backtest import default_strategies, run_backtest, with_carbon_price
    from arbiter.domain.evaluation import PolicyBook
    from arbiter.placement_inputs import configured_paths
    from arbiter.policy_loader import load_policies, load_workloads

    t0 = _moment(start, option="--from")
    t1 = _moment(end, option="--to")
    if t1 <= t0:
        raise click.BadParameter("must be after --from", param_hint="--to")
    catalog = obj.catalog()
    pol, wl = configured_paths(obj, policy_paths, workload_paths)
    workloads = load_workloads(wl).workloads
    policies = load_policies(pol, today=t0.date(), workloads=workloads, catalog=catalog)
    book = PolicyBook(policies.policies, rule_origins=policies.rule_origins)
    if carbon_price is not None:
        book = with_carbon_price(book, carbon_price)

    began = time.perf_counter()
    data = shell.read_data(list(data_paths) or [shell.DEFAULT])
    wanted = {p.strip() for p in providers.split(",") if p.strip()}
    unknown = wanted - {"aws", "gcp", "azure"}
    if unknown:
        raise click.BadParameter(
            f"unknown provider(s) {', '.join(sorted(unknown))}; known: aws, azure, gcp",
            param_hint="--providers",
        )
    accelerators = {o.model for w in workloads for o in w.gpu_options}
    zones = sorted({r.grid_zone for r in catalog})
    replay = shell.MarketReplay(
        data,
        shell.shipped_instance_types(),
        catalog,
        shell.static_carbon(zones),
        accelerators=accelerators,
        providers=wanted or None,
        stale_after=timedelta(days=stale_after),
    )
    spot = shell.spot_model(data, preemptions, seed=seed)
    strategies = default_strategies(book, price_only_reference=carbon_price is not None)
    result = run_backtest(
        replay.snapshots(t0, t1, STEPS[step]),
        workloads,
        strategies,
        catalog,
        step=STEPS[step],
        spot=spot,
    )
    settings = {
        "policies": pol,
        "workloads": wl,
        "data": list(data_paths) or [shell.DEFAULT],
        "providers": sorted(wanted) or ["aws", "azure", "gcp"],
        "carbon_price_usd_per_tonne": carbon_price,
        "preemptions": preemptions,
        "seed": seed,
        "stale_after_days": stale_after,
        "run_seconds": round(time.perf_counter() - began, 1),
    }
    written = shell.plot(result, plots_dir) if plots_dir is not None else []
    if output == "json":
        payload = shell.to_json(result, data, settings=settings)
        payload["plots"] = [str(p) for p in written]
        emit_json(payload)
        return
    columns, rows = shell.table_rows(result)
    _table(
        columns,
        rows,
        title=f"Backtest {result.start:%Y-%m-%d %H:%M} → {result.end:%Y-%m-%d %H:%M} UTC, "
        f"step {step}, {len(result.workloads)} workloads, {len(result.times)} steps",
    )
    click.echo(f"spot: {result.spot_model}")
    click.echo(
        "hindsight: the cheapest compliant placement in USD at every step, moved for free "
        "(a lower bound); hindsight-objective: decide's own answer at every step, moved "
        "for free; violations: sovereignty + latency-SLO replica-hours"
    )
    click.echo(
        f"{result.decide_calls} decide calls in {settings['run_seconds']} s; data: "
        + ", ".join(f for f, _ in data.used if "observed at" not in _)
    )
    for path in written:
        click.echo(f"wrote {path}")
