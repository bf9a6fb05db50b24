"""docs/operations.md lists every metric the daemon serves, by the name it is served
under, and names no metric that does not exist."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from arbiter.http_api import StoreCollector
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
ROLES = ROOT / "deploy" / "postgres" / "roles.sql"


class _Everything(dict[str, float]):
    """A mapping that has every key: the collector then yields every optional series."""

    def __init__(self) -> None:
        super().__init__(anything=1.0)

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> float:
        return 1.0

    def get(self, key: str, default: Any = None) -> float:  # type: ignore[override]
        return 1.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Metric name → type, as a scrape of a leader with every figure known shows them."""
    url = f"sqlite:///{tmp_path / 'arbiter.db'}"
    upgrade(url)
    engine = make_engine(url)
    registry = CollectorRegistry(auto_describe=False)
    state = {"leader": True, "mode": "enforce", "name": "test:1", "reconcile": _Everything()}
    registry.register(StoreCollector(Store(engine), lambda: state, _Everything))
    text = generate_latest(registry).decode()
    engine.dispose()
    yield dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))


def _table() -> dict[str, str]:
    """The metrics table: name → type."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(arbiter_[a-z0-9_]+)` \| (\w+) \|", section, flags=re.M))


def test_the_metrics_table_lists_every_served_metric_with_its_type(
    served: dict[str, str],
) -> None:
    assert len(served) > 10
    assert _table() == served


def test_every_metric_the_operations_guide_names_is_served(served: dict[str, str]) -> None:
    """Every ``arbiter_*`` name in the guide, but the PostgreSQL roles it also names."""
    roles = set(re.findall(r"CREATE ROLE (arbiter_\w+)", ROLES.read_text(encoding="utf-8")))
    named = set(re.findall(r"\barbiter_[a-z0-9_]+\b", DOC.read_text(encoding="utf-8")))
    assert roles
    assert named - roles - set(served) == set()
