"""Reading policy and workload files: find them, read them safely, validate them.

Validation runs in three passes and collects every finding (it never stops at the
first one):

1. **structure** (here) — file size (:data:`MAX_FILE_BYTES`), UTF-8 text, YAML syntax
   through PyYAML's *safe* loader, composed to a node tree so that duplicate keys (which
   PyYAML would silently resolve to the last one) are errors; anchors and aliases are
   refused (a few lines of aliases can expand to gigabytes: "billion laughs"), as are
   nesting deeper than :data:`MAX_DEPTH`, non-text keys, tags other than YAML's plain
   scalar types, and documents that are not mappings;
2. **schema** (:mod:`arbiter.domain.policy_files`) — the closed pydantic models, every
   error placed at ``file:line:col`` with a field path and a "did you mean";
3. **semantics** (:mod:`arbiter.domain.policy_checks`) — across files and against the
   region catalog.

Directories are walked for ``*.yaml`` / ``*.yml`` files, skipping ``*.test.yaml`` /
``*.test.yml`` (policy tests). The walk never follows a symbolic link out of the
directory it was given: such a link is an error, and nothing behind it is read.

:func:`validate` returns the findings; :func:`load_policies` and
:func:`load_workloads` return validated values with their origins, or raise
:class:`~arbiter.domain.policy_files.InvalidPolicyFiles` carrying every finding.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import yaml

from arbiter.domain.policy import Policy
from arbiter.domain.policy_checks import (
    LoadedPolicy,
    LoadedWorkload,
    Origins,
    PolicySet,
    References,
    WorkloadSet,
    check_policies,
    check_workloads,
)
from arbiter.domain.policy_files import (
    Document,
    InvalidPolicyFiles,
    PolicyFinding,
    SourceMap,
    field_path,
    policy_from_document,
    show,
    sorted_findings,
    workload_from_document,
)
from arbiter.domain.policy_files import Path as DocPath
from arbiter.domain.regions import RegionCatalog
from arbiter.domain.workloads import Workload

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENTS",
    "MAX_FILE_BYTES",
    "InvalidPolicyFiles",
    "PolicyFinding",
    "PolicySet",
    "Validation",
    "WorkloadSet",
    "check_files",
    "load_policies",
    "load_workloads",
    "parse_documents",
    "validate",
]

MAX_FILE_BYTES = 1024 * 1024
"""A policy or workload file larger than this (1 MiB) is refused unread."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists a document may have (policies need about 6)."""
MAX_DOCUMENTS = 1000
"""Most documents one file may hold."""

YAML_SUFFIXES = (".yaml", ".yml")
TEST_SUFFIXES = (".test.yaml", ".test.yml")
DEFAULT_POLICY_PATH = "policies"

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"

_SCALARS: dict[str, Callable[[yaml.SafeLoader, yaml.ScalarNode], Any]] = {
    _STR: lambda loader, node: node.value,
    _NULL: lambda loader, node: None,
    "tag:yaml.org,2002:bool": yaml.SafeLoader.construct_yaml_bool,
    "tag:yaml.org,2002:int": yaml.SafeLoader.construct_yaml_int,
    "tag:yaml.org,2002:float": yaml.SafeLoader.construct_yaml_float,
    "tag:yaml.org,2002:timestamp": yaml.SafeLoader.construct_yaml_timestamp,
}
"""The only scalar types a document may hold; anything else (``!!binary``, ``!!python/…``,
custom tags) is refused."""

_TYPE_NAMES = {
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:timestamp": "a date",
    _NULL: "null",
}


# ------------------------------------------------------------------ pass 1: structure


