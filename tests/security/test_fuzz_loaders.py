"""Fuzzing the loaders of everything an operator or a pull request can hand arbiter:
policy and workload files through the public, file-reading API (``load_policies``,
``load_workloads``, ``check_files``), policy test files (``run_tests``), and the config
file and ``ARBITER_*`` variables (``load_config``).

Whatever the input — random bytes, random YAML documents shaped like policies, random
TOML shaped like the config — the only exception is the loader's own
(InvalidPolicyFiles, ConfigError), every finding has a location naming the file, and
nothing else escapes. tests/test_policy_loader.py already fuzzes the in-memory passes
(``parse_documents`` and the schema) with YAML-ish text and values at known places;
these go through files, directories, test files and the config instead.
"""

from __future__ import annotations

import json
import math
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arbiter.catalog import load_catalog
from arbiter.config import load_config
from arbiter.errors import ConfigError
from arbiter.policy_loader import (
    InvalidPolicyFiles,
    PolicyFinding,
    check_files,
    load_policies,
    load_workloads,
)
from arbiter.policy_testing import run_tests

CATALOG = load_catalog()
TODAY = date(2025, 6, 2)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- YAML documents shaped like policies and workloads -------------------------------------

POLICY_KEYS = [
    "apiVersion", "kind", "metadata", "name", "select", "labels", "workloads", "data_classes",
    "constraints", "id", "mode", "sovereignty", "jurisdictions", "exclude_regions",
    "accelerator", "any_of", "latency", "p95_ms_max", "from", "carbon", "max_gco2_per_kwh",
    "redundancy", "spread", "capacity", "spot", "allowed", "max_share", "budget",
    "max_usd_per_hour", "objective", "migration", "min_saving", "pct", "cooldown",
    "exceptions", "rule", "expires", "reason", "spec", "data_class", "replicas",
    "gpu_options", "model", "tokens_per_second", "warmup_seconds", "user_locations",
    "policy", "snapshot", "cases", "expect", "workload",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["arbiter/v1", "PlacementPolicy", "Workload", "EU", "L4", "internal", "30m", "gcp:x"]
    ),
    st.dates(),
)
KEYS = st.one_of(st.sampled_from(POLICY_KEYS), st.text(max_size=8))
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=25,
)
SHAPED = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["arbiter/v1", "arbiter/v2", 1]),
        "kind": st.sampled_from(["PlacementPolicy", "Workload", "Other"]),
        "metadata": st.dictionaries(KEYS, DOCUMENTS, max_size=3),
    },
    optional={
        "spec": DOCUMENTS,
        "select": DOCUMENTS,
        "constraints": st.lists(st.dictionaries(KEYS, DOCUMENTS, max_size=4), max_size=3),
        "migration": DOCUMENTS,
    },
)


def dump(documents: list[Any]) -> bytes:
    return yaml.safe_dump_all(documents, allow_unicode=True, sort_keys=False).encode()


def assert_located(findings: Any, files: set[str]) -> None:
    assert findings, "an error without a finding"
    for finding in findings:
        assert isinstance(finding, PolicyFinding)
        assert finding.source in files or finding.source.startswith(tuple(files)), finding
        assert str(finding).startswith(finding.source)
        json.dumps(finding.as_dict())


@FUZZ
@given(documents=st.lists(st.one_of(SHAPED, DOCUMENTS), min_size=1, max_size=3))
def test_random_policy_and_workload_documents_give_findings_at_their_file(
    documents: list[Any],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "policies").mkdir()
        (root / "workloads").mkdir()
        policy = root / "policies" / "fuzz.yaml"
        workload = root / "workloads" / "fuzz.yml"
        policy.write_bytes(dump(documents))
        workload.write_bytes(dump(documents))
        files = {str(policy), str(workload)}
        try:
            loaded = load_workloads([root / "workloads"])
            load_policies(
                [root / "policies"], today=TODAY, workloads=loaded.workloads, catalog=CATALOG
            )
        except InvalidPolicyFiles as exc:
            assert_located(exc.errors, files)
        result = check_files(
            [root / "policies"], [root / "workloads"], today=TODAY, catalog=CATALOG
        )
        for finding in result.findings:
            assert_located([finding], files)


