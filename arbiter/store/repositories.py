"""Repositories: the only code that reads and writes the store's tables.

They take and return domain values (never ORM rows), manage their own transactions
and raise StoreError (never SQLAlchemy errors). The same contract tests run them on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, Table, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from arbiter.domain.decisions import Decision
from arbiter.domain.market import (
    CapacityKind,
    CapacitySignal,
    CarbonBasis,
    CarbonReading,
    CarbonUnit,
    InstanceType,
    Market,
    Offer,
    PriceQuote,
    Provider,
)
from arbiter.domain.migrations import Migration, MigrationEvent, MigrationState
from arbiter.domain.regions import Region, RegionCatalog
from arbiter.domain.workloads import Placement, Workload
from arbiter.errors import LeaseHeld, StoreError
from arbiter.store import changepoints, reads
from arbiter.store import schema as t
from arbiter.store.changepoints import IngestStats, Observation, Observations
from arbiter.store.db import translate_errors

_CHUNK = 500


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RegionRepository:
    def __init__(self, engine: Engine):
        self._engine = engine

    def sync(self, catalog: RegionCatalog, *, now: datetime) -> int:
        """Make the regions table equal to the catalog. Returns the number of regions."""
        rows = [
            {
                "provider": r.provider.value,
                "region": r.id,
                "name": r.name,
                "country": r.country,
                "city": r.city,
                "latitude": r.latitude,
                "longitude": r.longitude,
                "grid_zone": r.grid_zone,
                "groups": ",".join(sorted(r.groups)),
                "updated_at": now,
            }
            for r in catalog
        ]
        with translate_errors("syncing regions"), self._engine.begin() as conn:
            conn.execute(delete(t.regions))
            if rows:
                conn.execute(insert(t.regions), rows)
        return len(rows)

    def all(self) -> list[Region]:
        with translate_errors("reading regions"), self._engine.connect() as conn:
            result = conn.execute(
                select(t.regions).order_by(t.regions.c.provider, t.regions.c.region)
            )
            return [
                Region(
                    provider=Provider(row.provider),
                    id=row.region,
                    name=row.name,
                    country=row.country,
                    city=row.city,
                    latitude=row.latitude,
                    longitude=row.longitude,
                    grid_zone=row.grid_zone,
                    groups=frozenset(g for g in row.groups.split(",") if g),
                )
                for row in result
            ]


@dataclass(frozen=True)
class LatestPrice:
    offer: Offer
    usd_per_hour: float
    source: str
    first_seen: datetime
    last_seen: datetime


class PriceLevel(NamedTuple):
    """An offer's newest price from one source, and when the source last saw it."""

    offer: Offer
    source: str
    usd_per_hour: float
    last_seen: datetime


