"""The read-only CLI never writes.

A database is set up as docs/deploy.md says (deploy/postgres/roles.sql, then
``arbiter db upgrade`` as ``arbiter_daemon``) and filled by the daemon's own code: a
reconcile run with prices, capacity, carbon, decisions, migrations and their events,
placements, planner memory, a blocklisted offer, source health and a lease. Then every
read-only command runs against it, each as its own process, under the read-only role
``arbiter_readonly`` — and again under the daemon's read-write role, to show that the
commands themselves do not try to write (the read-only role would hide that).

Afterwards the database must be unchanged: the content of every table (an md5 of its
rows), every sequence, and PostgreSQL's own counters of inserted, updated and deleted
rows.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from arbiter.domain.market import CapacitySignal, CarbonReading
from arbiter.store.db import make_engine, upgrade
from arbiter.store.repositories import Store
from tests.reliability.world import NOW, SOURCE, World, offer

ROOT = Path(__file__).resolve().parents[2]
ROLES_SQL = ROOT / "deploy" / "postgres" / "roles.sql"

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]


def plain(url: str, **parts: Any) -> str:
    """``url`` for psycopg (no SQLAlchemy driver name), with ``parts`` replaced."""
    return make_url(url).set(drivername="postgresql", **parts).render_as_string(False)


@pytest.fixture
def database(postgres_server: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A filled database with the deployment's roles: URLs for each role, the ids the
    commands are asked about, and the policy and workload directories."""
    admin = postgres_server.new_database()
    password = secrets.token_hex(12)
    with psycopg.connect(plain(admin), autocommit=True) as conn:
        conn.execute(ROLES_SQL.read_text().encode())
        for role in ("arbiter_daemon", "arbiter_readonly"):
            conn.execute(f"ALTER ROLE {role} PASSWORD '{password}'".encode())
    daemon = make_url(admin).set(username="arbiter_daemon", password=password)
    reader = make_url(admin).set(username="arbiter_readonly", password=password)
    urls = {
        "daemon": daemon.render_as_string(False),
        "reader": reader.render_as_string(False),
    }
    upgrade(urls["daemon"])  # the documented order: roles.sql, then db upgrade as the daemon
    engine = make_engine(urls["daemon"])
    try:
        store = Store(engine)
        (tmp_path / "site").mkdir()
        world = World(store, tmp_path / "site")
        world.prices({offer("europe-west4"): 1.0, offer("europe-west1"): 1.5})
        world.tick(8)
        world.prices({offer("europe-west4"): 1.0, offer("europe-west1"): 0.5})
        world.tick(12)
        store.capacity.record(
            [
                CapacitySignal(
                    provider="gcp",
                    region="europe-west4",
                    kind="quota_gpus_free",
                    value=8,
                    observed_at=world.clock.now(),
                    source=SOURCE,
                )
            ]
        )
        store.carbon.record(
            [CarbonReading(zone="NL", valid_at=NOW, value=300, basis="lifecycle", source=SOURCE)],
            observed_at=world.clock.now(),
        )
        store.blocklist.add(
            offer("europe-west3").key,
            until=world.clock.now() + timedelta(days=3650),
            reason="no capacity",
            now=world.clock.now(),
        )
        store.sources.succeeded(SOURCE, at=world.clock.now())
        store.sources.failed("other", at=world.clock.now(), error="HTTP 503")
        store.leases.acquire("leader", "host:1", now=world.clock.now(), ttl=timedelta(days=1))
        migrations = world.migrations()
        assert len(migrations) >= 2 and store.decisions.recent()
        engine.dispose()  # its sessions end, so the server counts their writes now
        yield {
            **urls,
            "migration": migrations[-1].id,
            "site": tmp_path / "site",
        }
    finally:
        engine.dispose()
        postgres_server.drop_database(admin)


