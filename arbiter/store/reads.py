"""Plain reads of the store for the read-only views (``arbiter status``, ``arbiter
prices``), and the newest-price query the price repository shares with them.

Each function runs SQL through a :class:`Reader` and returns plain rows (tuples, named
tuples, dicts of them), never domain values: a one-shot view has no use for validating
every row into a model, and the repositories build their domain values from the same
rows.

A view opened on a database URL (:func:`view`) reads through the database driver itself
— :mod:`sqlite3` or psycopg — and imports neither SQLAlchemy nor the table definitions
of :mod:`arbiter.store.schema`: importing SQLAlchemy took about 0.2 s, more than a
third of the half second ``arbiter status`` may take from the process starting (issue
6). It opens the database as :func:`arbiter.store.db.make_engine` does read-only, checks
the schema revision as :func:`~arbiter.store.db.check_current` does, and reads in one
read-only transaction as :func:`~arbiter.store.db.read_session` does, with the same
errors. URLs it does not handle the way SQLAlchemy would (several hosts, connection
options in the query, other drivers, SQLite URIs and in-memory databases) are opened
through SQLAlchemy instead. A view on an engine (the daemon's, or a Store's) reads on a
connection of the engine's pool through SQLAlchemy's ``exec_driver_sql``, so every
caller runs the same statements.

Only :mod:`arbiter.store` reads the tables (docs/architecture.md): the repositories
through SQLAlchemy Core, the views through this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from arbiter.errors import StoreError

if TYPE_CHECKING:
    from sqlalchemy import Connection

Rows = Sequence[Sequence[Any]]


class Reader:
    """Runs the reads' SQL on one connection, in one transaction, and decodes what the
    driver returns the way the store's column types do (:class:`UtcDateTime`, JSON).

    ``run(sql, params)`` executes one statement and returns its rows; SQL uses the
    driver's placeholders (:attr:`param`): ``?`` on SQLite, ``%s`` on PostgreSQL.
    """

    def __init__(self, dialect: str, run: Callable[[str, Sequence[Any]], Rows]):
        self.dialect = dialect
        self._run = run
        self.param = "%s" if dialect == "postgresql" else "?"

    @classmethod
    def on(cls, conn: Connection) -> Reader:
        """A reader on a SQLAlchemy connection (errors stay SQLAlchemy's, for the
        caller's :func:`~arbiter.store.db.translate_errors`)."""

        def run(sql: str, params: Sequence[Any]) -> Rows:
            result = (
                conn.exec_driver_sql(sql, tuple(params)) if params else conn.exec_driver_sql(sql)
            )
            return result.all()

        return cls(conn.dialect.name, run)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return self._run(sql, params)

    def member_of(self, column: str, values: Sequence[Any], sql_type: str) -> tuple[str, list[Any]]:
        """``column IN values`` and its parameters: one array parameter on PostgreSQL
        (as :func:`arbiter.store.changepoints.member_of`), a placeholder per value on
        SQLite. ``sql_type`` is the values' PostgreSQL type."""
        if self.dialect == "postgresql":
            return f"{column} = ANY(%s::{sql_type}[])", [list(values)]
        if not values:
            return "1 = 0", []
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    @staticmethod
    def time(value: Any) -> datetime:
        """A stored :class:`~arbiter.store.schema.UtcDateTime` as an aware UTC datetime
        (SQLite keeps naive UTC text, PostgreSQL ``timestamptz``)."""
        moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    def maybe_time(self, value: Any) -> datetime | None:
        return None if value is None else self.time(value)

    @staticmethod
    def json(value: Any) -> Any:
        """A stored JSON value (SQLite keeps text; psycopg decodes JSONB itself)."""
        return json.loads(value) if isinstance(value, str | bytes) else value


# --------------------------------------------------------------------------- opening


@contextmanager
def view(where: Any, action: str) -> Iterator[Reader]:
    """A :class:`Reader` in one read-only transaction, on ``where``: a database URL, a
    SQLAlchemy engine or a Store (its engine). Every query sees the same state of the
    store and nothing can be written; errors are StoreError naming ``action``.

    On a URL the database is opened read-only and its schema revision checked first
    (errors name "checking schema revision", as :func:`arbiter.store.db.check_current`),
    and the connection is closed at the end.
    """
    from arbiter.store import db

    if not isinstance(where, str):
        with db.read_session(getattr(where, "engine", where), action) as conn:
            yield Reader.on(conn)
        return
    opener = _driver_opener(where)
    if opener is None:
        engine = db.make_engine(where, read_only=True)
        try:
            db.check_current(engine)
            with db.read_session(engine, action) as conn:
                yield Reader.on(conn)
        finally:
            engine.dispose()
        return
    dialect, driver, connect = opener
    with _translated("checking schema revision", driver):
        connection = connect()
    try:
        cursor = connection.cursor()

        def run(sql: str, params: Sequence[Any]) -> Rows:
            if params:
                cursor.execute(sql, tuple(params))
            else:
                cursor.execute(sql)
            # a statement without rows (BEGIN, SET) has no description
            return [] if cursor.description is None else cursor.fetchall()

        with _translated("checking schema revision", driver):
            run("BEGIN" if dialect == "sqlite" else db.POSTGRESQL_READ_TRANSACTION, ())
            try:
                found = run("SELECT version_num FROM alembic_version", ())
            except driver.Error as exc:
                if not db.no_such_table(exc):
                    raise
                found = []
        db.require_current(found[0][0] if found else None)

        def translated_run(sql: str, params: Sequence[Any]) -> Rows:
            with _translated(action, driver):
                return run(sql, params)

        yield Reader(dialect, translated_run)
    finally:
        connection.close()  # never committed: closing rolls the transaction back


def _driver_opener(url: str) -> tuple[str, Any, Callable[[], Any]] | None:
    """(dialect, driver module, connect) for a URL a view opens on the driver itself,
    as :func:`arbiter.store.db.make_engine` (read-only) would through SQLAlchemy; None
    for URLs left to SQLAlchemy (see the module's docstring)."""
    from arbiter.store.db import parse_url

    parsed = parse_url(url)
    if parsed is None:
        return None
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        database = parsed.database or ""
        if parsed.query or database in ("", ":memory:") or database.startswith("file:"):
            return None
        path = Path(database).expanduser()
        if not path.exists():
            raise StoreError(f"database file {path} does not exist; run `arbiter db upgrade`")
        import sqlite3

        def connect_sqlite() -> Any:
            # read-only as make_engine's mode=ro; timeout is its busy_timeout of 5 s;
            # no implicit transactions: view() begins one
            return sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=5.0, isolation_level=None
            )

        return "sqlite", sqlite3, connect_sqlite
    if parsed.drivername not in ("postgresql", "postgres", "postgresql+psycopg"):
        return None
    query = parsed.query
    if (
        any(isinstance(v, list) for v in query.values())
        or {"host", "port", "options"} & query.keys()
        or "," in (parsed.host or "")
    ):
        return None  # several hosts, or options make_engine would override
    # what SQLAlchemy's psycopg dialect passes (create_connect_args), plus make_engine's
    # connect_args for a read-only engine
    params: dict[str, Any] = {
        name: value
        for name, value in (
            ("host", parsed.host),
            ("dbname", parsed.database),
            ("user", parsed.username),
            ("password", parsed.password),
            ("port", parsed.port),
        )
        if value
    }
    params.update(query)
    params["prepare_threshold"] = None
    params["options"] = "-c default_transaction_read_only=on"
    import psycopg

    def connect_postgresql() -> Any:
        return psycopg.connect(**params)

    return "postgresql", psycopg, connect_postgresql