class PriceRepository:
    """Change-point encoded price history: one row per (offer, source) price level."""

    def __init__(self, engine: Engine):
        self._engine = engine
        # Offer rows are never changed or deleted, so key -> id is cached once committed.
        self._known_ids: dict[str, int] = {}
        self._offers: dict[int, Offer] = {}
        """The offers :meth:`newest_levels` has read, by id."""

    def _offer_ids(self, conn: Any, offers: dict[str, Offer]) -> dict[str, int]:
        """The id of every offer, keyed by offer key; offers not stored yet are added."""
        ids = {k: self._known_ids[k] for k in offers if k in self._known_ids}
        keys = [k for k in offers if k not in ids]
        if not keys:
            return ids
        if conn.dialect.name == "postgresql":
            ids.update(self._add_offers_in_bulk(conn, {k: offers[k] for k in keys}))
            return ids
        for chunk in _chunks(keys):
            for key, offer_id in conn.execute(
                select(t.offers.c.key, t.offers.c.id).where(
                    changepoints.member_of(conn, t.offers.c.key, chunk)
                )
            ):
                ids[key] = offer_id
        missing = [
            {
                "key": key,
                "provider": offers[key].provider.value,
                "region": offers[key].region,
                "zone": offers[key].zone,
                "instance_type": offers[key].instance_type,
                "market": offers[key].market.value,
            }
            for key in keys
            if key not in ids
        ]
        if missing:
            inserted = conn.execute(
                insert(t.offers).returning(t.offers.c.key, t.offers.c.id), missing
            )
            ids.update({key: offer_id for key, offer_id in inserted.all()})
        return ids

    @staticmethod
    def _add_offers_in_bulk(conn: Any, offers: Mapping[str, Offer]) -> dict[str, int]:
        """PostgreSQL: one statement adds the offers not stored yet and returns the ids
        of all of them."""
        listed = offers.values()
        rows, params = changepoints.unnest_rows(
            conn,
            t.offers,
            {
                "key": list(offers),
                "provider": [o.provider.value for o in listed],
                "region": [o.region for o in listed],
                "zone": [o.zone for o in listed],
                "instance_type": [o.instance_type for o in listed],
                "market": [o.market.value for o in listed],
            },
        )
        columns = "key, provider, region, zone, instance_type, market"
        # Every part reads the snapshot from before the INSERT: the last finds only the
        # offers that were already stored.
        statement = (
            f"WITH batch AS (SELECT * FROM {rows}), "
            f"added AS (INSERT INTO offers ({columns}) SELECT {columns} FROM batch AS b "
            "WHERE NOT EXISTS (SELECT FROM offers AS o WHERE o.key = b.key) "
            "RETURNING key, id) "
            "SELECT key, id FROM added UNION ALL "
            "SELECT o.key, o.id FROM offers AS o JOIN batch AS b ON o.key = b.key"
        )
        changepoints.without_jit(conn)
        return dict(conn.exec_driver_sql(statement, params).all())

    def record(self, quotes: Iterable[PriceQuote]) -> IngestStats:
        """Store quotes as change points per (offer, source), in one transaction.

        The same price as the latest row moves its ``last_seen``; a different price
        starts a new row; a quote older than the latest row is ignored.
        """
        quotes = list(quotes)
        if not quotes:
            return IngestStats()
        keys = [q.offer.key for q in quotes]
        offers = {key: q.offer for key, q in zip(keys, quotes, strict=True)}
        with translate_errors("recording prices"), self._engine.begin() as conn:
            ids = self._offer_ids(conn, offers)
            stats = changepoints.record(
                conn,
                t.price_history,
                ("offer_id", "source"),
                "usd_per_hour",
                Observations(
                    ([ids[key] for key in keys], [q.source for q in quotes]),
                    [q.usd_per_hour for q in quotes],
                    [q.observed_at for q in quotes],
                ),
            )
        self._known_ids.update(ids)
        return stats

    def latest(
        self, *, provider: str | None = None, keys: Sequence[str] | None = None
    ) -> list[LatestPrice]:
        """The newest price level of every offer (or of the offers ``keys``) and source:
        by offer key then source; for ``keys``, by offer, then source (the query of
        :func:`arbiter.store.reads.newest_prices`, which the read-only views run)."""
        with translate_errors("reading prices"), self._engine.connect() as conn:
            rows = reads.newest_prices(reads.Reader.on(conn), keys=keys, provider=provider)
        return [
            LatestPrice(
                offer=Offer(
                    provider=Provider(row.provider),
                    region=row.region,
                    zone=row.zone,
                    instance_type=row.instance_type,
                    market=Market(row.market),
                ),
                usd_per_hour=row.usd_per_hour,
                source=row.source,
                first_seen=row.first_seen,
                last_seen=row.last_seen,
            )
            for row in rows
        ]

    def newest_levels(self) -> list[PriceLevel]:
        """The newest price level of every offer and source, by offer id, then source:
        what a market snapshot reads, and no more (:meth:`latest` also says when each
        level began, and sorts by offer key). Offer rows never change, so each offer is
        read and built once per repository."""
        offers = self._offers
        with translate_errors("reading prices"), self._engine.connect() as conn:
            r = reads.Reader.on(conn)
            rows = reads.newest_levels(r)
            unknown = sorted({row[0] for row in rows} - offers.keys())
            if unknown:
                # more than a chunk: cheaper to read them all than to list their ids
                described = reads.offers_by_id(r, unknown if len(unknown) <= _CHUNK else None)
                for offer_id, (provider, region, zone, instance_type, market) in described.items():
                    offers[offer_id] = Offer(
                        provider=Provider(provider),
                        region=region,
                        zone=zone,
                        instance_type=instance_type,
                        market=Market(market),
                    )
        return [
            PriceLevel(offers[offer_id], source, usd_per_hour, last_seen)
            for offer_id, source, usd_per_hour, last_seen in rows
        ]

    def history(self, offer: Offer) -> list[tuple[float, datetime, datetime]]:
        """Every price level of an offer: (usd_per_hour, first_seen, last_seen), oldest first."""
        ph, of = t.price_history, t.offers
        with translate_errors("reading price history"), self._engine.connect() as conn:
            rows = conn.execute(
                select(ph.c.usd_per_hour, ph.c.first_seen, ph.c.last_seen)
                .join(of, of.c.id == ph.c.offer_id)
                .where(of.c.key == offer.key)
                .order_by(ph.c.first_seen)
            )
            return [(r.usd_per_hour, r.first_seen, r.last_seen) for r in rows]


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    acquired_at: datetime
    expires_at: datetime


