"""Evaluating policies on (workload, offer) pairs: every rule, every candidate, no
short-circuit, so an explanation lists all the reasons an offer was excluded.

Rules split by what they depend on, which keeps evaluation fast at scale and the
explanation and the solver's candidate set identical by construction:

* **region rules** — sovereignty (fail closed on unknown jurisdiction or uncovered
  data class), latency, carbon cap;
* **type rules** — the workload's accepted GPU models and GPUs per replica, the
  policy's accelerator constraint;
* **offer rules** — spot allowed, price data fresh.

A verdict of ``error`` (stale or missing data) never counts as a pass: an enforcing rule
then excludes the offer. ``audit`` rules are reported and never exclude.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from arbiter.domain.accelerators import DEFAULT_POWER_KW, POWER_KW, PUE
from arbiter.domain.decisions import Candidate, RuleMode, RuleVerdict, Verdict
from arbiter.domain.market import Market
from arbiter.domain.policy import (
    Budget,
    Constraint,
    Migration,
    Objective,
    Policy,
    Redundancy,
    RuleException,
    Spot,
)
from arbiter.domain.regions import Region, RegionCatalog, great_circle_km
from arbiter.domain.snapshot import MarketSnapshot, OfferState, ZoneCarbon
from arbiter.domain.workloads import InterruptionTolerance, UserLocation, Workload

RTT_BASE_MS = 5.0
RTT_KM_PER_MS = 60.0
"""p95 round trip ≈ 5 ms + 1 ms per 60 km of great-circle distance (fibre at ~2/3 c on
routes ~1.5× longer than the great circle, both ways, plus queueing)."""

# Rule ids of the checks that come from the workload itself or from the data.
WORKLOAD_GPU = "workload-gpu"
WORKLOAD_LATENCY = "workload-latency-slo"
WORKLOAD_INTERRUPTION = "workload-interruption-tolerance"
POLICY_SPOT = "policy-spot"
FRESH_PRICE = "fresh-price"
PLAUSIBLE_PRICE = "plausible-price"
DATA_CLASS_COVERED = "data-class-covered"
EXEMPT_PREFIX = "exempt until "
"""How a verdict an exception turned into a pass begins its reason."""


def estimate_rtt_ms(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    return RTT_BASE_MS + great_circle_km(lat1, lon1, lat2, lon2) / RTT_KM_PER_MS


@dataclass(frozen=True)
class PolicyBook:
    """Loaded policies and where each rule is written (``rule id -> file:line``)."""

    policies: tuple[Policy, ...]
    rule_origins: Mapping[str, str] = field(default_factory=dict)
    policy_origins: Mapping[str, str] = field(default_factory=dict)

    def applicable(self, workload: Workload) -> tuple[Policy, ...]:
        return tuple(
            p
            for p in self.policies
            if p.select.matches(workload.name, workload.labels, workload.data_class)
        )

    def terms(self, workload: Workload) -> Terms:
        policies = self.applicable(workload)
        constraints = tuple(c for p in policies for c in p.constraints)
        objective = next((p.objective for p in policies if p.objective), None) or Objective()
        redundancy = next((p.redundancy for p in policies if p.redundancy), None) or Redundancy()
        spot = next((p.capacity.spot for p in policies if p.capacity), None) or Spot()
        budget = next(((p.metadata.name, p.budget) for p in policies if p.budget), None)
        migration = next((p.migration for p in policies if p.migration), None) or Migration()
        exceptions = {
            e.rule: e for p in policies for e in p.exceptions if workload.name in e.workloads
        }
        return Terms(
            policies=tuple(p.metadata.name for p in policies),
            constraints=constraints,
            objective=objective,
            redundancy=redundancy,
            spot=spot,
            budget=budget,
            migration=migration,
            exceptions=exceptions,
            origins=self.rule_origins,
        )


@dataclass(frozen=True)
class Terms:
    """Everything the applicable policies say about one workload, merged: constraints
    intersect; objective, redundancy, spot policy and budget come from the one policy
    that sets them."""

    policies: tuple[str, ...]
    constraints: tuple[Constraint, ...]
    objective: Objective
    redundancy: Redundancy
    spot: Spot
    budget: tuple[str, Budget] | None
    migration: Migration
    exceptions: Mapping[str, RuleException]
    origins: Mapping[str, str]


def _verdict(
    rule_id: str,
    verdict: Verdict,
    reason: str,
    *,
    mode: RuleMode = RuleMode.ENFORCE,
    origin: str = "",
) -> RuleVerdict:
    return RuleVerdict(rule_id=rule_id, verdict=verdict, mode=mode, reason=reason, origin=origin)


@dataclass
class VerdictCache:
    """Region and type verdicts shared by the evaluators of one decide call, keyed by
    what the rules read of a workload (so two workloads judged alike are judged once).
    Holds ``id()`` of constraint objects: use it only while the policies are alive."""

    regions: dict[Any, dict[str, tuple[RuleVerdict, ...]]] = field(default_factory=dict)
    types: dict[Any, dict[Any, tuple[RuleVerdict, ...]]] = field(default_factory=dict)


class WorkloadEvaluator:
    """Evaluates every rule for one workload; caches per region and per instance shape."""

    def __init__(
        self,
        workload: Workload,
        terms: Terms,
        snapshot: MarketSnapshot,
        catalog: RegionCatalog,
        now: datetime,
        *,
        shared: VerdictCache | None = None,
    ):
        self.workload = workload
        self.terms = terms
        self.snapshot = snapshot
        self.catalog = catalog
        self.now = now
        self._carbon = snapshot.carbon_by_zone()
        shared = shared if shared is not None else VerdictCache()
        # Workloads that the same rules judge alike share their verdicts: the region
        # rules depend only on these parts of a workload and its terms, the type rules
        # only on those (verdicts are immutable values, so sharing is safe).
        exceptions = tuple(sorted((k, e.expires, e.reason) for k, e in terms.exceptions.items()))
        constraints = tuple(id(c) for c in terms.constraints)
        region_sig = (
            constraints,
            exceptions,
            workload.data_class,
            workload.user_locations,
            workload.latency_slo_ms,
        )
        type_sig = (constraints, exceptions, workload.gpu_options, workload.gpus_per_replica)
        self.region_signature: Any = region_sig
        self.type_signature: Any = type_sig
        self._region_cache = shared.regions.setdefault(region_sig, {})
        self._type_cache = shared.types.setdefault(type_sig, {})

    # -- helpers -------------------------------------------------------------------

    def _rule(self, constraint: Constraint, verdict: Verdict, reason: str) -> RuleVerdict:
        exception = self.terms.exceptions.get(constraint.id)
        if (
            exception is not None
            and constraint.sovereignty is None
            and verdict is not Verdict.PASS
            and exception.expires >= self.now.date()
        ):
            verdict = Verdict.PASS
            reason = f"{EXEMPT_PREFIX}{exception.expires}: {exception.reason} (was: {reason})"
        return _verdict(
            constraint.id,
            verdict,
            reason,
            mode=constraint.mode,
            origin=self.terms.origins.get(constraint.id, ""),
        )

    @cached_property
    def sovereignty_rules(self) -> tuple[Constraint, ...]:
        return tuple(
            c
            for c in self.terms.constraints
            if c.sovereignty is not None and self.workload.data_class in c.sovereignty.data_classes
        )

    def zone_carbon(self, region: Region | None) -> ZoneCarbon | None:
        return None if region is None else self._carbon.get(region.grid_zone)

    # -- region rules ----------------------------------------------------------------

    def region_verdicts(self, provider: str, region_id: str) -> tuple[RuleVerdict, ...]:
        key = f"{provider}:{region_id}"
        cached = self._region_cache.get(key)
        if cached is None:
            cached = self._region_cache[key] = self._evaluate_region(provider, region_id)
        return cached

    def _evaluate_region(self, provider: str, region_id: str) -> tuple[RuleVerdict, ...]:
        region = self.catalog.get(provider, region_id)
        key = f"{provider}:{region_id}"
        out: list[RuleVerdict] = []
        if not self.sovereignty_rules:
            out.append(
                _verdict(
                    DATA_CLASS_COVERED,
                    Verdict.ERROR,
                    f"no sovereignty rule covers data class {self.workload.data_class!r} "
                    "(fail closed)",
                )
            )
        for c in self.terms.constraints:
            if c.sovereignty is not None:
                if self.workload.data_class not in c.sovereignty.data_classes:
                    continue
                s = c.sovereignty
                if region is None:
                    out.append(
                        self._rule(
                            c,
                            Verdict.FAIL,
                            f"{key}: unknown jurisdiction (region not in the catalog)",
                        )
                    )
                elif key in s.exclude_regions:
                    out.append(self._rule(c, Verdict.FAIL, f"{key} is excluded by name"))
                elif provider in s.exclude_providers:
                    out.append(self._rule(c, Verdict.FAIL, f"provider {provider} is excluded"))
                elif region.jurisdictions.isdisjoint(s.jurisdictions):
                    out.append(
                        self._rule(
                            c,
                            Verdict.FAIL,
                            f"{key} is in {region.country}; allowed: {', '.join(s.jurisdictions)}",
                        )
                    )
                else:
                    out.append(self._rule(c, Verdict.PASS, f"{key} is in {region.country}"))
            elif c.latency is not None:
                out.append(self._latency(c, region, key))
            elif c.carbon is not None:
                zc = self.zone_carbon(region)
                if region is None:
                    out.append(self._rule(c, Verdict.ERROR, f"{key}: region unknown, no grid zone"))
                elif zc is None:
                    out.append(
                        self._rule(c, Verdict.ERROR, f"no carbon data for zone {region.grid_zone}")
                    )
                elif zc.stale:
                    out.append(
                        self._rule(
                            c,
                            Verdict.ERROR,
                            f"carbon data for {zc.zone} is stale "
                            f"(valid {zc.valid_at:%Y-%m-%d %H:%MZ}, {zc.source})",
                        )
                    )
                elif zc.gco2_per_kwh > c.carbon.max_gco2_per_kwh:
                    out.append(
                        self._rule(
                            c,
                            Verdict.FAIL,
                            f"{zc.zone} {zc.gco2_per_kwh:.0f} g/kWh > "
                            f"{c.carbon.max_gco2_per_kwh:.0f}",
                        )
                    )
                else:
                    out.append(
                        self._rule(c, Verdict.PASS, f"{zc.zone} {zc.gco2_per_kwh:.0f} g/kWh")
                    )
        if self.workload.latency_slo_ms is not None and self.workload.user_locations:
            worst = self._worst_rtt(region, self.workload.user_locations, {})
            if worst is None:
                out.append(_verdict(WORKLOAD_LATENCY, Verdict.ERROR, f"{key}: region unknown"))
            elif worst[1] > self.workload.latency_slo_ms:
                out.append(
                    _verdict(
                        WORKLOAD_LATENCY,
                        Verdict.FAIL,
                        f"{worst[1]:.0f} ms from {worst[0]} > "
                        f"SLO {self.workload.latency_slo_ms:.0f} ms",
                    )
                )
            else:
                out.append(_verdict(WORKLOAD_LATENCY, Verdict.PASS, f"≤ {worst[1]:.0f} ms"))
        return tuple(out)

    def _worst_rtt(
        self,
        region: Region | None,
        locations: Sequence[UserLocation],
        measured: Mapping[str, float],
    ) -> tuple[str, float] | None:
        if region is None:
            return None
        worst: tuple[str, float] = ("", 0.0)
        for loc in locations:
            name = loc.name
            ms = measured.get(name)
            if ms is None:
                ms = estimate_rtt_ms(loc.latitude, loc.longitude, region.latitude, region.longitude)
            if ms > worst[1]:
                worst = (name, ms)
        return worst

    def _latency(self, c: Constraint, region: Region | None, key: str) -> RuleVerdict:
        assert c.latency is not None
        names = set(c.latency.from_locations)
        locations = [u for u in self.workload.user_locations if not names or u.name in names]
        if not locations:
            return self._rule(
                c,
                Verdict.ERROR,
                "the workload has none of the user locations "
                f"{', '.join(sorted(names)) or '(any)'}",
            )
        worst = self._worst_rtt(region, locations, c.latency.measured_ms.get(key, {}))
        if worst is None:
            return self._rule(c, Verdict.ERROR, f"{key}: region unknown, latency unknown")
        name, ms = worst
        if ms > c.latency.p95_ms_max:
            return self._rule(
                c, Verdict.FAIL, f"{ms:.0f} ms from {name} > {c.latency.p95_ms_max:.0f} ms"
            )
        return self._rule(c, Verdict.PASS, f"{ms:.0f} ms from {name}")

    # -- type rules ------------------------------------------------------------------

    def replicas_per_instance(self, accelerator_count: float) -> int:
        if accelerator_count < self.workload.gpus_per_replica:
            return 0
        return math.floor(accelerator_count / self.workload.gpus_per_replica + 1e-9)

    def type_verdicts(
        self, accelerator: str | None, count: float, memory: float | None
    ) -> tuple[RuleVerdict, ...]:
        key = (accelerator, count, memory)
        cached = self._type_cache.get(key)
        if cached is None:
            cached = self._type_cache[key] = self._evaluate_type(accelerator, count, memory)
        return cached

    def _evaluate_type(
        self, accelerator: str | None, count: float, memory: float | None
    ) -> tuple[RuleVerdict, ...]:
        out: list[RuleVerdict] = []
        gpr = self.workload.gpus_per_replica
        if accelerator is None:
            out.append(_verdict(WORKLOAD_GPU, Verdict.ERROR, "instance type unknown: no GPU data"))
        elif self.workload.throughput_on(accelerator) is None:
            accepted = ", ".join(o.model for o in self.workload.gpu_options)
            out.append(_verdict(WORKLOAD_GPU, Verdict.FAIL, f"{accelerator} not in {accepted}"))
        elif self.replicas_per_instance(count) < 1:
            out.append(
                _verdict(
                    WORKLOAD_GPU, Verdict.FAIL, f"{count:g}× {accelerator} < {gpr} per replica"
                )
            )
        else:
            out.append(_verdict(WORKLOAD_GPU, Verdict.PASS, f"{count:g}× {accelerator}"))
        for c in self.terms.constraints:
            if c.accelerator is None:
                continue
            a = c.accelerator
            if accelerator is None:
                out.append(self._rule(c, Verdict.ERROR, "accelerator unknown"))
            elif accelerator not in a.any_of:
                out.append(
                    self._rule(c, Verdict.FAIL, f"{accelerator} not in {', '.join(a.any_of)}")
                )
            elif a.per_replica is not None and a.per_replica != gpr:
                out.append(
                    self._rule(
                        c,
                        Verdict.FAIL,
                        f"workload uses {gpr} per replica; rule needs {a.per_replica}",
                    )
                )
            elif a.min_memory_gib is not None and (memory is None or memory < a.min_memory_gib):
                out.append(
                    self._rule(
                        c,
                        Verdict.FAIL if memory is not None else Verdict.ERROR,
                        f"{memory or '?'} GiB < {a.min_memory_gib:g} GiB",
                    )
                )
            else:
                out.append(self._rule(c, Verdict.PASS, accelerator))
        return tuple(out)

    # -- offer rules -----------------------------------------------------------------

    def spot_rule(self) -> tuple[str, bool, str]:
        """The rule that judges this workload's spot offers, whether they pass, and why.

        A workload with ``interruption_tolerance: low`` takes spot only when the policy
        replaces lost spot replicas on on-demand (``capacity.spot.fallback: on_demand``):
        with ``none`` it would run short while spot capacity is gone, which only
        ``high`` accepts."""
        spot = self.terms.spot
        if not spot.allowed:
            return POLICY_SPOT, False, "the policy does not allow spot"
        if spot.max_share <= 0:
            return POLICY_SPOT, False, "the policy's spot share is 0"
        tolerance = self.workload.interruption_tolerance
        if tolerance is InterruptionTolerance.NONE:
            return WORKLOAD_INTERRUPTION, False, "the workload tolerates no interruption"
        if tolerance is InterruptionTolerance.LOW and spot.fallback == "none":
            return (
                WORKLOAD_INTERRUPTION,
                False,
                "interruption_tolerance low takes spot only with capacity.spot.fallback: "
                "on_demand; the policy's is fallback: none",
            )
        return WORKLOAD_INTERRUPTION, True, "spot allowed"

    def spot_allowed(self) -> tuple[bool, str]:
        _, ok, why = self.spot_rule()
        return ok, why

    def offer_verdicts(self, state: OfferState) -> tuple[RuleVerdict, ...]:
        out: list[RuleVerdict] = []
        if state.offer.market is Market.SPOT:
            rule, ok, why = self.spot_rule()
            out.append(_verdict(rule, Verdict.PASS if ok else Verdict.FAIL, why))
        if state.stale:
            out.append(
                _verdict(
                    FRESH_PRICE, Verdict.ERROR, f"price last seen {state.seen_at:%Y-%m-%d %H:%MZ}"
                )
            )
        else:
            out.append(_verdict(FRESH_PRICE, Verdict.PASS, "fresh"))
        median = self.snapshot.implausibly_cheap(state)
        if median is not None:
            per_gpu = state.usd_per_hour / state.accelerator_count
            out.append(
                _verdict(
                    PLAUSIBLE_PRICE,
                    Verdict.ERROR,
                    f"${per_gpu:.2f}/GPU-h is under a fifth of the {state.offer.market.value} "
                    f"median ${median:.2f} for {state.accelerator}: likely a data error",
                )
            )
        return tuple(out)

    # -- all of it -------------------------------------------------------------------

    def verdicts(self, state: OfferState) -> tuple[RuleVerdict, ...]:
        o = state.offer
        return (
            self.region_verdicts(o.provider.value, o.region)
            + self.type_verdicts(
                state.accelerator, state.accelerator_count, state.accelerator_memory_gib
            )
            + self.offer_verdicts(state)
        )

    def cost(self, state: OfferState) -> Cost | None:
        """Effective cost of one replica on this offer, or None if it cannot host one."""
        per_instance = self.replicas_per_instance(state.accelerator_count)
        throughput = self.workload.throughput_on(state.accelerator) if state.accelerator else None
        if per_instance < 1 or throughput is None:
            return None
        price = state.usd_per_hour / per_instance
        region = self.catalog.get(state.offer.provider.value, state.offer.region)
        zc = self.zone_carbon(region)
        power_kw = POWER_KW.get(state.accelerator or "", DEFAULT_POWER_KW)
        grams = (
            self.workload.gpus_per_replica * power_kw * PUE * zc.gco2_per_kwh
            if zc is not None
            else None
        )
        carbon_usd = (grams or 0.0) / 1e6 * self.terms.objective.carbon_price_usd_per_tonne
        risk = 0.0
        if state.offer.market is Market.SPOT:
            bucket = 2.0 if state.interruption_bucket is None else state.interruption_bucket
            risk = price * self.terms.objective.interruption_premium * bucket / 4
        return Cost(
            usd_per_hour=price,
            carbon_usd_per_hour=carbon_usd,
            risk_usd_per_hour=risk,
            carbon_g_per_hour=grams,
            tokens_per_second=throughput,
        )

    def candidates(self) -> tuple[Candidate, ...]:
        """Every offer of the snapshot with every rule's verdict on it."""
        out = []
        for state in self.snapshot.offers:
            cost = self.cost(state)
            out.append(
                Candidate(
                    offer=state.offer,
                    verdicts=self.verdicts(state),
                    effective_usd_per_hour=cost.effective if cost else None,
                )
            )
        return tuple(out)


@dataclass(frozen=True)
class Cost:
    """One replica on one offer, per hour."""

    usd_per_hour: float
    carbon_usd_per_hour: float
    risk_usd_per_hour: float
    carbon_g_per_hour: float | None
    tokens_per_second: float

    @property
    def effective(self) -> float:
        return self.usd_per_hour + self.carbon_usd_per_hour + self.risk_usd_per_hour
