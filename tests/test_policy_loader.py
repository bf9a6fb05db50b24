"""Reading policy and workload files: three passes, every finding at file:line:col."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arbiter.catalog import load_catalog
from arbiter.domain.policy_checks import LoadedPolicy, References, check_policies
from arbiter.domain.policy_files import (
    InvalidPolicyFiles,
    PolicyFinding,
    Severity,
    json_schema_text,
    policy_from_document,
    workload_from_document,
)
from arbiter.domain.regions import RegionCatalog
from arbiter.errors import ArbiterError, PolicyError
from arbiter.policy_loader import (
    MAX_DEPTH,
    MAX_DOCUMENTS,
    MAX_FILE_BYTES,
    check_files,
    load_policies,
    load_workloads,
    parse_documents,
    references,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "policies"
TODAY = date(2025, 6, 2)

POLICY = """\
apiVersion: arbiter/v1
kind: PlacementPolicy
metadata:
  name: eu-llm-inference
select:
  labels: {class: llm-inference}
constraints:
  - id: eu-residency
    sovereignty:
      data_classes: [personal-eu]
      jurisdictions: [EU, EEA]
objective:
  minimize: effective_cost
"""

CARBON = POLICY.replace(
    "objective:",
    "  - id: carbon-cap\n    mode: audit\n    carbon: {max_gco2_per_kwh: 300}\nobjective:",
)
"""POLICY with a second rule, lines 12-14, that may have exceptions."""

WORKLOAD = """\
apiVersion: arbiter/v1
kind: Workload
metadata: {name: chat-api, labels: {class: llm-inference}}
spec:
  data_class: personal-eu
  gpus_per_replica: 8
  gpu_options: [{model: H100, tokens_per_second: 2500}]
  replicas: 3
  user_locations: [{name: paris, latitude: 48.86, longitude: 2.35, share: 1}]
