"""``arbiter policy test``, ``arbiter policy diff`` and ``arbiter explain`` as a user and
a CI job run them. Golden files pin the text; regenerate with ``UPDATE_GOLDEN=1`` and
review the diff."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from arbiter.cli.main import Context, cli

GOLDEN = Path(__file__).parent / "golden"
DATA = Path(__file__).parents[1] / "data"
ROOT = Path(__file__).parents[2]
SMALL = str(DATA / "snapshots" / "eu-small.json")

Run = Callable[..., Result]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Run:
    """``arbiter ...`` as a user with no config file and no database."""
    for name in list(os.environ):
        if name.startswith("ARBITER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), obj=Context(None, None))

    return invoke


def matches_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


# -------------------------------------------------------------------- policy test


def test_the_shipped_example_policies_pass_their_tests(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    result = run("policy", "test")
    assert result.exit_code == 0, result.stdout
    assert result.stdout.rstrip().endswith("14 tests · 14 passed · 0 failed")


def test_policy_tests_run_against_their_pinned_snapshot(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(DATA)
    result = run("policy", "test", "policies/good", "--today", "2025-06-02")
    assert result.exit_code == 0, result.stdout
    matches_golden("policy_test_good", result.stdout)


def test_a_failing_policy_test_explains_itself_and_exits_1(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shutil.copytree(DATA / "policies" / "good", tmp_path / "good")
    shutil.copytree(DATA / "policies" / "workloads", tmp_path / "workloads")
    shutil.copytree(DATA / "snapshots", tmp_path / "snapshots")
    (tmp_path / "good" / "eu-llm-inference.test.yaml").write_text(
        "policy: eu-llm-inference\n"
        "snapshot: ../snapshots/eu-small.json\n"
        "cases:\n"
        "  - name: chat-api lands in London\n"
        "    workload: chat-api\n"
        "    expect: {placed: {aws:eu-west-2: 3}}\n"
        "  - name: a typo in a patch\n"
        "    workload: chat-api\n"
        "    patch_snapshot: {aws:eu-westt-2: {stale: true}}\n"
        "    expect: {}\n"
    )
    monkeypatch.chdir(tmp_path)
    result = run("policy", "test", "good", "--today", "2025-06-02")
    assert result.exit_code == 1
    matches_golden("policy_test_failing", result.stdout)


def test_a_test_file_with_an_unknown_key_is_an_error_at_its_line(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shutil.copytree(DATA / "policies" / "good", tmp_path / "good")
    (tmp_path / "good" / "eu-llm-inference.test.yaml").write_text(
        "snapshot: x.json\ncases:\n  - name: a\n    workload: chat-api\n    expect: {placd: {}}\n"
    )
    monkeypatch.chdir(tmp_path)
    result = run("policy", "test", "good", "--today", "2025-06-02", "-o", "json")
    assert result.exit_code == 1
    (error,) = json.loads(result.stdout)["files"][0]["errors"]
    assert (error["line"], error["field"]) == (5, "cases[0].expect")
    assert error["hint"] == "did you mean 'placed'?"


# ------------------------------------------------------------------------ explain


def test_explain_shows_every_region_and_why_each_excluded_one_is_excluded(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(DATA)
    result = run(
        "explain",
        "chat-api",
        "--snapshot",
        SMALL,
        "--policies",
        "policies/good",
        "--workloads",
        "policies/workloads",
    )
    assert result.exit_code == 0, result.output
    matches_golden("explain_chat_api", result.stdout)


def test_explain_json_is_the_documented_shape(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    result = run(
        "explain", "chat-api", "--snapshot", SMALL, "--policies", "policies/good",
        "--workloads", "policies/workloads", "-o", "json",
    )  # fmt: skip
    body = json.loads(result.stdout)
    assert set(body) >= {"workload", "decision", "snapshot", "placed", "regions"}
    london = next(r for r in body["regions"] if r["region"] == "aws:eu-west-2")
    assert london["status"] == "excluded"
    assert london["excluded_by"][0]["origin"] == "policies/good/eu-llm-inference.yaml:13"


def test_explain_of_an_unknown_workload_names_the_known_ones(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(DATA)
    result = run(
        "explain", "chat", "--snapshot", SMALL, "--policies", "policies/good",
        "--workloads", "policies/workloads",
    )  # fmt: skip
    assert result.exit_code == 1
    assert (
        "unknown workload 'chat'; known: batch-embeddings, chat-api, doc-translate" in result.stderr
    )


# -------------------------------------------------------------------- policy diff


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository holding the example policy and workloads, committed."""
    root = tmp_path / "repo"
    (root / "policies").mkdir(parents=True)
    shutil.copy(DATA / "policies" / "good" / "eu-llm-inference.yaml", root / "policies")
    shutil.copytree(DATA / "policies" / "workloads", root / "workloads")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-qm", "base")
    monkeypatch.chdir(root)
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_diff_with_no_change_exits_0(run: Run, repo: Path) -> None:
    result = run("policy", "diff", "--base", "HEAD", "--snapshot", SMALL)
    assert result.exit_code == 0, result.output
    assert "Result: NO CHANGE   exit 0" in result.stdout