@contextmanager
def _translated(action: str, driver: Any) -> Iterator[None]:
    """The driver's errors as StoreError, worded as :func:`arbiter.store.db.translate_errors`
    words SQLAlchemy's (which wrap the same driver errors)."""
    from arbiter.logs import mask_secrets_in_text

    try:
        yield
    except driver.OperationalError as exc:
        from arbiter.store.db import out_of_space

        lines = str(exc).strip().splitlines()
        detail = mask_secrets_in_text(lines[0] if lines else "")
        if out_of_space(exc):
            raise StoreError(f"{action}: the database is out of disk space: {detail}") from exc
        raise StoreError(f"{action}: database unreachable or refused: {detail}") from exc
    except driver.Error as exc:
        kind = type(exc)
        first = f"({kind.__module__}.{kind.__name__}) {exc}".splitlines()[0]
        raise StoreError(f"{action}: {mask_secrets_in_text(first)}") from exc


# ------------------------------------------------------------------------- the prices


class NewestPrice(NamedTuple):
    """The newest price of an offer from one source (a row of the change-point history)."""

    key: str
    provider: str
    region: str
    zone: str | None
    instance_type: str
    market: str
    source: str
    usd_per_hour: float
    first_seen: datetime
    last_seen: datetime


_NEWEST = (
    "SELECT offer_id, source, max(first_seen) AS first_seen FROM price_history{where}"
    " GROUP BY offer_id, source"
)
"""The newest price level of each (offer, source): the one with the greatest
``first_seen``, found on the index on ``(offer_id, source, first_seen)``."""

