"""The documentation stays true to the code: the generated reference matches the models,
every command the docs show exists with the options they give it, and every relative
link points to a file that exists."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from arbiter import schema_docs
from arbiter.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "policy-reference.md"
OWN_DOCS = ("cli.md", "policies.md", "quickstart.md", "concepts.md", "troubleshooting.md")
"""Docs whose command lines are checked against the command tree."""


# ---------------------------------------------------------------- reading Markdown

_FENCE = re.compile(r"^\s*(```|~~~)")


def _code(text: str) -> Iterator[str]:
    """Every line of code in a Markdown text: fenced blocks and inline code spans."""
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            yield line
        else:
            yield from re.findall(r"`([^`\n]+)`", line)


def _prose(text: str) -> str:
    """The text without fenced blocks and inline code (where links are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`\n]+`", "", line))
    return "\n".join(out)


# ------------------------------------------------------------- commands in the docs


def _words(line: str) -> list[str]:
    """Shell words of a line, up to a ``#`` comment."""
    try:
        words = shlex.split(line, comments=False)
    except ValueError:
        words = line.split()
    return words[: words.index("#")] if "#" in words else words


_SHELL = {"$", "&&", "||", "|", ";", "(", "sudo", "exec", "time", "then", "do"}


def _starts(before: list[str]) -> bool:
    """Whether a word after ``before`` starts a command (not prose such as "this arbiter
    needs"): first on the line, after a prompt or shell operator, or after ``NAME=value``
    environment assignments."""
    return not before or before[-1] in _SHELL or all(re.match(r"^[A-Z_]+=", w) for w in before)


def _option(command: click.Command, token: str) -> click.Option | None:
    name = token.split("=", 1)[0]
    for param in command.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            return param
    if name in ("-h", "--help"):
        return click.Option(["--help"], is_flag=True)
    return None


def check_command_line(line: str) -> list[str]:
    """Problems with every ``arbiter ...`` invocation in one line of code: unknown
    commands, unknown subcommands, unknown options."""
    words = _words(line)
    problems: list[str] = []
    for start, word in enumerate(words):
        word = word.strip("[]()")
        if not word.endswith("/arbiter") and not (word == "arbiter" and _starts(words[:start])):
            continue
        command: click.Command = cli
        path = ["arbiter"]
        rest = iter(w.strip("[](),;:.") for w in words[start + 1 :])
        for token in rest:
            if not token or token in ("|", "\\", "&&", ">", "2>&1"):
                break
            if token.startswith("-"):
                option = _option(command, token)
                if option is None:
                    problems.append(f"{' '.join(path)}: no option {token!r} (in: {line.strip()})")
                elif not option.is_flag and not option.count and "=" not in token:
                    next(rest, None)  # the option's value
                continue
            if isinstance(command, click.Group):
                if "|" in token:  # alternatives: "db upgrade|downgrade|current"
                    unknown = [t for t in token.split("|") if t not in command.commands]
                    problems.extend(
                        f"{' '.join(path)}: no command {t!r} (in: {line.strip()})" for t in unknown
                    )
                    break
                sub = command.commands.get(token)
                if sub is None:
                    if path == ["arbiter"] and not re.fullmatch(r"[a-z][a-z-]*", token):
                        break  # prose such as "arbiter's", not a command line
                    problems.append(f"{' '.join(path)}: no command {token!r} (in: {line.strip()})")
                    break
                command = sub
                path.append(token)
                continue
            # an argument of a leaf command (a workload name, a path, a revision)
    return problems


def _command_lines(name: str) -> list[str]:
    text = (DOCS / name).read_text(encoding="utf-8")
    return [line for line in _code(text) if re.search(r"(^|[\s/$])arbiter(\s|$)", line)]


@pytest.mark.parametrize("name", OWN_DOCS)
def test_every_command_the_docs_show_exists_with_the_options_they_give_it(name: str) -> None:
    problems = [p for line in _command_lines(name) for p in check_command_line(line)]
    assert problems == []


def test_the_command_checker_catches_unknown_commands_and_options() -> None:
    assert check_command_line("arbiter policy validate --workloads workloads") == []
    assert check_command_line("$ .venv/bin/arbiter -o json prices") != []
    assert check_command_line("arbiter polciy test") != []
    assert check_command_line("arbiter policy tset") != []
    assert check_command_line("arbiter prices --gpus H100") != []
    assert check_command_line("arbiter db upgrade|downgrade|current") == []
    assert check_command_line("arbiter db upgrade|donwgrade") != []
    assert check_command_line("arbiter: error: unknown workload 'x'") == []
    assert check_command_line("arbiter sources   # arbiter is read-only here") == []
    assert check_command_line("error: this arbiter needs 0003") == []
    assert check_command_line("ARBITER_DAEMON__MODE=enforce arbiter rnu") != []
    assert check_command_line("$ arbiter polciy") != []


def _leaf_commands(group: click.Group, prefix: str) -> Iterator[str]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}"


def test_the_cli_reference_documents_every_command() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#+ `([^`]+)`", text, flags=re.M))
    missing = [c for c in _leaf_commands(cli, "arbiter") if c not in headings]
    assert missing == []


# ------------------------------------------------------------- the generated reference


def test_the_policy_reference_is_generated_from_the_models() -> None:
    committed = REFERENCE.read_text(encoding="utf-8")
    assert committed == schema_docs.policy_reference(), (
        "docs/policy-reference.md is stale: run "
        "`.venv/bin/python -m arbiter.schema_docs > docs/policy-reference.md`"
    )


def test_every_key_of_every_file_format_has_a_description() -> None:
    from arbiter.domain.policy_files import policy_json_schema, workload_json_schema
    from arbiter.domain.policy_tests import PolicyTestFile

    rows = [
        *schema_docs.schema_rows(policy_json_schema(), fmt="policy"),
        *schema_docs.schema_rows(workload_json_schema(), fmt="workload"),
        *schema_docs.schema_rows(PolicyTestFile.model_json_schema(), fmt="test"),
    ]
    assert [r.path for r in rows if not r.description] == []


def test_the_reference_names_every_policy_key_with_its_default_and_bounds() -> None:
    rows = {r.path: r for r in schema_docs.schema_rows(_tiny_schema(), fmt="policy")}
    assert rows["apiVersion"].default == "required"
    assert rows["window"].type == "duration"
    assert rows["window"].default == "`30m`"
    assert rows["share"].constraints == "≥ 0; ≤ 1"
    assert rows["rules[].id"].default == "required"
    assert "\\|" in schema_docs.render_table([rows["pattern"]])


def _tiny_schema() -> dict[str, object]:
    return {
        "type": "object",
        "required": ["apiVersion"],
        "properties": {
            "apiVersion": {"const": "arbiter/v1", "type": "string"},
            "window": {
                "anyOf": [
                    {"type": "number", "minimum": 0},
                    {"type": "string", "pattern": "^x$"},
                ],
                "default": 1800,
            },
            "share": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0},
            "pattern": {"type": "string", "pattern": "^(a|b)$"},
            "rules": {"type": "array", "items": {"$ref": "#/$defs/Rule"}},
        },
        "$defs": {
            "Rule": {
                "type": "object",
                "required": ["id"],
                "properties": {"id": {"type": "string"}},
            }
        },
    }


# ---------------------------------------------------------------------- links


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _relative_links(path: Path) -> Iterator[str]:
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _prose(path.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        yield target


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: p.name)
def test_every_relative_link_points_to_a_file_that_exists(path: Path) -> None:
    broken = [
        link for link in _relative_links(path) if not (path.parent / link.split("#", 1)[0]).exists()
    ]
    assert broken == []
