"""The read-only views' reads (arbiter.store.reads): the same rows through the database
driver (a view opened on a URL) as through SQLAlchemy (a view on an engine, and the
price repository), the same read-only transaction and the same errors as the engine's
read_session and check_current."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, and_, func, insert, select

from arbiter.domain.market import Offer, PriceQuote
from arbiter.errors import StoreError
from arbiter.store import reads, schema
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
SPOT = Offer(provider="aws", region="us-east-1", instance_type="p5.48xlarge", market="spot")
OD = Offer(provider="aws", region="us-east-1", instance_type="p5.48xlarge", market="on-demand")
G2 = Offer(
    provider="gcp",
    region="europe-west4",
    zone="europe-west4-a",
    instance_type="g2-standard-4",
    market="spot",
)


def fill_prices(store: Store) -> None:
    """Several levels per offer, two sources for one offer, a zone, microseconds."""
    day = timedelta(days=1)
    for i, price in enumerate((30.0, 31.0, 32.0)):
        at = NOW - (3 - i) * day + timedelta(microseconds=123456)
        store.prices.record(
            [
                PriceQuote(offer=SPOT, usd_per_hour=price, observed_at=at, source="replay"),
                PriceQuote(offer=G2, usd_per_hour=price / 40, observed_at=at, source="gcp"),
            ]
        )
    store.prices.record(
        [
            PriceQuote(offer=SPOT, usd_per_hour=40, observed_at=NOW, source="aws"),
            PriceQuote(offer=OD, usd_per_hour=100, observed_at=NOW, source="aws"),
            PriceQuote(offer=SPOT, usd_per_hour=40, observed_at=NOW + day, source="aws"),
        ]
    )


@pytest.fixture
def prices_store(store: Store) -> Store:
    fill_prices(store)
    return store


@pytest.fixture(params=["url", "engine"])
def view_on(request: pytest.FixtureRequest, store: Store, store_url: str) -> Any:
    """What a view is opened on: the URL (the database driver itself) or the engine."""
    return store_url if request.param == "url" else store.engine


def newest_by_core(engine: Engine, **query: Any) -> list[tuple[Any, ...]]:
    """The oracle: the newest level of every offer and source as SQLAlchemy Core reads
    it (the query the price repository ran before it shared the views' query)."""
    ph, of = schema.price_history, schema.offers
    grouped = select(ph.c.offer_id, ph.c.source, func.max(ph.c.first_seen).label("fs")).group_by(
        ph.c.offer_id, ph.c.source
    )
    newest = grouped.subquery()
    statement = (
        select(
            of.c.key,
            of.c.provider,
            of.c.region,
            of.c.zone,
            of.c.instance_type,
            of.c.market,
            ph.c.source,
            ph.c.usd_per_hour,
            ph.c.first_seen,
            ph.c.last_seen,
        )
        .join(ph, ph.c.offer_id == of.c.id)
        .join(
            newest,
            and_(
                ph.c.offer_id == newest.c.offer_id,
                ph.c.source == newest.c.source,
                ph.c.first_seen == newest.c.fs,
            ),
        )
        .order_by(of.c.key, ph.c.source)
    )
    if query.get("provider"):
        statement = statement.where(of.c.provider == query["provider"])
    if query.get("keys") is not None:
        statement = statement.where(of.c.key.in_(query["keys"]))
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(statement)]


QUERIES = [
    {},
    {"provider": "aws"},
    {"provider": "azure"},
    {"keys": [SPOT.key, OD.key, G2.key, "aws:x:-:y:spot"]},
    {"keys": [SPOT.key, G2.key], "provider": "gcp"},
    {"keys": []},
]


@pytest.mark.parametrize("query", QUERIES)
def test_the_newest_prices_are_the_ones_sqlalchemy_reads(
    prices_store: Store, view_on: Any, query: dict[str, Any]
) -> None:
    with reads.view(view_on, "test") as r:
        read = reads.newest_prices(r, **query)
    if "keys" in query:  # by offer, not by key: compare each offer's sources in order
        read.sort(key=lambda p: p.key)
    assert [tuple(p) for p in read] == newest_by_core(prices_store.engine, **query)
    assert read or query in ({"provider": "azure"}, {"keys": []})
    assert all(p.first_seen.tzinfo is UTC and p.last_seen.tzinfo is UTC for p in read)


@pytest.mark.parametrize("query", QUERIES)
def test_the_price_repository_reads_the_same_newest_prices(
    prices_store: Store, query: dict[str, Any]
) -> None:
    latest = prices_store.prices.latest(**query)
    if "keys" in query:
        latest.sort(key=lambda p: p.offer.key)
    assert [
        (
            p.offer.key,
            p.offer.provider.value,
            p.offer.region,
            p.offer.zone,
            p.offer.instance_type,
            p.offer.market.value,
            p.source,
            p.usd_per_hour,
            p.first_seen,
            p.last_seen,
        )
        for p in latest
    ] == newest_by_core(prices_store.engine, **query)


def test_the_snapshot_levels_are_the_newest_prices(prices_store: Store, view_on: Any) -> None:
    with reads.view(view_on, "test") as r:
        levels = reads.newest_levels(r)
        offers = reads.offers_by_id(r)
        assert reads.offers_by_id(r, sorted(offers)[:1]) == dict(sorted(offers.items())[:1])
    newest = newest_by_core(prices_store.engine)
    assert sorted(
        (":".join((p, rg, z or "-", t, m)), source, usd, seen)
        for offer_id, source, usd, seen in levels
        for p, rg, z, t, m in [offers[offer_id]]
    ) == sorted((row[0], row[6], row[7], row[9]) for row in newest)
    assert [(lv[0], lv[1]) for lv in levels] == sorted((lv[0], lv[1]) for lv in levels)
    assert [
        (level.offer.key, level.source, level.usd_per_hour, level.last_seen)
        for level in prices_store.prices.newest_levels()
    ] == [
        (":".join((p, rg, z or "-", t, m)), source, usd, seen)
        for offer_id, source, usd, seen in levels
        for p, rg, z, t, m in [offers[offer_id]]
    ]


