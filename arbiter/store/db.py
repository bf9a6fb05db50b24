"""Connecting to the store and keeping its schema current.

PostgreSQL (≥ 14) is the production store; a SQLite file is the embedded default.
The same Alembic migrations (top-level ``migrations/``) run on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

from arbiter.errors import StoreError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


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


def display_url(url: str) -> str:
    """The URL with its password masked, safe to print and log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs (SQLAlchemy would default to psycopg2)."""
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
    try:
        yield
    except StoreError:
        raise
    except OperationalError as exc:
        from arbiter.logs import mask_secrets_in_text

        detail = mask_secrets_in_text(str(exc.orig).strip().splitlines()[0] if exc.orig else "")
        if _out_of_space(exc.orig):
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
            connection.exec_driver_sql(
                "BEGIN"
                if sqlite
                else "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
                " SET LOCAL jit = off"
            )
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
    return getattr(error.orig, "sqlstate", None) == "42P01" or (
        str(error.orig).startswith("no such table")
    )


def _out_of_space(error: BaseException | None) -> bool:
    """SQLite's SQLITE_FULL (13) or PostgreSQL's disk_full (SQLSTATE 53100)."""
    return getattr(error, "sqlite_errorcode", None) == 13 or (
        getattr(error, "sqlstate", None) == "53100"
    )


def _sqlite_file(url: str) -> Path | None:
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
    from arbiter.store.schema import SCHEMA_REVISION

    with translate_errors("checking schema revision"), engine.connect() as connection:
        try:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError as exc:
            if not _no_such_table(exc):
                raise
            current = None
    head = SCHEMA_REVISION
    if current != head:
        raise StoreError(
            f"database schema is at {current or 'nothing (empty database)'}, "
            f"this arbiter needs {head}: run `arbiter db upgrade`"
        )


def ping(engine: Engine) -> None:
    with translate_errors("ping"), engine.connect() as connection:
        connection.execute(text("SELECT 1"))
