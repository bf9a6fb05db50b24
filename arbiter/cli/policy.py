"""``arbiter policy validate|schema``: check policy and workload files; print their schema.

Offline and read-only: needs no database and no cloud credentials, so CI can run it on
every pull request. Exit codes: 0 no errors (warnings allowed), 1 errors.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from arbiter.domain.policy_files import PolicyFinding

SEVERITY_LABELS = {"error": "error", "warning": "warn"}


@click.group()
def policy() -> None:
    """Placement policy files: validate them, print their JSON Schema."""


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
