"""Connecting to the store and keeping its schema current.

PostgreSQL (≥ 14) is the production store; a SQLite file is the embedded default.
The same Alembic migrations (top-level ``migrations/``) run on both.

Importing this module does not import SQLAlchemy: the functions that use it import it
when called. The read-only views (:mod:`arbiter.store.reads`) use only what is light
here — the default database, :func:`parse_url`, :data:`SCHEMA_REVISION` — and must
start fast (issue 6).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, unquote

from arbiter.errors import StoreError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.exc import DBAPIError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

SCHEMA_REVISION = "0006"
"""The Alembic head the tables of :mod:`arbiter.store.schema` correspond to (a test
keeps it equal to the newest migration). Read-only commands compare it with
``alembic_version`` without loading Alembic or SQLAlchemy, which keeps them fast to
start."""

POSTGRESQL_READ_TRANSACTION = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL jit = off"
)
"""How a read-only view's transaction starts on PostgreSQL (see :func:`read_session`)."""


def default_sqlite_path() -> Path:
    """The embedded default database: ``arbiter.db`` in the user's data directory."""
    from platformdirs import user_data_dir

    try:
        return Path(user_data_dir("arbiter")) / "arbiter.db"
    except (RuntimeError, KeyError):
        raise StoreError(
            "no home directory to keep the embedded SQLite database in: set HOME or "
            "XDG_DATA_HOME, or configure database.url"
        ) from None


def default_database_url() -> str:
    return f"sqlite:///{default_sqlite_path()}"


class DatabaseUrl(NamedTuple):
    """A URL's parts, as SQLAlchemy's ``make_url`` reads them (username, password and
    database percent-decoded; the query as a dict, a repeated key as a list)."""

    drivername: str
    username: str | None
    password: str | None
    host: str | None
    port: int | None
    database: str | None
    query: dict[str, str | list[str]]


_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)
"""SQLAlchemy's own pattern (``sqlalchemy.engine.url._parse_url``); a test checks that
:func:`parse_url` reads every URL as ``make_url`` does."""


def parse_url(url: str) -> DatabaseUrl | None:
    """The parts of a database (or any ``scheme://user:password@host``) URL, read as
    SQLAlchemy's ``make_url`` reads them but without importing SQLAlchemy; None where
    ``make_url`` would refuse it."""
    m = _URL.match(url)
    if m is None:
        return None
    parts = m.groupdict()
    query: dict[str, str | list[str]] = {}
    for key, value in parse_qsl(parts["query"] or ""):
        known = query.get(key)
        if known is None:
            query[key] = value
        elif isinstance(known, list):
            known.append(value)
        else:
            query[key] = [known, value]
    port = parts["port"]
    try:
        number = None if port is None else int(port)  # "host:" too is refused
    except ValueError:
        return None
    username, password, database = (
        None if parts[k] is None else unquote(parts[k])
        for k in ("username", "password", "database")
    )
    return DatabaseUrl(
        parts["name"],
        username,
        password,
        parts["ipv4host"] or parts["ipv6host"],
        number,
        database,
        query,
    )


def display_url(url: str) -> str:
    """The URL with its password masked, safe to print and log."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs (SQLAlchemy would default to psycopg2)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"not a database URL: {display_url(url)}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise StoreError(
            f"unsupported database {parsed.get_backend_name()!r}; use postgresql or sqlite"
        )
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def make_engine(url: str, *, echo: bool = False, read_only: bool = False) -> Engine:
    """An engine for ``url``; SQLite files get their directory created, WAL and FKs.

    ``read_only`` opens SQLite read-only and PostgreSQL sessions with
    ``default_transaction_read_only``, so nothing the caller does can write.
    """
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url

    url = normalise_url(url)
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(url)
        if path is not None:
            if read_only:
                if not path.exists():
                    raise StoreError(
                        f"database file {path} does not exist; run `arbiter db upgrade`"
                    )
                url = f"sqlite:///file:{path}?mode=ro&uri=true"
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No server-side prepared statements: with an IN list of constant length, psycopg
    # would prepare after 5 runs and PostgreSQL could settle on a generic plan made
    # from stale statistics (a sequential scan right after a bulk insert): 40x slower.
    connect_args: dict[str, Any] = {"prepare_threshold": None}
    if read_only:
        connect_args["options"] = "-c default_transaction_read_only=on"
    kwargs["connect_args"] = connect_args
    kwargs["pool_pre_ping"] = True
    return create_engine(url, **kwargs)


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Turn SQLAlchemy errors into StoreError, keeping the cause and masking secrets."""
    from sqlalchemy.exc import OperationalError, SQLAlchemyError

    try:
        yield
    except StoreError:
        raise
    except OperationalError as exc:
        from arbiter.logs import mask_secrets_in_text

        detail = mask_secrets_in_text(str(exc.orig).strip().splitlines()[0] if exc.orig else "")
        if out_of_space(exc.orig):
            raise StoreError(f"{action}: the database is out of disk space: {detail}") from exc
        raise StoreError(f"{action}: database unreachable or refused: {detail}") from exc
    except SQLAlchemyError as exc:
        from arbiter.logs import mask_secrets_in_text

        raise StoreError(f"{action}: {mask_secrets_in_text(str(exc).splitlines()[0])}") from exc


