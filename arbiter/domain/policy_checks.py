"""Pass 3 of policy validation: what no single document can tell.

Given every policy and workload that validated on its own (pass 2,
:mod:`arbiter.domain.policy_files`), these checks look across files and against the
region catalog:

* rule ids and policy names are unique across all policies; workload names across all
  workloads (the error names both files);
* an exception whose ``expires`` date is before ``today`` is an error (one within
  :data:`EXPIRY_WARNING_DAYS` days is a warning);
* jurisdictions are ISO 3166-1 alpha-2 codes or known groups; accelerator names are
  canonical (:data:`arbiter.domain.accelerators.CANONICAL`);
* ``exclude_regions`` and measured latencies name catalog regions (warning);
* latency ``from`` names a user location of each workload the policy selects (warning);
* at most one policy sets ``objective`` — and one ``migration`` — for any workload (the
  error names both files). With workloads loaded this is exact; without, two policies
  conflict when one's selector selects everything the other's does (identical or empty
  selectors included).

``today`` is an argument: nothing here reads the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Any

from arbiter.domain.accelerators import CANONICAL, canonical_accelerator
from arbiter.domain.policy import Policy, Selector
from arbiter.domain.policy_files import (
    Document,
    Path,
    PolicyFinding,
    Severity,
    SourceLocation,
    did_you_mean,
    field_path,
)
from arbiter.domain.workloads import Workload

EXPIRY_WARNING_DAYS = 14
"""An exception expiring within this many days is reported as a warning."""

SINGLE_OWNER_SECTIONS = ("objective", "migration")
"""Sections that exactly one policy may set for a given workload."""


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    document: Document


@dataclass(frozen=True)
class LoadedWorkload:
    workload: Workload
    document: Document | None = None
    """None for a workload given as a value rather than read from a file."""


@dataclass(frozen=True)
class References:
    """What names in policies may refer to: from the region catalog and ISO 3166."""

    countries: frozenset[str] = field(repr=False)
    groups: frozenset[str] = field(repr=False)
    regions: frozenset[str] = field(repr=False)
    """``provider:region`` keys of every catalog region."""


# ------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Origins:
    """Where each loaded policy (or workload) and each rule is written.

    ``documents`` maps a policy's (or workload's) name to where its document starts;
    ``rules`` maps a rule id to where its constraint starts (the ``- id:`` line).
    :meth:`locate` finds any field, e.g. ``locate("p95-latency", "latency",
    "p95_ms_max")`` for the line an explanation should cite.
    """

    documents: MappingProxyType[str, SourceLocation]
    rules: MappingProxyType[str, SourceLocation]
    _rule_paths: MappingProxyType[str, tuple[Document, Path]] = field(repr=False)

    @classmethod
    def of(
        cls, named: Iterable[tuple[str, Document]], policies: Iterable[LoadedPolicy] = ()
    ) -> Origins:
        documents = {name: doc.start for name, doc in named}
        paths: dict[str, tuple[Document, Path]] = {}
        for loaded in policies:
            for i, constraint in enumerate(loaded.policy.constraints):
                paths.setdefault(constraint.id, (loaded.document, ("constraints", i)))
        rules = {rid: doc.positions.value(path) for rid, (doc, path) in paths.items()}
        return cls(MappingProxyType(documents), MappingProxyType(rules), MappingProxyType(paths))

    def locate(self, rule_id: str, *path: str | int) -> SourceLocation:
        """Where a field of a rule's constraint is written (its nearest written ancestor)."""
        doc, base = self._rule_paths[rule_id]
        return doc.positions.value((*base, *path))


@dataclass(frozen=True)
class PolicySet:
    """Validated policies and where each came from."""

    policies: tuple[Policy, ...]
    origins: Origins
    warnings: tuple[PolicyFinding, ...] = ()

    def __iter__(self) -> Any:
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    @property
    def rule_origins(self) -> dict[str, str]:
        """``rule id -> file:line``, as :class:`arbiter.domain.evaluation.PolicyBook` takes."""
        return {rid: str(loc) for rid, loc in self.origins.rules.items()}

    @property
    def policy_origins(self) -> dict[str, str]:
        """``policy name -> file``."""
        return {name: loc.source for name, loc in self.origins.documents.items()}