class LeaseRepository:
    """Named, expiring leases: at most one live holder per name.

    A holder renews its lease before it expires; a lease whose ``expires_at`` has
    passed may be taken by anyone. Anything that changes the world holds one.
    """

    def __init__(self, engine: Engine):
        self._engine = engine

    def acquire(
        self,
        name: str,
        holder: str,
        *,
        now: datetime,
        ttl: timedelta,
        steal_from: str | None = None,
    ) -> Lease:
        """Take or renew the lease; raises LeaseHeld if someone else holds it live.

        ``steal_from`` names a holder known to be dead (its process is gone) whose
        lease may be taken before it expires.
        """
        lt = t.leases
        expires = now + ttl
        try:
            with translate_errors("acquiring lease"), self._engine.begin() as conn:
                row = conn.execute(select(lt).where(lt.c.name == name).with_for_update()).first()
                if row is None:
                    conn.execute(
                        insert(lt).values(
                            name=name,
                            holder=holder,
                            acquired_at=now,
                            renewed_at=now,
                            expires_at=expires,
                        )
                    )
                    return Lease(name, holder, now, expires)
                live = row.expires_at > now and row.holder != steal_from
                if row.holder != holder and live:
                    raise LeaseHeld(name, row.holder)
                acquired = row.acquired_at if row.holder == holder else now
                # Conditional update: loses cleanly if another holder got there first.
                done = conn.execute(
                    update(lt)
                    .where(lt.c.name == name, lt.c.holder == row.holder)
                    .where(lt.c.expires_at == row.expires_at)
                    .values(holder=holder, acquired_at=acquired, renewed_at=now, expires_at=expires)
                ).rowcount
                if done != 1:
                    raise LeaseHeld(name, "another daemon (lost the race)")
                return Lease(name, holder, acquired, expires)
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise LeaseHeld(name, "another daemon (lost the race)") from exc
            raise

    def release(self, name: str, holder: str) -> bool:
        """Give the lease up if we hold it. Returns whether we did."""
        with translate_errors("releasing lease"), self._engine.begin() as conn:
            done = conn.execute(
                delete(t.leases).where(t.leases.c.name == name, t.leases.c.holder == holder)
            ).rowcount
        return done == 1

    def get(self, name: str) -> Lease | None:
        with translate_errors("reading lease"), self._engine.connect() as conn:
            row = conn.execute(select(t.leases).where(t.leases.c.name == name)).first()
        if row is None:
            return None
        return Lease(row.name, row.holder, row.acquired_at, row.expires_at)


class WorkloadRepository:
    def __init__(self, engine: Engine):
        self._engine = engine

    def upsert(self, workload: Workload, *, now: datetime, source_file: str | None = None) -> None:
        values = {
            "data_class": workload.data_class,
            "spec": workload.model_dump(mode="json"),
            "source_file": source_file,
            "updated_at": now,
        }
        with translate_errors("saving workload"), self._engine.begin() as conn:
            done = conn.execute(
                update(t.workloads).where(t.workloads.c.name == workload.name).values(**values)
            ).rowcount
            if not done:
                conn.execute(insert(t.workloads).values(name=workload.name, **values))

    def all(self) -> list[Workload]:
        with translate_errors("reading workloads"), self._engine.connect() as conn:
            rows = conn.execute(select(t.workloads.c.spec).order_by(t.workloads.c.name))
            return [Workload.model_validate(row.spec) for row in rows]

    def set_placements(
        self, workload: str, placements: Sequence[Placement], *, now: datetime
    ) -> None:
        """Replace the recorded placements of a workload (what runs now)."""
        with translate_errors("saving placements"), self._engine.begin() as conn:
            conn.execute(delete(t.placements).where(t.placements.c.workload == workload))
            if placements:
                conn.execute(
                    insert(t.placements),
                    [
                        {
                            "workload": workload,
                            "offer_key": p.offer.key,
                            "replicas": p.replicas,
                            "since": now,
                        }
                        for p in placements
                    ],
                )

    def all_placements(self) -> dict[str, list[tuple[str, int]]]:
        """(offer key, replicas) of what runs now, per workload."""
        out: dict[str, list[tuple[str, int]]] = {}
        with translate_errors("reading placements"), self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    t.placements.c.workload, t.placements.c.offer_key, t.placements.c.replicas
                ).order_by(t.placements.c.workload, t.placements.c.offer_key)
            )
            for r in rows:
                out.setdefault(r.workload, []).append((r.offer_key, r.replicas))
        return out

    def placements(self, workload: str) -> list[tuple[str, int]]:
        """(offer key, replicas) of what runs now."""
        with translate_errors("reading placements"), self._engine.connect() as conn:
            rows = conn.execute(
                select(t.placements.c.offer_key, t.placements.c.replicas)
                .where(t.placements.c.workload == workload)
                .order_by(t.placements.c.offer_key)
            )
            return [(r.offer_key, r.replicas) for r in rows]


