"""Inference workloads and where their replicas run.

A workload says what it needs (GPU models it accepts, with the throughput of one
replica on each), who calls it (user locations with traffic shares), how sensitive its
data is (data class) and what moving it costs (warm-up time, model size). A placement
says how many replicas of a workload run on an offer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from arbiter.domain.market import Offer
from arbiter.domain.values import Finite, Value

Slug = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]


class InterruptionTolerance(StrEnum):
    NONE = "none"
    """Never on spot capacity."""
    LOW = "low"
    """Spot allowed only with on-demand fallback and within the policy's spot share."""
    HIGH = "high"
    """Batch-like: interruptions are acceptable. Spot within the policy's spot share
    with either fallback; under ``fallback: none`` lost spot replicas wait for spot."""


class GpuOption(Value):
    """One accelerator model the workload accepts, with one replica's throughput on it."""

    model: Annotated[str, Field(min_length=1)]
    tokens_per_second: Annotated[Finite, Field(gt=0)]


class UserLocation(Value):
    """Where callers are, and which share of the traffic comes from there."""

    name: Annotated[str, Field(min_length=1)]
    latitude: Annotated[Finite, Field(ge=-90, le=90)]
    longitude: Annotated[Finite, Field(ge=-180, le=180)]
    share: Annotated[Finite, Field(gt=0, le=1)]


class Workload(Value):
    """An inference service to place. Replicas are sized either by count or by throughput."""

    name: Slug
    labels: dict[str, str] = Field(default_factory=dict)
    data_class: Annotated[str, Field(min_length=1)]
    gpus_per_replica: Annotated[int, Field(gt=0)] = 1
    gpu_options: Annotated[tuple[GpuOption, ...], Field(min_length=1)]
    replicas: Annotated[int, Field(gt=0)] | None = None
    required_tokens_per_second: Annotated[Finite, Field(gt=0)] | None = None
    user_locations: tuple[UserLocation, ...] = ()
    latency_slo_ms: Annotated[Finite, Field(gt=0)] | None = None
    interruption_tolerance: InterruptionTolerance = InterruptionTolerance.LOW
    warmup_seconds: Annotated[Finite, Field(ge=0)] = 300
    model_size_gib: Annotated[Finite, Field(ge=0)] = 0

    @field_validator("labels")
    @classmethod
    def _labels_are_short(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not key or len(key) > 63 or len(value) > 63:
                raise ValueError(f"label {key!r}: keys and values are at most 63 characters")
        return labels

    @model_validator(mode="after")
    def _sized_one_way(self) -> Workload:
        if (self.replicas is None) == (self.required_tokens_per_second is None):
            raise ValueError("give exactly one of replicas or required_tokens_per_second")
        models = [o.model for o in self.gpu_options]
        if len(set(models)) != len(models):
            raise ValueError("gpu_options lists a GPU model twice")
        if self.user_locations:
            total = sum(u.share for u in self.user_locations)
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"user_locations shares must add up to 1, got {total:g}")
        return self

    def throughput_on(self, model: str) -> float | None:
        """Tokens/s of one replica on that GPU model, or None if the model is not accepted."""
        for option in self.gpu_options:
            if option.model == model:
                return option.tokens_per_second
        return None


class Placement(Value):
    """``replicas`` replicas of a workload running on one offer."""

    workload: Slug
    offer: Offer
    replicas: Annotated[int, Field(gt=0)]
