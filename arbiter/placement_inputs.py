"""What a decision is made from, read for the CLI: policies, workloads and a market
snapshot (a file, or the store's newest data), plus a revision naming the policy files.

Read-only: the store is opened read-only, nothing is written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from arbiter.domain.evaluation import PolicyBook
from arbiter.domain.regions import RegionCatalog
from arbiter.domain.snapshot import MarketSnapshot
from arbiter.domain.workloads import Workload
from arbiter.policy_loader import _discover, load_policies, load_workloads


@dataclass(frozen=True)
class Inputs:
    book: PolicyBook
    workloads: tuple[Workload, ...]
    snapshot: MarketSnapshot
    catalog: RegionCatalog
    revision: str
    """A content hash of the policy and workload files: same files, same revision."""


def files_revision(paths: Iterable[str | os.PathLike[str]]) -> str:
    """``p-`` and 12 hex digits of a hash over the files' names and contents."""
    files, _ = _discover(paths)
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.source):
        digest.update(Path(file.source).name.encode() + b"\0")
        try:
            digest.update(file.path.read_bytes())
        except OSError:
            continue
    return "p-" + digest.hexdigest()[:12]


def store_snapshot(obj: Any, now: datetime) -> MarketSnapshot:
    """The newest market data in the store, stale data marked stale."""
    from arbiter.snapshots import build_snapshot

    store = obj.open_store()
    limits = {name: c.stale_after for name, c in obj.source_configs().items()}
    snap: MarketSnapshot = build_snapshot(store, limits, now)
    return snap


def load_inputs(
    obj: Any,
    *,
    policy_paths: Sequence[str | os.PathLike[str]],
    workload_paths: Sequence[str | os.PathLike[str]],
    snapshot: MarketSnapshot | None,
    today: date | None = None,
) -> Inputs:
    """Validated policies and workloads (raising with every finding when invalid) and
    the snapshot: the one given, or the store's."""
    catalog: RegionCatalog = obj.catalog()
    workload_set = load_workloads(workload_paths)
    snap = snapshot if snapshot is not None else store_snapshot(obj, datetime.now(UTC))
    policy_set = load_policies(
        policy_paths,
        today=today or snap.taken_at.date(),
        workloads=workload_set.workloads,
        catalog=catalog,
    )
    return Inputs(
        book=PolicyBook(policy_set.policies, rule_origins=policy_set.rule_origins),
        workloads=workload_set.workloads,
        snapshot=snap,
        catalog=catalog,
        revision=files_revision([*policy_paths, *workload_paths]),
    )


def configured_paths(
    obj: Any, policies: Sequence[str], workloads: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The paths given on the command line, else those of the config's [policies]."""
    conf = obj.settings.policies
    return (
        list(policies) or [str(p) for p in conf.paths],
        list(workloads) or [str(p) for p in conf.workloads],
    )