def _placements_json(placements: Sequence[Placement]) -> list[dict[str, Any]]:
    return [p.model_dump(mode="json") for p in placements]


class LastMigration(NamedTuple):
    """A workload's last started migration, as far as the planner's cooldown and waves
    need it: when it started, where it stands, and its reason (which marks a wave)."""

    id: str
    workload: str
    state: MigrationState
    reason: str
    created_at: datetime


class MigrationRepository:
    """Migrations and their events. A state change and its event commit together."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def create(self, migration: Migration, *, actor: str = "") -> None:
        with translate_errors("creating migration"), self._engine.begin() as conn:
            conn.execute(
                insert(t.migrations).values(
                    id=migration.id,
                    workload=migration.workload,
                    state=migration.state.value,
                    reason=migration.reason,
                    urgent=migration.urgent,
                    source_placements=_placements_json(migration.source),
                    target_placements=_placements_json(migration.target),
                    created_at=migration.created_at,
                    updated_at=migration.updated_at,
                )
            )
            conn.execute(
                insert(t.migration_events).values(
                    migration_id=migration.id,
                    at=migration.created_at,
                    from_state=None,
                    to_state=migration.state.value,
                    reason=migration.reason,
                    actor=actor,
                )
            )

    def advance(
        self,
        migration: Migration,
        to: MigrationState,
        *,
        at: datetime,
        reason: str,
        actor: str = "",
    ) -> Migration:
        """Move a migration to ``to`` and record the event, atomically.

        Raises StoreError if the stored state is no longer ``migration.state`` (someone
        else moved it), so two actors can never both take the same step.
        """
        moved, event = migration.advance(to, at=at, reason=reason)
        with translate_errors("advancing migration"), self._engine.begin() as conn:
            done = conn.execute(
                update(t.migrations)
                .where(t.migrations.c.id == migration.id)
                .where(t.migrations.c.state == migration.state.value)
                .values(state=to.value, updated_at=moved.updated_at)
            ).rowcount
            if done != 1:
                raise StoreError(
                    f"migration {migration.id} is no longer {migration.state}; "
                    "another actor moved it"
                )
            conn.execute(
                insert(t.migration_events).values(
                    migration_id=event.migration_id,
                    at=event.at,
                    from_state=event.from_state.value if event.from_state else None,
                    to_state=event.to_state.value,
                    reason=event.reason,
                    actor=actor,
                )
            )
        return moved

    def _from_row(self, row: Any) -> Migration:
        return Migration(
            id=row.id,
            workload=row.workload,
            source=tuple(Placement.model_validate(p) for p in row.source_placements),
            target=tuple(Placement.model_validate(p) for p in row.target_placements),
            state=MigrationState(row.state),
            reason=row.reason,
            urgent=row.urgent,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def get(self, migration_id: str) -> Migration | None:
        with translate_errors("reading migration"), self._engine.connect() as conn:
            row = conn.execute(
                select(t.migrations).where(t.migrations.c.id == migration_id)
            ).first()
        return None if row is None else self._from_row(row)

    def recent(self, *, limit: int = 50) -> list[Migration]:
        """The last started first, finished or not (by insertion order, not by
        ``created_at``, which goes back when the clock steps back)."""
        with translate_errors("reading migrations"), self._engine.connect() as conn:
            rows = conn.execute(
                select(t.migrations).order_by(t.migrations.c.seq.desc()).limit(limit)
            )
            return [self._from_row(row) for row in rows]

    def latest_per_workload(self) -> dict[str, LastMigration]:
        """Each workload's last started migration (by insertion order, not by
        ``created_at``, which goes back when the clock steps back), finished or not,
        however many migrations of other workloads started after it, in one query.
        Placements are not read: the reconciler asks this for every workload on every
        pass."""
        m = t.migrations
        last = select(func.max(m.c.seq)).group_by(m.c.workload)
        query = select(m.c.id, m.c.workload, m.c.state, m.c.reason, m.c.created_at).where(
            m.c.seq.in_(last)
        )
        with translate_errors("reading migrations"), self._engine.connect() as conn:
            return {
                workload: LastMigration(key, workload, MigrationState(state), reason, created_at)
                for key, workload, state, reason, created_at in conn.execute(query)
            }

    def unfinished(self) -> list[Migration]:
        """Every migration not yet done, rolled back or failed, the first started first."""
        finished = [s.value for s in MigrationState if s.finished]
        with translate_errors("reading migrations"), self._engine.connect() as conn:
            rows = conn.execute(
                select(t.migrations)
                .where(t.migrations.c.state.not_in(finished))
                .order_by(t.migrations.c.seq)
            )
            return [self._from_row(row) for row in rows]

    def prune(self, finished_before: datetime, *, batch: int = 500) -> dict[str, int]:
        """Apply retention: delete the migrations that finished (done, rolled back,
        failed) before ``finished_before``, with their events — never an unfinished one,
        and never a workload's last started one, however old (cooldown and waves read
        it, and ``arbiter status``). At most ``batch`` migrations per transaction, so a
        table grown for years is emptied without holding its locks throughout.

        Returns how many migrations and events were deleted."""
        m, me = t.migrations, t.migration_events
        later = m.alias("later")
        superseded = (
            select(later.c.seq)
            .where(later.c.workload == m.c.workload, later.c.seq > m.c.seq)
            .exists()
        )
        expired = (
            select(m.c.id)
            .where(
                m.c.state.in_([s.value for s in MigrationState if s.finished]),
                m.c.updated_at < finished_before,
                superseded,
            )
            .order_by(m.c.seq)
            .limit(batch)
        )
        removed = {"migrations": 0, "migration_events": 0}
        while True:
            with translate_errors("pruning migrations"), self._engine.begin() as conn:
                ids = list(conn.execute(expired).scalars())
                if not ids:
                    return removed
                events = conn.execute(delete(me).where(me.c.migration_id.in_(ids))).rowcount
                gone = conn.execute(delete(m).where(m.c.id.in_(ids))).rowcount
            removed["migration_events"] += int(events or 0)
            removed["migrations"] += int(gone or 0)
            if len(ids) < batch:
                return removed

    def events(self, migration_id: str) -> list[MigrationEvent]:
        """The migration's steps in the order they were recorded (not by ``at``: a clock
        that stepped back must not reorder the timeline)."""
        me = t.migration_events
        with translate_errors("reading migration events"), self._engine.connect() as conn:
            rows = conn.execute(
                select(me).where(me.c.migration_id == migration_id).order_by(me.c.id)
            )
            return [
                MigrationEvent(
                    migration_id=row.migration_id,
                    at=row.at,
                    from_state=MigrationState(row.from_state) if row.from_state else None,
                    to_state=MigrationState(row.to_state),
                    reason=row.reason,
                )
                for row in rows
            ]


class DecisionRepository:
    def __init__(self, engine: Engine):
        self._engine = engine

    def record(self, decision: Decision) -> None:
        self.record_many([decision])

    def record_many(self, decisions: Sequence[Decision]) -> None:
        """Record decisions in one transaction."""
        if not decisions:
            return
        with translate_errors("recording decisions"), self._engine.begin() as conn:
            conn.execute(
                insert(t.decisions),
                [
                    {
                        "id": d.id,
                        "workload": d.workload,
                        "decided_at": d.decided_at,
                        "snapshot_id": d.snapshot_id,
                        "policy_revision": d.policy_revision,
                        "placed": d.placed,
                        "usd_per_hour": d.usd_per_hour,
                        "carbon_g_per_hour": d.carbon_g_per_hour,
                        "explanation": d.model_dump(mode="json"),
                    }
                    for d in decisions
                ],
            )

    def recent(self, *, workload: str | None = None, limit: int = 50) -> list[Decision]:
        """The last recorded first (not sorted by ``decided_at``: a clock that stepped
        back must not reorder the log)."""
        d = t.decisions
        query = select(d.c.explanation).order_by(d.c.seq.desc()).limit(limit)
        if workload:
            query = query.where(d.c.workload == workload)
        with translate_errors("reading decisions"), self._engine.connect() as conn:
            return [Decision.model_validate(row.explanation) for row in conn.execute(query)]

    def latest_all(self) -> dict[str, Decision]:
        """Each workload's last recorded decision, in one query."""
        d = t.decisions
        newest = select(func.max(d.c.seq)).group_by(d.c.workload)
        query = select(d.c.workload, d.c.explanation).where(d.c.seq.in_(newest))
        with translate_errors("reading decisions"), self._engine.connect() as conn:
            return {
                row.workload: Decision.model_validate(row.explanation)
                for row in conn.execute(query)
            }

    def latest(self, workload: str) -> Decision | None:
        """The workload's last recorded decision (by insertion order, not by
        ``decided_at``, which goes back when the clock steps back)."""
        d = t.decisions
        with translate_errors("reading decisions"), self._engine.connect() as conn:
            row = conn.execute(
                select(d.c.explanation)
                .where(d.c.workload == workload)
                .order_by(d.c.seq.desc())
                .limit(1)
            ).first()
        return None if row is None else Decision.model_validate(row.explanation)

    def prune(self, before: datetime, *, batch: int = 500) -> dict[str, int]:
        """Apply retention: delete the decisions decided before ``before`` — never a
        workload's latest (its last recorded, by insertion order), however old: ``arbiter
        decisions`` shows it and the reconciler records a new decision only when it
        differs from it. At most ``batch`` decisions per transaction, so a table grown
        for years is emptied without holding its locks throughout.

        Returns how many decisions were deleted."""
        d = t.decisions
        later = d.alias("later")
        superseded = (
            select(later.c.seq)
            .where(later.c.workload == d.c.workload, later.c.seq > d.c.seq)
            .exists()
        )
        expired = (
            select(d.c.seq)
            .where(d.c.decided_at < before, superseded)
            .order_by(d.c.seq)
            .limit(batch)
        )
        removed = 0
        while True:
            with translate_errors("pruning decisions"), self._engine.begin() as conn:
                seqs = list(conn.execute(expired).scalars())
                if not seqs:
                    break
                gone = conn.execute(delete(d).where(d.c.seq.in_(seqs))).rowcount
            removed += int(gone or 0)
            if len(seqs) < batch:
                break
        return {"decisions": removed}


