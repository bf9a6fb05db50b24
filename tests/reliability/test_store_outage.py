"""The store goes away under a running daemon and comes back.

A real ``arbiter run`` (dry-run executor, replay source polled every second, 5 s lease)
leads on a database of the test session's PostgreSQL server; the server is stopped
(``pg_ctl stop -m fast``) and started again. While it is down the daemon must stop
acting — it steps down before its lease could pass to another daemon — log errors and
keep running; once the server is back it must lead, poll and migrate again by itself.
Nothing it had stored may be lost. The database URL carries a password (ignored by the
server's trust authentication) that must never reach the log.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from arbiter.store.db import upgrade
from tests.reliability.site import WEST1, WEST4, Site, running, wait_for

PASSWORD = "pg-outage-s3cret-7d1f"
ACTIONS = ("would ensure", "would route", "migration step", "migration planned", "polled")
"""Log events that mean the daemon acted as leader: executor calls, migration steps,
polls written to the store."""


def test_a_poll_with_the_store_unreachable_is_a_failed_result_not_an_exception() -> None:
    """The poller's contract: it never raises. Even the source's status cannot be
    recorded here; that is logged, and the daemon's job carries on."""
    from structlog.testing import capture_logs

    from arbiter.catalog import load_catalog
    from arbiter.config import SourceConfig
    from arbiter.polling import ConfiguredSource, Poller, RetryPolicy
    from arbiter.ports import FakeClock, FakeMarket
    from arbiter.store.db import make_engine
    from arbiter.store.repositories import Store

    engine = make_engine(f"postgresql://arbiter:{PASSWORD}@127.0.0.1:1/gone")
    market = FakeMarket()
    poller = Poller(
        Store(engine),
        {"fake": ConfiguredSource("fake", SourceConfig(kind="replay"), market)},
        load_catalog(),
        FakeClock(datetime(2025, 6, 2, tzinfo=UTC)),
        retry=RetryPolicy(attempts=1),
    )
    with capture_logs() as logs:
        result = poller.poll("fake")
    engine.dispose()
    assert not result.ok and "database unreachable" in (result.error or "")
    assert [e["event"] for e in logs] == [
        "source status not recorded",
        "poll failed; stored data kept",
    ]
    assert PASSWORD not in repr(logs) + repr(result)


def _stored(site: Site) -> dict[str, set[Any]]:
    """Identities of everything the daemon has recorded so far."""
    return {
        "migrations": {r for r in site.query("SELECT id, workload FROM migrations")},
        "events": {
            r
            for r in site.query(
                "SELECT id, migration_id, to_state, reason, actor FROM migration_events"
            )
        },
        "decisions": {r[0] for r in site.query("SELECT id FROM decisions")},
        "prices": {r for r in site.query("SELECT id, usd_per_hour, first_seen FROM price_history")},
        "placements": {
            r for r in site.query("SELECT workload, offer_key, replicas FROM placements")
        },
    }


def _polled_since(site: Site, moment: Any) -> bool:
    rows = site.try_query("SELECT last_success_at FROM source_status WHERE source='replay'")
    return bool(rows) and rows[0][0] is not None and rows[0][0] > moment


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_a_daemon_steps_down_while_postgresql_is_down_and_leads_again_when_it_is_back(
    tmp_path: Path, postgres_server: Any
) -> None:
    if not postgres_server.can_restart:
        pytest.skip("ARBITER_TEST_POSTGRES_URL points at a server these tests cannot stop")
    url = postgres_server.new_database()
    upgrade(url)
    with_password = url.replace(
        "postgresql+psycopg://arbiter@", f"postgresql://arbiter:{PASSWORD}@"
    )
    site = Site(tmp_path, with_password)
    site.write()
    try:
        with running(site) as daemon:
            wait_for(lambda: site.placements() == {WEST4: 2}, 60, "the first placement")
            before = _stored(site)
            assert before["events"] and before["decisions"] and before["prices"]

            postgres_server.stop_cluster()
            down_at = site.log_size()
            stopped = time.monotonic()
            try:
                wait_for(
                    lambda: any(
                        e["event"] == "lease not renewed in time: stepping down"
                        for e in site.events(down_at)
                    ),
                    20,
                    "the leader to step down",
                )
                stepped_down = time.monotonic() - stopped
                idle_from = site.log_size()
                time.sleep(4)  # well past a lease: a leader cut off must not act meanwhile
                idle = site.events(idle_from)
                outage = site.events(down_at)
                assert daemon.poll() is None, "the daemon exited while the store was down"
            finally:
                # mark the log before the server is back: the daemon may reconnect and
                # lead again while start_cluster() is still waiting for the server
                back_at = site.log_size()
                postgres_server.start_cluster()

            # 80 % of the 5 s lease after the last renewal, noticed by the next job (every
            # second); the margin itself is pinned in test_clock_jumps.py
            assert stepped_down < 8, f"stepped down only after {stepped_down:.1f} s"
            errors = [e for e in outage if e.get("level") == "error"]
            assert any(e["event"] == "tick failed" for e in errors), outage[-10:]
            assert all(
                "database unreachable" in str(e.get("error", "")) for e in errors if "error" in e
            )
            acted = [e for e in idle if e["event"] in ACTIONS or e["event"].startswith("would ")]
            assert not acted, acted
            tracebacks = [e["raw"] for e in outage if "raw" in e and "Traceback" in e["raw"]]
            assert not tracebacks, "a job raised instead of logging the store's error"

            # back: it leads, polls and acts again by itself
            resumed = time.monotonic()
            restarted_at = site.query("SELECT now()")[0][0]
            wait_for(lambda: _polled_since(site, restarted_at), 30, "a successful poll")
            after_start = site.events(back_at)
            assert any(e["event"] == "leading" for e in after_start), after_start[-10:]
            holder = site.query("SELECT holder, expires_at > now() FROM leases")
            assert [(str(h).rsplit(":", 1)[1], live) for h, live in holder] == [
                (str(daemon.pid), True)
            ]
            site.exclude("gcp:europe-west4")  # a hard violation: only a leader moves it
            wait_for(lambda: site.placements() == {WEST1: 2}, 30, "the evacuation after recovery")
            recovered = time.monotonic() - resumed
            assert daemon.poll() is None

            after = _stored(site)
            for table in ("migrations", "events", "decisions", "prices"):
                lost = before[table] - after[table]
                assert not lost, f"{table} lost while the store was down: {lost}"
        assert daemon.returncode == 0, "a clean stop after the outage"
        assert recovered < 30
        text = site.log.read_text()
        assert PASSWORD not in text
        assert "arbiter:***@127.0.0.1" in text  # the URL is shown, masked
    finally:
        if postgres_server.can_restart:
            with contextlib.suppress(Exception):  # already running: the normal case
                postgres_server.start_cluster()
        postgres_server.drop_database(url)
