"""What a policy change does: base and head policies (and workloads) decided on the same
market snapshot, compared workload by workload.

The result lists the rules that changed (field by field), every workload whose
placement moves with the reason from the head's explanation, workloads that become
unplaceable, and the cost and carbon totals before and after. Its exit code is the
contract CI relies on: 0 no placement change, 2 changes, 3 blocking (a workload
becomes unplaceable, loses replicas, or is no longer fully placed). 1 is left to the
shell for "the tool failed".

Pure: both sides are decided by the caller.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath
from typing import Any

from arbiter.domain.decide import Outcome
from arbiter.domain.decisions import Decision
from arbiter.domain.evaluation import WorkloadEvaluator
from arbiter.domain.explain import Explanation, explain
from arbiter.domain.policy import Policy
from arbiter.domain.workloads import Workload

EXIT_NO_CHANGE = 0
EXIT_CHANGES = 2
EXIT_BLOCKING = 3
HOURS_PER_MONTH = 730


class Change(StrEnum):
    ADDED = "+"
    REMOVED = "-"
    CHANGED = "~"


@dataclass(frozen=True)
class FieldChange:
    path: str
    before: Any
    after: Any


@dataclass(frozen=True)
class RuleChange:
    """A policy, one of its rules, or one of its sections, added, removed or changed."""

    change: Change
    subject: str
    """``policy`` or ``policy/rule-id`` or ``policy/section`` or ``workload NAME``."""
    fields: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class Line:
    """Replicas of a workload on one offer."""

    region: str
    market: str
    instance_type: str
    replicas: int


class Kind(StrEnum):
    MOVED = "moved"
    UNPLACEABLE = "unplaceable"
    """Placed (fully) before, not fully placed now."""
    PLACED = "placed"
    """Not fully placed before, fully placed now."""
    ADDED = "added"
    REMOVED = "removed"
    STILL_UNPLACEABLE = "still-unplaceable"


@dataclass(frozen=True)
class WorkloadImpact:
    workload: str
    kind: Kind
    removed: tuple[Line, ...]
    added: tuple[Line, ...]
    usd_before: float
    usd_after: float
    because: tuple[str, ...]
    replicas_before: int
    replicas_after: int
    complete_after: bool

    @property
    def blocking(self) -> bool:
        """Fully placed before and not now, or a new workload that cannot be placed."""
        return self.kind is Kind.UNPLACEABLE or (
            self.kind is Kind.ADDED and not self.complete_after
        )


@dataclass(frozen=True)
class PolicyDiff:
    rule_changes: tuple[RuleChange, ...]
    impacts: tuple[WorkloadImpact, ...]
    workloads: int
    usd_before: float
    usd_after: float
    """Totals over the workloads fully placed on both sides (``common`` of them)."""
    common: int
    carbon_before: float | None
    carbon_after: float | None
    audit: tuple[str, ...]
    """Audit-mode rule failures in the head's placements: reported, not enforced."""

    @property
    def blocking(self) -> tuple[WorkloadImpact, ...]:
        return tuple(i for i in self.impacts if i.blocking)

    @property
    def exit_code(self) -> int:
        if self.blocking:
            return EXIT_BLOCKING
        moved = [i for i in self.impacts if i.kind is not Kind.STILL_UNPLACEABLE]
        return EXIT_CHANGES if moved else EXIT_NO_CHANGE

    @property
    def verdict(self) -> str:
        if self.blocking:
            n = len(self.blocking)
            return f"BLOCKING ({n} workload{'s' if n != 1 else ''} no longer fully placed)"
        if self.exit_code == EXIT_CHANGES:
            return "CHANGES"
        return "NO CHANGE"


# ----------------------------------------------------------------- rule changes


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _fields(before: Any, after: Any) -> tuple[FieldChange, ...]:
    a, b = _flatten(before), _flatten(after)
    return tuple(
        FieldChange(k, a.get(k), b.get(k))
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    )


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", exclude_defaults=True) if model is not None else None


def rule_changes(
    base: Sequence[Policy],
    head: Sequence[Policy],
    base_workloads: Sequence[Workload] = (),
    head_workloads: Sequence[Workload] = (),
) -> tuple[RuleChange, ...]:
    """Policies, rules (by id), sections and workloads that differ, field by field."""
    out: list[RuleChange] = []
    before = {p.metadata.name: p for p in base}
    after = {p.metadata.name: p for p in head}
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            out.append(RuleChange(Change.ADDED if old is None else Change.REMOVED, name))
            continue
        old_rules = {c.id: c for c in old.constraints}
        new_rules = {c.id: c for c in new.constraints}
        for rid in sorted(old_rules.keys() | new_rules.keys()):
            o, n = old_rules.get(rid), new_rules.get(rid)
            if o is None or n is None:
                out.append(
                    RuleChange(Change.ADDED if o is None else Change.REMOVED, f"{name}/{rid}")
                )
            elif o != n:
                out.append(RuleChange(Change.CHANGED, f"{name}/{rid}", _fields(_dump(o), _dump(n))))
        old_rest = {k: v for k, v in _dump(old).items() if k != "constraints"}
        new_rest = {k: v for k, v in _dump(new).items() if k != "constraints"}
        for section in sorted(old_rest.keys() | new_rest.keys()):
            if old_rest.get(section) != new_rest.get(section):
                out.append(
                    RuleChange(
                        Change.CHANGED,
                        f"{name}/{section}",
                        _fields({section: old_rest.get(section)}, {section: new_rest.get(section)}),
                    )
                )
    wb = {w.name: w for w in base_workloads}
    wa = {w.name: w for w in head_workloads}
    for name in sorted(wb.keys() | wa.keys()):
        wo, wn = wb.get(name), wa.get(name)
        if wo is None or wn is None:
            change = Change.ADDED if wo is None else Change.REMOVED
            out.append(RuleChange(change, f"workload {name}"))
        elif wo != wn:
            out.append(
                RuleChange(Change.CHANGED, f"workload {name}", _fields(_dump(wo), _dump(wn)))
            )
    return tuple(out)