@dataclass(frozen=True)
class LatestCapacity:
    signal: CapacitySignal
    """The newest level; ``observed_at`` is when it was last seen."""
    first_seen: datetime


class CapacityRepository:
    """Change-point encoded capacity signals, one series per
    (provider, region, zone, instance type, kind) and source."""

    def __init__(self, engine: Engine):
        self._engine = engine

    @staticmethod
    def series_key(s: CapacitySignal) -> str:
        return ":".join((s.provider, s.region, s.zone or "-", s.instance_type or "*", s.kind))

    def record(self, signals: Iterable[CapacitySignal]) -> IngestStats:
        signals = list(signals)
        if not signals:
            return IngestStats()
        describe: dict[tuple[Hashable, ...], dict[str, Any]] = {
            (self.series_key(s), s.source): {
                "provider": s.provider.value,
                "region": s.region,
                "zone": s.zone,
                "instance_type": s.instance_type,
                "kind": s.kind.value,
            }
            for s in signals
        }
        with translate_errors("recording capacity"), self._engine.begin() as conn:
            stats = changepoints.record(
                conn,
                t.capacity_signals,
                ("key", "source"),
                "value",
                [
                    Observation((self.series_key(s), s.source), s.value, s.observed_at)
                    for s in signals
                ],
                describe,
            )
        return stats

    def latest(self) -> list[LatestCapacity]:
        cs = t.capacity_signals
        newest = (
            select(cs.c.key, cs.c.source, func.max(cs.c.first_seen).label("fs"))
            .group_by(cs.c.key, cs.c.source)
            .subquery()
        )
        query = (
            select(cs)
            .join(
                newest,
                and_(
                    cs.c.key == newest.c.key,
                    cs.c.source == newest.c.source,
                    cs.c.first_seen == newest.c.fs,
                ),
            )
            .order_by(cs.c.key, cs.c.source)
        )
        with translate_errors("reading capacity"), self._engine.connect() as conn:
            return [
                LatestCapacity(
                    signal=CapacitySignal(
                        provider=Provider(row.provider),
                        region=row.region,
                        zone=row.zone,
                        instance_type=row.instance_type,
                        kind=CapacityKind(row.kind),
                        value=row.value,
                        observed_at=row.last_seen,
                        source=row.source,
                    ),
                    first_seen=row.first_seen,
                )
                for row in conn.execute(query)
            ]