@dataclass(frozen=True)
class WorkloadSet:
    """Validated workloads and where each came from."""

    workloads: tuple[Workload, ...]
    origins: Origins
    warnings: tuple[PolicyFinding, ...] = ()

    def __iter__(self) -> Any:
        return iter(self.workloads)

    def __len__(self) -> int:
        return len(self.workloads)


# ------------------------------------------------------------------------- checks


class _Findings:
    def __init__(self) -> None:
        self.items: list[PolicyFinding] = []

    def add(
        self,
        doc: Document,
        path: Path,
        message: str,
        *,
        severity: Severity = Severity.ERROR,
        rule_id: str | None = None,
        hint: str | None = None,
        at_key: bool = False,
    ) -> None:
        where = doc.positions.key(path) if at_key else doc.positions.value(path)
        self.items.append(
            PolicyFinding(
                message,
                source=doc.source,
                line=where.line,
                column=where.column,
                field=field_path(path) or None,
                severity=severity,
                rule_id=rule_id,
                hint=hint,
            )
        )


def _hint(close: str | None) -> str | None:
    return f"did you mean {close!r}?" if close else None


def check_policies(
    policies: Sequence[LoadedPolicy],
    workloads: Sequence[LoadedWorkload] | None,
    *,
    today: date,
    references: References,
) -> list[PolicyFinding]:
    """Pass 3 over policies that each validated on their own, in load order.

    ``workloads`` are those the policies govern, or None when they are not known (then
    checks that need them compare selectors or are skipped).
    """
    out = _Findings()
    _unique_names(out, [(p.policy.metadata.name, p.document) for p in policies], "policy")
    _unique_rule_ids(out, policies)
    for loaded in policies:
        _check_constraints(out, loaded, workloads or (), references)
        _check_exceptions(out, loaded, workloads, today)
    for section in SINGLE_OWNER_SECTIONS:
        if workloads is not None:
            _single_owner_for_workloads(out, policies, workloads, section)
        else:
            _single_owner_by_selector(out, policies, section)
    return out.items


def check_workloads(workloads: Sequence[LoadedWorkload]) -> list[PolicyFinding]:
    """Pass 3 over workloads that each validated on their own, in load order."""
    out = _Findings()
    named = [(w.workload.name, w.document) for w in workloads if w.document is not None]
    _unique_names(out, named, "workload")
    for loaded in workloads:
        if loaded.document is None:
            continue
        for i, option in enumerate(loaded.workload.gpu_options):
            _check_accelerator(
                out, loaded.document, ("spec", "gpu_options", i, "model"), option.model, None
            )
    return out.items


def _unique_names(out: _Findings, named: Sequence[tuple[str, Document]], what: str) -> None:
    first: dict[str, Document] = {}
    for name, doc in named:
        if name in first:
            out.add(
                doc,
                ("metadata", "name"),
                f"{what} name {name!r} is already used in "
                f"{first[name].positions.value(('metadata', 'name'))}",
                hint=f"{what} names are unique across all files",
            )
        else:
            first[name] = doc


def _unique_rule_ids(out: _Findings, policies: Sequence[LoadedPolicy]) -> None:
    first: dict[str, tuple[LoadedPolicy, int]] = {}
    for loaded in policies:
        for i, constraint in enumerate(loaded.policy.constraints):
            earlier = first.get(constraint.id)
            if earlier is None:
                first[constraint.id] = (loaded, i)
                continue
            other, j = earlier
            where = other.document.positions.value(("constraints", j, "id"))
            out.add(
                loaded.document,
                ("constraints", i, "id"),
                f"rule id {constraint.id!r} is also defined by policy "
                f"{other.policy.metadata.name!r} at {where}",
                rule_id=constraint.id,
                hint="rule ids are unique across all policies; rename one",
            )


