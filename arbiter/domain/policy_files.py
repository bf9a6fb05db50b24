"""Policy and workload files as documents, and the schema pass over them.

A policy or workload file holds YAML documents. The shell (:mod:`arbiter.policy_loader`)
reads and composes them — pass 1, structure — into :class:`Document` values: plain data
plus a :class:`SourceMap` giving the line and column of every key and value. This module
is pass 2, the schema: it validates a document into a :class:`~arbiter.domain.policy.Policy`
or a :class:`~arbiter.domain.workloads.Workload` and turns every pydantic error into a
:class:`PolicyFinding` at ``file:line:col``, with the field path
(``constraints[0].sovereignty``), what was expected and what was found, and a
"did you mean" for unknown keys. Pass 3, semantics across files, is
:mod:`arbiter.domain.policy_checks`.

Workload files wrap a workload in the same envelope as policies::

    apiVersion: arbiter/v1
    kind: Workload
    metadata: {name: chat-api, labels: {class: llm-inference}}
    spec: {data_class: personal-eu, gpu_options: [...], replicas: 3, ...}

``metadata.name`` and ``metadata.labels`` become the workload's ``name`` and
``labels``; ``spec`` holds every other field of :class:`Workload`.

Nothing here reads files or the clock.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from pathlib import PurePath
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import ErrorDetails, core_schema

from arbiter.domain.policy import Policy
from arbiter.domain.values import Value, parse_duration
from arbiter.domain.workloads import Slug, Workload
from arbiter.errors import PolicyError

API_VERSION = "arbiter/v1"
POLICY_KIND = "PlacementPolicy"
WORKLOAD_KIND = "Workload"
KINDS = (POLICY_KIND, WORKLOAD_KIND)

PathPart = str | int
Path = tuple[PathPart, ...]
"""Where a value sits in a document: keys and list indexes from the top."""


# --------------------------------------------------------------------------- findings


class Severity(StrEnum):
    ERROR = "error"
    """The file is refused; nothing in it is applied."""
    WARNING = "warning"
    """Probably a mistake, but the file is valid and can be applied."""


class PolicyFinding(PolicyError):
    """One problem found in a policy or workload file.

    ``message`` says what is wrong (``unknown key 'jurisdiction'``, ``expected a number
    ≥ 0, got "300g"``), ``field`` where in the document (``constraints[0].sovereignty``),
    ``hint`` how to fix it when one can be computed (``did you mean 'jurisdictions'?``),
    ``rule_id`` the constraint involved, if any. Line and column are 1-based.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
        severity: Severity = Severity.ERROR,
        rule_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, source=source, line=line, column=column, field=field)
        self.message = message
        self.severity = severity
        self.rule_id = rule_id
        self.hint = hint

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    @property
    def location(self) -> str:
        """``file``, ``file:line`` or ``file:line:col``."""
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.source, self.line or 0, self.column or 0, self.field or "", self.message)

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON shape of a finding (``arbiter policy validate --output json``)."""
        return {
            "source": self.source,
            "line": self.line,
            "column": self.column,
            "severity": self.severity.value,
            "field": self.field,
            "rule_id": self.rule_id,
            "message": self.message,
            "hint": self.hint,
        }

    def __repr__(self) -> str:
        return f"PolicyFinding({self.severity.value}: {self})"


class InvalidPolicyFiles(PolicyError):
    """Policy or workload files have errors; nothing from them was loaded.

    ``findings`` holds every error and warning found, in file order.
    """

    def __init__(self, findings: Sequence[PolicyFinding]) -> None:
        self.findings = tuple(findings)
        errors = [f for f in self.findings if f.is_error]
        sources = sorted({f.source for f in errors})
        noun = "error" if len(errors) == 1 else "errors"
        super().__init__(f"{len(errors)} {noun}", source=", ".join(sources))

    @property
    def errors(self) -> tuple[PolicyFinding, ...]:
        return tuple(f for f in self.findings if f.is_error)

    def __str__(self) -> str:
        lines = [f"{len(self.errors)} error(s) in policy or workload files:"]
        for finding in self.errors:
            hint = f" ({finding.hint})" if finding.hint else ""
            lines.append(f"  {finding}{hint}")
        return "\n".join(lines)


def sorted_findings(findings: Iterable[PolicyFinding]) -> list[PolicyFinding]:
    return sorted(findings, key=PolicyFinding.sort_key)


# ------------------------------------------------------------------ where things are


@dataclass(frozen=True)
class SourceLocation:
    """A place in a file. ``str()`` gives ``file:line``; :attr:`cite` the short form
    explanations use (``eu-llm-inference.yaml:20``)."""

    source: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def cite(self) -> str:
        return f"{PurePath(self.source).name}:{self.line}"


@dataclass(frozen=True)
class SourceMap:
    """Line and column (1-based) of every value and every mapping key of one document.

    ``plain`` keeps the source text of unquoted scalars that YAML did not read as text
    (``NO`` → false, ``0755`` → 493), so messages can show what the author wrote.
    """

    source: str
    values: Mapping[Path, tuple[int, int]]
    keys: Mapping[Path, tuple[int, int]] = field(default_factory=dict)
    plain: Mapping[Path, str] = field(default_factory=dict)

    def value(self, path: Path) -> SourceLocation:
        """Where the value at ``path`` starts, or its nearest ancestor that exists."""
        for n in range(len(path), -1, -1):
            found = self.values.get(path[:n])
            if found is not None:
                return SourceLocation(self.source, *found)
        return SourceLocation(self.source, 1, 1)

    def key(self, path: Path) -> SourceLocation:
        """Where the key naming ``path`` is; for list items, where the item starts."""
        found = self.keys.get(path)
        if found is not None:
            return SourceLocation(self.source, *found)
        return self.value(path)

    def order(self, path: Path) -> tuple[int, int]:
        loc = self.value(path)
        return (loc.line, loc.column)


@dataclass(frozen=True)
class Document:
    """One YAML document of a file: plain data (dicts with text keys, lists, text,
    numbers, booleans, null, dates) and where each part of it was written."""

    source: str
    index: int
    """Position of the document in its file, from 0."""
    data: Any
    positions: SourceMap

    @property
    def start(self) -> SourceLocation:
        return self.positions.value(())


def field_path(path: Path) -> str:
    """``('constraints', 0, 'sovereignty')`` → ``constraints[0].sovereignty``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def did_you_mean(word: str, candidates: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The candidate closest to ``word`` (case-insensitive first), or None."""
    options = list(dict.fromkeys(candidates))
    for option in options:
        if option.lower() == word.lower():
            return option
    lowered = {o.lower(): o for o in options}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[close[0]] if close else None


def show(value: Any) -> str:
    """A value as the author would recognise it in YAML, shortened."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 200:
            return "a very large number"
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:39] + "…"
        return json.dumps(text, ensure_ascii=False)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__} value"


