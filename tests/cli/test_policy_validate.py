"""``arbiter policy validate`` and ``arbiter policy schema`` as a user runs them.

Golden files pin the text output; regenerate them with ``UPDATE_GOLDEN=1`` and review
the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from arbiter.cli.main import Context
from arbiter.cli.policy import policy

GOLDEN = Path(__file__).parent / "golden"
DATA = Path(__file__).parents[1] / "data"
ROOT = Path(__file__).parents[2]
TODAY = "2025-06-02"

Run = Callable[..., Result]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Run:
    """``arbiter policy ...`` from tests/data, as a user with no config file."""
    for name in list(os.environ):
        if name.startswith("ARBITER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(DATA)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(policy, list(args), obj=Context(None, None))

    return invoke


def matches_golden(name: str, text: str) -> None:
    path = GOLDEN / f"policy_validate_{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_valid_policies_and_workloads_pass_with_exit_status_0(run: Run) -> None:
    result = run("validate", "policies/good", "--workloads", "policies/workloads", "--today", TODAY)
    assert result.exit_code == 0
    matches_golden("good", result.stdout)


def test_bad_policies_list_every_finding_at_file_line_col_and_exit_1(run: Run) -> None:
    result = run("validate", "policies/bad", "--today", TODAY)
    assert result.exit_code == 1
    matches_golden("bad", result.stdout)


def test_workloads_are_validated_and_checked_against_the_policies(run: Run) -> None:
    result = run(
        "validate", "policies/good", "--workloads", "policies/bad-workloads", "--today", TODAY
    )
    assert result.exit_code == 1
    matches_golden("workloads", result.stdout)


def test_json_output_is_a_stable_list_of_findings(run: Run) -> None:
    result = run("validate", "policies/bad", "--today", TODAY, "--output", "json")
    assert result.exit_code == 1
    findings = json.loads(result.stdout)
    assert {tuple(f) for f in findings} == {
        ("source", "line", "column", "severity", "field", "rule_id", "message", "hint")
    }
    assert findings[1] == {
        "source": "policies/bad/eu-llm-inference.yaml",
        "line": 13,
        "column": 7,
        "severity": "error",
        "field": "constraints[0].sovereignty",
        "rule_id": "eu-residency",
        "message": "unknown key 'jurisdiction'",
        "hint": "did you mean 'jurisdictions'?",
    }
    matches_golden("bad_json", result.stdout)


def test_warnings_alone_exit_0(run: Run, tmp_path: Path) -> None:
    text = (DATA / "policies/good/eu-llm-inference.yaml").read_text()
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("aws:eu-south-2", "aws:eu-south-9"))
    result = run("validate", str(path), "--today", TODAY)
    assert result.exit_code == 0
    assert result.stdout.endswith("1 file · 0 errors · 1 warning\n")


def test_the_default_path_is_policies_in_the_current_directory(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "policies").mkdir()
    source = DATA / "policies/good/eu-llm-inference.yaml"
    (tmp_path / "policies" / "eu.yaml").write_text(source.read_text())
    monkeypatch.chdir(tmp_path)
    result = run("validate", "--today", TODAY)
    assert (result.exit_code, result.stdout) == (0, "1 file · 0 errors · 0 warnings\n")
    (tmp_path / "policies" / "eu.yaml").unlink()
    (tmp_path / "policies").rmdir()
    result = run("validate")
    assert result.exit_code == 1
    assert result.stdout == (
        "policies  error  no such file or directory\n0 files · 1 error · 0 warnings\n"
    )


def test_exceptions_expire_against_todays_date_by_default(run: Run, tmp_path: Path) -> None:
    text = (DATA / "policies/good/eu-llm-inference.yaml").read_text()
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("expires: 2025-09-30", "expires: 2001-01-01"))
    result = run("validate", str(path))
    assert result.exit_code == 1
    assert "exception to rule 'carbon-cap' expired on 2001-01-01" in result.stdout
    assert run("validate", str(path), "--today", "2000-01-01").exit_code == 0


def test_a_malformed_today_is_a_usage_error(run: Run) -> None:
    result = run("validate", "policies/good", "--today", "June 2nd")
    assert result.exit_code == 2
    assert "Invalid value for '--today'" in result.output


@pytest.mark.parametrize("kind", ["policy", "workload"])
def test_schema_prints_the_committed_json_schema(run: Run, kind: str) -> None:
    result = run("schema", "--kind", kind)
    assert result.exit_code == 0
    assert result.stdout == (ROOT / "policies" / "schema" / f"{kind}.schema.json").read_text()
    assert json.loads(result.stdout)["$schema"].endswith("/draft/2020-12/schema")


def test_schema_defaults_to_the_policy_schema(run: Run) -> None:
    assert json.loads(run("schema").stdout)["title"] == "arbiter PlacementPolicy (arbiter/v1)"


def test_the_policy_commands_import_no_heavy_module_until_run() -> None:
    code = (
        "import sys; import arbiter.cli.policy; "
        "heavy = [m for m in ('pydantic', 'yaml', 'rich', 'arbiter.policy_loader') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