class _Refused(yaml.MarkedYAMLError):
    """YAML that is valid but not accepted in policy files."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _Composer(yaml.SafeLoader):
    """PyYAML's safe loader used only to compose nodes, refusing anchors, aliases and
    deep nesting before they are expanded or recursed into."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                f"YAML aliases (*{event.anchor}) are not allowed in policy files; "
                "write the value out",
                event.start_mark,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(
                f"YAML anchors (&{anchor}) are not allowed in policy files; write each value out",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _at(mark: yaml.Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


class _Builder:
    """Turns one composed document into plain data and its source map, reporting
    duplicate keys, non-text keys and unsupported tags."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.values: dict[DocPath, tuple[int, int]] = {}
        self.keys: dict[DocPath, tuple[int, int]] = {}
        self.plain: dict[DocPath, str] = {}
        self.findings: list[PolicyFinding] = []

    def error(self, node: yaml.Node, path: DocPath, message: str, hint: str | None = None) -> None:
        line, column = _at(node.start_mark)
        self.findings.append(
            PolicyFinding(
                message,
                source=self.source,
                line=line,
                column=column,
                field=field_path(path) or None,
                hint=hint,
            )
        )

    def build(self, node: yaml.Node, path: DocPath) -> Any:
        self.values[path] = _at(node.start_mark)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                self.error(node, path, f"unsupported YAML tag {node.tag!r}")
                return None
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: DocPath) -> Any:
        if node.tag != _MAP:
            self.error(node, path, f"unsupported YAML tag {node.tag!r}")
            return None
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key is None:
                continue
            if key in first_line:
                self.error(
                    key_node,
                    (*path, key),
                    f"duplicate key {key!r} (first on line {first_line[key]})",
                    "YAML would silently keep only the last one; remove one of them",
                )
                continue
            first_line[key] = key_node.start_mark.line + 1
            self.keys[(*path, key)] = _at(key_node.start_mark)
            out[key] = self.build(value_node, (*path, key))
        return out

    def _key(self, node: yaml.Node, path: DocPath) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            return str(node.value)
        if isinstance(node, yaml.ScalarNode) and node.tag == _MERGE:
            self.error(node, path, "merge keys (<<) are not allowed; write the keys out")
        elif isinstance(node, yaml.ScalarNode) and node.tag in _TYPE_NAMES:
            self.error(
                node,
                path,
                f"YAML reads the key {node.value} as {_TYPE_NAMES[node.tag]}; keys must be text",
                f"write it in quotes: '{node.value}'",
            )
        elif isinstance(node, yaml.ScalarNode):
            self.error(node, path, f"unsupported YAML tag {node.tag!r} on a key")
        else:
            self.error(node, path, "a key must be text, not a mapping or a list")
        return None

    def _scalar(self, node: yaml.Node, path: DocPath) -> Any:
        assert isinstance(node, yaml.ScalarNode)
        construct = _SCALARS.get(node.tag)
        if construct is None:
            self.error(node, path, f"unsupported YAML tag {node.tag!r}")
            return None
        if node.style is None and node.tag != _STR:
            self.plain[path] = node.value
        try:
            return construct(self.loader, node)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.error(node, path, f"cannot read {show(node.value)}: {problem}")
            return None


def _yaml_error(exc: yaml.YAMLError, text: str, source: str) -> PolicyFinding:
    line = column = None
    hint = None
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            line, column = _at(mark)
        if isinstance(exc, _Refused):
            message = str(exc.problem)
        else:
            message = f"invalid YAML: {exc.problem}"
            if exc.context:
                message += f" ({exc.context})"
        if "'\\t'" in message:
            hint = "indent with spaces: YAML does not allow tabs for indentation"
    elif isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        message = f"invalid YAML: character U+{ord(char):04X} is not allowed in YAML text"
    else:
        message = f"invalid YAML: {exc}"
    return PolicyFinding(message, source=source, line=line, column=column, hint=hint)


def parse_documents(data: bytes, *, source: str) -> tuple[list[Document], list[PolicyFinding]]:
    """Pass 1 on a file's content: its documents, or the findings that refuse them.

    A syntax error or refused construct (alias, anchor, deep nesting) refuses the whole
    file with one finding; duplicate keys, bad keys and bad tags are all reported, and
    the documents holding them are dropped. Empty documents are skipped.
    """
    if len(data) > MAX_FILE_BYTES:
        return [], [_too_big(len(data), source)]
    if b"\x00" in data:
        return [], [
            PolicyFinding(
                "binary file (it contains NUL bytes); expected UTF-8 YAML text", source=source
            )
        ]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return [], [
            PolicyFinding(
                f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                source=source,
                line=line,
            )
        ]
    nodes: list[yaml.Node] = []
    try:
        loader = _Composer(text)  # the reader checks every character here
    except yaml.YAMLError as exc:
        return [], [_yaml_error(exc, text, source)]
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                nodes.append(node)
            if len(nodes) > MAX_DOCUMENTS:
                return [], [PolicyFinding(f"more than {MAX_DOCUMENTS} documents", source=source)]
    except yaml.YAMLError as exc:
        return [], [_yaml_error(exc, text, source)]
    finally:
        loader.dispose()
    documents: list[Document] = []
    findings: list[PolicyFinding] = []
    for index, node in enumerate(nodes):
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL and node.value == "":
            continue  # an empty document, e.g. after a trailing '---'
        builder = _Builder(loader, source)
        data_ = builder.build(node, ())
        if not isinstance(node, yaml.MappingNode):
            builder.error(
                node,
                (),
                f"a document must be a mapping (apiVersion, kind, metadata, ...), "
                f"got {show(data_) if data_ is not None else 'null'}",
            )
        findings.extend(builder.findings)
        if builder.findings:
            continue
        positions = SourceMap(source, builder.values, builder.keys, builder.plain)
        documents.append(Document(source, index, data_, positions))
    return documents, findings


def _too_big(size: int, source: str) -> PolicyFinding:
    return PolicyFinding(
        f"file is larger than {MAX_FILE_BYTES} bytes (the limit is 1 MiB); refused unread",
        source=source,
        hint=f"it has {size} bytes" if size <= MAX_FILE_BYTES * 4 else None,
    )


# ---------------------------------------------------------------- finding and reading


@dataclass(frozen=True)
class _File:
    source: str
    """How the file is named in findings: as reached from the path the caller gave."""
    path: Path
    """Where it really is (symbolic links resolved)."""


def _is_yaml(name: str) -> bool:
    return name.endswith(YAML_SUFFIXES) and not name.endswith(TEST_SUFFIXES)


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _is_test(name: str) -> bool:
    return name.endswith(TEST_SUFFIXES)


def _walk(
    root: Path,
    files: list[_File],
    findings: list[PolicyFinding],
    wanted: Callable[[str], bool] = _is_yaml,
) -> None:
    real_root = root.resolve()

    def escapes(entry: Path) -> bool:
        target = entry.resolve()
        if _inside(target, real_root):
            return False
        findings.append(
            PolicyFinding(
                f"symbolic link leads out of {root}: {target}; not followed",
                source=str(entry),
                hint="keep policy files inside the directory being loaded",
            )
        )
        return True

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        for name in list(dirnames):
            entry = here / name
            if entry.is_symlink():
                # Never descended into; one that stays inside the tree is walked anyway.
                dirnames.remove(name)
                escapes(entry)
        for name in sorted(filenames):
            entry = here / name
            if not wanted(name):
                continue
            if entry.is_symlink():
                if not entry.exists():
                    findings.append(PolicyFinding("broken symbolic link", source=str(entry)))
                    continue
                if escapes(entry):
                    continue
            files.append(_File(str(entry), entry.resolve()))


def _discover(
    paths: Iterable[str | os.PathLike[str]], *, tests: bool = False
) -> tuple[list[_File], list[PolicyFinding]]:
    """The files to read under ``paths``: policy/workload files, or with ``tests`` the
    policy test files (``*.test.yaml``)."""
    wanted = _is_test if tests else _is_yaml
    files: list[_File] = []
    findings: list[PolicyFinding] = []
    if isinstance(paths, str | os.PathLike):
        paths = [paths]  # one path, not the characters of one
    for given in paths:
        path = Path(given)
        if path.is_dir():
            _walk(path, files, findings, wanted)
        elif path.exists():
            if path.name.endswith(TEST_SUFFIXES) == tests:
                files.append(_File(str(path), path.resolve()))
        else:
            findings.append(PolicyFinding("no such file or directory", source=str(path)))
    unique: dict[Path, _File] = {}
    for file in files:
        unique.setdefault(file.path, file)  # the same file reached twice is read once
    return list(unique.values()), findings


def _read(file: _File) -> tuple[bytes | None, PolicyFinding | None]:
    try:
        info = file.path.stat()
        if not stat.S_ISREG(info.st_mode):
            return None, PolicyFinding("not a regular file", source=file.source)
        if info.st_size > MAX_FILE_BYTES:
            return None, _too_big(info.st_size, file.source)
        with file.path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return None, PolicyFinding(f"cannot read: {exc.strerror or exc}", source=file.source)
    return data, None


def _documents(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[list[str], list[Document], list[PolicyFinding]]:
    files, findings = _discover(paths)
    documents: list[Document] = []
    for file in files:
        data, problem = _read(file)
        if problem is not None or data is None:
            findings.extend([problem] if problem else [])
            continue
        docs, more = parse_documents(data, source=file.source)
        documents.extend(docs)
        findings.extend(more)
    return [f.source for f in files], documents, findings


# ---------------------------------------------------------------------- three passes


@dataclass(frozen=True)
class Validation:
    """Everything :func:`check_files` found: the files read, the values that validated
    and every finding, sorted by file, line and column."""

    files: tuple[str, ...]
    policies: PolicySet
    workloads: WorkloadSet
    findings: tuple[PolicyFinding, ...]

    @property
    def errors(self) -> tuple[PolicyFinding, ...]:
        return tuple(f for f in self.findings if f.is_error)

    @property
    def warnings(self) -> tuple[PolicyFinding, ...]:
        return tuple(f for f in self.findings if not f.is_error)


_V = TypeVar("_V", Policy, Workload)


def _schema_pass(
    documents: Sequence[Document],
    from_document: Callable[[Document], tuple[_V | None, list[PolicyFinding]]],
    findings: list[PolicyFinding],
) -> list[tuple[_V, Document]]:
    valid = []
    for doc in documents:
        value, more = from_document(doc)
        findings.extend(more)
        if value is not None:
            valid.append((value, doc))
    return valid


def references(catalog: RegionCatalog | None = None) -> References:
    """What policies may name: ISO countries, the catalog's groups and regions."""
    from arbiter.catalog import known_countries, load_catalog

    catalog = catalog if catalog is not None else load_catalog()
    return References(
        countries=known_countries(),
        groups=frozenset(catalog.jurisdictions.names),
        regions=frozenset(r.key for r in catalog),
    )


def _workload_pass(
    workload_paths: Iterable[str | os.PathLike[str]], findings: list[PolicyFinding]
) -> tuple[list[str], list[LoadedWorkload]]:
    files, docs, structure = _documents(workload_paths)
    findings.extend(structure)
    valid = _schema_pass(docs, workload_from_document, findings)
    loaded = [LoadedWorkload(w, doc) for w, doc in valid]
    findings.extend(check_workloads(loaded))
    return files, loaded


def _policy_pass(
    policy_paths: Iterable[str | os.PathLike[str]],
    workloads: Sequence[LoadedWorkload] | None,
    today: date,
    refs: References,
    findings: list[PolicyFinding],
) -> tuple[list[str], list[LoadedPolicy]]:
    files, docs, structure = _documents(policy_paths)
    findings.extend(structure)
    valid = _schema_pass(docs, policy_from_document, findings)
    loaded = [LoadedPolicy(p, doc) for p, doc in valid]
    findings.extend(check_policies(loaded, workloads, today=today, references=refs))
    return files, loaded


def _policy_set(loaded: Sequence[LoadedPolicy], findings: Sequence[PolicyFinding]) -> PolicySet:
    return PolicySet(
        tuple(p.policy for p in loaded),
        Origins.of([(p.policy.metadata.name, p.document) for p in loaded], loaded),
        tuple(f for f in findings if not f.is_error),
    )


def _workload_set(
    loaded: Sequence[LoadedWorkload], findings: Sequence[PolicyFinding]
) -> WorkloadSet:
    return WorkloadSet(
        tuple(w.workload for w in loaded),
        Origins.of([(w.workload.name, w.document) for w in loaded if w.document is not None]),
        tuple(f for f in findings if not f.is_error),
    )


def check_files(
    policy_paths: Iterable[str | os.PathLike[str]] = (DEFAULT_POLICY_PATH,),
    workload_paths: Iterable[str | os.PathLike[str]] | None = None,
    *,
    today: date,
    catalog: RegionCatalog | None = None,
) -> Validation:
    """Run all three passes over policy files and (optionally) workload files.

    With ``workload_paths``, cross-checks (one objective per workload, latency ``from``
    names, exceptions naming workloads) use the workloads that validated; without, the
    objective check compares selectors. ``today`` decides which exceptions have expired.
    Never raises for a bad file: every problem is a finding.
    """
    findings: list[PolicyFinding] = []
    workload_files: list[str] = []
    workloads: list[LoadedWorkload] | None = None
    if workload_paths is not None:
        workload_files, workloads = _workload_pass(workload_paths, findings)
    refs = references(catalog)
    policy_files, policies = _policy_pass(policy_paths, workloads, today, refs, findings)
    ordered = sorted_findings(findings)
    return Validation(
        files=tuple(dict.fromkeys([*policy_files, *workload_files])),
        policies=_policy_set(policies, ordered),
        workloads=_workload_set(workloads or [], ordered),
        findings=tuple(ordered),
    )


def validate(
    policy_paths: Iterable[str | os.PathLike[str]] = (DEFAULT_POLICY_PATH,),
    workload_paths: Iterable[str | os.PathLike[str]] | None = None,
    *,
    today: date,
    catalog: RegionCatalog | None = None,
) -> list[PolicyFinding]:
    """Every error and warning in the files, sorted by file, line and column."""
    return list(check_files(policy_paths, workload_paths, today=today, catalog=catalog).findings)


def load_policies(
    paths: Iterable[str | os.PathLike[str]] = (DEFAULT_POLICY_PATH,),
    *,
    today: date,
    workloads: Iterable[Workload] | None = None,
    catalog: RegionCatalog | None = None,
) -> PolicySet:
    """The validated policies with their origins (warnings kept on the result).

    ``workloads``, when given, are the workloads the policies will govern: the
    one-objective-per-workload check then uses them instead of comparing selectors.
    Raises :class:`InvalidPolicyFiles` with every finding if any file has an error.
    """
    findings: list[PolicyFinding] = []
    given = None if workloads is None else [LoadedWorkload(w) for w in workloads]
    _, loaded = _policy_pass(paths, given, today, references(catalog), findings)
    ordered = sorted_findings(findings)
    if any(f.is_error for f in ordered):
        raise InvalidPolicyFiles(ordered)
    return _policy_set(loaded, ordered)


def load_workloads(paths: Iterable[str | os.PathLike[str]]) -> WorkloadSet:
    """The validated workloads with their origins (warnings kept on the result).

    Raises :class:`InvalidPolicyFiles` with every finding if any file has an error.
    """
    findings: list[PolicyFinding] = []
    _, loaded = _workload_pass(paths, findings)
    ordered = sorted_findings(findings)
    if any(f.is_error for f in ordered):
        raise InvalidPolicyFiles(ordered)
    return _workload_set(loaded, ordered)
