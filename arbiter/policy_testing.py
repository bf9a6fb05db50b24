"""Running policy tests (``*.test.yaml``): read the files, the snapshots and workloads
they name, and run every case through :mod:`arbiter.domain.policy_tests`.

A test file that cannot be read or validated is reported with ``file:line:col`` and
counts as failed; so does a case that cannot run. Nothing is written anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from arbiter.domain.evaluation import PolicyBook
from arbiter.domain.policy_files import InvalidPolicyFiles, PolicyFinding, model_from_document
from arbiter.domain.policy_tests import CaseResult, PolicyTestFile, run_case
from arbiter.domain.regions import RegionCatalog
from arbiter.domain.snapshot import MarketSnapshot
from arbiter.errors import PolicyError
from arbiter.policy_loader import (
    DEFAULT_POLICY_PATH,
    _discover,
    _read,
    load_policies,
    load_workloads,
    parse_documents,
)


@dataclass
class FileResult:
    source: str
    cases: list[CaseResult] = field(default_factory=list)
    findings: list[PolicyFinding] = field(default_factory=list)
    """Why the file (or what it names) could not be used; the file then fails."""

    @property
    def passed(self) -> bool:
        return not self.findings and all(c.passed for c in self.cases)


@dataclass
class TestRun:
    files: list[FileResult]
    findings: list[PolicyFinding]
    """Problems outside any one test file: the policies themselves, paths not found."""

    @property
    def cases(self) -> list[CaseResult]:
        return [c for f in self.files for c in f.cases]

    @property
    def passed(self) -> bool:
        return not self.findings and all(f.passed for f in self.files)


def load_snapshot_file(path: Path) -> MarketSnapshot:
    """A snapshot file; errors name the file and the field."""
    from pydantic import ValidationError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PolicyError(f"cannot read snapshot: {reason}", source=str(path)) from None
    try:
        return MarketSnapshot.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PolicyError(
            f"not a market snapshot: {err['msg']}", source=str(path), field=where or None
        ) from None


def _finding(exc: PolicyError) -> PolicyFinding:
    return PolicyFinding(
        exc.message, source=exc.source, line=exc.line, column=exc.column, field=exc.field
    )


def run_tests(
    paths: Iterable[str | os.PathLike[str]] = (DEFAULT_POLICY_PATH,),
    *,
    today: date,
    catalog: RegionCatalog | None = None,
    policy_paths: Iterable[str | os.PathLike[str]] | None = None,
    only: str | None = None,
) -> TestRun:
    """Run every test file under ``paths`` against the policies under ``policy_paths``
    (default: the same paths). ``only`` keeps the cases whose name contains it."""
    from arbiter.catalog import load_catalog

    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    catalog = catalog or load_catalog()
    run = TestRun(files=[], findings=[])
    try:
        # a test file given alone is tested against the policies beside it
        default = [Path(p).parent if Path(p).is_file() else p for p in paths]
        policy_set = load_policies(policy_paths or default, today=today, catalog=catalog)
    except InvalidPolicyFiles as exc:
        run.findings.extend(exc.findings)
        return run
    book = PolicyBook(policy_set.policies, rule_origins=policy_set.rule_origins)
    names = {p.metadata.name for p in policy_set.policies}

    files, problems = _discover(paths, tests=True)
    run.findings.extend(problems)
    if not files and not problems:
        run.findings.append(
            PolicyFinding(
                "no policy tests found (*.test.yaml)",
                source=", ".join(str(p) for p in paths),
            )
        )
    snapshots: dict[Path, MarketSnapshot] = {}
    for file in files:
        result = FileResult(file.source)
        run.files.append(result)
        data, problem = _read(file)
        if problem is not None or data is None:
            result.findings.extend([problem] if problem else [])
            continue
        docs, found = parse_documents(data, source=file.source)
        result.findings.extend(found)
        if len(docs) != 1:
            if not found:
                result.findings.append(
                    PolicyFinding("expected one YAML document per test file", source=file.source)
                )
            continue
        spec, found = model_from_document(PolicyTestFile, docs[0])
        result.findings.extend(found)
        if spec is None:
            continue
        if spec.policy is not None and spec.policy not in names:
            where = docs[0].positions.value(("policy",))
            result.findings.append(
                PolicyFinding(
                    f"no loaded policy is named {spec.policy!r}",
                    source=file.source,
                    line=where.line,
                    column=where.column,
                    field="policy",
                    hint=f"loaded: {', '.join(sorted(names)) or 'none'}",
                )
            )
            continue
        base = Path(file.source).parent
        try:
            snap_path = (base / spec.snapshot).resolve()
            if snap_path not in snapshots:
                snapshots[snap_path] = load_snapshot_file(base / spec.snapshot)
            workload_set = load_workloads([base / w for w in spec.workloads])
        except PolicyError as exc:
            result.findings.append(_finding(exc))
            continue
        except InvalidPolicyFiles as exc:
            result.findings.extend(exc.findings)
            continue
        for case in spec.cases:
            if only and only not in case.name:
                continue
            result.cases.append(
                run_case(
                    case,
                    book=book,
                    workloads=workload_set.workloads,
                    snapshot=snapshots[snap_path],
                    catalog=catalog,
                )
            )
    if only and not run.cases and not run.findings:
        run.findings.append(
            PolicyFinding(f"no test case name contains {only!r} (-k)", source="policy test")
        )
    return run
