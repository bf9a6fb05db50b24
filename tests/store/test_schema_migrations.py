"""The Alembic migrations: they run both ways on both backends, and they create
exactly the tables the code declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from arbiter.store import db
from arbiter.store.schema import metadata


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trips(empty_store_url: str) -> None:
    db.upgrade(empty_store_url)
    assert _tables(empty_store_url) == set(metadata.tables)
    db.downgrade(empty_store_url, "base")
    assert _tables(empty_store_url) == set()
    db.upgrade(empty_store_url)
    assert _tables(empty_store_url) == set(metadata.tables)


def test_upgrade_is_idempotent(empty_store_url: str) -> None:
    db.upgrade(empty_store_url)
    db.upgrade(empty_store_url)
    engine = db.make_engine(empty_store_url)
    try:
        with engine.connect() as conn:
            assert db.current_revision(conn) == db.head_revision()
    finally:
        engine.dispose()


def test_models_match_migrations(store_url: str) -> None:
    engine = db.make_engine(store_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_check_current_refuses_an_old_schema(empty_store_url: str) -> None:
    import pytest

    from arbiter.errors import StoreError

    engine = db.make_engine(empty_store_url)
    try:
        with pytest.raises(StoreError, match="arbiter db upgrade"):
            db.check_current(engine)
    finally:
        engine.dispose()


def test_the_schema_revision_constant_is_the_newest_migration() -> None:
    from arbiter.store.schema import SCHEMA_REVISION

    assert db.head_revision() == SCHEMA_REVISION
