"""Migrations of a workload between placements, as a state machine.

Make-before-break: new capacity is provisioned and warm, and traffic shifted to it,
before the old capacity drains and is released::

    planned → provisioning → warming → shifting → draining → releasing → done
        │          │            │          │
        └──────────┴────────────┴──────────┴──→ rolling_back → rolled_back
                                                     (release the new, keep the old)
    any unfinished state ──→ failed   (only when rollback itself cannot proceed)

Once traffic has shifted, the old capacity is no longer serving, so the forward path
(draining, releasing) is completed rather than rolled back.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from arbiter.domain.values import UtcDatetime, Value
from arbiter.domain.workloads import Placement, Slug


class MigrationState(StrEnum):
    PLANNED = "planned"
    PROVISIONING = "provisioning"
    WARMING = "warming"
    SHIFTING = "shifting"
    DRAINING = "draining"
    RELEASING = "releasing"
    DONE = "done"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset({MigrationState.DONE, MigrationState.ROLLED_BACK, MigrationState.FAILED})

TRANSITIONS: dict[MigrationState, frozenset[MigrationState]] = {
    MigrationState.PLANNED: frozenset({MigrationState.PROVISIONING, MigrationState.ROLLED_BACK}),
    MigrationState.PROVISIONING: frozenset({MigrationState.WARMING, MigrationState.ROLLING_BACK}),
    MigrationState.WARMING: frozenset({MigrationState.SHIFTING, MigrationState.ROLLING_BACK}),
    MigrationState.SHIFTING: frozenset({MigrationState.DRAINING, MigrationState.ROLLING_BACK}),
    MigrationState.DRAINING: frozenset({MigrationState.RELEASING}),
    MigrationState.RELEASING: frozenset({MigrationState.DONE}),
    MigrationState.ROLLING_BACK: frozenset({MigrationState.ROLLED_BACK}),
    MigrationState.DONE: frozenset(),
    MigrationState.ROLLED_BACK: frozenset(),
    MigrationState.FAILED: frozenset(),
}
for _state in MigrationState:
    if not _state.finished:
        TRANSITIONS[_state] = TRANSITIONS[_state] | {MigrationState.FAILED}


class InvalidTransition(ValueError):
    def __init__(self, migration_id: str, current: MigrationState, target: MigrationState):
        self.migration_id = migration_id
        self.current = current
        self.target = target
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none (finished)"
        super().__init__(
            f"migration {migration_id}: cannot go from {current} to {target}; allowed: {allowed}"
        )


class MigrationEvent(Value):
    """One transition of a migration, with the reason it happened."""

    migration_id: Annotated[str, Field(min_length=1)]
    at: UtcDatetime
    from_state: MigrationState | None
    to_state: MigrationState
    reason: str


class Migration(Value):
    """Moving a workload from ``source`` placements to ``target`` placements."""

    id: Annotated[str, Field(min_length=1)]
    workload: Slug
    source: tuple[Placement, ...]
    target: tuple[Placement, ...]
    state: MigrationState = MigrationState.PLANNED
    reason: str
    urgent: bool = False
    """Hard violation or interruption: saving gates are skipped, safety gates are not."""
    created_at: UtcDatetime
    updated_at: UtcDatetime

    def advance(
        self, to: MigrationState, *, at: UtcDatetime, reason: str
    ) -> tuple[Migration, MigrationEvent]:
        """The migration in state ``to`` and the event recording the move.

        Raises InvalidTransition for a move the state machine does not allow.
        """
        if to not in TRANSITIONS[self.state]:
            raise InvalidTransition(self.id, self.state, to)
        event = MigrationEvent(
            migration_id=self.id, at=at, from_state=self.state, to_state=to, reason=reason
        )
        return self.model_copy(update={"state": to, "updated_at": event.at}), event