"""


@pytest.fixture(scope="module")
def catalog() -> RegionCatalog:
    return load_catalog()


@pytest.fixture(scope="module")
def refs(catalog: RegionCatalog) -> References:
    return references(catalog)


def write(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def policy_findings(
    tmp_path: Path, text: str | bytes, catalog: RegionCatalog, **kwargs: Any
) -> list[PolicyFinding]:
    path = write(tmp_path, "policy.yaml", text)
    return validate([path], today=TODAY, catalog=catalog, **kwargs)


def workload_findings(
    tmp_path: Path, text: str | bytes, catalog: RegionCatalog
) -> list[PolicyFinding]:
    path = write(tmp_path, "workloads/w.yaml", text)
    empty = tmp_path / "no-policies"
    empty.mkdir(exist_ok=True)
    return validate([empty], [path], today=TODAY, catalog=catalog)


def only(findings: Sequence[PolicyFinding]) -> PolicyFinding:
    assert len(findings) == 1, [str(f) for f in findings]
    return findings[0]


def errors(findings: Sequence[PolicyFinding]) -> list[PolicyFinding]:
    return [f for f in findings if f.is_error]


# ------------------------------------------------------------------ loading and origins


def test_valid_policies_load_with_the_file_of_each_policy_and_the_line_of_each_rule(
    catalog: RegionCatalog,
) -> None:
    loaded = load_policies([DATA / "good"], today=TODAY, catalog=catalog)
    assert [p.metadata.name for p in loaded] == ["batch-embed", "small-gpus", "eu-llm-inference"]
    source = str(DATA / "good" / "eu-llm-inference.yaml")
    assert loaded.policy_origins["eu-llm-inference"] == source
    assert loaded.rule_origins["p95-latency"] == f"{source}:20"
    assert loaded.origins.rules["p95-latency"].cite == "eu-llm-inference.yaml:20"
    assert loaded.origins.locate("p95-latency", "latency", "p95_ms_max").line == 21
    assert str(loaded.origins.documents["small-gpus"]) == f"{DATA / 'good' / 'batch.yaml'}:21"


def test_several_documents_in_one_file_are_all_loaded() -> None:
    loaded = load_workloads([DATA / "workloads" / "llm.yaml"])
    assert [w.name for w in loaded] == ["chat-api", "doc-translate"]
    assert loaded.origins.documents["doc-translate"].line == 17


def test_a_workload_file_maps_metadata_and_spec_onto_a_workload() -> None:
    chat = next(w for w in load_workloads([DATA / "workloads"]) if w.name == "chat-api")
    assert chat.name == "chat-api"
    assert chat.labels == {"class": "llm-inference", "tenant-region": "eu"}
    assert chat.gpus_per_replica == 8 and chat.replicas == 3
    assert chat.throughput_on("A100-80GB") == 1000
    assert [u.name for u in chat.user_locations] == ["paris", "berlin"]
    assert chat.warmup_seconds == 600 and chat.model_size_gib == 140


def test_a_directory_walk_reads_yaml_and_yml_and_skips_policy_tests_and_other_files(
    tmp_path: Path,
) -> None:
    write(tmp_path, "a.yaml", WORKLOAD)
    write(tmp_path, "deeper/b.yml", WORKLOAD.replace("chat-api", "chat-b"))
    write(tmp_path, "a.test.yaml", "not: [valid")
    write(tmp_path, "a.test.yml", "not: [valid")
    write(tmp_path, "notes.txt", "\t{[")
    assert [w.name for w in load_workloads([tmp_path])] == ["chat-api", "chat-b"]


def test_a_single_path_given_as_text_is_one_path_not_its_characters(
    catalog: RegionCatalog,
) -> None:
    assert len(load_policies(str(DATA / "good"), today=TODAY, catalog=catalog)) == 3


def test_empty_documents_such_as_a_trailing_separator_are_skipped(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    assert policy_findings(tmp_path, "---\n" + POLICY + "---\n", catalog) == []


def test_load_refuses_every_file_when_one_has_an_error_and_carries_every_finding(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    write(tmp_path, "good.yaml", POLICY)
    bad = POLICY.replace("eu-llm-inference", "x").replace("eu-residency", "x-residency")
    write(tmp_path, "bad.yaml", bad.replace("EEA", "EUR").split("objective:")[0])
    write(tmp_path, "worse.yaml", "kind: [")
    with pytest.raises(InvalidPolicyFiles) as raised:
        load_policies([tmp_path], today=TODAY, catalog=catalog)
    exc = raised.value
    assert isinstance(exc, PolicyError) and isinstance(exc, ArbiterError)
    assert {Path(f.source).name for f in exc.errors} == {"bad.yaml", "worse.yaml"}
    assert "unknown jurisdiction 'EUR'" in str(exc) and "worse.yaml:1:" in str(exc)
    assert len(str(exc).splitlines()) == 1 + len(exc.errors)


def test_warnings_do_not_stop_loading_and_are_kept_on_the_result(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    text = POLICY.replace("[EU, EEA]", "[EU, EEA]\n      exclude_regions: [aws:eu-south-9]")
    loaded = load_policies([write(tmp_path, "p.yaml", text)], today=TODAY, catalog=catalog)
    assert len(loaded) == 1
    (warning,) = loaded.warnings
    assert warning.severity is Severity.WARNING and warning.rule_id == "eu-residency"


# ------------------------------------------------------------------ pass 1: structure


def test_a_yaml_syntax_error_names_the_file_line_and_column(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    f = only(policy_findings(tmp_path, "apiVersion: arbiter/v1\nkind: [PlacementPolicy\n", catalog))
    assert f.source.endswith("policy.yaml") and (f.line, f.column) == (3, 1)
    assert f.message.startswith("invalid YAML: ")


def test_tabs_used_for_indentation_are_explained(tmp_path: Path, catalog: RegionCatalog) -> None:
    f = only(policy_findings(tmp_path, "metadata:\n\tname: x\n", catalog))
    assert (f.line, f.column) == (2, 1)
    assert f.hint is not None and "spaces" in f.hint


def test_a_document_that_is_not_a_mapping_is_an_error(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    found = policy_findings(tmp_path, POLICY + "---\n- a\n- b\n---\njust text\n", catalog)
    assert [(f.line, f.message) for f in found] == [
        (15, "a document must be a mapping (apiVersion, kind, metadata, ...), got a list"),
        (18, 'a document must be a mapping (apiVersion, kind, metadata, ...), got "just text"'),
    ]


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("apiVersion: arbiter/v1\napiVersion: arbiter/v1\n", 2, "apiVersion"),
        ("metadata:\n  name: a\n  owners: []\n  name: b\n", 4, "metadata.name"),
        (
            "constraints:\n  - id: a\n    carbon: {max_gco2_per_kwh: 1, max_gco2_per_kwh: 2}\n",
            3,
            "constraints[0].carbon.max_gco2_per_kwh",
        ),
    ],
)
def test_duplicate_keys_are_errors_at_any_depth(
    tmp_path: Path, catalog: RegionCatalog, text: str, line: int, field: str
) -> None:
    f = only(policy_findings(tmp_path, text, catalog))
    assert f.line == line and f.field == field
    assert f.message.startswith(f"duplicate key {field.rsplit('.', 1)[-1]!r} (first on line ")


def test_every_duplicate_key_in_a_file_is_reported(tmp_path: Path, catalog: RegionCatalog) -> None:
    text = POLICY + "kind: PlacementPolicy\nobjective: {}\n"
    assert [f.field for f in policy_findings(tmp_path, text, catalog)] == ["kind", "objective"]


def test_billion_laughs_fails_fast_without_expanding(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    f = only(validate([DATA / "bad" / "laughs.yaml"], today=TODAY, catalog=catalog))
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "YAML anchors (&a) are not allowed" in f.message and (f.line, f.column) == (5, 4)
    assert elapsed < 2 and peak < 20 * 1024 * 1024


def test_aliases_are_refused_even_when_harmless(tmp_path: Path, catalog: RegionCatalog) -> None:
    # An alias to an anchor defined earlier is refused at the anchor, the first of the two.
    f = only(policy_findings(tmp_path, "a: &x 1\nb: *x\n", catalog))
    assert f.line == 1 and "anchors" in f.message
    docs, found = parse_documents(b"b: *x\n", source="alias.yaml")
    assert docs == [] and "aliases (*x) are not allowed" in only(found).message


def test_deep_nesting_is_refused_before_the_parser_recurses(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    f = only(policy_findings(tmp_path, deep, catalog))
    assert f.message == f"nested more than {MAX_DEPTH} levels deep"


def test_a_file_over_one_mebibyte_is_refused_unread(tmp_path: Path, catalog: RegionCatalog) -> None:
    f = only(policy_findings(tmp_path, b"#" * (MAX_FILE_BYTES + 1), catalog))
    assert "larger than 1048576 bytes" in f.message and f.line is None
    _, found = parse_documents(b" " * (MAX_FILE_BYTES + 1), source="big.yaml")
    assert "larger than" in only(found).message


def test_too_many_documents_are_refused(tmp_path: Path, catalog: RegionCatalog) -> None:
    f = only(policy_findings(tmp_path, "---\n" * (MAX_DOCUMENTS + 1), catalog))
    assert f.message == f"more than {MAX_DOCUMENTS} documents"


def test_binary_garbage_is_refused_as_not_text(tmp_path: Path, catalog: RegionCatalog) -> None:
    f = only(policy_findings(tmp_path, bytes(range(256)) * 4, catalog))
    assert f.message.startswith("binary file")
    f = only(policy_findings(tmp_path, b"name: caf\xe9\n", catalog))
    assert f.message == "not UTF-8 text: byte 0xe9 at offset 9" and f.line == 1


def test_control_characters_are_refused_with_their_position(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    f = only(policy_findings(tmp_path, "a: 1\nb: x\x07y\n", catalog))
    assert f.message == "invalid YAML: character U+0007 is not allowed in YAML text"
    assert (f.line, f.column) == (2, 5)


def test_python_tags_are_refused_and_never_executed(tmp_path: Path, catalog: RegionCatalog) -> None:
    marker = tmp_path / "pwned"
    text = f'apiVersion: !!python/object/apply:os.system ["touch {marker}"]\n'
    f = only(policy_findings(tmp_path, text, catalog))
    assert "unsupported YAML tag" in f.message and f.field == "apiVersion"
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: !!binary aGVsbG8=\n", "unsupported YAML tag 'tag:yaml.org,2002:binary'"),
        ("a: !custom 1\n", "unsupported YAML tag '!custom'"),
        ("a: !!set {x}\n", "unsupported YAML tag 'tag:yaml.org,2002:set'"),
        ("<<: {a: 1}\n", "merge keys (<<) are not allowed; write the keys out"),
        ("1: one\n", "YAML reads the key 1 as a number; keys must be text"),
        ("on: yes\n", "YAML reads the key on as a boolean; keys must be text"),
        ("? [a]\n: b\n", "a key must be text, not a mapping or a list"),
        ("expires: 2025-02-30\n", 'cannot read "2025-02-30": day is out of range for month'),
    ],
)
def test_yaml_features_policies_do_not_need_are_refused(
    tmp_path: Path, catalog: RegionCatalog, text: str, message: str
) -> None:
    assert only(policy_findings(tmp_path, text, catalog)).message == message


def test_a_symlink_out_of_the_tree_is_refused_and_not_read(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    outside = tmp_path / "outside"
    write(outside, "secret.yaml", POLICY)
    tree = tmp_path / "policies"
    write(tree, "ok.yaml", POLICY.replace("eu-llm-inference", "ok").replace("eu-residency", "r"))
    (tree / "escape.yaml").symlink_to(outside / "secret.yaml")
    (tree / "escape-dir").symlink_to(outside, target_is_directory=True)
    result = check_files([tree], today=TODAY, catalog=catalog)
    assert [(Path(f.source).name, f.message.split(":")[0]) for f in result.findings] == [
        ("escape-dir", f"symbolic link leads out of {tree}"),
        ("escape.yaml", f"symbolic link leads out of {tree}"),
    ]
    assert [p.metadata.name for p in result.policies] == ["ok"]
    assert all(f.is_error for f in result.findings)


def test_a_symlink_inside_the_tree_is_read_once(tmp_path: Path, catalog: RegionCatalog) -> None:
    write(tmp_path, "real/p.yaml", POLICY)
    (tmp_path / "alias.yaml").symlink_to(tmp_path / "real" / "p.yaml")
    (tmp_path / "alias-dir").symlink_to(tmp_path / "real", target_is_directory=True)
    assert len(load_policies([tmp_path], today=TODAY, catalog=catalog)) == 1


def test_a_broken_symlink_or_missing_path_is_an_error(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    (tmp_path / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    found = validate([tmp_path, tmp_path / "missing"], today=TODAY, catalog=catalog)
    assert [f.message for f in found] == ["broken symbolic link", "no such file or directory"]


def test_a_fifo_is_not_opened(tmp_path: Path, catalog: RegionCatalog) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")
    assert only(validate([tmp_path], today=TODAY, catalog=catalog)).message == "not a regular file"


# -------------------------------------------------------------------- pass 2: schema

_POLICY_LEVELS = [
    (),
    ("metadata",),
    ("select",),
    ("constraints", 0),
    ("constraints", 0, "sovereignty"),
    ("constraints", 1, "accelerator"),
    ("constraints", 2, "latency"),
    ("constraints", 3, "carbon"),
    ("redundancy",),
    ("redundancy", "spread"),
    ("capacity",),
    ("capacity", "spot"),
    ("budget",),
    ("objective",),
    ("migration",),
    ("migration", "min_saving"),
    ("migration", "on_hard_violation"),
    ("exceptions", 0),
]
_WORKLOAD_LEVELS = [
    (),
    ("metadata",),
    ("spec",),
    ("spec", "gpu_options", 0),
    ("spec", "user_locations", 0),
]


def _full_policy() -> dict[str, Any]:
    data = yaml.safe_load((DATA / "good" / "eu-llm-inference.yaml").read_text())
    data["budget"] = {"max_usd_per_hour": 500}
    return data  # type: ignore[no-any-return]


def _full_workload() -> dict[str, Any]:
    data: dict[str, Any] = next(yaml.safe_load_all((DATA / "workloads" / "llm.yaml").read_text()))
    return data


def _at(data: Any, path: Sequence[str | int]) -> Any:
    for part in path:
        data = data[part]
    return data


def _field(path: Sequence[str | int]) -> str | None:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or None


@pytest.mark.parametrize("level", _POLICY_LEVELS, ids=lambda p: _field(p) or "top")
def test_an_unknown_key_is_an_error_at_every_level_of_a_policy(
    tmp_path: Path, catalog: RegionCatalog, level: tuple[str | int, ...]
) -> None:
    data = _full_policy()
    _at(data, level)["frobnicate"] = 1
    text = yaml.safe_dump(data, sort_keys=False)
    f = only(policy_findings(tmp_path, text, catalog))
    assert (f.field, f.message) == (_field(level), "unknown key 'frobnicate'")
    assert f.line is not None and f.column is not None
    assert text.splitlines()[f.line - 1][f.column - 1 :].startswith("frobnicate:")
    assert f.hint is not None and f.hint.startswith("expected one of: ")


@pytest.mark.parametrize("level", _WORKLOAD_LEVELS, ids=lambda p: _field(p) or "top")
def test_an_unknown_key_is_an_error_at_every_level_of_a_workload(
    tmp_path: Path, catalog: RegionCatalog, level: tuple[str | int, ...]
) -> None:
    data = _full_workload()
    _at(data, level)["frobnicate"] = 1
    text = yaml.safe_dump(data, sort_keys=False)
    f = only(workload_findings(tmp_path, text, catalog))
    assert (f.field, f.message) == (_field(level), "unknown key 'frobnicate'")
    assert f.line is not None and f.column is not None
    assert text.splitlines()[f.line - 1][f.column - 1 :].startswith("frobnicate:")


def test_a_misspelt_key_gets_a_did_you_mean_and_is_not_also_reported_missing(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    f = only(policy_findings(tmp_path, POLICY.replace("jurisdictions:", "jurisdiction:"), catalog))
    assert (f.line, f.column) == (11, 7)
    assert f.field == "constraints[0].sovereignty"
    assert f.message == "unknown key 'jurisdiction'" and f.hint == "did you mean 'jurisdictions'?"
    assert f.rule_id == "eu-residency"


def test_a_missing_key_points_at_the_mapping_that_lacks_it(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    text = POLICY.replace("      jurisdictions: [EU, EEA]\n", "")
    f = only(policy_findings(tmp_path, text, catalog))
    assert (f.line, f.field) == (9, "constraints[0].sovereignty")
    assert f.message == "missing required key 'jurisdictions'"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            "carbon: {max_gco2_per_kwh: 300g}",
            "constraints[0].carbon.max_gco2_per_kwh",
            'expected a number ≥ 0, got "300g"',
        ),
        (
            "accelerator: {any_of: [H100], per_replica: eight}",
            "constraints[0].accelerator.per_replica",
            'expected a whole number > 0, got "eight"',
        ),
        (
            "accelerator: {any_of: [H100], per_replica: 0}",
            "constraints[0].accelerator.per_replica",
            "expected a whole number > 0, got 0",
        ),
        (
            "accelerator: {any_of: []}",
            "constraints[0].accelerator.any_of",
            "expected at least 1 item, got 0 items",
        ),
        (
            "latency: {p95_ms_max: 100, from: paris}",
            "constraints[0].latency.from",
            'expected a list, got "paris"',
        ),
        (
            "latency: {p95_ms_max: .inf}",
            "constraints[0].latency.p95_ms_max",
            "must be a finite number, got .inf",
        ),
        ("latency: 100", "constraints[0].latency", "expected a mapping, got 100"),
        (
            "mode: warn\n    carbon: {max_gco2_per_kwh: 1}",
            "constraints[0].mode",
            "expected one of 'enforce' or 'audit', got \"warn\"",
        ),
        (
            "sovereignty: {data_classes: [x], jurisdictions: [EU], exclude_regions: [eu-west-1]}",
            "constraints[0].sovereignty.exclude_regions[0]",
            "expected a region written provider:region, like 'aws:eu-central-1', got \"eu-west-1\"",
        ),
    ],
)
def test_a_wrong_value_says_what_was_expected_and_what_was_found(
    tmp_path: Path, catalog: RegionCatalog, body: str, field: str, message: str
) -> None:
    text = f"{POLICY.split('constraints:')[0]}constraints:\n  - id: rule\n    {body}\n"
    f = only(policy_findings(tmp_path, text, catalog))
    assert (f.field, f.message, f.line) == (field, message, 9)


def test_an_unquoted_no_is_explained_as_yaml_reading_a_boolean(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    f = only(policy_findings(tmp_path, POLICY.replace("[EU, EEA]", "[SE, NO]"), catalog))
    assert f.field == "constraints[0].sovereignty.jurisdictions[1]"
    assert f.message == "expected text, got false"
    assert f.hint == (
        "YAML reads the unquoted NO as false; write it in quotes if you meant the text: 'NO'"
    )


@pytest.mark.parametrize(
    ("header", "message", "hint"),
    [
        (
            "kind: PlacementPolcy",
            "expected kind 'PlacementPolicy' here, got \"PlacementPolcy\"",
            "did you mean 'PlacementPolicy'?",
        ),
        (
            "kind: Workload",
            "expected kind 'PlacementPolicy' here, got \"Workload\"",
            "policies and workloads are loaded from separate paths (--workloads)",
        ),
        (
            "apiVersion: arbiter/v2",
            "unsupported apiVersion \"arbiter/v2\"; this arbiter reads 'arbiter/v1'",
            None,
        ),
    ],
)
def test_a_wrong_kind_or_version_is_one_error_not_one_per_key(
    tmp_path: Path, catalog: RegionCatalog, header: str, message: str, hint: str | None
) -> None:
    key = header.split(":")[0]
    text = "\n".join(header if line.startswith(key) else line for line in POLICY.splitlines())
    f = only(policy_findings(tmp_path, text, catalog))
    assert (f.field, f.message, f.hint) == (key, message, hint)


def test_a_constraint_needs_exactly_one_body(tmp_path: Path, catalog: RegionCatalog) -> None:
    two = "  - id: two\n    carbon: {max_gco2_per_kwh: 1}\n    latency: {p95_ms_max: 1}\n"
    f = only(policy_findings(tmp_path, POLICY.replace("objective:", two + "objective:"), catalog))
    assert (f.field, f.line, f.rule_id) == ("constraints[1]", 12, "two")
    assert f.message.endswith("got latency, carbon")


def test_sovereignty_rules_cannot_be_audit_only(tmp_path: Path, catalog: RegionCatalog) -> None:
    f = only(
        policy_findings(
            tmp_path,
            POLICY.replace("    sovereignty:", "    mode: audit\n    sovereignty:"),
            catalog,
        )
    )
    assert f.message == "sovereignty rules always enforce; mode: audit is not allowed"
    assert f.field == "constraints[0]" and f.rule_id == "eu-residency"


def test_a_rule_id_used_twice_in_one_policy_points_at_the_second(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    text = POLICY.replace(
        "objective:", "  - id: eu-residency\n    carbon: {max_gco2_per_kwh: 1}\nobjective:"
    )
    f = only(policy_findings(tmp_path, text, catalog))
    assert (f.field, f.line, f.message) == (
        "constraints[1].id",
        12,
        "rule id 'eu-residency' is used twice",
    )


def test_an_exception_naming_an_unknown_rule_points_at_it_with_a_suggestion(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    text = POLICY + (
        "exceptions:\n  - {rule: eu-residenc, workloads: [a], reason: r, expires: 2030-01-01}\n"
    )
    f = only(policy_findings(tmp_path, text, catalog))
    assert (f.field, f.line) == ("exceptions[0].rule", 15)
    assert f.message == "exception names unknown rule 'eu-residenc'"
    assert f.hint == "did you mean 'eu-residency'?"


def test_a_duration_given_as_a_list_is_an_error_and_other_errors_are_still_found(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    text = POLICY + "migration: {cooldown: [6h], sustained_for: ~, max_concurrent_drains: 0}\n"
    found = policy_findings(tmp_path, text, catalog)
    assert [(f.field, f.message) for f in found] == [
        ("migration.cooldown", "expected a duration like '30s', '5m', '1h30m', got a list"),
        ("migration.sustained_for", "expected a duration like '30s', '5m', '1h30m', got null"),
        ("migration.max_concurrent_drains", "expected a whole number ≥ 1, got 0"),
    ]


def test_workload_name_and_labels_belong_in_metadata(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    text = WORKLOAD.replace("  replicas: 3\n", "  replicas: 3\n  name: other\n")
    f = only(workload_findings(tmp_path, text, catalog))
    assert (f.field, f.message) == ("spec", "unknown key 'name'")
    assert f.hint == "the workload's name goes in metadata.name"


def test_workload_errors_are_placed_in_metadata_or_spec(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    text = WORKLOAD.replace("chat-api", "Chat API").replace(
        "replicas: 3", "replicas: 3\n  required_tokens_per_second: 9000"
    )
    found = workload_findings(tmp_path, text, catalog)
    assert [(f.field, f.line) for f in found] == [("metadata.name", 3)]
    text = WORKLOAD.replace("replicas: 3", "replicas: 3\n  required_tokens_per_second: 9000")
    f = only(workload_findings(tmp_path, text, catalog))
    assert (f.field, f.line) == ("spec", 5)
    assert f.message == "give exactly one of replicas or required_tokens_per_second"


def test_every_error_in_a_file_is_reported_not_just_the_first(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    found = validate([DATA / "bad" / "eu-llm-inference.yaml"], today=TODAY, catalog=catalog)
    marked = [
        n + 1
        for n, line in enumerate((DATA / "bad" / "eu-llm-inference.yaml").read_text().splitlines())
        if "# <-" in line
    ]
    assert [f.line for f in found] == marked


# ----------------------------------------------------------------- pass 3: semantics


def test_rule_ids_are_unique_across_policies_and_the_error_names_both_files(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    write(tmp_path, "a.yaml", POLICY)
    write(
        tmp_path,
        "b.yaml",
        POLICY.replace("eu-llm-inference", "other").replace(
            "objective:\n  minimize: effective_cost\n", ""
        ),
    )
    f = only(validate([tmp_path], today=TODAY, catalog=catalog))
    assert f.source == str(tmp_path / "b.yaml") and (f.line, f.field) == (8, "constraints[0].id")
    first = tmp_path / "a.yaml"
    assert f.message == (
        f"rule id 'eu-residency' is also defined by policy 'eu-llm-inference' at {first}:8"
    )


def test_policy_names_are_unique_across_files(tmp_path: Path, catalog: RegionCatalog) -> None:
    write(tmp_path, "a.yaml", POLICY)
    write(
        tmp_path,
        "b.yaml",
        POLICY.replace("eu-residency", "other").replace(
            "objective:\n  minimize: effective_cost\n", ""
        ),
    )
    f = only(validate([tmp_path], today=TODAY, catalog=catalog))
    assert f.message == f"policy name 'eu-llm-inference' is already used in {tmp_path / 'a.yaml'}:4"


@pytest.mark.parametrize(
    ("expires", "severity", "message"),
    [
        ("2025-06-01", Severity.ERROR, "exception to rule 'carbon-cap' expired on 2025-06-01"),
        (
            "2025-06-02",
            Severity.WARNING,
            "exception to rule 'carbon-cap' expires today (2025-06-02)",
        ),
        (
            "2025-06-16",
            Severity.WARNING,
            "exception to rule 'carbon-cap' expires in 14 days (2025-06-16)",
        ),
        ("2025-06-17", None, None),
    ],
)
def test_an_exception_past_its_expiry_date_is_an_error_and_one_near_it_a_warning(
    tmp_path: Path,
    catalog: RegionCatalog,
    expires: str,
    severity: Severity | None,
    message: str | None,
) -> None:
    text = CARBON + (
        f"exceptions:\n  - {{rule: carbon-cap, workloads: [a], reason: r, expires: {expires}}}\n"
    )
    found = policy_findings(tmp_path, text, catalog)
    if severity is None:
        assert found == []
        return
    f = only(found)
    assert (f.severity, f.message, f.field, f.rule_id, f.line) == (
        severity,
        message,
        "exceptions[0].expires",
        "carbon-cap",
        18,
    )


def test_unknown_jurisdictions_get_a_suggestion_and_operator_groups_are_known(
    tmp_path: Path,
) -> None:
    text = POLICY.replace("[EU, EEA]", "[EU, eea, EUR, DACH, XX]")
    found = policy_findings(tmp_path, text, load_catalog())
    assert [f.message for f in found] == [
        f"unknown jurisdiction {name!r}" for name in ("eea", "EUR", "DACH", "XX")
    ]
    assert [f.hint for f in found[:2]] == ["did you mean 'EEA'?", "did you mean 'EU'?"]
    groups = write(tmp_path, "groups.toml", '[groups.DACH]\ncountries = ["DE", "AT", "CH"]\n')
    with_dach = load_catalog(jurisdictions_files=[groups])
    found = policy_findings(tmp_path, text.replace("eea, EUR, ", ""), with_dach)
    assert [f.message for f in found] == ["unknown jurisdiction 'XX'"]


def test_accelerator_names_must_be_canonical(tmp_path: Path, catalog: RegionCatalog) -> None:
    text = POLICY.replace(
        "objective:", "  - id: gpus\n    accelerator: {any_of: [H100-80GB, h200, L4]}\nobjective:"
    )
    found = policy_findings(tmp_path, text, catalog)
    assert [(f.field, f.hint) for f in found] == [
        (
            "constraints[1].accelerator.any_of[0]",
            "did you mean 'H100'? (the canonical name of 'H100-80GB')",
        ),
        (
            "constraints[1].accelerator.any_of[1]",
            "did you mean 'H200'? (the canonical name of 'h200')",
        ),
    ]
    f = only(
        workload_findings(tmp_path, WORKLOAD.replace("model: H100", "model: nvidia-h100"), catalog)
    )
    assert (
        f.field == "spec.gpu_options[0].model" and f.message == "unknown accelerator 'nvidia-h100'"
    )


def test_excluding_a_region_the_catalog_does_not_know_is_a_warning(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    text = POLICY.replace(
        "[EU, EEA]", "[EU, EEA]\n      exclude_regions: [aws:eu-central-1, aws:eu-centrall-1]"
    )
    f = only(policy_findings(tmp_path, text, catalog))
    assert (
        f.severity is Severity.WARNING
        and f.field == "constraints[0].sovereignty.exclude_regions[1]"
    )
    assert f.hint == "did you mean 'aws:eu-central-1'?"


def test_latency_from_naming_no_user_location_of_a_selected_workload_is_a_warning(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    text = POLICY.replace(
        "objective:",
        "  - id: p95\n    latency: {p95_ms_max: 80, from: [paris, pariss]}\nobjective:",
    )
    policy = write(tmp_path, "p.yaml", text)
    workload = write(tmp_path, "w/w.yaml", WORKLOAD)
    f = only(validate([policy], [workload], today=TODAY, catalog=catalog))
    assert f.severity is Severity.WARNING and f.field == "constraints[1].latency.from[1]"
    assert f.message == "workload 'chat-api' has no user location 'pariss' (it has: paris)"
    assert validate([policy], today=TODAY, catalog=catalog) == []  # needs the workloads


def _two_policies(
    tmp_path: Path, select_a: str, select_b: str, section: str = "objective"
) -> list[Path]:
    body = {"objective": "objective: {}\n", "migration": "migration: {cooldown: 1h}\n"}[section]
    paths = []
    for name, select in (("a", select_a), ("b", select_b)):
        text = (
            f"apiVersion: arbiter/v1\nkind: PlacementPolicy\nmetadata: {{name: {name}}}\n"
            f"select: {select}\n{body}"
        )
        paths.append(write(tmp_path, f"{name}.yaml", text))
    return paths


@pytest.mark.parametrize("section", ["objective", "migration"])
def test_two_policies_setting_the_same_section_for_one_workload_is_an_error_naming_both_files(
    tmp_path: Path, catalog: RegionCatalog, section: str
) -> None:
    paths = _two_policies(
        tmp_path, "{labels: {class: llm-inference}}", "{data_classes: [personal-eu]}", section
    )
    workloads = write(tmp_path, "w/w.yaml", WORKLOAD)
    f = only(validate(paths, [workloads], today=TODAY, catalog=catalog))
    assert f.source == str(paths[1]) and (f.line, f.field) == (5, section)
    assert f.message == (
        f"policies 'a' ({paths[0]}:5) and 'b' both define {section!r} for workload chat-api"
    )


def test_overlapping_selectors_are_fine_when_no_workload_is_selected_by_both(
    tmp_path: Path, catalog: RegionCatalog
) -> None:
    paths = _two_policies(tmp_path, "{labels: {class: llm-inference}}", "{data_classes: [public]}")
    assert (
        validate(paths, [write(tmp_path, "w/w.yaml", WORKLOAD)], today=TODAY, catalog=catalog) == []
    )


@pytest.mark.parametrize(
    ("select_a", "select_b", "conflict"),
    [
        ("{}", "{}", True),
        ("{labels: {class: chat}}", "{labels: {class: chat}}", True),
        ("{}", "{labels: {class: chat}}", True),
        ("{labels: {class: chat}}", "{labels: {class: chat, team: a}}", True),
        ("{data_classes: [a, b]}", "{data_classes: [a]}", True),
        ("{workloads: [x]}", "{}", True),
        ("{labels: {class: chat}}", "{labels: {class: batch}}", False),
        ("{labels: {class: chat}}", "{data_classes: [a]}", False),
        ("{workloads: [x]}", "{workloads: [y]}", False),
        ("{data_classes: [a]}", "{data_classes: [a, b]}", True),
    ],
)
def test_without_workloads_only_selectors_that_contain_one_another_conflict(
    tmp_path: Path, catalog: RegionCatalog, select_a: str, select_b: str, conflict: bool
) -> None:
    found = validate(_two_policies(tmp_path, select_a, select_b), today=TODAY, catalog=catalog)
    assert [f.field for f in found] == (["objective"] if conflict else [])


def test_workload_names_are_unique_across_files(tmp_path: Path, catalog: RegionCatalog) -> None:
    write(tmp_path, "w/a.yaml", WORKLOAD)
    write(tmp_path, "w/b.yaml", WORKLOAD)
    (tmp_path / "no-policies").mkdir()
    f = only(validate([tmp_path / "no-policies"], [tmp_path / "w"], today=TODAY, catalog=catalog))
    assert f.message == f"workload name 'chat-api' is already used in {tmp_path / 'w' / 'a.yaml'}:3"


def test_semantic_checks_need_no_files(refs: References) -> None:
    (doc,), _ = parse_documents(POLICY.encode(), source="inline.yaml")
    policy, findings = policy_from_document(doc)
    assert policy is not None and findings == []
    assert check_policies([LoadedPolicy(policy, doc)], None, today=TODAY, references=refs) == []


# ----------------------------------------------------------------------- JSON Schema


@pytest.mark.parametrize("kind", ["policy", "workload"])
def test_the_committed_json_schema_is_the_generated_one(kind: str) -> None:
    committed = ROOT / "policies" / "schema" / f"{kind}.schema.json"
    assert committed.read_text() == json_schema_text(kind), (  # type: ignore[arg-type]
        f"regenerate: arbiter policy schema --kind {kind} > {committed.relative_to(ROOT)}"
    )


def test_the_json_schema_accepts_the_example_files_and_rejects_a_misspelt_key() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    policy = jsonschema.Draft202012Validator(json.loads(json_schema_text("policy")))
    workload = jsonschema.Draft202012Validator(json.loads(json_schema_text("workload")))
    for path in (DATA / "good").glob("*[!t].yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            doc = json.loads(json.dumps(doc, default=str))
            assert list(policy.iter_errors(doc)) == [], path
    for path in (DATA / "workloads").iterdir():
        for doc in yaml.safe_load_all(path.read_text()):
            assert list(workload.iter_errors(doc)) == [], path
    broken = _full_policy()
    broken["constraints"][0]["sovereignty"]["jurisdiction"] = ["EU"]
    assert not policy.is_valid(json.loads(json.dumps(broken, default=str)))
    spec = _full_workload()
    spec["spec"]["user_locations"][0]["share"] = 7
    assert not workload.is_valid(spec)


# ---------------------------------------------------------------------------- fuzzing

_TOKENS = st.sampled_from(
    [
        "apiVersion: arbiter/v1\n",
        "kind: PlacementPolicy\n",
        "kind: Workload\n",
        "metadata:",
        " name: x\n",
        "spec:",
        "constraints:\n",
        "- id: a\n",
        "  ",
        "\n",
        "- ",
        ": ",
        ":",
        "{",
        "}",
        "[",
        "]",
        ",",
        "&a ",
        "*a",
        "---\n",
        "...\n",
        "\t",
        "!!python/object ",
        "!!binary ",
        "!x ",
        "'",
        '"',
        "<<: ",
        "? ",
        "%YAML 1.1\n",
        "|\n",
        ">-\n",
        "#",
        "@",
        "`",
        "\\",
        "2025-02-30",
        "2025-01-01",
        "NO",
        "yes",
        "~",
        "null",
        "1e309",
        ".inf",
        ".nan",
        "0x1F",
        "0o17",
        "1_000",
        "12:30:00",
        "-",
        "\ufeff",
        "\x00",
        "\x85",
        "\u2028",
        "é",
        "jurisdictions: [EU]\n",
        "sovereignty:\n",
        "carbon: {max_gco2_per_kwh: 1}\n",
        "9" * 5000,
    ]
)
_YAMLISH = st.lists(st.one_of(_TOKENS, st.text(max_size=4)), max_size=40).map("".join)


def _never_crashes(data: bytes, refs: References) -> None:
    documents, findings = parse_documents(data, source="fuzz.yaml")
    loaded = []
    for doc in documents:
        policy, more = policy_from_document(doc)
        findings += more + workload_from_document(doc)[1]
        if policy is not None:
            loaded.append(LoadedPolicy(policy, doc))
    findings += check_policies(loaded, None, today=TODAY, references=refs)
    for finding in findings:
        assert isinstance(finding, PolicyFinding) and finding.source == "fuzz.yaml"
        assert str(finding) and json.dumps(finding.as_dict())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_YAMLISH)
def test_random_yaml_ish_text_gives_findings_never_crashes(text: str, refs: References) -> None:
    _never_crashes(text.encode("utf-8", "surrogatepass"), refs)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_give_findings_never_crashes(data: bytes, refs: References) -> None:
    _never_crashes(data, refs)


_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | st.dates()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_PLACES = [(*level, key) for level in _POLICY_LEVELS for key in ("id", "from", "cooldown", "x")] + [
    ("constraints", 1, "accelerator", "any_of", 0),
    ("constraints", 0, "sovereignty", "jurisdictions"),
    ("exceptions", 0, "expires"),
    ("metadata", "name"),
    ("select", "labels"),
]


@settings(max_examples=200, deadline=None)
@given(place=st.sampled_from(_PLACES), value=_VALUES)
def test_any_value_anywhere_in_a_policy_gives_findings_never_crashes(
    place: tuple[str | int, ...], value: Any, refs: References
) -> None:
    data = copy.deepcopy(_BASE)
    _at(data, place[:-1])[place[-1]] = value
    _never_crashes(yaml.safe_dump(data, allow_unicode=True).encode(), refs)


_WORKLOAD_PLACES = [(*level, key) for level in _WORKLOAD_LEVELS for key in ("name", "x")] + [
    ("spec", "replicas"),
    ("spec", "gpu_options", 0),
    ("spec", "user_locations", 0, "share"),
    ("metadata", "labels"),
    ("spec", "labels"),
]


@settings(max_examples=100, deadline=None)
@given(place=st.sampled_from(_WORKLOAD_PLACES), value=_VALUES)
def test_any_value_anywhere_in_a_workload_gives_findings_never_crashes(
    place: tuple[str | int, ...], value: Any, refs: References
) -> None:
    data = _full_workload()
    _at(data, place[:-1])[place[-1]] = value
    _never_crashes(yaml.safe_dump(data, allow_unicode=True).encode(), refs)


@settings(max_examples=25, deadline=None)
@given(text=_YAMLISH)
def test_load_policies_raises_only_its_own_error(text: str, catalog: RegionCatalog) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write(Path(directory), "p.yaml", text.encode("utf-8", "surrogatepass"))
        try:
            load_policies([path], today=TODAY, catalog=catalog)
        except InvalidPolicyFiles as exc:
            assert exc.errors


_BASE = _full_policy()