# ---------------------------------------------------------------------- impact


def _lines(d: Decision) -> Counter[tuple[str, str, str]]:
    c: Counter[tuple[str, str, str]] = Counter()
    for p in d.placements:
        c[(p.offer.region_key, p.offer.market.value, p.offer.instance_type)] += p.replicas
    return c


def _to_lines(c: Counter[tuple[str, str, str]]) -> tuple[Line, ...]:
    return tuple(Line(r, m, t, n) for (r, m, t), n in sorted(c.items()) if n > 0)


def _cite(origin: str) -> str:
    if not origin:
        return ""
    path, _, line = origin.rpartition(":")
    return f"  {PurePath(path).name}:{line}" if path else f"  {origin}"


def _because(
    removed: Sequence[Line], ex: Explanation, evaluator: WorkloadEvaluator
) -> tuple[str, ...]:
    """Why the head left each removed offer: every rule that now excludes that very
    offer (with its file:line), or, when none does, that it was outranked."""
    states = {
        (s.offer.region_key, s.offer.market.value, s.offer.instance_type): s
        for s in evaluator.snapshot.offers
    }
    out: list[str] = []
    for line in removed:
        what = f"{line.region} {line.instance_type} {line.market}"
        state = states.get((line.region, line.market, line.instance_type))
        if state is None:
            out.append(f"{what}: no longer in the market")
            continue
        excluding = [v for v in evaluator.verdicts(state) if v.excludes]
        if excluding:
            out.extend(f"{what}: {v.rule_id}: {v.reason}{_cite(v.origin)}" for v in excluding)
            continue
        row = ex.row(line.region)
        rank = f" (region ranked {row.rank})" if row is not None and row.rank else ""
        out.append(f"{what}: still eligible{rank}, not chosen")
    return tuple(dict.fromkeys(out))


def _add(total: float | None, value: float | None) -> float | None:
    return None if total is None or value is None else total + value


def _complete(d: Decision) -> bool:
    return d.placed and not d.unplaceable_reasons


def diff(
    base_policies: Sequence[Policy],
    head_policies: Sequence[Policy],
    base_workloads: Sequence[Workload],
    head_workloads: Sequence[Workload],
    base: Outcome,
    head: Outcome,
) -> PolicyDiff:
    """Compare two outcomes decided on the same snapshot."""
    before = {d.workload: d for d in base.decisions}
    after = {d.workload: d for d in head.decisions}
    impacts: list[WorkloadImpact] = []
    usd_b = usd_a = 0.0
    common_count = 0
    carbon_b: float | None = 0.0
    carbon_a: float | None = 0.0
    audit: list[str] = []
    for name in sorted(before.keys() | after.keys()):
        b, a = before.get(name), after.get(name)
        ex = explain(head.evaluator(name), a) if a is not None else None
        if ex is not None and a is not None:
            placed_regions = {p.offer.region_key for p in a.placements}
            for row in ex.rows:
                if row.region in placed_regions:
                    audit.extend(
                        f"{e.rule_id}  {row.region}: {e.reason}  ({name})" for e in row.audit
                    )
        lb = _lines(b) if b else Counter()
        la = _lines(a) if a else Counter()
        common = b is not None and a is not None and _complete(b) and _complete(a)
        if common and b is not None and a is not None:
            common_count += 1
            usd_b += b.usd_per_hour
            usd_a += a.usd_per_hour
            carbon_b = _add(carbon_b, b.carbon_g_per_hour)
            carbon_a = _add(carbon_a, a.carbon_g_per_hour)
        if b is not None and a is not None and lb == la and _complete(b) == _complete(a):
            if not _complete(a):
                impacts.append(
                    WorkloadImpact(
                        name,
                        Kind.STILL_UNPLACEABLE,
                        (),
                        (),
                        b.usd_per_hour,
                        a.usd_per_hour,
                        a.unplaceable_reasons,
                        sum(lb.values()),
                        sum(la.values()),
                        False,
                    )
                )
            continue
        removed = _to_lines(lb - la)
        added = _to_lines(la - lb)
        if b is None:
            kind = Kind.ADDED
        elif a is None:
            kind = Kind.REMOVED
        elif _complete(b) and not _complete(a):
            kind = Kind.UNPLACEABLE
        elif not _complete(b) and _complete(a):
            kind = Kind.PLACED
        else:
            kind = Kind.MOVED
        because: tuple[str, ...] = ()
        if a is not None and ex is not None:
            because = (*_because(removed, ex, head.evaluator(name)), *a.unplaceable_reasons)
        impacts.append(
            WorkloadImpact(
                name,
                kind,
                removed,
                added,
                b.usd_per_hour if b else 0.0,
                a.usd_per_hour if a else 0.0,
                because,
                sum(lb.values()),
                sum(la.values()),
                a is not None and _complete(a),
            )
        )
    return PolicyDiff(
        rule_changes=rule_changes(base_policies, head_policies, base_workloads, head_workloads),
        impacts=tuple(impacts),
        workloads=len(after),
        usd_before=usd_b,
        usd_after=usd_a,
        common=common_count,
        carbon_before=carbon_b,
        carbon_after=carbon_a,
        audit=tuple(audit),
    )