class CarbonRepository:
    """Carbon readings, one row per (zone, source, basis, forecast, valid_at); a
    re-published value for the same hour replaces the old one."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def record(self, readings: Iterable[CarbonReading], *, observed_at: datetime) -> int:
        rows = [
            {
                "zone": r.zone,
                "valid_at": r.valid_at,
                "value": r.value,
                "unit": r.unit.value,
                "basis": r.basis.value,
                "source": r.source,
                "forecast": r.forecast,
                "observed_at": observed_at,
            }
            for r in readings
        ]
        if not rows:
            return 0
        cr = t.carbon_readings
        with translate_errors("recording carbon"), self._engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as upsert
            else:
                from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
            for start in range(0, len(rows), 2000):
                stmt = upsert(cr).values(rows[start : start + 2000])
                stmt = stmt.on_conflict_do_update(
                    index_elements=["zone", "source", "basis", "forecast", "valid_at"],
                    set_={
                        "value": stmt.excluded.value,
                        "unit": stmt.excluded.unit,
                        "observed_at": stmt.excluded.observed_at,
                    },
                )
                conn.execute(stmt)
        return len(rows)

    def latest(self, *, include_forecasts: bool = False) -> list[tuple[CarbonReading, datetime]]:
        """The newest reading per (zone, source, basis, unit), with when it was fetched."""
        cr = t.carbon_readings
        newest = (
            select(
                cr.c.zone, cr.c.source, cr.c.basis, cr.c.unit, func.max(cr.c.valid_at).label("va")
            )
            .where(cr.c.forecast.is_(False))
            .group_by(cr.c.zone, cr.c.source, cr.c.basis, cr.c.unit)
            .subquery()
        )
        query = (
            select(cr)
            .join(
                newest,
                and_(
                    cr.c.zone == newest.c.zone,
                    cr.c.source == newest.c.source,
                    cr.c.basis == newest.c.basis,
                    cr.c.unit == newest.c.unit,
                    cr.c.valid_at == newest.c.va,
                    cr.c.forecast.is_(False),
                ),
            )
            .order_by(cr.c.zone, cr.c.source, cr.c.basis)
        )
        with translate_errors("reading carbon"), self._engine.connect() as conn:
            return [
                (
                    CarbonReading(
                        zone=row.zone,
                        valid_at=row.valid_at,
                        value=row.value,
                        unit=CarbonUnit(row.unit),
                        basis=CarbonBasis(row.basis),
                        source=row.source,
                        forecast=row.forecast,
                    ),
                    row.observed_at,
                )
                for row in conn.execute(query)
            ]


class InstanceTypeRepository:
    def __init__(self, engine: Engine):
        self._engine = engine

    def upsert(self, types: Iterable[InstanceType], *, now: datetime) -> int:
        rows = {
            (it.provider.value, it.name): {
                "provider": it.provider.value,
                "name": it.name,
                "vcpus": it.vcpus,
                "memory_gib": it.memory_gib,
                "accelerator": it.accelerator,
                "accelerator_count": it.accelerator_count,
                "accelerator_memory_gib": it.accelerator_memory_gib,
                "updated_at": now,
            }
            for it in types
        }
        if not rows:
            return 0
        it_t = t.instance_types
        with translate_errors("recording instance types"), self._engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as upsert
            else:
                from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
            values = list(rows.values())
            for start in range(0, len(values), 1000):
                stmt = upsert(it_t).values(values[start : start + 1000])
                stmt = stmt.on_conflict_do_update(
                    index_elements=["provider", "name"],
                    set_={c: stmt.excluded[c] for c in values[0] if c not in ("provider", "name")},
                )
                conn.execute(stmt)
        return len(rows)

    def all(self) -> list[InstanceType]:
        with translate_errors("reading instance types"), self._engine.connect() as conn:
            rows = conn.execute(
                select(t.instance_types).order_by(
                    t.instance_types.c.provider, t.instance_types.c.name
                )
            )
            return [
                InstanceType(
                    provider=Provider(r.provider),
                    name=r.name,
                    vcpus=r.vcpus,
                    memory_gib=r.memory_gib,
                    accelerator=r.accelerator,
                    accelerator_count=r.accelerator_count,
                    accelerator_memory_gib=r.accelerator_memory_gib,
                )
                for r in rows
            ]


@dataclass(frozen=True)
class SourceStatus:
    source: str
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_error_at: datetime | None
    last_error: str | None
    consecutive_failures: int


class SourceStatusRepository:
    """How each market-data source is doing: last success, last error, failure streak."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def _save(self, source: str, values: dict[str, Any]) -> None:
        ss = t.source_status
        with translate_errors("recording source status"), self._engine.begin() as conn:
            done = conn.execute(update(ss).where(ss.c.source == source).values(**values)).rowcount
            if not done:
                conn.execute(insert(ss).values(source=source, **values))

    def succeeded(self, source: str, *, at: datetime) -> None:
        self._save(
            source,
            {"last_attempt_at": at, "last_success_at": at, "consecutive_failures": 0},
        )

    def failed(self, source: str, *, at: datetime, error: str) -> None:
        ss = t.source_status
        with translate_errors("recording source status"), self._engine.begin() as conn:
            done = conn.execute(
                update(ss)
                .where(ss.c.source == source)
                .values(
                    last_attempt_at=at,
                    last_error_at=at,
                    last_error=error[:2000],
                    consecutive_failures=ss.c.consecutive_failures + 1,
                )
            ).rowcount
            if not done:
                conn.execute(
                    insert(ss).values(
                        source=source,
                        last_attempt_at=at,
                        last_error_at=at,
                        last_error=error[:2000],
                        consecutive_failures=1,
                    )
                )

    def all(self) -> list[SourceStatus]:
        ss = t.source_status
        with translate_errors("reading source status"), self._engine.connect() as conn:
            return [
                SourceStatus(
                    r.source,
                    r.last_attempt_at,
                    r.last_success_at,
                    r.last_error_at,
                    r.last_error,
                    r.consecutive_failures,
                )
                for r in conn.execute(select(ss).order_by(ss.c.source))
            ]


