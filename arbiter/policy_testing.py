"""Running policy tests (``*.test.yaml``): read the files, the snapshots and workloads
they name, and run every case through :mod:`arbiter.domain.policy_tests`.

A test file that cannot be read or validated is reported with ``file:line:col`` and
counts as failed; so does a case that cannot run. Nothing is written anywhere.

The files a test file names are read only from inside the tree it belongs to (see
:func:`tree_root`): ``arbiter policy test`` runs in CI on pull requests, and a test file
naming ``/etc/...``, ``../../../home/...`` or a symbolic link out of the repository
would have it read (and quote) files the pull request cannot see otherwise. The
snapshot must be a regular file of at most :data:`MAX_SNAPSHOT_BYTES` (``/dev/zero``
would be read until memory runs out).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from arbiter.domain.evaluation import PolicyBook
from arbiter.domain.policy_files import (
    Document,
    InvalidPolicyFiles,
    PolicyFinding,
    model_from_document,
)
from arbiter.domain.policy_tests import CaseResult, PolicyTestFile, run_case
from arbiter.domain.regions import RegionCatalog
from arbiter.domain.snapshot import MarketSnapshot
from arbiter.errors import PolicyError
from arbiter.policy_loader import (
    DEFAULT_POLICY_PATH,
    _discover,
    _File,
    _read,
    load_policies,
    load_workloads,
    parse_documents,
)

MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
"""A snapshot file larger than this (64 MiB) is refused unread."""


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
    """A snapshot file; errors name the file and the field. A path that is not a regular
    file (a FIFO would block the read, a device never end) or is larger than
    :data:`MAX_SNAPSHOT_BYTES` is refused unread."""
    from pydantic import ValidationError

    def refused(message: str) -> PolicyError:
        return PolicyError(message, source=str(path))

    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise refused(f"cannot read snapshot: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refused("cannot read snapshot: not a regular file")
        if info.st_size > MAX_SNAPSHOT_BYTES:
            raise refused(f"snapshot {_too_big(info.st_size)}")
        try:
            data = handle.read(MAX_SNAPSHOT_BYTES + 1)
        except OSError as exc:
            raise refused(f"cannot read snapshot: {exc.strerror or exc}") from None
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise refused(f"snapshot {_too_big(len(data))}")
    try:
        return MarketSnapshot.model_validate_json(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PolicyError(
            f"not a market snapshot: {err['msg']}", source=str(path), field=where or None
        ) from None


def _too_big(size: int) -> str:
    return (
        f"is larger than {MAX_SNAPSHOT_BYTES} bytes (the limit is 64 MiB; "
        f"it has {size}); refused unread"
    )


def tree_root(given: str | os.PathLike[str]) -> Path:
    """The tree whose files the policy tests under ``given`` may name: the git work tree
    that holds ``given``; outside one, the current directory if it holds ``given`` (and
    is not ``/``); else ``given`` itself (a directory, or the directory of a file).
    Symbolic links resolved."""
    real = Path(given).resolve()
    start = real if real.is_dir() else real.parent
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    here = Path.cwd().resolve()
    if here != Path(here.anchor) and real.is_relative_to(here):
        return here
    return start


def _named_file(
    name: str,
    *,
    test_file: str,
    doc: Document,
    at: tuple[str | int, ...],
    root: Path,
    directory_ok: bool = False,
) -> Path:
    """``name``, relative to ``test_file``, once it is known to lead to a file inside
    ``root`` (or a directory, with ``directory_ok``) — a file that does not exist is left
    to the reader to report. Raises a PolicyFinding naming the test file and the field."""
    where = doc.positions.value(at)
    field = ".".join(str(part) for part in at[:1]) + "".join(f"[{i}]" for i in at[1:])

    def refuse(message: str, hint: str | None = None) -> PolicyFinding:
        return PolicyFinding(
            message,
            source=test_file,
            line=where.line,
            column=where.column,
            field=field,
            hint=hint,
        )

    path = Path(test_file).parent / name
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop
        raise refuse(f"cannot resolve {name!r}: {exc}") from None
    if not real.is_relative_to(root):
        raise refuse(
            f"{name!r} leads out of {root} (to {real}); refused unread",
            hint="name files inside the tree the test file belongs to, relative to it",
        )
    try:
        info = real.stat()
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise refuse(f"cannot read {name!r}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode) and directory_ok:
        return path
    if not stat.S_ISREG(info.st_mode):
        expected = "a file or directory" if directory_ok else "a snapshot file"
        raise refuse(f"{name!r} is not a regular file; expected {expected}")
    if not directory_ok and info.st_size > MAX_SNAPSHOT_BYTES:
        raise refuse(f"{name!r} {_too_big(info.st_size)}")
    return path


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
    root: str | os.PathLike[str] | None = None,
) -> TestRun:
    """Run every test file under ``paths`` against the policies under ``policy_paths``
    (default: the same paths). ``only`` keeps the cases whose name contains it.

    The snapshot and workloads a test file names must be inside ``root`` (default: the
    :func:`tree_root` of the path it was found under); one that is not is a finding on
    that test file, naming the field, and the other test files still run."""
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

    files: list[tuple[_File, Path]] = []
    seen: set[Path] = set()
    for given in paths:
        discovered, problems = _discover([given], tests=True)
        run.findings.extend(problems)
        tree = Path(root).resolve() if root is not None else tree_root(given)
        for test in discovered:
            if test.path not in seen:  # the same file reached twice is run once
                seen.add(test.path)
                files.append((test, tree))
    if not files and not problems:
        run.findings.append(
            PolicyFinding(
                "no policy tests found (*.test.yaml)",
                source=", ".join(str(p) for p in paths),
            )
        )
    snapshots: dict[Path, MarketSnapshot] = {}
    for file, tree in files:
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
        doc = docs[0]
        try:
            snapshot_file = _named_file(
                spec.snapshot, test_file=file.source, doc=doc, at=("snapshot",), root=tree
            )
            workload_files = [
                _named_file(
                    w,
                    test_file=file.source,
                    doc=doc,
                    at=("workloads", i),
                    root=tree,
                    directory_ok=True,
                )
                for i, w in enumerate(spec.workloads)
            ]
        except PolicyFinding as exc:
            result.findings.append(exc)
            continue
        try:
            snap_path = snapshot_file.resolve()
            if snap_path not in snapshots:
                snapshots[snap_path] = load_snapshot_file(snapshot_file)
            workload_set = load_workloads(workload_files)
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