# ------------------------------------------------------------- the workload envelope


class WorkloadMetadata(Value):
    """The workload's name and labels."""

    name: Slug
    """The workload's name: a DNS label (``chat-api``)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Matched by policies' ``select.labels``."""


class WorkloadFile(Value):
    """An inference workload to place: its name and labels, and what it needs."""

    api_version: Literal["arbiter/v1"] = Field(alias="apiVersion")
    kind: Literal["Workload"]
    metadata: WorkloadMetadata
    spec: dict[str, Any]


_ENVELOPE_FIELDS = ("name", "labels")
"""Workload fields that live in ``metadata``, not ``spec``."""


# ------------------------------------------------------------- walking the model types


def _flatten_metadata(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        nested = getattr(item, "metadata", None)
        if isinstance(nested, list):  # a FieldInfo inside Annotated[...]
            out.extend(nested)
        else:
            out.append(item)
    return out


def _unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """Strip ``Annotated`` (collecting its metadata) and ``X | None``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            base, *extra = typing.get_args(annotation)
            metadata = metadata + _flatten_metadata(extra)
            annotation = base
        elif origin is Union or origin is types.UnionType:
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation, metadata
            annotation = options[0]
        else:
            return annotation, metadata


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _fields_by_key(model: type[BaseModel]) -> dict[str, Any]:
    """A model's fields under the keys a file uses for them (the alias, if any)."""
    return {(info.alias or name): info for name, info in model.model_fields.items()}


_Typed = tuple[Any, list[Any]]


def _step(current: _Typed, part: PathPart) -> _Typed | None:
    annotation, _ = _unwrap(*current)
    if _is_model(annotation) and isinstance(part, str):
        info = _fields_by_key(annotation).get(part)
        if info is None:
            return None
        return info.annotation, _flatten_metadata(info.metadata)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (tuple, list) and isinstance(part, int):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return (args[part], []) if part < len(args) else None
        return (args[0], []) if args else None
    if origin is dict and isinstance(part, str) and len(args) == 2:
        return args[1], []
    return None


class _Schema:
    """The model types of one document kind, addressed by document path."""

    def __init__(self, root: type[BaseModel], nested: Mapping[str, type[BaseModel]]):
        self.root = root
        # Top-level keys validated by another model: a workload's spec is a Workload
        # without the fields that live in metadata.
        self.nested = dict(nested)

    def typed(self, path: Path) -> _Typed | None:
        current: _Typed | None
        if path and isinstance(path[0], str) and path[0] in self.nested:
            current, path = (self.nested[path[0]], []), path[1:]
        else:
            current = (self.root, [])
        for part in path:
            if current is None:
                return None
            current = _step(current, part)
        return current

    def keys_at(self, path: Path) -> list[str]:
        if len(path) == 1 and path[0] in self.nested:
            keys = list(_fields_by_key(self.nested[str(path[0])]))
            return [k for k in keys if k not in _ENVELOPE_FIELDS]
        typed = self.typed(path)
        if typed is None:
            return []
        annotation, _ = _unwrap(*typed)
        return list(_fields_by_key(annotation)) if _is_model(annotation) else []


_POLICY_SCHEMA = _Schema(Policy, {})
_WORKLOAD_SCHEMA = _Schema(WorkloadFile, {"spec": Workload})


# -------------------------------------------------------- pydantic errors → findings

_PATTERNS = {
    r"^[a-z0-9][a-z0-9-]{0,62}$": (
        "a name of lower-case letters, digits and '-' (at most 63, not starting with '-')"
    ),
    r"^(aws|gcp|azure):[a-z0-9-]+$": "a region written provider:region, like 'aws:eu-central-1'",
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$": (
        "a DNS label: lower-case letters, digits and '-', at most 63, "
        "starting and ending with a letter or digit"
    ),
}