@contextmanager
def read_session(engine: Engine, action: str) -> Iterator[Connection]:
    """One connection in one read-only transaction, for a view made of several queries:
    every query sees the same state of the store, nothing can be written, and the
    transaction is rolled back, never committed. Errors become StoreError naming
    ``action`` (see :func:`translate_errors`).

    PostgreSQL runs it REPEATABLE READ, READ ONLY, without JIT compilation: on a table
    not analyzed yet (a store just filled) a view's query can be estimated dear enough
    to be compiled, which took 10-60 ms for a query that runs in a few. SQLite runs it
    in one deferred transaction (the driver would otherwise give each statement a
    snapshot of its own) with ``query_only`` set for its duration.
    """
    with translate_errors(action), engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql("PRAGMA query_only = ON")
        try:
            connection.exec_driver_sql("BEGIN" if sqlite else POSTGRESQL_READ_TRANSACTION)
            yield connection
        finally:
            try:
                connection.rollback()
            finally:
                if sqlite:
                    try:
                        connection.exec_driver_sql("PRAGMA query_only = OFF")
                    except BaseException:
                        # never back into the pool read-only: a writer would get it
                        connection.invalidate()
                        raise


def _no_such_table(error: DBAPIError) -> bool:
    """PostgreSQL's undefined_table (SQLSTATE 42P01) or SQLite's "no such table"."""
    return no_such_table(error.orig)


def no_such_table(error: BaseException | None) -> bool:
    """Whether a driver's error is PostgreSQL's undefined_table (SQLSTATE 42P01) or
    SQLite's "no such table"."""
    return getattr(error, "sqlstate", None) == "42P01" or str(error).startswith("no such table")


def out_of_space(error: BaseException | None) -> bool:
    """SQLite's SQLITE_FULL (13) or PostgreSQL's disk_full (SQLSTATE 53100)."""
    return getattr(error, "sqlite_errorcode", None) == 13 or (
        getattr(error, "sqlstate", None) == "53100"
    )


def _sqlite_file(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(normalise_url(url))
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None
    return Path(database).expanduser()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise StoreError(
            f"migrations not found at {MIGRATIONS_DIR}; install arbiter from a source checkout "
            "(pip install -e .) so that migrations/ sits next to the arbiter package"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    with translate_errors("upgrade"):
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "-1") -> None:
    from alembic import command

    with translate_errors("downgrade"):
        command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "migrations/ has no revisions"
    return head


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def check_current(engine: Engine) -> None:
    """Raise StoreError unless the database is at the newest migration.

    Reads ``alembic_version`` with one plain SQL statement (no Alembic import, no
    reflection: read-only commands must start fast); a database without that table has
    no schema yet.
    """
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    with translate_errors("checking schema revision"), engine.connect() as connection:
        try:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError as exc:
            if not _no_such_table(exc):
                raise
            current = None
    require_current(current)


def require_current(revision: str | None) -> None:
    """Raise StoreError unless ``revision`` (read from ``alembic_version``; None when the
    database has no such table) is :data:`SCHEMA_REVISION`."""
    if revision != SCHEMA_REVISION:
        raise StoreError(
            f"database schema is at {revision or 'nothing (empty database)'}, "
            f"this arbiter needs {SCHEMA_REVISION}: run `arbiter db upgrade`"
        )


def ping(engine: Engine) -> None:
    from sqlalchemy import text

    with translate_errors("ping"), engine.connect() as connection:
        connection.execute(text("SELECT 1"))
