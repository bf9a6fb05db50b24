"""What runs: replica groups, one per (workload, offer), as an executor reports them;
the GPUs arbiter's own replicas hold on each offer; notices that spot capacity will be
reclaimed, and spot capacity lost without one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated

from pydantic import Field

from arbiter.domain.market import Market, Offer, Provider
from arbiter.domain.migrations import Migration, MigrationState
from arbiter.domain.snapshot import MarketSnapshot
from arbiter.domain.values import UtcDatetime, Value
from arbiter.domain.workloads import Placement, Slug


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


# --------------------------------------------------------- GPUs our replicas hold
#
# The capacity signals in a snapshot count what can still be obtained: GPU quota left
# (limit − usage) or availability of more, with the GPUs arbiter's own replicas use
# already taken out. Decide gives those GPUs back to their offer (see
# :func:`arbiter.domain.decide.decide`), so the workloads already there can stay.


def gpus_held(
    placements: Mapping[str, Sequence[Placement]],
    migrations: Sequence[Migration],
    gpus_per_replica: Mapping[str, int],
) -> dict[str, float]:
    """Per offer key, the GPUs arbiter's own replicas hold there: each workload's
    replicas on the offer times its ``gpus_per_replica``, summed over workloads.

    ``placements`` is what runs (the store's placements: a migration's source until it
    is done or rolled back). A migration under way (provisioning to releasing, or
    rolling back) runs max(source, target) replicas on each offer, as the migrator
    provisions them: its new replicas hold GPUs from provisioning on, and the replicas
    it drains away hold theirs until they are released. A planned migration has
    started nothing. Replicas of a workload whose spec is unknown (not in
    ``gpus_per_replica``) are left out: their size is unknown, so nothing is given
    back for them."""
    replicas: dict[tuple[str, str], int] = {}
    for name, ps in placements.items():
        for p in ps:
            key = (name, p.offer.key)
            replicas[key] = replicas.get(key, 0) + p.replicas
    for m in migrations:
        if m.state.finished or m.state is MigrationState.PLANNED:
            continue
        source: dict[str, int] = {}
        target: dict[str, int] = {}
        for side, ps in ((source, m.source), (target, m.target)):
            for p in ps:
                side[p.offer.key] = side.get(p.offer.key, 0) + p.replicas
        for offer_key in source.keys() | target.keys():
            key = (m.workload, offer_key)
            running = max(source.get(offer_key, 0), target.get(offer_key, 0))
            replicas[key] = max(replicas.get(key, 0), running)
    held: dict[str, float] = {}
    for (name, offer_key), n in sorted(replicas.items()):
        gpus = gpus_per_replica.get(name)
        if gpus is not None and n > 0:
            held[offer_key] = held.get(offer_key, 0.0) + float(n * gpus)
    return held


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


# -------------------------------------------- spot capacity lost without a notice
#
# Providers do not always warn: a spot instance may be reclaimed without a notice
# arbiter sees (no interruption source configured, the message lost). Two signals must
# agree before replicas count as lost that way, so that neither a gap in the market
# data nor a replica restarting moves anything:
#
# * fresh market data says the capacity is gone (spot_capacity_gone), and
# * the executor reports fewer replicas ready than the placement runs
#   (spot_capacity_lost).


def spot_capacity_gone(
    placements: Sequence[Placement], snapshot: MarketSnapshot, left_market: Mapping[str, str]
) -> dict[str, str]:
    """The spot offers of these placements whose capacity fresh market data says is
    gone, with why: the offer left the market (``left_market``: offer key → why, for the
    offers every source that priced them has since polled, freshly, without listing
    them). Evidence only: see :func:`spot_capacity_lost`. On-demand capacity is never
    taken for lost this way. A capacity signal of 0 is not evidence: every signal that
    bounds capacity is what is left of a quota with arbiter's own VMs counted in its
    usage (docs/sources/README.md), so 0 is also what a placement that fills its
    quota reads while its replicas merely restart."""
    gone: dict[str, str] = {}
    for p in placements:
        if p.offer.market is not Market.SPOT:
            continue
        key = p.offer.key
        if key in left_market:
            gone[key] = left_market[key]
    return gone


def spot_capacity_lost(
    placements: Sequence[Placement], gone: Mapping[str, str], ready: Mapping[str, int]
) -> dict[str, str]:
    """Of the offers whose capacity is ``gone`` (:func:`spot_capacity_gone`), those on
    which the executor reports fewer replicas ready than the placement runs (``ready``:
    offer key → replicas ready; an offer left out is one the executor could not report
    on, and is not lost). A placement whose replicas serve is never lost, whatever the
    market says."""
    lost: dict[str, str] = {}
    for p in placements:
        key = p.offer.key
        if key not in gone or key not in ready or ready[key] >= p.replicas:
            continue
        lost[key] = f"{gone[key]}; the executor reports {ready[key]} of {p.replicas} replicas ready"
    return lost