def _check_accelerator(
    out: _Findings, doc: Document, path: Path, name: str, rule_id: str | None
) -> None:
    if name in CANONICAL:
        return
    canonical = canonical_accelerator(name)
    if canonical is not None:
        hint = f"did you mean {canonical!r}? (the canonical name of {name!r})"
    else:
        close = did_you_mean(name, CANONICAL)
        hint = _hint(close) or "see arbiter/domain/accelerators.py for the canonical names"
    out.add(doc, path, f"unknown accelerator {name!r}", rule_id=rule_id, hint=hint)


def _selected(loaded: LoadedPolicy, workloads: Sequence[LoadedWorkload]) -> list[Workload]:
    select = loaded.policy.select
    return [
        w.workload
        for w in workloads
        if select.matches(w.workload.name, w.workload.labels, w.workload.data_class)
    ]


def _check_constraints(
    out: _Findings,
    loaded: LoadedPolicy,
    workloads: Sequence[LoadedWorkload],
    refs: References,
) -> None:
    doc = loaded.document
    selected = _selected(loaded, workloads)
    for i, c in enumerate(loaded.policy.constraints):
        base: Path = ("constraints", i)
        if c.sovereignty is not None:
            known = refs.groups | refs.countries
            for j, name in enumerate(c.sovereignty.jurisdictions):
                if name not in known:
                    close = did_you_mean(name, sorted(refs.groups) + sorted(refs.countries))
                    out.add(
                        doc,
                        (*base, "sovereignty", "jurisdictions", j),
                        f"unknown jurisdiction {name!r}",
                        rule_id=c.id,
                        hint=_hint(close)
                        or f"use an ISO 3166-1 alpha-2 country code or a group: "
                        f"{', '.join(sorted(refs.groups))}",
                    )
            for j, region in enumerate(c.sovereignty.exclude_regions):
                _check_region(
                    out, doc, (*base, "sovereignty", "exclude_regions", j), region, c.id, refs
                )
        if c.accelerator is not None:
            for j, name in enumerate(c.accelerator.any_of):
                _check_accelerator(out, doc, (*base, "accelerator", "any_of", j), name, c.id)
        if c.latency is not None:
            for region in c.latency.measured_ms:
                _check_region(
                    out,
                    doc,
                    (*base, "latency", "measured_ms", region),
                    region,
                    c.id,
                    refs,
                    at_key=True,
                )
            for j, location in enumerate(c.latency.from_locations):
                for w in selected:
                    names = [u.name for u in w.user_locations]
                    if location in names:
                        continue
                    has = f"it has: {', '.join(names)}" if names else "it has none"
                    out.add(
                        doc,
                        (*base, "latency", "from", j),
                        f"workload {w.name!r} has no user location {location!r} ({has})",
                        severity=Severity.WARNING,
                        rule_id=c.id,
                        hint=_hint(did_you_mean(location, names)),
                    )


def _check_region(
    out: _Findings,
    doc: Document,
    path: Path,
    region: str,
    rule_id: str,
    refs: References,
    *,
    at_key: bool = False,
) -> None:
    if region in refs.regions:
        return
    # Suggest only a region of the same provider: every key shares "aws:", "gcp:"...
    provider, _, name = region.partition(":")
    same = sorted(k.partition(":")[2] for k in refs.regions if k.startswith(f"{provider}:"))
    close = did_you_mean(name, same, cutoff=0.75)
    out.add(
        doc,
        path,
        f"region {region!r} is not in the region catalog",
        severity=Severity.WARNING,
        rule_id=rule_id,
        hint=_hint(f"{provider}:{close}" if close else None) or "see `arbiter regions`",
        at_key=at_key,
    )


