"""docs/configuration.md documents every setting the code accepts, and nothing else.

The keys come from the models themselves: :class:`arbiter.config.Settings` for the
config file, and each registered executor's options model for ``[executor.options]``.
A key is documented by a table row whose first cell is its full dotted path
(``daemon.reconcile_seconds``, ``executor.options.template.image``), with a
placeholder in capitals (``NAME``, ``REGION``) for a key the user chooses.
"""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from arbiter import config
from arbiter.executors import EXECUTORS
from arbiter.interruptions import INTERRUPTION_SOURCES

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
PLACEHOLDER = "NAME"


# ------------------------------------------------------------------- the models


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if typing.get_origin(annotation) is Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def model_keys(
    model: type[BaseModel], prefix: str = "", seen: set[type[BaseModel]] | None = None
) -> Iterator[tuple[str, FieldInfo]]:
    """Every leaf key of ``model`` as (dotted path, field). A nested model is walked into
    (a table of models under a ``NAME`` placeholder); a model already walked elsewhere is
    one key (``templates``: "the keys of ``template``")."""
    seen = set() if seen is None else seen
    seen.add(model)
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:
            inner = _models_in(typing.get_args(annotation)[1])
            if inner and inner[0] not in seen:
                yield from model_keys(inner[0], f"{path}.{PLACEHOLDER}.", seen)
                continue
        else:
            inner = _models_in(annotation)
            if inner and inner[0] not in seen:
                yield from model_keys(inner[0], f"{path}.", seen)
                continue
        yield path, field


def executor_options_models() -> dict[str, type[BaseModel]]:
    """Each registered executor's options model: the model in its module that parses
    ``[executor.options]`` (an executor without one takes no options)."""
    found: dict[str, type[BaseModel]] = {}
    for kind, target in EXECUTORS.items():
        module = importlib.import_module(target.partition(":")[0])
        parsers = [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseModel)
            and cls.__module__ == module.__name__
            and "parse" in cls.__dict__
        ]
        assert len(parsers) <= 1, f"{kind}: more than one options model: {parsers}"
        if parsers:
            found[kind] = parsers[0]
    return found


def settings_keys() -> dict[str, FieldInfo]:
    return dict(model_keys(config.Settings))


def executor_keys(kind: str) -> dict[str, FieldInfo]:
    return dict(model_keys(executor_options_models()[kind], "executor.options."))


# --------------------------------------------------------------------- the doc


@dataclass(frozen=True)
class Row:
    path: str
    default: str
    heading: str


def _normalise(path: str) -> str:
    """``sources.NAME.kind``, ``clusters.REGION.context``: any capitalised part is a
    placeholder."""
    return ".".join(PLACEHOLDER if re.fullmatch(r"[A-Z][A-Z_]*", p) else p for p in path.split("."))


def doc_rows() -> list[Row]:
    """Every reference row of the doc: ``| `dotted.path` | type | default | meaning |``."""
    rows, heading, fenced = [], "", False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        match = re.fullmatch(r"`([a-z_]+(?:\.[A-Za-z_]+)+)`", cells[0]) if cells else None
        if match and len(cells) == 4:
            rows.append(Row(_normalise(match.group(1)), cells[2], heading))
    return rows


def _executor_kind(heading: str) -> str | None:
    match = re.search(r'`kind = "([a-z-]+)"`', heading)
    return match.group(1) if match else None


def rows_for(kind: str | None) -> dict[str, Row]:
    """The rows of the settings reference (``None``) or of one executor's options."""
    return {r.path: r for r in doc_rows() if _executor_kind(r.heading) == kind}


def _scopes() -> list[tuple[str | None, dict[str, FieldInfo]]]:
    return [(None, settings_keys())] + [(k, executor_keys(k)) for k in executor_options_models()]


# ------------------------------------------------------------------- the tests


def test_the_key_walker_finds_every_section_and_every_executor_with_options() -> None:
    keys = settings_keys()
    assert {"daemon.reconcile_seconds", "sources.NAME.stale_after", "executor.options"} <= set(keys)
    assert {p.split(".")[0] for p in keys} == set(config.Settings.model_fields)
    assert {"local", "kubernetes", "cloud"} <= set(executor_options_models())
    assert "executor.options.gcp.accelerators.NAME.count" in executor_keys("cloud")
    assert "executor.options.templates" in executor_keys("kubernetes")


@pytest.mark.parametrize("kind", [None, *sorted(executor_options_models())])
def test_every_key_the_code_accepts_has_a_row_in_the_configuration_reference(
    kind: str | None,
) -> None:
    keys = settings_keys() if kind is None else executor_keys(kind)
    missing = sorted(set(keys) - set(rows_for(kind)))
    assert missing == [], f"docs/configuration.md does not document {missing}"


@pytest.mark.parametrize("kind", [None, *sorted(executor_options_models())])
def test_every_key_the_configuration_reference_documents_exists(kind: str | None) -> None:
    keys = settings_keys() if kind is None else executor_keys(kind)
    unknown = sorted(set(rows_for(kind)) - set(keys))
    assert unknown == [], f"docs/configuration.md documents keys the code lacks: {unknown}"


def test_every_executor_without_options_says_so() -> None:
    without = set(EXECUTORS) - set(executor_options_models())
    headings = {_executor_kind(line) for line in DOC.read_text().splitlines() if line[:1] == "#"}
    assert without <= headings


def _documented_default(cell: str) -> Any:
    """The first TOML value in backticks of a default cell, or ``...`` for prose."""
    match = re.search(r"`([^`]+)`", cell)
    if match is None:
        return ...
    try:
        return tomllib.loads(f"v = {match.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        return ...


def _validate(field: FieldInfo, value: Any) -> Any:
    annotation = (
        Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    )
    return TypeAdapter(annotation).validate_python(value)


@pytest.mark.parametrize("kind", [None, *sorted(executor_options_models())])
def test_every_documented_default_is_the_models_default(kind: str | None) -> None:
    """ "required" only for a required key; a default written as a TOML value, read and
    validated as the model would, equals the model's default (a default of None, or one
    computed at run time, is described in words)."""
    keys = settings_keys() if kind is None else executor_keys(kind)
    wrong = []
    for path, row in rows_for(kind).items():
        field = keys.get(path)
        if field is None:
            continue  # reported by the test above
        if field.is_required() or row.default == "required":
            if not (field.is_required() and row.default == "required"):
                wrong.append(f"{path}: required in the code: {field.is_required()}")
            continue
        default = field.get_default(call_default_factory=True)
        written = _documented_default(row.default)
        if default is None or written is ...:
            continue
        if _validate(field, written) != default:
            wrong.append(f"{path}: documented {row.default}, the code says {default!r}")
    assert wrong == []


def test_every_registered_kind_and_environment_alias_is_named() -> None:
    text = DOC.read_text(encoding="utf-8")
    names = [
        *config.SOURCE_KINDS,
        *EXECUTORS,
        *INTERRUPTION_SOURCES,
        *config.ENV_ALIASES,
        *config.NOT_SETTINGS,
        *(m.value for m in config.Mode),
    ]
    assert [n for n in names if f"`{n}`" not in text] == []
