"""``arbiter policy validate|test|diff|schema``: the pull-request tooling for policies.

Offline and read-only: needs no database and no cloud credentials (``diff`` reads the
store only when no ``--snapshot`` is given), so CI can run it on every pull request.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from arbiter.cli.options import placement_options

if TYPE_CHECKING:
    from arbiter.domain.policy_files import PolicyFinding

SEVERITY_LABELS = {"error": "error", "warning": "warn"}


@click.group()
def policy() -> None:
    """Placement policy files: validate, test, diff against a git revision, schema.

    \b
    validate  check policy (and workload) files: file:line:col, rule id, did-you-mean
    test      run the *.test.yaml cases against their pinned market snapshot
    diff      what a change does: base and head decided on one snapshot (exit 0/1/2/3)
    schema    print the JSON Schema of policy or workload files
    """


@policy.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--workloads",
    "workload_paths",
    multiple=True,
    type=click.Path(path_type=str),
    help="Workload files or directories to check the policies against (repeatable).",
)
@click.option(
    "--today",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Judge exception expiry as of this date (YYYY-MM-DD). Default: today (UTC).",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for scripts (a list of findings; docs/policies.md).",
)
@click.pass_obj
def validate(
    obj: Any,
    paths: tuple[str, ...],
    workload_paths: tuple[str, ...],
    today: datetime | None,
    output: str,
) -> None:
    """Check policy files (default: policies/) and, with --workloads, workload files.

    \b
    Three passes, every finding reported (not just the first):
      structure  YAML syntax, duplicate keys, no anchors/aliases, size and path limits
      schema     the closed schema: unknown keys (with "did you mean"), types, ranges
      semantics  across files: unique rule ids, one objective per workload, expired
                 exceptions, known jurisdictions, accelerators and regions

    Directories are searched for *.yaml and *.yml, skipping *.test.yaml (policy tests).
    Exit status 0 when there are no errors (warnings allowed), 1 otherwise.
    """
    from arbiter.policy_loader import DEFAULT_POLICY_PATH, check_files

    on = today.date() if today is not None else datetime.now(UTC).date()
    catalog = obj.catalog() if obj is not None else None
    result = check_files(
        paths or (DEFAULT_POLICY_PATH,),
        workload_paths or None,
        today=on,
        catalog=catalog,
    )
    if output == "json":
        payload = [finding.as_dict() for finding in result.findings]
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        click.echo(render_findings(result.findings, files=len(result.files)))
    if result.errors:
        sys.exit(1)


@policy.command("test")
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--policies",
    "policy_paths",
    multiple=True,
    type=click.Path(path_type=str),
    help="Policy files or directories the tests run against (default: the PATHS).",
)
@click.option("-k", "only", help="Run only the cases whose name contains this text.")
@click.option(
    "--today",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Judge exception expiry at load as of this date (default: today, UTC).",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
@click.pass_obj
def test_cmd(
    obj: Any,
    paths: tuple[str, ...],
    policy_paths: tuple[str, ...],
    only: str | None,
    today: datetime | None,
    output: str,
) -> None:
    """Run the policy tests (*.test.yaml, default: under policies/).

    \b
    Each test file names a market snapshot (from `arbiter snapshot export`) and the
    workloads; each case may patch the market or the workload, decides every workload
    exactly as the daemon does, and checks what it expects (placed regions, excluded
    regions and the rules that excluded them, unplaceable and why, cost). A failure
    says what was expected, what was got, and why (the rules and their file:line).
    Exit status 0 when every case passes, 1 otherwise.
    """
    from arbiter.policy_loader import DEFAULT_POLICY_PATH
    from arbiter.policy_testing import run_tests

    on = today.date() if today is not None else datetime.now(UTC).date()
    run = run_tests(
        paths or (DEFAULT_POLICY_PATH,),
        today=on,
        catalog=obj.catalog() if obj is not None else None,
        policy_paths=policy_paths or None,
        only=only,
    )
    if output == "json":
        click.echo(json.dumps(test_run_dict(run), indent=2, ensure_ascii=False))
    else:
        click.echo(render_test_run(run))
    if not run.passed:
        sys.exit(1)


def test_run_dict(run: Any) -> dict[str, Any]:
    """The JSON shape of ``arbiter policy test --output json``."""
    return {
        "passed": run.passed,
        "errors": [f.as_dict() for f in run.findings],
        "files": [
            {
                "file": f.source,
                "passed": f.passed,
                "errors": [x.as_dict() for x in f.findings],
                "cases": [
                    {
                        "name": c.name,
                        "passed": c.passed,
                        "error": c.error,
                        "failures": list(c.failures),
                        "because": list(c.because),
                    }
                    for c in f.cases
                ],
            }
            for f in run.files
        ],
    }


def render_test_run(run: Any) -> str:
    """Per file: PASS/FAIL/ERROR per case, with expected/got/because under failures."""
    lines: list[str] = []
    if run.findings:
        lines.append(render_findings(run.findings, files=0).rsplit("\n", 1)[0])
    for f in run.files:
        lines.append(f.source)
        if f.findings:
            lines.extend("  " + x for x in render_findings(f.findings, files=1).split("\n")[:-1])
        for c in f.cases:
            label = "PASS" if c.passed else ("ERROR" if c.error else "FAIL")
            lines.append(f"  {label:<5} {c.name}")
            if c.error:
                lines.append(f"        {c.error}")
            lines.extend(f"        {x}" for x in c.failures)
            for i, why in enumerate(c.because):
                lines.append(f"        {'because   ' if i == 0 else '          '}{why}")
    cases = run.cases
    passed = sum(1 for c in cases if c.passed)
    broken = sum(1 for f in run.files if f.findings) + (1 if run.findings else 0)
    summary = f"{_plural(len(cases), 'test')} · {passed} passed · {len(cases) - passed} failed"
    if broken:
        summary += f" · {_plural(broken, 'file')} with errors"
    lines.append(summary)
    return "\n".join(lines)


@policy.command("diff")
@click.option(
    "--base", "base_rev", required=True, help="Git revision of the base (e.g. origin/main)."
)
@click.option(
    "--head",
    "head_rev",
    help="Git revision of the head (default: the files in the working tree).",
)
@placement_options(
    snapshot_help="Decide both sides on this snapshot file (default: the store's newest data)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
    help="markdown renders one pull-request comment.",
)
@click.pass_obj
def diff_cmd(
    obj: Any,
    base_rev: str,
    head_rev: str | None,
    snapshot_path: Path | None,
    policy_paths: tuple[str, ...],
    workload_paths: tuple[str, ...],
    fmt: str,
) -> None:
    """What a policy change does: base and head decided on the same market snapshot.

    \b
    Lists the changed rules field by field, every workload whose placement moves
    (- released, + placed, # because: the rule and its file:line), workloads that
    become unplaceable, and cost and carbon before and after.
    Exit status: 0 no placement change · 1 error (bad files, unknown revision)
                 2 changes · 3 blocking (a workload is no longer fully placed)
    """
    import tempfile

    from arbiter.cli.policy_report import Header, as_dict, render_markdown, render_text
    from arbiter.domain.decide import decide
    from arbiter.domain.policy_diff import diff
    from arbiter.placement_inputs import configured_paths, load_inputs, store_snapshot
    from arbiter.policy_git import files_at, short_revision
    from arbiter.policy_testing import load_snapshot_file

    policies, workloads = configured_paths(obj, policy_paths, workload_paths)
    snapshot = (
        load_snapshot_file(snapshot_path)
        if snapshot_path
        else store_snapshot(obj, datetime.now(UTC))
    )
    with tempfile.TemporaryDirectory(prefix="arbiter-diff-") as tmp:
        sides = []
        for label, rev in (("base", base_rev), ("head", head_rev)):
            if rev is None:
                sides.append(("working tree", policies, workloads))
                continue
            root = Path(tmp) / label
            got = files_at(rev, [*policies, *workloads], root)
            sides.append(
                (
                    f"{short_revision(rev)} ({rev})",
                    [str(p) for p in got[: len(policies)]],
                    [str(p) for p in got[len(policies) :]],
                )
            )
        outcomes = []
        inputs = []
        for _, pols, wls in sides:
            side = load_inputs(obj, policy_paths=pols, workload_paths=wls, snapshot=snapshot)
            inputs.append(side)
            outcomes.append(
                decide(
                    side.workloads,
                    side.book,
                    snapshot,
                    side.catalog,
                    snapshot.taken_at,
                    policy_revision=side.revision,
                )
            )
    result = diff(
        inputs[0].book.policies,
        inputs[1].book.policies,
        inputs[0].workloads,
        inputs[1].workloads,
        outcomes[0],
        outcomes[1],
    )
    header = Header(
        base=sides[0][0],
        head=sides[1][0],
        snapshot_id=snapshot.id,
        taken_at=snapshot.taken_at,
        offers=len(snapshot.offers),
        stale_offers=sum(1 for o in snapshot.offers if o.stale),
        carbon_zones=len(snapshot.carbon),
        stale_carbon=sum(1 for c in snapshot.carbon if c.stale),
    )
    if fmt == "json":
        click.echo(json.dumps(as_dict(result, header), indent=2, ensure_ascii=False))
    elif fmt == "markdown":
        click.echo(render_markdown(result, header))
    else:
        click.echo(render_text(result, header))
    sys.exit(result.exit_code)


@policy.command()
@click.option(
    "--kind",
    type=click.Choice(["policy", "workload"]),
    default="policy",
    show_default=True,
    help="Which file format.",
)
def schema(kind: str) -> None:
    """Print the JSON Schema of policy (or workload) files, generated from the models.

    The copies in policies/schema/ are this output; after changing a model, regenerate
    them with `arbiter policy schema --kind policy > policies/schema/policy.schema.json`
    (and likewise for workload).
    """
    from arbiter.domain.policy_files import json_schema_text

    click.echo(json_schema_text("workload" if kind == "workload" else "policy"), nl=False)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render_findings(findings: Sequence[PolicyFinding], *, files: int) -> str:
    """Findings one per line, aligned, hints indented under their message; then a count.

    ::

        policies/eu.yaml:15:7   error  constraints[0].sovereignty: unknown key 'jurisdiction'
                                       did you mean 'jurisdictions'?
        2 files · 1 error · 0 warnings
    """
    width = max((len(f.location) for f in findings), default=0)
    indent = " " * (width + 2 + 5 + 2)
    lines = []
    for finding in findings:
        label = SEVERITY_LABELS[finding.severity.value]
        text = f"{finding.field}: {finding.message}" if finding.field else finding.message
        lines.append(f"{finding.location:<{width}}  {label:<5}  {text}")
        if finding.hint:
            lines.append(indent + finding.hint)
    errors = sum(1 for f in findings if f.is_error)
    warnings = len(findings) - errors
    lines.append(
        f"{_plural(files, 'file')} · {_plural(errors, 'error')} · {_plural(warnings, 'warning')}"
    )
    return "\n".join(lines)