_NUMBER_ERRORS = {
    "float_type",
    "float_parsing",
    "int_type",
    "int_parsing",
    "int_from_float",
    "int_parsing_size",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "finite_number",
}
_MAPPING_ERRORS = {"dict_type", "model_type", "model_attributes_type", "mapping_type"}
_LIST_ERRORS = {"tuple_type", "list_type", "iterable_type", "set_type", "frozen_set_type"}
_DATE_ERRORS = {
    "date_type",
    "date_parsing",
    "date_from_datetime_parsing",
    "date_from_datetime_inexact",
}


def _describe_number(typed: _Typed | None, whole: bool) -> str:
    kind = "a whole number" if whole else "a number"
    if typed is None:
        return kind
    annotation, metadata = _unwrap(*typed)
    if annotation is int:
        kind = "a whole number"
    low = high = None
    for item in metadata:
        if getattr(item, "ge", None) is not None:
            low = f"≥ {item.ge:g}"
        if getattr(item, "gt", None) is not None:
            low = f"> {item.gt:g}"
        if getattr(item, "le", None) is not None:
            high = f"≤ {item.le:g}"
        if getattr(item, "lt", None) is not None:
            high = f"< {item.lt:g}"
    if low and high:
        return f"{kind} {low} and {high}"
    return f"{kind} {low or high}" if (low or high) else kind


