"""Placement policies: the rules reviewed in pull requests, as validated values.

A policy file (``policies/*.yaml``) selects workloads and constrains where they may
run. Constraints are hard rules with stable ids, evaluated on every (workload, offer)
without short-circuiting; the objective ranks what is left. Sovereignty rules always
enforce; other rules may be set to ``audit`` (reported, not applied).

The schema is closed: unknown keys are errors (see :mod:`arbiter.policy_loader` for
the file:line:col messages). Units are in the key names (``_ms``, ``_usd_per_hour``,
``_gco2_per_kwh``); durations are strings like ``"30m"``.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from arbiter.domain.decisions import RuleMode
from arbiter.domain.values import Finite, Value, parse_duration

RuleId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
RegionKey = Annotated[str, Field(pattern=r"^(aws|gcp|azure):[a-z0-9-]+$")]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Share = Annotated[Finite, Field(ge=0, le=1)]


class Metadata(Value):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
    owners: tuple[str, ...] = ()
    description: str = ""


class Selector(Value):
    """Which workloads a policy governs: all given criteria must match (empty = all)."""

    labels: dict[str, str] = Field(default_factory=dict)
    workloads: tuple[str, ...] = ()
    data_classes: tuple[str, ...] = ()

    def matches(self, name: str, labels: dict[str, str], data_class: str) -> bool:
        if self.workloads and name not in self.workloads:
            return False
        if self.data_classes and data_class not in self.data_classes:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


class Sovereignty(Value):
    """Where data of the given classes may be processed. Always enforced; fails closed."""

    data_classes: Annotated[tuple[str, ...], Field(min_length=1)]
    jurisdictions: Annotated[tuple[str, ...], Field(min_length=1)]
    """Country codes (``DE``) or jurisdiction groups (``EU``, ``EEA``)."""
    exclude_regions: tuple[RegionKey, ...] = ()
    exclude_providers: tuple[Literal["aws", "gcp", "azure"], ...] = ()


class Accelerator(Value):
    any_of: Annotated[tuple[str, ...], Field(min_length=1)]
    """Canonical accelerator names (``H100``, ``A100-80GB``, ``L4``)."""
    per_replica: Annotated[int, Field(gt=0)] | None = None
    min_memory_gib: Annotated[Finite, Field(gt=0)] | None = None


class Latency(Value):
    """Round-trip time from the workload's user locations to the region."""

    p95_ms_max: Annotated[Finite, Field(gt=0)]
    from_locations: tuple[str, ...] = Field(default=(), alias="from")
    """User location names of the workload; empty means all of them."""
    measured_ms: dict[str, dict[str, Annotated[Finite, Field(ge=0)]]] = Field(default_factory=dict)
    """Measured RTTs: ``{region key: {user location: ms}}``; estimated where absent."""


class Carbon(Value):
    """Cap on grid carbon intensity. Needs fresh data: stale or missing gives ``error``."""

    max_gco2_per_kwh: Annotated[Finite, Field(ge=0)]


class Constraint(Value):
    """One hard rule: exactly one of the rule bodies, with a stable id."""

    id: RuleId
    mode: RuleMode = RuleMode.ENFORCE
    sovereignty: Sovereignty | None = None
    accelerator: Accelerator | None = None
    latency: Latency | None = None
    carbon: Carbon | None = None

    @model_validator(mode="after")
    def _exactly_one_body(self) -> Constraint:
        bodies = [
            k for k in ("sovereignty", "accelerator", "latency", "carbon") if getattr(self, k)
        ]
        if len(bodies) != 1:
            raise ValueError(
                "a constraint has exactly one of sovereignty, accelerator, latency, carbon; "
                f"got {', '.join(bodies) or 'none'}"
            )
        if self.sovereignty is not None and self.mode is RuleMode.AUDIT:
            raise ValueError("sovereignty rules always enforce; mode: audit is not allowed")
        return self

    @property
    def kind(self) -> str:
        for k in ("sovereignty", "accelerator", "latency", "carbon"):
            if getattr(self, k) is not None:
                return k
        raise AssertionError("validated: one body is set")


