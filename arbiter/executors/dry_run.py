"""The dry-run executor: records what it would do and does nothing.

Every action is logged (``would ensure``, ``would route``) and kept in ``actions``;
groups are reported ready at once, so a migration runs through every state and its
events say what a real executor would have been asked to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from arbiter.domain.fleet import ReplicaGroup, group_id
from arbiter.domain.market import Offer
from arbiter.domain.workloads import Workload
from arbiter.ports import Clock


class DryRunExecutor:
    name = "dry-run"

    def __init__(self, clock: Clock, options: Mapping[str, Any] | None = None) -> None:
        if options:
            from arbiter.errors import ConfigError

            raise ConfigError(
                f"the dry-run executor takes no options, got {', '.join(sorted(options))}",
                source="config",
                key="executor.options",
            )
        self.clock = clock
        self.actions: list[dict[str, Any]] = []
        self._groups: dict[str, ReplicaGroup] = {}
        self._weights: dict[str, dict[str, int]] = {}
        self._log = structlog.get_logger("arbiter").bind(component="executor", executor=self.name)

    def _record(self, action: str, **fields: Any) -> None:
        entry = {"action": action, "at": self.clock.now().isoformat(), **fields}
        self.actions.append(entry)
        self._log.info(f"would {action}", **fields)

    def ensure(self, workload: Workload, offer: Offer, replicas: int) -> ReplicaGroup:
        gid = group_id(workload.name, offer)
        current = self._groups.get(gid)
        if current is None or current.desired != replicas:
            self._record("ensure", group=gid, replicas=replicas)
        group = ReplicaGroup(workload=workload.name, offer=offer, desired=replicas, ready=replicas)
        if replicas == 0:
            self._groups.pop(gid, None)
        else:
            self._groups[gid] = group
        return group

    def group(self, workload: str, offer: Offer) -> ReplicaGroup | None:
        return self._groups.get(group_id(workload, offer))

    def groups(self, workload: str | None = None) -> list[ReplicaGroup]:
        return [
            g for _, g in sorted(self._groups.items()) if workload is None or g.workload == workload
        ]

    def set_weights(self, workload: str, weights: Mapping[str, int]) -> None:
        kept = {k: v for k, v in weights.items() if v > 0}
        if kept != self._weights.get(workload):
            self._record("route", workload=workload, weights=kept)
        self._weights[workload] = kept

    def weights(self, workload: str) -> dict[str, int]:
        return dict(self._weights.get(workload, {}))

    def in_flight(self, workload: str, group_id: str) -> int | None:
        return 0