# ------------------------------------------------------------------ opening a view


def writer_engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    with engine.connect():  # as the daemon leaves it: in WAL mode, which read-only needs
        pass
    try:
        yield engine
    finally:
        engine.dispose()


def add_lease(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(schema.leases).values(
                name=name,
                holder="host:1",
                acquired_at=NOW,
                renewed_at=NOW,
                expires_at=NOW + timedelta(seconds=30),
            )
        )


def test_a_view_on_a_url_sees_one_state_of_the_store(store_url: str) -> None:
    for writer in writer_engine(store_url):
        with reads.view(store_url, "reading") as r:
            assert reads.lease(r, "leader") is None
            add_lease(writer, "leader")  # committed meanwhile, by another session
            assert reads.lease(r, "leader") is None
        with reads.view(store_url, "reading") as r:
            assert reads.lease(r, "leader") == ("host:1", NOW + timedelta(seconds=30))


def test_a_view_on_a_url_cannot_write(store_url: str) -> None:
    for writer in writer_engine(store_url):
        with pytest.raises(StoreError, match=r"^reading: "), reads.view(store_url, "reading") as r:
            r.rows(
                f"INSERT INTO planner_pending (workload, since) VALUES ({r.param}, {r.param})",
                ["w", "2025-06-02 09:00:00.000000" if r.dialect == "sqlite" else NOW],
            )
        with writer.connect() as conn:
            count = select(func.count()).select_from(schema.planner_pending)
            assert conn.execute(count).scalar() == 0


def test_a_view_on_postgresql_reads_repeatable_read_read_only_without_jit(
    store_url: str,
) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    with reads.view(store_url, "reading") as r:
        assert r.rows("SHOW jit") == [("off",)]
        assert r.rows("SHOW transaction_read_only") == [("on",)]
        assert r.rows("SHOW transaction_isolation") == [("repeatable read",)]


def test_a_missing_sqlite_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    expected = f"database file {missing} does not exist; run `arbiter db upgrade`"
    with (
        pytest.raises(StoreError, match=f"^{re.escape(expected)}$"),
        reads.view(f"sqlite:///{missing}", "reading"),
    ):
        pass
    assert not missing.exists()


@pytest.mark.parametrize("schema_at", ["nothing", "old"])
def test_a_database_not_at_the_schema_revision_is_refused(
    empty_store_url: str, schema_at: str
) -> None:
    for _writer in writer_engine(empty_store_url):
        if schema_at == "old":
            upgrade(empty_store_url, "0001")
        expected = "nothing (empty database)" if schema_at == "nothing" else "0001"
        expected = f"database schema is at {expected}, this arbiter needs"
        with (
            pytest.raises(StoreError, match=f"^{re.escape(expected)}"),
            reads.view(empty_store_url, "reading"),
        ):
            pass


def test_an_unreachable_postgresql_is_one_line_without_the_password() -> None:
    with (
        pytest.raises(StoreError) as caught,
        reads.view("postgresql://arbiter:s3cr3tpw@127.0.0.1:1/x", "reading"),
    ):
        pass
    message = str(caught.value)
    assert message.startswith("checking schema revision: database unreachable or refused: ")
    assert "s3cr3tpw" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:///{db}", "sqlite"),
        ("sqlite+pysqlite:///{db}", "sqlite"),
        ("sqlite:///{db}?timeout=3", None),
        ("sqlite:///file:{db}?mode=ro&uri=true", None),
        ("sqlite://", None),
        ("postgresql://u:p@127.0.0.1:5432/db", "postgresql"),
        ("postgres://u@h/db?sslmode=disable&application_name=arbiter", "postgresql"),
        ("postgresql+psycopg://u@h/db", "postgresql"),
        ("postgresql+psycopg2://u@h/db", None),
        ("postgresql://u@h1,h2/db", None),
        ("postgresql:///db?host=/run/postgresql", None),
        ("postgresql://u@h/db?options=-c%20search_path%3Dx", None),
        ("mysql://u@h/db", None),
    ],
)
def test_which_urls_a_view_opens_on_the_driver_itself(
    tmp_path: Path, url: str, driver: str | None
) -> None:
    """The others are opened through SQLAlchemy (make_engine), which reads them its way."""
    db = tmp_path / "arbiter.db"
    db.touch()
    opener = reads._driver_opener(url.format(db=db))
    assert (opener[0] if opener else None) == driver


def test_a_url_only_sqlalchemy_opens_is_read_through_sqlalchemy(
    prices_store: Store, store_url: str
) -> None:
    if store_url.startswith("sqlite"):
        url = store_url.replace("sqlite:///", "sqlite:///file:") + "?mode=ro&uri=true"
    else:
        url = store_url + "?options=-c%20statement_timeout%3D5000"
    assert reads._driver_opener(url) is None
    with reads.view(url, "reading") as r:
        read = reads.newest_prices(r)
    assert [tuple(p) for p in read] == newest_by_core(prices_store.engine)


def test_a_sqlite_time_reads_as_the_column_type_reads_it() -> None:
    assert reads.Reader.time("2025-06-02 09:00:00.123456") == datetime(
        2025, 6, 2, 9, 0, 0, 123456, tzinfo=UTC
    )
    assert reads.Reader.time(datetime(2025, 6, 2, 11, tzinfo=UTC).astimezone()) == datetime(
        2025, 6, 2, 11, tzinfo=UTC
    )