class Spread(Value):
    across: Literal["region", "provider"] = "region"
    min_distinct: Annotated[int, Field(ge=1)] = 1


class Redundancy(Value):
    min_replicas: Annotated[int, Field(ge=1)] | None = None
    spread: Spread | None = None
    max_share_per_provider: Share | None = None


class Spot(Value):
    allowed: bool = True
    max_share: Share = 1.0
    fallback: Literal["on_demand", "none"] = "on_demand"


class Capacity(Value):
    spot: Spot = Spot()


class Budget(Value):
    max_usd_per_hour: Annotated[Finite, Field(gt=0)]


class Objective(Value):
    minimize: Literal["effective_cost"] = "effective_cost"
    carbon_price_usd_per_tonne: Annotated[Finite, Field(ge=0)] = 0
    interruption_premium: Annotated[Finite, Field(ge=0, le=10)] = 0.1
    """Extra cost of spot per interruption-risk unit (bucket 0..4 → 0..1), as a share of
    the price: 0.1 makes the riskiest spot offer 10 % dearer."""


class MinSaving(Value):
    pct: Annotated[Finite, Field(ge=0, le=100)] = 10
    usd_per_hour: Annotated[Finite, Field(ge=0)] = 0


class HardViolation(Value):
    drain_within: Duration = 3600
    ignore_blackout: bool = True


class Migration(Value):
    min_saving: MinSaving = MinSaving()
    sustained_for: Duration = 1800
    cooldown: Duration = 6 * 3600
    max_concurrent_drains: Annotated[int, Field(ge=1)] = 1
    max_disrupted_replicas_pct: Annotated[Finite, Field(ge=0, le=100)] = 34
    blackout: tuple[str, ...] = ()
    """Windows like ``"Mon-Fri 08:00-18:00 Europe/Berlin"``."""
    on_hard_violation: HardViolation = HardViolation()
    planning_horizon: Duration = 24 * 3600
    """A move must pay for itself (double running, download, egress) within this."""
    egress_usd_per_gib: Annotated[Finite, Field(ge=0)] = 0.09
    """Cost of moving the model to the new place, per GiB (inter-region / internet)."""
    drain_timeout: Duration = 300
    """How long in-flight requests may take to finish before old replicas are released."""

    @field_validator("blackout")
    @classmethod
    def _windows_parse(cls, windows: tuple[str, ...]) -> tuple[str, ...]:
        from arbiter.domain.windows import parse_window

        for text in windows:
            parse_window(text)
        return windows


class RuleException(Value):
    rule: RuleId
    workloads: Annotated[tuple[str, ...], Field(min_length=1)]
    reason: Annotated[str, Field(min_length=1)]
    expires: date


class Policy(Value):
    """One policy file."""

    api_version: Literal["arbiter/v1"] = Field(alias="apiVersion")
    kind: Literal["PlacementPolicy"]
    metadata: Metadata
    select: Selector = Selector()
    constraints: tuple[Constraint, ...] = ()
    redundancy: Redundancy | None = None
    capacity: Capacity | None = None
    budget: Budget | None = None
    objective: Objective | None = None
    migration: Migration | None = None
    exceptions: tuple[RuleException, ...] = ()

    @field_validator("constraints")
    @classmethod
    def _unique_rule_ids(cls, constraints: tuple[Constraint, ...]) -> tuple[Constraint, ...]:
        seen: set[str] = set()
        for c in constraints:
            if c.id in seen:
                raise ValueError(f"rule id {c.id!r} is used twice")
            seen.add(c.id)
        return constraints

    @model_validator(mode="after")
    def _exceptions_name_rules(self) -> Policy:
        ids = {c.id for c in self.constraints}
        for e in self.exceptions:
            if e.rule not in ids:
                raise ValueError(f"exception names unknown rule {e.rule!r}")
            sovereign = next(c for c in self.constraints if c.id == e.rule).sovereignty
            if sovereign is not None:
                raise ValueError(f"sovereignty rule {e.rule!r} cannot have exceptions")
        return self
