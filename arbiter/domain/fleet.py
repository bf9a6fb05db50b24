"""What runs: replica groups, one per (workload, offer), as an executor reports them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from arbiter.domain.market import Offer
from arbiter.domain.values import Value
from arbiter.domain.workloads import Slug


def group_id(workload: str, offer: Offer) -> str:
    """The stable name of a replica group: ``workload@offer-key``."""
    return f"{workload}@{offer.key}"


class ReplicaGroup(Value):
    """Replicas of one workload on one offer: how many are asked for, how many serve."""

    workload: Slug
    offer: Offer
    desired: Annotated[int, Field(ge=0)]
    ready: Annotated[int, Field(ge=0)]
    endpoint: str | None = None
    """Where the group serves (a URL or backend name), when the executor knows."""

    @property
    def id(self) -> str:
        return group_id(self.workload, self.offer)
