"""Sessions on the store: a read-only view's queries see one state of the store and
cannot write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, insert, select

from arbiter.errors import StoreError
from arbiter.store import schema
from arbiter.store.db import make_engine, read_session

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)


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


def count_leases(conn: object) -> int:
    return int(conn.execute(select(func.count()).select_from(schema.leases)).scalar_one())  # type: ignore[attr-defined]


@pytest.mark.parametrize("read_only", [True, False])
def test_a_read_session_sees_one_state_of_the_store(
    store_url: str, engine: Engine, read_only: bool
) -> None:
    with engine.connect():  # as the daemon leaves it: in WAL mode, which read-only needs
        pass
    reader = make_engine(store_url, read_only=read_only)
    try:
        with read_session(reader, "reading") as conn:
            assert count_leases(conn) == 0
            add_lease(engine, "leader")  # committed meanwhile, by another session
            assert count_leases(conn) == 0
        with read_session(reader, "reading") as conn:
            assert count_leases(conn) == 1
    finally:
        reader.dispose()


@pytest.mark.parametrize("read_only", [True, False])
def test_a_read_session_cannot_write_even_on_a_read_write_engine(
    store_url: str, read_only: bool
) -> None:
    writer = make_engine(store_url)
    with writer.connect():  # as the daemon leaves it: in WAL mode, which read-only needs
        pass
    writer.dispose()
    engine = make_engine(store_url, read_only=read_only)
    try:
        with (
            pytest.raises(StoreError, match=r"^reading: "),
            read_session(engine, "reading") as conn,
        ):
            conn.execute(
                insert(schema.leases).values(
                    name="leader",
                    holder="host:1",
                    acquired_at=NOW,
                    renewed_at=NOW,
                    expires_at=NOW,
                )
            )
        with read_session(engine, "reading") as conn:
            assert count_leases(conn) == 0
        with engine.begin() as conn:  # the connection went back to the pool writable
            if not read_only:
                conn.execute(
                    insert(schema.leases).values(
                        name="leader",
                        holder="host:1",
                        acquired_at=NOW,
                        renewed_at=NOW,
                        expires_at=NOW,
                    )
                )
    finally:
        engine.dispose()
    if not read_only:
        check = make_engine(store_url)
        try:
            with check.connect() as conn:
                assert count_leases(conn) == 1
        finally:
            check.dispose()


def test_a_read_session_on_postgresql_is_not_jit_compiled(store_url: str, engine: Engine) -> None:
    """A store just filled has no statistics yet: a view's query may be estimated dear
    enough for PostgreSQL to JIT-compile it, 10-60 ms for a query of a few."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    with engine.connect() as conn:
        configured = conn.exec_driver_sql("SHOW jit").scalar()
    with read_session(engine, "reading") as conn:
        assert conn.exec_driver_sql("SHOW jit").scalar() == "off"
        assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
    with engine.connect() as conn:  # SET LOCAL: the pooled connection is as it was
        assert conn.exec_driver_sql("SHOW jit").scalar() == configured


@pytest.mark.parametrize("read_only", [True, False])
def test_an_empty_database_has_no_schema_yet(empty_store_url: str, read_only: bool) -> None:
    from arbiter.store.db import check_current

    writer = make_engine(empty_store_url)
    with writer.connect():  # the SQLite file exists, in WAL mode; no tables
        pass
    writer.dispose()
    engine = make_engine(empty_store_url, read_only=read_only)
    try:
        with pytest.raises(StoreError, match=r"at nothing \(empty database\).*arbiter db upgrade"):
            check_current(engine)
    finally:
        engine.dispose()


def test_a_current_database_passes_the_check(store_url: str, engine: Engine) -> None:
    from arbiter.store.db import check_current

    with engine.connect():  # as the daemon leaves it: in WAL mode, which read-only needs
        pass
    reader = make_engine(store_url, read_only=True)
    try:
        check_current(reader)
    finally:
        reader.dispose()