_AT_NEWEST = (
    "{level}.offer_id = newest.offer_id AND {level}.source = newest.source"
    " AND {level}.first_seen = newest.first_seen"
)

_OFFER_COLUMNS = "o.key, o.provider, o.region, o.zone, o.instance_type, o.market"


def newest_levels_query(
    columns: str, *, offers: bool = False, where: str = "", order_by: str
) -> str:
    """The newest price level of every offer and source: ``columns`` of
    ``price_history AS ph`` (and of ``offers AS o`` when ``offers``), the history
    grouped once and joined back. The one query of :func:`newest_prices`,
    :func:`newest_levels` and the price repository."""
    tables = "price_history AS ph"
    if offers:
        tables = "offers AS o JOIN price_history AS ph ON ph.offer_id = o.id"
    return (
        f"SELECT {columns} FROM {tables} JOIN ({_NEWEST.format(where='')}) AS newest"
        f" ON {_AT_NEWEST.format(level='ph')}{where} ORDER BY {order_by}"
    )


def newest_levels_of_query(ids: str) -> str:
    """The newest price level of the offers matched by ``ids`` (a condition on
    ``offer_id``) and every source: offer id, source, $/h, first seen, last seen, by
    offer id then source.

    For a few offers: the groups come from the history index alone and each level's
    price is looked up through the same index, a lookup per offer however long the
    history. (Joining the groups back to the table, or to ``offers``, lets PostgreSQL
    choose to scan all of the history instead.)
    """

    def at_newest(column: str) -> str:
        return (
            f"(SELECT level.{column} FROM price_history AS level"
            f" WHERE {_AT_NEWEST.format(level='level')})"
        )

    return (
        f"SELECT newest.offer_id, newest.source, {at_newest('usd_per_hour')},"
        f" newest.first_seen, {at_newest('last_seen')}"
        f" FROM ({_NEWEST.format(where=' WHERE ' + ids)}) AS newest"
        " ORDER BY newest.offer_id, newest.source"
    )


def newest_prices(
    r: Reader, *, keys: Sequence[str] | None = None, provider: str | None = None
) -> list[NewestPrice]:
    """The newest price level of every offer (or of the offers ``keys``; or of one
    provider's) and source. By offer key then source; for ``keys``, by offer (in the
    order they were stored), each offer's sources in the order the database sorts them.

    For ``keys`` (a few offers, as ``arbiter status`` reads) the levels are looked up
    through the history index (:func:`newest_levels_of_query`), so 90 days of history
    cost a lookup per offer, not a scan.
    """
    p = r.param
    if keys is not None:
        if not keys:
            return []
        wanted, params = r.member_of("key", keys, "varchar")
        if provider:
            wanted += f" AND provider = {p}"
            params.append(provider)
        offer_of = {
            row[0]: tuple(row[1:])
            for row in r.rows(
                "SELECT id, key, provider, region, zone, instance_type, market"
                f" FROM offers WHERE {wanted}",
                params,
            )
        }
        if not offer_of:
            return []
        ids, params = r.member_of("offer_id", sorted(offer_of), "bigint")
        return [
            NewestPrice._make((*offer_of[offer_id], source, usd, r.time(first), r.time(last)))
            for offer_id, source, usd, first, last in r.rows(newest_levels_of_query(ids), params)
        ]
    query = newest_levels_query(
        f"{_OFFER_COLUMNS}, ph.source, ph.usd_per_hour, ph.first_seen, ph.last_seen",
        offers=True,
        where=f" WHERE o.provider = {p}" if provider else "",
        order_by="o.key, ph.source",
    )
    return [
        NewestPrice._make((*row[:8], r.time(row[8]), r.time(row[9])))
        for row in r.rows(query, [provider] if provider else [])
    ]