@FUZZ
@given(data=st.binary(max_size=400), name=st.sampled_from(["p.yaml", "w.yml"]))
def test_random_bytes_in_a_policy_or_workload_file_give_findings_at_the_file(
    data: bytes, name: str
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_bytes(data)
        for load in (
            lambda: load_workloads([path]),
            lambda: load_policies([path], today=TODAY, catalog=CATALOG),
        ):
            try:
                load()
            except InvalidPolicyFiles as exc:
                assert_located(exc.errors, {str(path)})


GOOD = Path(__file__).resolve().parents[1] / "data" / "policies"
TEST_FILE_VALUES = st.recursive(
    SCALARS | st.sampled_from(["eu-llm-inference", "chat-api", "../../snapshots/eu-small.json"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=15,
)
TEST_FILES = st.one_of(
    st.fixed_dictionaries(
        {
            "policy": st.sampled_from(["eu-llm-inference", "nope", 3]),
            "snapshot": st.sampled_from(["../../snapshots/eu-small.json", "missing.json", 1]),
        },
        optional={"cases": TEST_FILE_VALUES, "workloads": TEST_FILE_VALUES},
    ),
    TEST_FILE_VALUES,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=TEST_FILES, raw=st.none() | st.binary(max_size=200))
def test_random_policy_test_files_fail_at_the_file_and_never_raise(
    document: Any, raw: bytes | None
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        import shutil

        tree = Path(directory) / "policies" / "good"
        shutil.copytree(GOOD / "good", tree)
        shutil.copytree(GOOD / "workloads", tree.parent / "workloads")
        shutil.copytree(GOOD.parent / "snapshots", tree.parent.parent / "snapshots")
        (tree / "eu-llm-inference.test.yaml").unlink()
        hostile = tree / "fuzz.test.yaml"
        hostile.write_bytes(raw if raw is not None else dump([document]))
        run = run_tests([tree], today=TODAY, catalog=CATALOG, root=directory)
        (result,) = run.files
        assert result.source == str(hostile)
        if not result.passed:
            assert result.findings or any(not c.passed for c in result.cases)
        for finding in result.findings:
            assert isinstance(finding, PolicyFinding) and finding.source
            assert str(finding)


# -- the config file and ARBITER_* variables ----------------------------------------------

SECTIONS = ["database", "daemon", "logging", "catalog", "http", "store", "policies",
            "executor", "sources", "interruptions", "surprise"]  # fmt: skip
CONFIG_KEYS = [
    "url", "echo", "mode", "name", "lease_seconds", "tick_seconds", "reconcile_seconds",
    "migration_steps_per_tick", "workload_modes", "kill_switch_file", "level", "format",
    "regions_file", "jurisdictions_files", "retention", "migration_retention",
    "decision_retention", "host", "port", "enabled", "paths", "workloads", "kind", "options",
    "interval", "jitter", "timeout", "stale_after", "x",
]  # fmt: skip
TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(["enforce", "observe", "replay", "dry-run", "30s", "127.0.0.1", "1h"]),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
CONFIGS = st.dictionaries(
    st.sampled_from(SECTIONS),
    st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=6), TOML_VALUES, max_size=5),
    max_size=5,
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml(document: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, table in document.items():
        lines.append(f"[{json.dumps(section)}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@FUZZ
@given(document=CONFIGS)
def test_random_config_files_load_or_fail_with_an_error_naming_the_file(
    document: dict[str, dict[str, Any]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.toml"
        path.write_text(toml(document), encoding="utf-8")
        try:
            load_config(path, env={})
        except ConfigError as exc:
            assert exc.source == str(path)
            assert str(exc).startswith(str(path))


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_the_config_file_fail_with_an_error_naming_the_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.toml"
        path.write_bytes(data)
        try:
            load_config(path, env={})
        except ConfigError as exc:
            assert exc.source == str(path)


ENV_NAMES = st.one_of(
    st.sampled_from(
        ["ARBITER_DATABASE_URL", "ARBITER_MODE", "ARBITER_LOG_LEVEL", "ARBITER_LOG_FORMAT"]
    ),
    st.builds(
        lambda section, key: f"ARBITER_{section.upper()}__{key.upper()}",
        st.sampled_from(SECTIONS) | st.text("abcxyz_", min_size=1, max_size=5),
        st.sampled_from(CONFIG_KEYS) | st.text("abcxyz_", min_size=1, max_size=5),
    ),
    st.text("ABCXYZ_", min_size=1, max_size=12).map(lambda s: "ARBITER_" + s),
)


@FUZZ
@given(env=st.dictionaries(ENV_NAMES, st.text(max_size=12), max_size=4))
def test_random_arbiter_variables_load_or_fail_naming_the_variable(env: dict[str, str]) -> None:
    try:
        load_config(None, env={**env, "XDG_CONFIG_HOME": "/nonexistent-arbiter-fuzz"})
    except ConfigError as exc:
        assert exc.source.startswith("environment ARBITER_") or exc.source == "defaults", exc