def _check_exceptions(
    out: _Findings, loaded: LoadedPolicy, workloads: Sequence[LoadedWorkload] | None, today: date
) -> None:
    doc = loaded.document
    known = {w.workload.name for w in workloads or ()}
    selected = {w.name for w in _selected(loaded, workloads or ())}
    for i, exc in enumerate(loaded.policy.exceptions):
        path: Path = ("exceptions", i, "expires")
        days = (exc.expires - today).days
        if days < 0:
            out.add(
                doc,
                path,
                f"exception to rule {exc.rule!r} expired on {exc.expires.isoformat()}",
                rule_id=exc.rule,
                hint="remove it, or renew it with a new expiry date in review",
            )
        elif days <= EXPIRY_WARNING_DAYS:
            when = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
            out.add(
                doc,
                path,
                f"exception to rule {exc.rule!r} expires {when} ({exc.expires.isoformat()})",
                severity=Severity.WARNING,
                rule_id=exc.rule,
            )
        if workloads is None:
            continue
        for j, name in enumerate(exc.workloads):
            where: Path = ("exceptions", i, "workloads", j)
            if name not in known:
                out.add(
                    doc,
                    where,
                    f"exception names workload {name!r}, which is not among the loaded workloads",
                    severity=Severity.WARNING,
                    rule_id=exc.rule,
                    hint=_hint(did_you_mean(name, sorted(known))),
                )
            elif name not in selected:
                out.add(
                    doc,
                    where,
                    f"exception names workload {name!r}, which this policy does not select",
                    severity=Severity.WARNING,
                    rule_id=exc.rule,
                )


def _section_at(loaded: LoadedPolicy, section: str) -> SourceLocation:
    return loaded.document.positions.key((section,))


def _conflict(
    out: _Findings, first: LoadedPolicy, second: LoadedPolicy, section: str, why: str
) -> None:
    out.add(
        second.document,
        (section,),
        f"policies {first.policy.metadata.name!r} ({_section_at(first, section)}) and "
        f"{second.policy.metadata.name!r} both define {section!r} for {why}",
        hint=f"a workload may have one {section}; narrow a selector or remove one {section!r}",
        at_key=True,
    )


def _single_owner_for_workloads(
    out: _Findings,
    policies: Sequence[LoadedPolicy],
    workloads: Sequence[LoadedWorkload],
    section: str,
) -> None:
    owners = [p for p in policies if getattr(p.policy, section) is not None]
    shared: dict[tuple[int, int], list[str]] = {}
    for w in workloads:
        wl = w.workload
        mine = [
            i
            for i, p in enumerate(owners)
            if p.policy.select.matches(wl.name, wl.labels, wl.data_class)
        ]
        for i in mine[1:]:
            shared.setdefault((mine[0], i), []).append(w.workload.name)
    for (i, j), names in shared.items():
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        noun = "workload" if len(names) == 1 else "workloads"
        _conflict(out, owners[i], owners[j], section, f"{noun} {listed}")


def subsumes(wide: Selector, narrow: Selector) -> bool:
    """True if every workload ``narrow`` selects is also selected by ``wide``."""
    if not set(wide.labels.items()) <= set(narrow.labels.items()):
        return False
    for wide_names, narrow_names in (
        (wide.workloads, narrow.workloads),
        (wide.data_classes, narrow.data_classes),
    ):
        if wide_names and not (narrow_names and set(narrow_names) <= set(wide_names)):
            return False
    return True


def _single_owner_by_selector(
    out: _Findings, policies: Sequence[LoadedPolicy], section: str
) -> None:
    owners = [p for p in policies if getattr(p.policy, section) is not None]
    for j, second in enumerate(owners):
        for first in owners[:j]:
            a, b = first.policy.select, second.policy.select
            if a == b:
                why = (
                    "every workload (their selectors are identical)"
                    if a == Selector()
                    else ("the same workloads (their selectors are identical)")
                )
            elif a == Selector() or b == Selector():
                why = "every workload the other selects (one selector is empty: it selects all)"
            elif subsumes(a, b) or subsumes(b, a):
                why = "every workload the narrower selector selects"
            else:
                continue
            _conflict(out, first, second, section, why)
