"""What the decide step concludes, and why.

A decision records, for one workload at one time on one market snapshot, the chosen
placements (or that none exists) and every rule's verdict on every candidate, so an
operator can always ask "why here, and why not there?".
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, model_validator

from arbiter.domain.market import Offer
from arbiter.domain.values import Finite, UtcDatetime, Value
from arbiter.domain.workloads import Placement, Slug


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    """The rule could not be evaluated (stale or missing data). Never counts as a pass."""


class RuleMode(StrEnum):
    ENFORCE = "enforce"
    AUDIT = "audit"


class RuleVerdict(Value):
    """One rule's verdict on one candidate offer."""

    rule_id: Annotated[str, Field(min_length=1)]
    verdict: Verdict
    mode: RuleMode = RuleMode.ENFORCE
    reason: str = ""
    origin: str = ""
    """Where the rule is written, ``file:line``."""

    @property
    def excludes(self) -> bool:
        """An enforcing rule that did not pass excludes the candidate (fail closed)."""
        return self.mode is RuleMode.ENFORCE and self.verdict is not Verdict.PASS


class Candidate(Value):
    """One offer considered for a workload, with every rule's verdict on it."""

    offer: Offer
    verdicts: tuple[RuleVerdict, ...]
    effective_usd_per_hour: Annotated[Finite, Field(ge=0)] | None = None

    @property
    def eligible(self) -> bool:
        return not any(v.excludes for v in self.verdicts)


class Decision(Value):
    """The placement chosen for one workload, or the reasons none exists."""

    id: Annotated[str, Field(min_length=1)]
    workload: Slug
    decided_at: UtcDatetime
    snapshot_id: Annotated[str, Field(min_length=1)]
    policy_revision: str = ""
    placements: tuple[Placement, ...] = ()
    usd_per_hour: Annotated[Finite, Field(ge=0)] = 0
    carbon_g_per_hour: Annotated[Finite, Field(ge=0)] | None = None
    candidates: tuple[Candidate, ...] = ()
    unplaceable_reasons: tuple[str, ...] = ()
    """Why the workload is not (or not fully) placed; empty when every replica is."""

    @model_validator(mode="after")
    def _placed_or_explained(self) -> Decision:
        if not self.placements and not self.unplaceable_reasons:
            raise ValueError("a decision without placements must say why (unplaceable_reasons)")
        if any(p.workload != self.workload for p in self.placements):
            raise ValueError("every placement must belong to the decision's workload")
        return self

    @property
    def placed(self) -> bool:
        return bool(self.placements)
