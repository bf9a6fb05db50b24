"""What runs: replica groups, one per (workload, offer), as an executor reports them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from arbiter.domain.market import Market, Offer, Provider
from arbiter.domain.values import UtcDatetime, Value
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


class InterruptionNotice(Value):
    """A provider's notice that spot capacity will be reclaimed at ``deadline``.

    Notices name the capacity the way providers do — provider, region, instance type
    (and zone when known) — so they match every offer of that shape, whichever
    executor launched it."""

    provider: Provider
    region: Annotated[str, Field(min_length=1)]
    instance_type: Annotated[str, Field(min_length=1)]
    zone: str | None = None
    market: Market = Market.SPOT
    deadline: UtcDatetime
    source: Annotated[str, Field(min_length=1)]
    detail: str = ""
    """e.g. the instance id or node name."""

    def matches(self, offer: Offer) -> bool:
        return (
            offer.provider is self.provider
            and offer.region == self.region
            and offer.instance_type == self.instance_type
            and offer.market is self.market
            and (self.zone is None or offer.zone is None or offer.zone == self.zone)
        )