def _expected(err: ErrorDetails, typed: _Typed | None) -> str | None:
    kind = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    if kind in _NUMBER_ERRORS:
        return _describe_number(typed, whole=kind.startswith("int"))
    if kind in ("string_type", "string_sub_type", "string_unicode"):
        return "text"
    if kind == "string_too_short":
        return "non-empty text"
    if kind == "string_too_long":
        return f"text of at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return _PATTERNS.get(pattern, f"text matching {pattern}")
    if kind in ("literal_error", "enum"):
        return f"one of {ctx.get('expected')}"
    if kind in ("bool_type", "bool_parsing"):
        return "true or false"
    if kind in _MAPPING_ERRORS:
        return "a mapping"
    if kind in _LIST_ERRORS:
        return "a list"
    if kind == "too_short":
        n = ctx.get("min_length")
        return f"at least {n} item{'s' if n != 1 else ''}"
    if kind == "too_long":
        n = ctx.get("max_length")
        return f"at most {n} item{'s' if n != 1 else ''}"
    if kind in _DATE_ERRORS:
        return "a date like 2025-09-30"
    return None


def _got(err: ErrorDetails) -> str:
    value = err.get("input")
    if err["type"] in ("too_short", "too_long") and isinstance(value, list | tuple | dict):
        n = len(value)
        return f"{n} item{'s' if n != 1 else ''}"
    return show(value)


def _value_error(err: ErrorDetails) -> str:
    message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = err.get("input")
    if not isinstance(value, Mapping | list | tuple):
        shown = show(value)
        if shown not in message and repr(value) not in message:
            message += f", got {shown}"
    return message


def _quoted(message: str) -> list[str]:
    return re.findall(r"'([^']+)'", message)


def _find_scalar(data: Any, path: Path, wanted: str) -> list[Path]:
    """Paths below ``path`` whose value is the text ``wanted``."""
    found: list[Path] = []

    def walk(node: Any, here: Path) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                walk(child, (*here, key))
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, (*here, i))
        elif node == wanted and isinstance(node, str):
            found.append(here)

    walk(_get(data, path), path)
    return found


def _get(data: Any, path: Path) -> Any:
    for part in path:
        if isinstance(data, Mapping) and isinstance(part, str):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _rule_id_at(data: Any, path: Path) -> str | None:
    """The rule a path belongs to: a constraint's id, or the rule an exception names."""
    if len(path) >= 2 and path[0] in ("constraints", "exceptions") and isinstance(path[1], int):
        value = _get(data, path[:2] + (("id",) if path[0] == "constraints" else ("rule",)))
        return value if isinstance(value, str) else None
    return None


@dataclass
class _Raw:
    """A finding before it is placed in the file."""

    path: Path
    message: str
    at_key: bool = False
    hint: str | None = None
    suggestion: str | None = None
    missing: str | None = None
    too_short: bool = False