class BlocklistRepository:
    """Offers that failed with a capacity error, kept off the market until a time."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def add(self, offer_key: str, *, until: datetime, reason: str, now: datetime) -> None:
        b = t.offer_blocklist
        with translate_errors("blocklisting offer"), self._engine.begin() as conn:
            conn.execute(delete(b).where(b.c.offer_key == offer_key))
            conn.execute(
                insert(b).values(offer_key=offer_key, until=until, reason=reason, added_at=now)
            )

    def active(self, now: datetime) -> dict[str, tuple[datetime, str]]:
        """offer key → (until, reason) for every offer still blocked at ``now``."""
        b = t.offer_blocklist
        with translate_errors("reading blocklist"), self._engine.connect() as conn:
            rows = conn.execute(select(b).where(b.c.until > now).order_by(b.c.offer_key))
            return {r.offer_key: (r.until, r.reason) for r in rows}


class PendingRepository:
    """The planner's memory: since when something has held for each workload — its
    better placement (``planner_pending``, for sustained-for) or its hard violation
    (``planner_violations``, for drain_within)."""

    def __init__(self, engine: Engine, table: Table = t.planner_pending):
        self._engine = engine
        self._table = table

    def all(self) -> dict[str, datetime]:
        with translate_errors("reading planner memory"), self._engine.connect() as conn:
            return {r.workload: r.since for r in conn.execute(select(self._table))}

    def replace(self, since: Mapping[str, datetime]) -> None:
        """Keep exactly these workloads' times (the previous ones are deleted)."""
        with translate_errors("saving planner memory"), self._engine.begin() as conn:
            conn.execute(delete(self._table))
            if since:
                conn.execute(
                    insert(self._table),
                    [{"workload": w, "since": s} for w, s in sorted(since.items())],
                )