def test_diff_of_a_change_that_moves_workloads_exits_2(run: Run, repo: Path) -> None:
    edit(
        repo / "policies" / "eu-llm-inference.yaml",
        "exclude_regions: [aws:eu-south-2]",
        "exclude_regions: [aws:eu-south-2, gcp:europe-west4]",
    )
    result = run("policy", "diff", "--base", "HEAD", "--snapshot", SMALL)
    assert result.exit_code == 2, result.output
    matches_golden("policy_diff_moves", result.stdout.replace(_rev(repo), "<rev>"))


def test_diff_of_a_change_that_leaves_a_workload_unplaceable_is_blocking_exit_3(
    run: Run, repo: Path
) -> None:
    edit(
        repo / "policies" / "eu-llm-inference.yaml",
        "latency: {p95_ms_max: 120, from: [paris, berlin]}",
        "latency: {p95_ms_max: 10, from: [paris, berlin]}",
    )
    result = run("policy", "diff", "--base", "HEAD", "--snapshot", SMALL, "--format", "markdown")
    assert result.exit_code == 3, result.output
    matches_golden("policy_diff_blocking_md", result.stdout.replace(_rev(repo), "<rev>"))
    as_json = run("policy", "diff", "--base", "HEAD", "--snapshot", SMALL, "--format", "json")
    body = json.loads(as_json.stdout)
    assert body["exit_code"] == 3
    assert [w["workload"] for w in body["workloads"] if w["blocking"]] == ["chat-api"]


def test_diff_against_a_committed_revision_compares_both_revisions(run: Run, repo: Path) -> None:
    edit(
        repo / "policies" / "eu-llm-inference.yaml",
        "max_share_per_provider: 0.67",
        "max_share_per_provider: 0.34",
    )
    git(repo, "commit", "-qam", "head")
    result = run("policy", "diff", "--base", "HEAD~1", "--head", "HEAD", "--snapshot", SMALL)
    assert result.exit_code == 2, result.output
    assert (
        "~ eu-llm-inference/redundancy   redundancy.max_share_per_provider: 0.67 → 0.34"
        in result.stdout
    )


def test_diff_with_an_unknown_revision_is_an_error_exit_1(run: Run, repo: Path) -> None:
    result = run("policy", "diff", "--base", "no-such-branch", "--snapshot", SMALL)
    assert result.exit_code == 1
    assert "no-such-branch" in result.stderr


def test_diff_with_a_broken_head_policy_is_an_error_naming_file_and_line(
    run: Run, repo: Path
) -> None:
    edit(
        repo / "policies" / "eu-llm-inference.yaml",
        "jurisdictions: [EU, EEA]",
        "jurisdiction: [EU]",
    )
    result = run("policy", "diff", "--base", "HEAD", "--snapshot", SMALL)
    assert result.exit_code == 1
    assert "policies/eu-llm-inference.yaml:16" in result.stderr
    assert "did you mean 'jurisdictions'" in result.stderr


def _rev(repo: Path) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, check=True
    )
    return done.stdout.decode().strip()


def test_a_usage_error_exits_1_so_ci_never_reads_it_as_changes(run: Run) -> None:
    result = run("policy", "diff")
    assert result.exit_code == 1
    assert "Missing option '--base'" in result.stderr