def _translate(err: ErrorDetails, schema: _Schema, doc: Document) -> _Raw:
    loc: Path = tuple(p for p in err["loc"] if isinstance(p, str | int))
    kind = err["type"]
    if kind == "extra_forbidden" and loc:
        key = str(loc[-1])
        known = schema.keys_at(loc[:-1])
        suggestion = did_you_mean(key, known)
        hint: str | None
        if suggestion:
            hint = f"did you mean {suggestion!r}?"
        else:
            hint = f"expected one of: {', '.join(known)}" if known else None
        return _Raw(loc, f"unknown key {key!r}", at_key=True, hint=hint, suggestion=suggestion)
    if kind == "missing" and loc:
        return _Raw(loc, f"missing required key {str(loc[-1])!r}", missing=str(loc[-1]))
    if kind in ("value_error", "assertion_error"):
        message = _value_error(err)
        raw = _Raw(loc, message)
        # Model-level validators report on the whole mapping; point at the value they
        # quote (a rule id used twice, an exception naming an unknown rule) when the
        # document has it. The last occurrence is the one that repeats or refers back.
        for quoted in _quoted(message):
            hits = _find_scalar(doc.data, loc, quoted)
            if hits:
                raw.path = max(hits, key=doc.positions.order)
                break
        if "exception names unknown rule" in message and _quoted(message):
            ids = [
                c.get("id")
                for c in _get(doc.data, ("constraints",)) or []
                if isinstance(c, Mapping)
            ]
            close = did_you_mean(_quoted(message)[0], [i for i in ids if isinstance(i, str)])
            raw.hint = f"did you mean {close!r}?" if close else None
        return raw
    expected = _expected(err, schema.typed(loc))
    got = _got(err)
    raw = _Raw(loc, f"expected {expected}, got {got}" if expected else f"{err['msg']}, got {got}")
    raw.too_short = kind == "too_short"
    written = doc.positions.plain.get(loc)
    if kind in ("string_type", "literal_error", "enum") and written is not None:
        raw.hint = (
            f"YAML reads the unquoted {written} as {_yaml_type(err.get('input'))}; "
            f"write it in quotes if you meant the text: '{written}'"
        )
    return raw


def _yaml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, date):
        return "a date"
    return show(value)


def _place(raws: list[_Raw], doc: Document, schema: _Schema) -> list[PolicyFinding]:
    # A misspelt key also makes the right one "missing": say it once, as the misspelling.
    suggested = {(r.path[:-1], r.suggestion) for r in raws if r.suggestion}
    findings: list[PolicyFinding] = []
    seen: set[tuple[str, str]] = set()
    for raw in raws:
        if raw.missing and (raw.path[:-1], raw.missing) in suggested:
            continue
        if raw.missing:
            parent = raw.path[:-1]
            where, shown = doc.positions.key(parent), parent
        elif raw.at_key:
            where, shown = doc.positions.key(raw.path), raw.path[:-1]
        else:
            where, shown = doc.positions.value(raw.path), raw.path
        path_text = field_path(shown)
        if (path_text, raw.message) in seen:
            continue
        seen.add((path_text, raw.message))
        findings.append(
            PolicyFinding(
                raw.message,
                source=doc.source,
                line=where.line,
                column=where.column,
                field=path_text or None,
                rule_id=_rule_id_at(doc.data, raw.path),
                hint=raw.hint,
            )
        )
    return findings


def _is_duration(typed: _Typed | None) -> bool:
    return typed is not None and any(
        getattr(m, "func", None) is parse_duration for m in _unwrap(*typed)[1]
    )


def _replace_bad_durations(
    data: Any, schema: _Schema, remap: Callable[[Path], Path]
) -> tuple[Any, list[_Raw]]:
    """``data`` with durations that are neither text nor a number replaced by 0, and a
    finding for each.

    ``parse_duration`` raises AttributeError (not ValueError) for a list, a mapping or
    null, which pydantic lets through instead of reporting; replacing the value lets
    validation go on to report every other error in the document too.
    """
    found: list[_Raw] = []

    def walk(node: Any, here: Path) -> Any:
        if (isinstance(node, Mapping | list | date) or node is None) and _is_duration(
            schema.typed(remap(here))
        ):
            found.append(
                _Raw(remap(here), f"expected a duration like '30m' or '1h30m', got {show(node)}")
            )
            return 0
        if isinstance(node, Mapping):
            return {key: walk(child, (*here, key)) for key, child in node.items()}
        if isinstance(node, list):
            return [walk(child, (*here, i)) for i, child in enumerate(node)]
        return node

    return walk(data, ()), found


_M = TypeVar("_M", bound=BaseModel)