def _prune_carbon(conn: Connection, cutoff: datetime) -> int:
    """Delete carbon readings valid before ``cutoff`` that a newer reading of the same
    series (zone, source, basis, forecast or not) replaces: the newest of every series
    stays, however old — a static annual factor dated years back is the only reading
    its zone has, and retention must not leave the zone without one until the next
    poll."""
    c = t.carbon_readings
    newer = c.alias("newer")
    replaced = (
        select(newer.c.id)
        .where(
            newer.c.zone == c.c.zone,
            newer.c.source == c.c.source,
            newer.c.basis == c.c.basis,
            newer.c.forecast == c.c.forecast,
            newer.c.valid_at > c.c.valid_at,
        )
        .exists()
    )
    return int(conn.execute(delete(c).where(c.c.valid_at < cutoff).where(replaced)).rowcount or 0)


class Store:
    """Every repository over one engine."""

    def prune(self, cutoff: datetime) -> dict[str, int]:
        """Apply retention: drop history older than ``cutoff`` (newest levels stay)."""
        with translate_errors("pruning history"), self.engine.begin() as conn:
            return {
                "prices": changepoints.prune(conn, t.price_history, ("offer_id", "source"), cutoff),
                "capacity": changepoints.prune(conn, t.capacity_signals, ("key", "source"), cutoff),
                "carbon": _prune_carbon(conn, cutoff),
            }

    def __init__(self, engine: Engine):
        self.engine = engine
        self.regions = RegionRepository(engine)
        self.prices = PriceRepository(engine)
        self.leases = LeaseRepository(engine)
        self.workloads = WorkloadRepository(engine)
        self.migrations = MigrationRepository(engine)
        self.decisions = DecisionRepository(engine)
        self.capacity = CapacityRepository(engine)
        self.carbon = CarbonRepository(engine)
        self.instance_types = InstanceTypeRepository(engine)
        self.sources = SourceStatusRepository(engine)
        self.blocklist = BlocklistRepository(engine)
        self.pending = PendingRepository(engine)
        self.violations = PendingRepository(engine, t.planner_violations)
