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


# ------------------------------------------------------------ URLs without SQLAlchemy

URLS = [
    "sqlite://",
    "sqlite:///relative/arbiter.db",
    "sqlite:////var/lib/arbiter/arbiter.db",
    "sqlite:///~/arbiter.db",
    "sqlite:///file:/tmp/x.db?mode=ro&uri=true",
    "sqlite+pysqlite:///x.db?timeout=10",
    "postgresql://arbiter@127.0.0.1:5432/arbiter",
    "postgresql+psycopg://arbiter:s3cr%40t%3Aw@db.example:5433/ar%2Fbiter?sslmode=require",
    "postgres://u:p@[::1]:5432/db",
    "postgresql://u:pass:word@host/db",
    "postgresql://u:p@h1:5432,h2:5433/db",
    "postgresql:///db?host=/var/run/postgresql",
    "postgresql://u@/db?host=a&host=b&port=1&port=2",
    "postgresql://u:@host/db?application_name=&options=-c%20x%3Dy",
    "postgresql://u:p@host:notaport/db",
    "postgresql://host:/db",
    "https://user:token@api.example/path?q=1",
    "not a url",
    "://x",
    "mysql+pymysql://root:pw@localhost/db",
]


def sqlalchemy_parts(url: str) -> tuple[object, ...] | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        return None
    query = {k: list(v) if isinstance(v, tuple) else v for k, v in u.query.items()}
    return (u.drivername, u.username, u.password, u.host, u.port, u.database, query)


@pytest.mark.parametrize("url", URLS)
def test_parse_url_reads_a_url_as_sqlalchemy_does(url: str) -> None:
    from arbiter.store.db import parse_url

    parsed = parse_url(url)
    assert (None if parsed is None else tuple(parsed)) == sqlalchemy_parts(url)


def test_parse_url_reads_any_url_as_sqlalchemy_does() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from arbiter.store.db import parse_url

    piece = st.text(alphabet="aZ09:/@?&=%+.-_[],~ ", max_size=12)

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(["postgresql", "sqlite", "postgresql+psycopg", "x"]), piece, piece)
    def check(scheme: str, middle: str, tail: str) -> None:
        url = f"{scheme}://{middle}{tail}"
        parsed = parse_url(url)
        assert (None if parsed is None else tuple(parsed)) == sqlalchemy_parts(url)

    check()


def test_the_store_connection_module_imports_no_sqlalchemy() -> None:
    """The read-only views use its default database, URL parsing and schema revision."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from arbiter.store import db\n"
        "db.parse_url('postgresql://u:p@h/d'); db.default_database_url()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
