"""The layering rules of docs/architecture.md, checked on the source tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IO_MODULES = {
    "sqlalchemy",
    "alembic",
    "httpx",
    "boto3",
    "botocore",
    "google",
    "azure",
    "apscheduler",
    "kubernetes",
    "psycopg",
    "requests",
    "socket",
    "subprocess",
    "urllib",
    "structlog",
    "arbiter.store",
    "arbiter.cli",
    "arbiter.daemon",
    "providers",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_pure_core_imports_no_io_library() -> None:
    offenders = []
    for path in sorted((ROOT / "arbiter" / "domain").rglob("*.py")):
        for module in _imports(path):
            if any(module == m or module.startswith(m + ".") for m in IO_MODULES):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_the_cli_entry_point_does_not_load_heavy_modules_to_show_help() -> None:
    code = (
        "import sys; from arbiter.cli.main import cli; "
        "heavy = [m for m in ('sqlalchemy','alembic','boto3','apscheduler','rich','pydantic') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_only_the_store_touches_the_tables() -> None:
    """docs/architecture.md: the table definitions are imported by arbiter/store alone;
    everything else reads through the repositories or arbiter.store.reads."""
    tables = {"arbiter.store.schema"}
    offenders = []
    paths = [*(ROOT / "arbiter").rglob("*.py"), *(ROOT / "providers").rglob("*.py")]
    for path in sorted(paths):
        if (ROOT / "arbiter" / "store") in path.parents:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                named = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                named = {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(named & tables)]
    assert offenders == []