def newest_levels(r: Reader) -> list[tuple[int, str, float, datetime]]:
    """The newest price level of every offer and source, as (offer id, source, $/h,
    last seen), by offer id then source: what a market snapshot reads, and no more."""
    query = newest_levels_query(
        "ph.offer_id, ph.source, ph.usd_per_hour, ph.last_seen", order_by="ph.offer_id, ph.source"
    )
    return [(i, source, usd, r.time(seen)) for i, source, usd, seen in r.rows(query)]


def offers_by_id(
    r: Reader, ids: Sequence[int] | None = None
) -> dict[int, tuple[str, str, str | None, str, str]]:
    """Offer id → (provider, region, zone, instance type, market), of the offers ``ids``
    (all of them when None)."""
    query = "SELECT id, provider, region, zone, instance_type, market FROM offers"
    params: list[Any] = []
    if ids is not None:
        where, params = r.member_of("id", ids, "bigint")
        query += f" WHERE {where}"
    return {row[0]: tuple(row[1:]) for row in r.rows(query, params)}


def instance_shapes(r: Reader) -> dict[tuple[str, str], tuple[str | None, float]]:
    """(provider, instance type) → (accelerator, accelerator count)."""
    query = "SELECT provider, name, accelerator, accelerator_count FROM instance_types"
    return {(p, n): (accelerator, count) for p, n, accelerator, count in r.rows(query)}


# ------------------------------------------------------------- the fleet and its state


def placements(r: Reader) -> dict[str, list[tuple[str, int]]]:
    """Workload → [(offer key, replicas)], by workload then offer key."""
    placed: dict[str, list[tuple[str, int]]] = {}
    query = "SELECT workload, offer_key, replicas FROM placements ORDER BY workload, offer_key"
    for workload, offer_key, replicas in r.rows(query):
        placed.setdefault(workload, []).append((offer_key, replicas))
    return placed


def workload_specs(r: Reader) -> dict[str, dict[str, Any]]:
    """Workload name → its stored spec (the workload as JSON), of every workload."""
    return {name: r.json(spec) for name, spec in r.rows("SELECT name, spec FROM workloads")}


def newest_carbon(r: Reader, unit: str) -> list[tuple[str, str, str, datetime, float]]:
    """The newest reading in ``unit`` of each (zone, source, basis), forecasts left
    out: (zone, source, basis, valid at, value), by zone, source, basis."""
    p = r.param
    readings = f"NOT forecast AND unit = {p}"
    query = (
        "SELECT cr.zone, cr.source, cr.basis, cr.valid_at, cr.value"
        " FROM carbon_readings AS cr JOIN ("
        "SELECT zone, source, basis, max(valid_at) AS valid_at FROM carbon_readings"
        f" WHERE {readings} GROUP BY zone, source, basis) AS newest"
        " ON cr.zone = newest.zone AND cr.source = newest.source"
        " AND cr.basis = newest.basis AND cr.valid_at = newest.valid_at"
        f" WHERE NOT cr.forecast AND cr.unit = {p}"
        " ORDER BY cr.zone, cr.source, cr.basis"
    )
    return [
        (zone, source, basis, r.time(valid_at), value)
        for zone, source, basis, valid_at, value in r.rows(query, [unit, unit])
    ]


def source_statuses(r: Reader) -> dict[str, tuple[datetime | None, datetime | None, int]]:
    """Source → (last attempt, last success, consecutive failures)."""
    query = (
        "SELECT source, last_attempt_at, last_success_at, consecutive_failures FROM source_status"
    )
    return {
        source: (r.maybe_time(attempt), r.maybe_time(success), n)
        for source, attempt, success, n in r.rows(query)
    }


def lease(r: Reader, name: str) -> tuple[str, datetime] | None:
    """(holder, expires at) of the lease ``name``, if any."""
    rows = r.rows(f"SELECT holder, expires_at FROM leases WHERE name = {r.param}", [name])
    return (rows[0][0], r.time(rows[0][1])) if rows else None


def migrations_by_state(r: Reader, *, excluding: Sequence[str]) -> dict[str, int]:
    """State → number of migrations in it, of the states not ``excluding``."""
    if excluding:
        where, params = r.member_of("state", excluding, "varchar")
        where = f" WHERE NOT ({where})"
    else:
        where, params = "", []
    query = f"SELECT state, count(*) FROM migrations{where} GROUP BY state"
    return {state: int(n) for state, n in r.rows(query, params)}