def state(url: str) -> dict[str, Any]:
    """Everything that would show a write: each table's rows (md5), each sequence, and
    the server's row counters for the database."""
    with psycopg.connect(plain(url), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        out: dict[str, Any] = {}
        for table in tables:
            out[table] = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, chr(10) ORDER BY t::text), '')) FROM \"{table}\" t"  # noqa: E501
            ).fetchone()
        for (sequence,) in conn.execute(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall():
            out[f"sequence {sequence}"] = conn.execute(
                f'SELECT last_value, is_called FROM "{sequence}"'
            ).fetchone()
        out["row counters"] = conn.execute(
            "SELECT sum(n_tup_ins), sum(n_tup_upd), sum(n_tup_del), sum(n_tup_hot_upd) "
            "FROM pg_stat_user_tables"
        ).fetchone()
        # Not pg_stat_database's counters: autovacuum and ANALYZE write to the system
        # catalogs on their own schedule, which made that comparison flaky in CI. The
        # user tables' contents, sequences and row counters above are what the CLI
        # could change.
    return out


def settled(url: str) -> dict[str, Any]:
    """:func:`state` once the server's row counters have caught up: a session reports
    its counts when it ends or at most once a second (PostgreSQL 15)."""
    import time

    with psycopg.connect(plain(url), autocommit=True) as conn:
        for _ in range(150):  # every other session gone: they report their counts on exit
            others = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            if others == (0,):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("sessions still open on the database")
    now = state(url)
    for _ in range(10):
        time.sleep(1.1)
        again = state(url)
        if again == now:
            return now
        now = again
    raise AssertionError("the database kept changing while nothing ran")


def commands(migration: str) -> list[list[str]]:
    return [
        ["status"],
        ["status", "-o", "json"],
        ["workloads", "-o", "json"],
        ["migrations"],
        ["migrations", migration, "-o", "json"],
        ["decisions", "-o", "json"],
        ["explain", "chat", "-o", "json"],
        ["plan"],
        ["plan", "-o", "json"],
        ["prices", "-o", "json"],
        ["capacity", "-o", "json"],
        ["carbon", "-o", "json"],
        ["sources", "-o", "json"],
        ["db", "current"],
        ["snapshot", "export"],
        ["regions", "--provider", "gcp"],
        ["config", "show"],
    ]


def run_all(url: str, site: Path, migration: str, tmp_path: Path) -> dict[str, Any]:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n\n[daemon]\nkill_switch_file = "{site / "KILL"}"\n\n'
        f'[policies]\npaths = ["{site / "policies"}"]\nworkloads = ["{site / "workloads"}"]\n\n'
        f'[sources.{SOURCE}]\nkind = "replay"\nstale_after = "3650d"\n'
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "ARBITER_CONFIG": str(config),
        "AWS_EC2_METADATA_DISABLED": "true",
    }

    def run(command: list[str]) -> tuple[str, subprocess.CompletedProcess[str]]:
        result = subprocess.run(
            [sys.executable, "-m", "arbiter", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            cwd=tmp_path,
            check=False,
        )
        return " ".join(command), result

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, commands(migration)))


@pytest.mark.parametrize("role", ["reader", "daemon"])
def test_every_read_only_command_succeeds_and_leaves_the_database_unchanged(
    database: dict[str, Any], tmp_path: Path, role: str
) -> None:
    before = settled(database["daemon"])
    results = run_all(database[role], database["site"], database["migration"], tmp_path)
    after = settled(database["daemon"])
    failed = {c: r.stderr[-400:] for c, r in results.items() if r.returncode != 0}
    assert not failed, failed
    assert all("Traceback" not in r.stderr for r in results.values())
    changed = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
    assert not changed, f"`arbiter` read-only commands as {role} changed: {changed}"
    assert set(after) == set(before)
    assert '"state": "done"' in results[f"migrations {database['migration']} -o json"].stdout


def test_the_read_only_role_cannot_write_even_when_a_session_asks_to(
    database: dict[str, Any],
) -> None:
    """What makes the reader safe is the grants, not only the session default."""
    with psycopg.connect(plain(database["reader"]), autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        for statement in (
            "DELETE FROM leases",
            "UPDATE migrations SET state = 'failed'",
            "INSERT INTO decisions (id) VALUES ('x')",
            "TRUNCATE decisions",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.encode())
