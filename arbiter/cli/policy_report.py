"""Rendering ``arbiter policy diff``: plan-style text for terminals, Markdown for a
pull-request comment, JSON for scripts. The wording follows plan output everywhere:
``+`` placed, ``-`` released, ``~`` moved, ``✗`` unplaceable, ``# because …``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arbiter.domain.policy_diff import (
    HOURS_PER_MONTH,
    Kind,
    Line,
    PolicyDiff,
    RuleChange,
    WorkloadImpact,
)


@dataclass(frozen=True)
class Header:
    base: str
    head: str
    snapshot_id: str
    taken_at: Any
    offers: int
    stale_offers: int
    carbon_zones: int
    stale_carbon: int


def _money(v: float) -> str:
    return f"${v:,.2f}/h"


def _signed(v: float) -> str:
    return f"{'+' if v >= 0 else '-'}${abs(v):,.2f}/h"


def _pct(before: float, after: float) -> str:
    if before <= 0:
        return "n/a"
    return f"{(after - before) / before * 100:+.1f}%"


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "—" if value is None else str(value)


def _rule_lines(change: RuleChange) -> list[str]:
    if not change.fields:
        what = "added" if change.change.value == "+" else "removed"
        return [f"  {change.change.value} {change.subject}   ({what})"]
    first, *rest = change.fields
    lines = [
        f"  {change.change.value} {change.subject}   {first.path}: "
        f"{_show(first.before)} → {_show(first.after)}"
    ]
    pad = " " * (5 + len(change.subject))
    lines.extend(f"{pad}{f.path}: {_show(f.before)} → {_show(f.after)}" for f in rest)
    return lines


def _offer(sign: str, line: Line) -> str:
    return (
        f"    {sign} {line.region:<28} {line.market:<9}  {line.instance_type:<28} ×{line.replicas}"
    )


SYMBOL = {
    Kind.MOVED: "~",
    Kind.UNPLACEABLE: "✗",
    Kind.PLACED: "+",
    Kind.ADDED: "+",
    Kind.REMOVED: "-",
    Kind.STILL_UNPLACEABLE: "✗",
}


def _impact_lines(i: WorkloadImpact) -> list[str]:
    title = {
        Kind.MOVED: f"{_money(i.usd_before)} → {_money(i.usd_after)}",
        Kind.UNPLACEABLE: "becomes UNPLACEABLE"
        + (f" ({i.replicas_after} of its replicas placed)" if i.replicas_after else ""),
        Kind.PLACED: f"now placed, {_money(i.usd_after)}",
        Kind.ADDED: "new workload"
        + (f", {_money(i.usd_after)}" if i.complete_after else ", UNPLACEABLE"),
        Kind.REMOVED: "workload removed",
        Kind.STILL_UNPLACEABLE: "still unplaceable",
    }[i.kind]
    lines = [f"{SYMBOL[i.kind]} {i.workload}  {title}"]
    lines.extend(_offer("-", line) for line in i.removed)
    lines.extend(_offer("+", line) for line in i.added)
    lines.extend(
        f"      # {'because' if n == 0 else '       '} {why}" for n, why in enumerate(i.because)
    )
    return lines


def render_text(d: PolicyDiff, h: Header) -> str:
    out = [
        f"Comparing {h.base} → {h.head} on snapshot {h.snapshot_id} ({h.taken_at:%Y-%m-%d %H:%MZ})",
        f"  inputs: {h.offers} offers ({h.stale_offers} stale) · "
        f"{h.carbon_zones} carbon zones ({h.stale_carbon} stale)",
        "",
    ]
    if d.rule_changes:
        out.append("Changed rules")
        for change in d.rule_changes:
            out.extend(_rule_lines(change))
        out.append("")
    else:
        out.extend(["No policy or workload changes.", ""])
    moved = [i for i in d.impacts if i.kind is not Kind.STILL_UNPLACEABLE]
    unplaceable = [i for i in d.impacts if i.blocking]
    out.append(
        f"Impact: {len(moved)} of {d.workloads} workloads change"
        + (
            f" · {len(unplaceable)} {'becomes' if len(unplaceable) == 1 else 'become'} UNPLACEABLE"
            if unplaceable
            else ""
        )
    )
    delta = d.usd_after - d.usd_before
    if not d.common:
        out.append("  Cost    — (no workload is fully placed on both sides)")
    else:
        out.append(
            f"  Cost    {_money(d.usd_before)} → {_money(d.usd_after)}   "
            f"({_signed(delta)}, {_pct(d.usd_before, d.usd_after)}, "
            f"≈ {'+' if delta >= 0 else '-'}${abs(delta) * HOURS_PER_MONTH:,.0f}/mo)*"
        )
    if d.common and d.carbon_before is not None and d.carbon_after is not None:
        out.append(
            f"  Carbon  {d.carbon_before / 1000:,.2f} → {d.carbon_after / 1000:,.2f} kgCO2e/h   "
            f"({_pct(d.carbon_before, d.carbon_after)})"
        )
    elif d.common:
        out.append("  Carbon  unknown (some placed regions have no carbon data)")
    out.append("")
    for i in d.impacts:
        out.extend(_impact_lines(i))
        out.append("")
    if d.audit:
        out.append("Audit-only (not enforced)")
        out.extend(f"  ! {a}" for a in d.audit)
        out.append("")
    out.append("* totals over workloads fully placed on both sides")
    out.append(f"Result: {d.verdict}   exit {d.exit_code}")
    return "\n".join(out)


def render_markdown(d: PolicyDiff, h: Header) -> str:
    """One PR comment: a summary table, then the plan in a diff block per workload."""
    delta = d.usd_after - d.usd_before
    icon = {0: "✅", 2: "🔁", 3: "⛔"}[d.exit_code]
    out = [
        f"### {icon} arbiter policy diff: {d.verdict}",
        "",
        f"`{h.base}` → `{h.head}` on snapshot `{h.snapshot_id}` "
        f"({h.taken_at:%Y-%m-%d %H:%MZ}; {h.offers} offers, {h.stale_offers} stale)",
        "",
    ]
    if not d.common:
        out.append("No workload is fully placed on both sides: no cost comparison.")
    else:
        out.extend(
            [
                "| | before | after | change |",
                "|---|---:|---:|---:|",
                f"| Cost* | {_money(d.usd_before)} | {_money(d.usd_after)} | {_signed(delta)} "
                f"({_pct(d.usd_before, d.usd_after)}) |",
            ]
        )
    if d.common and d.carbon_before is not None and d.carbon_after is not None:
        out.append(
            f"| Carbon | {d.carbon_before / 1000:,.2f} kg/h | {d.carbon_after / 1000:,.2f} kg/h "
            f"| {_pct(d.carbon_before, d.carbon_after)} |"
        )
    out.append("")
    if d.rule_changes:
        out.extend(["**Changed rules**", "", "```diff"])
        for change in d.rule_changes:
            for line in _rule_lines(change):
                out.append(
                    line.replace("  ~", "!", 1).replace("  +", "+", 1).replace("  -", "-", 1)
                )
        out.extend(["```", ""])
    if d.impacts:
        out.extend(["**Placements**", "", "```diff"])
        for i in d.impacts:
            lines = _impact_lines(i)
            out.append(("- " if i.blocking else "! ") + lines[0])
            out.extend(lines[1:])
        out.extend(["```", ""])
    if d.audit:
        out.append("**Audit-only (not enforced)**")
        out.append("")
        out.extend(f"- {a}" for a in d.audit)
        out.append("")
    out.append("<sub>* totals over workloads fully placed on both sides</sub>")
    return "\n".join(out)


def as_dict(d: PolicyDiff, h: Header) -> dict[str, Any]:
    """The JSON shape of ``arbiter policy diff --format json`` (docs/cli.md)."""

    def line(x: Line) -> dict[str, Any]:
        return {
            "region": x.region,
            "market": x.market,
            "instance_type": x.instance_type,
            "replicas": x.replicas,
        }

    return {
        "base": h.base,
        "head": h.head,
        "snapshot": h.snapshot_id,
        "snapshot_taken_at": h.taken_at.isoformat(),
        "result": d.verdict,
        "exit_code": d.exit_code,
        "usd_per_hour": {"before": round(d.usd_before, 6), "after": round(d.usd_after, 6)},
        "carbon_g_per_hour": {"before": d.carbon_before, "after": d.carbon_after},
        "rule_changes": [
            {
                "change": c.change.value,
                "subject": c.subject,
                "fields": [
                    {"path": f.path, "before": f.before, "after": f.after} for f in c.fields
                ],
            }
            for c in d.rule_changes
        ],
        "workloads": [
            {
                "workload": i.workload,
                "kind": i.kind.value,
                "blocking": i.blocking,
                "removed": [line(x) for x in i.removed],
                "added": [line(x) for x in i.added],
                "usd_per_hour": {"before": i.usd_before, "after": i.usd_after},
                "replicas": {"before": i.replicas_before, "after": i.replicas_after},
                "because": list(i.because),
            }
            for i in d.impacts
        ],
        "audit": list(d.audit),
    }