def _validate(
    model: type[_M], data: Any, doc: Document, schema: _Schema, remap: Callable[[Path], Path]
) -> tuple[_M | None, list[_Raw]]:
    raws: list[_Raw] = []
    try:
        value = model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    except (AttributeError, TypeError) as exc:
        data, raws = _replace_bad_durations(data, schema, remap)
        if not raws:
            return None, [_Raw((), f"cannot validate this document: {exc}")]
        return None, raws + _validate(model, data, doc, schema, remap)[1]
    else:
        return value, []
    for err in errors:
        err["loc"] = remap(tuple(err["loc"]))
        raws.append(_translate(err, schema, doc))
    # "at least 1 item, got 1" says nothing when that item is invalid: its own errors do.
    return None, [
        r
        for r in raws
        if not (
            r.too_short and any(o.path[: len(r.path)] == r.path and o.path != r.path for o in raws)
        )
    ]


def _header(doc: Document, expected_kind: str) -> list[PolicyFinding]:
    """apiVersion and kind, checked first: a wrong kind would make every key look unknown."""
    data = doc.data
    out: list[PolicyFinding] = []

    def finding(path: Path, message: str, hint: str | None = None) -> None:
        where = doc.positions.value(path)
        out.append(
            PolicyFinding(
                message,
                source=doc.source,
                line=where.line,
                column=where.column,
                field=field_path(path) or None,
                hint=hint,
            )
        )

    if not isinstance(data, Mapping):
        finding((), f"a document must be a mapping (apiVersion, kind, ...), got {show(data)}")
        return out
    kind = data.get("kind")
    if "kind" not in data:
        finding((), f"missing required key 'kind' (expected {expected_kind!r})")
    elif kind != expected_kind:
        hint: str | None
        if kind in KINDS:
            hint = "policies and workloads are loaded from separate paths (--workloads)"
        else:
            close = did_you_mean(str(kind), KINDS)
            hint = f"did you mean {close!r}?" if close else None
        finding(("kind",), f"expected kind {expected_kind!r} here, got {show(kind)}", hint)
    version = data.get("apiVersion")
    if "apiVersion" not in data:
        finding((), f"missing required key 'apiVersion' (expected {API_VERSION!r})")
    elif version != API_VERSION:
        finding(
            ("apiVersion",),
            f"unsupported apiVersion {show(version)}; this arbiter reads {API_VERSION!r}",
        )
    return out


def policy_from_document(doc: Document) -> tuple[Policy | None, list[PolicyFinding]]:
    """Pass 2 for a policy document: the policy, or None and every error found in it."""
    header = _header(doc, POLICY_KIND)
    if header:
        return None, header
    policy, raws = _validate(Policy, doc.data, doc, _POLICY_SCHEMA, lambda loc: loc)
    return policy, _place(raws, doc, _POLICY_SCHEMA)


def model_from_document(model: type[_M], doc: Document) -> tuple[_M | None, list[PolicyFinding]]:
    """Validate a document against any closed model (e.g. a policy test file), with the
    same file:line:col findings and did-you-mean hints as policies."""
    if not isinstance(doc.data, Mapping):
        where = doc.positions.value(())
        return None, [
            PolicyFinding(
                f"a document must be a mapping, got {show(doc.data)}",
                source=doc.source,
                line=where.line,
                column=where.column,
            )
        ]
    schema = _Schema(model, {})
    value, raws = _validate(model, doc.data, doc, schema, lambda loc: loc)
    return value, _place(raws, doc, schema)


def _workload_loc(loc: Path) -> Path:
    if loc and loc[0] in _ENVELOPE_FIELDS:
        return ("metadata", *loc)
    return ("spec", *loc)


def workload_from_document(doc: Document) -> tuple[Workload | None, list[PolicyFinding]]:
    """Pass 2 for a workload document: the workload, or None and every error found."""
    header = _header(doc, WORKLOAD_KIND)
    if header:
        return None, header
    _, raws = _validate(WorkloadFile, doc.data, doc, _WORKLOAD_SCHEMA, lambda loc: loc)
    spec, metadata = doc.data.get("spec"), doc.data.get("metadata")
    workload = None
    if isinstance(spec, Mapping):
        for key in _ENVELOPE_FIELDS:
            if key in spec:
                raws.append(
                    _Raw(
                        ("spec", key),
                        f"unknown key {key!r}",
                        at_key=True,
                        hint=f"the workload's {key} goes in metadata.{key}",
                    )
                )
        fields = {k: v for k, v in spec.items() if k not in _ENVELOPE_FIELDS}
        if isinstance(metadata, Mapping):
            fields.update({k: metadata[k] for k in _ENVELOPE_FIELDS if k in metadata})
        workload, more = _validate(Workload, fields, doc, _WORKLOAD_SCHEMA, _workload_loc)
        raws.extend(more)
    findings = _place(raws, doc, _WORKLOAD_SCHEMA)
    return (workload if not findings else None), findings


# -------------------------------------------------------------------- JSON Schemas

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_DURATION_SCHEMA: JsonSchemaValue = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*([mM][sS]|[sSmMhHdD])\s*)+$"},
    ],
    "description": "Seconds, or a duration like '90s', '30m', '1h30m', '2d'.",
}


class _FileSchema(GenerateJsonSchema):
    """Pydantic's generator, plus what it cannot see: durations are written as text."""

    def function_before_schema(
        self, schema: core_schema.BeforeValidatorFunctionSchema
    ) -> JsonSchemaValue:
        if schema["function"]["function"] is parse_duration:
            return dict(_DURATION_SCHEMA)
        return super().function_before_schema(schema)


_JSON_SCHEMA_BOUNDS = {
    "ge": "minimum",
    "gt": "exclusiveMinimum",
    "le": "maximum",
    "lt": "exclusiveMaximum",
}


def _standard_bounds(schema: Any) -> Any:
    """Bounds as JSON Schema keywords.

    Pydantic writes ``ge``/``le`` verbatim when the bound sits on a validated type
    (``Finite`` is a float with an after-validator); JSON Schema ignores those keys, so an
    editor would accept ``share: 7``.
    """
    if isinstance(schema, dict):
        numeric = schema.get("type") in ("number", "integer")
        return {
            (_JSON_SCHEMA_BOUNDS.get(k, k) if numeric else k): _standard_bounds(v)
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_standard_bounds(v) for v in schema]
    return schema


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy document (``policies/schema/policy.schema.json``)."""
    body = Policy.model_json_schema(by_alias=True, schema_generator=_FileSchema)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": f"arbiter {POLICY_KIND} ({API_VERSION})",
        **{k: _standard_bounds(v) for k, v in body.items() if k != "title"},
    }


def workload_json_schema() -> dict[str, Any]:
    """The JSON Schema of a workload document (``policies/schema/workload.schema.json``).

    ``spec`` is :class:`Workload` without ``name`` and ``labels`` (which are in
    ``metadata``), sized by exactly one of ``replicas`` and ``required_tokens_per_second``.
    """
    envelope = WorkloadFile.model_json_schema(by_alias=True, schema_generator=_FileSchema)
    spec = Workload.model_json_schema(by_alias=True, schema_generator=_FileSchema)
    defs = {**envelope.pop("$defs", {}), **spec.pop("$defs", {})}
    for key in _ENVELOPE_FIELDS:
        spec["properties"].pop(key, None)
    spec["required"] = [r for r in spec.get("required", []) if r not in _ENVELOPE_FIELDS]
    spec["title"] = "WorkloadSpec"
    spec["oneOf"] = [{"required": ["replicas"]}, {"required": ["required_tokens_per_second"]}]
    defs["WorkloadSpec"] = spec
    envelope["properties"]["spec"] = {"$ref": "#/$defs/WorkloadSpec"}
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": f"arbiter {WORKLOAD_KIND} ({API_VERSION})",
        **{k: v for k, v in envelope.items() if k != "title"},
        "$defs": _standard_bounds(dict(sorted(defs.items()))),
    }


def json_schema_text(kind: Literal["policy", "workload"]) -> str:
    """The schema as committed under ``policies/schema/``: 2-space JSON, final newline."""
    schema = policy_json_schema() if kind == "policy" else workload_json_schema()
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
