"""The long-running daemon: wiring, leadership and a clean shutdown.

``arbiter run`` builds a :class:`Daemon` and calls :meth:`Daemon.run`, which

1. checks the store is at the current schema (the embedded SQLite default is
   upgraded automatically; PostgreSQL must be upgraded with ``arbiter db upgrade``);
2. loads the region catalog and writes it to the store;
3. takes the leader lease (on SQLite a second daemon is refused; on PostgreSQL it
   stands by and takes over when the leader's lease expires), and releases it if the
   start fails after that (an executor or interruption source refusing its options);
4. polls each market-data source on its own interval and jitter (leader only), and
   applies the store's retention every 6 hours (market history, finished migrations,
   old decisions);
5. reconciles (leader only, :mod:`arbiter.reconcile`): decide, plan, and drive
   migrations through the configured executor — resuming any a previous leader left
   unfinished;
6. runs its jobs on an APScheduler background scheduler until SIGTERM or SIGINT,
   then lets the running job finish (a migration stops between two recorded steps),
   closes the executor and the sources, releases the lease and returns 0. SIGHUP
   re-reads policies and workloads: an invalid change is refused and the running set
   stays.

Whatever stops it — a signal, a store it refuses, a start that fails part way, an
error — the executor, each interruption source built and each market-data source
handed to :meth:`Daemon.run` is closed once, after the jobs that use them have stopped;
a close that fails is logged and neither keeps the others open, changes the exit code
nor hides the error that stopped it. The same holds for every shutdown step (telling
systemd, stopping the HTTP endpoint and the scheduler, releasing the lease): each runs
whichever failed before it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from sqlalchemy import Engine

from arbiter.config import Settings
from arbiter.domain.planner import Gate
from arbiter.domain.regions import RegionCatalog
from arbiter.errors import ArbiterError, LeaseHeld, StoreError
from arbiter.http_api import Endpoint
from arbiter.logs import get_logger
from arbiter.polling import DEGRADED_AFTER, ConfiguredSource, Poller, close_sources
from arbiter.ports import Clock, SystemClock
from arbiter.store.db import check_current, ping, upgrade
from arbiter.store.repositories import Store
from arbiter.systemd import Notifier

LEADER_LEASE = "leader"
LEASE_SAFETY = 0.8
"""A leader acts only within this share of its lease after the last renewal."""


def echo_sql() -> None:
    """``database.echo``: log every SQL statement (and its parameters) the daemon sends,
    through the standard logging module to the log stream, like the other libraries'
    logs. (SQLAlchemy's own ``echo=True`` would print each one to standard output too.)"""
    logging.getLogger("sqlalchemy.engine.Engine").setLevel(logging.INFO)


def default_daemon_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _holder_is_dead(holder: str) -> bool:
    """True if ``holder`` names a process on this host that no longer exists."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Daemon:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        catalog: RegionCatalog,
        *,
        database_url: str,
        clock: Clock | None = None,
    ):
        self.settings = settings
        self.engine = engine
        self.store = Store(engine)
        self.catalog = catalog
        self.database_url = database_url
        self.clock = clock or SystemClock()
        self.name = settings.daemon.name or default_daemon_name()
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._leader = False
        self._lease_valid_until: datetime | None = None
        self.stopping = threading.Event()
        self.log = get_logger("daemon", daemon=self.name)
        self._scheduler: Any = None
        self.poller: Poller | None = None
        self.notifier = Notifier()
        self.endpoint: Endpoint | None = None
        self.reconciler: Any = None
        self.executor: Any = None
        """The executor the reconciler drives, once built; closed when the daemon stops."""
        self.interruption_sources: list[Any] = []
        """The interruption sources built so far; closed when the daemon stops."""
        self.sources: dict[str, ConfiguredSource] = {}
        """The market-data sources handed to :meth:`run`; closed when it returns."""
        self.reconcile_stats: dict[str, float] = {}
        """Figures of this daemon's reconcile passes, exported on /metrics."""
        self.reload_requested = threading.Event()

    @property
    def is_leader(self) -> bool:
        """Leading, and the lease renewed recently enough to still hold: a leader cut
        off from the store stops acting before its lease can expire and pass on."""
        if not self._leader or self._lease_valid_until is None:
            return False
        if self.clock.now() >= self._lease_valid_until:
            self._leader = False
            self.log.error("lease not renewed in time: stepping down")
            return False
        return True

    @is_leader.setter
    def is_leader(self, value: bool) -> None:
        self._leader = value
        if not value:
            self._lease_valid_until = None

    # -- start-up ---------------------------------------------------------------

    def prepare_store(self) -> None:
        if self.is_sqlite:
            upgrade(self.database_url)
        check_current(self.engine)
        count = self.store.regions.sync(self.catalog, now=self.clock.now())
        self.log.info("regions synced", regions=count)

    def try_lead(self) -> bool:
        """Take or renew the leader lease. Returns whether this daemon leads now."""
        ttl = timedelta(seconds=self.settings.daemon.lease_seconds)
        now = self.clock.now()
        try:
            self.store.leases.acquire(LEADER_LEASE, self.name, now=now, ttl=ttl)
        except LeaseHeld as held:
            if _holder_is_dead(held.holder):
                self.log.warning("taking over lease of a dead daemon", previous=held.holder)
                self.store.leases.acquire(
                    LEADER_LEASE, self.name, now=now, ttl=ttl, steal_from=held.holder
                )
            else:
                if self.is_leader:
                    self.log.error("lost leadership", leader=held.holder)
                self.is_leader = False
                if self.is_sqlite:
                    raise StoreError(
                        f"another arbiter daemon ({held.holder}) is running on this SQLite "
                        "database; SQLite supports one daemon at a time — use PostgreSQL "
                        "to run several"
                    ) from None
                return False
        if not self._leader:
            self.log.info("leading", lease_seconds=ttl.total_seconds())
        self._leader = True
        # act only while a renewal is recent: stop a safety margin before expiry
        self._lease_valid_until = now + ttl * LEASE_SAFETY
        return True

    # -- jobs -------------------------------------------------------------------

    def tick(self) -> None:
        """Renew leadership. Later steps (poll, reconcile) hang off the scheduler too."""
        try:
            self.try_lead()
        except StoreError as exc:
            self.log.error("tick failed", error=str(exc))
            if self.is_sqlite and "another arbiter daemon" in str(exc):
                self.stopping.set()

    def poll(self, source: str) -> None:
        """Poll one market-data source (leader only: standbys do not double the calls)."""
        if not self.is_leader or self.poller is None or self.stopping.is_set():
            return
        result = self.poller.poll(source)
        self.notifier.status(
            f"{'leader' if self.is_leader else 'standby'}; {source} "
            + ("ok" if result.ok else "FAILED")
        )

    def state(self) -> dict[str, Any]:
        return {
            "leader": self.is_leader,
            "mode": self.settings.daemon.mode.value,
            "name": self.name,
            "reconcile": dict(self.reconcile_stats),
        }

    def fleet(self) -> dict[str, Any]:
        """The fleet summary of ``arbiter status``, for /metrics."""
        from arbiter.config import effective_source_configs
        from arbiter.status import fleet_status

        summary: dict[str, Any] = fleet_status(
            self.store,
            mode=self.settings.daemon.mode.value,
            sources=effective_source_configs(self.settings.sources),
            catalog=self.catalog,
            now=self.clock.now(),
        )
        return summary

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready when the store answers and at least one source is healthy."""
        reasons: list[str] = []
        try:
            ping(self.engine)
            statuses = self.store.sources.all()
        except StoreError as exc:
            return False, [f"store: {exc}"]
        if self.poller is not None and self.poller.sources:
            healthy = [
                s.source
                for s in statuses
                if s.last_success_at is not None and s.consecutive_failures < DEGRADED_AFTER
            ]
            if not healthy:
                reasons.append(
                    "no market-data source has polled successfully yet"
                    if self.is_leader
                    else "standby: waiting for the leader's data"
                )
        return not reasons, reasons

    def watchdog(self) -> None:
        """Feed the systemd watchdog only while the store answers."""
        try:
            ping(self.engine)
        except StoreError as exc:
            self.log.error("watchdog withheld: store unreachable", error=str(exc))
            return
        self.notifier.watchdog()

    def prune(self) -> None:
        """Apply retention (leader only): market history older than ``store.retention``,
        migrations finished longer ago than ``store.migration_retention``, decisions
        older than ``store.decision_retention`` (each workload's latest stays)."""
        if not self.is_leader:
            return
        now = self.clock.now()
        retention = self.settings.store
        cutoff = now - timedelta(seconds=retention.retention)
        migrations_cutoff = now - timedelta(seconds=retention.migration_retention)
        decisions_cutoff = now - timedelta(seconds=retention.decision_retention)
        try:
            removed = self.store.prune(cutoff)
            removed |= self.store.migrations.prune(migrations_cutoff)
            removed |= self.store.decisions.prune(decisions_cutoff)
        except StoreError as exc:
            self.log.error("retention failed", error=str(exc))
            return
        self.log.info(
            "retention applied",
            cutoff=cutoff.isoformat(),
            migrations_cutoff=migrations_cutoff.isoformat(),
            decisions_cutoff=decisions_cutoff.isoformat(),
            **removed,
        )

    def reconcile(self) -> None:
        """One reconcile pass (leader only; a standby never acts)."""
        if not self.is_leader or self.reconciler is None or self.stopping.is_set():
            return
        started = time.perf_counter()
        try:
            result = self.reconciler.tick()
        except ArbiterError as exc:
            self.log.error("reconcile failed", error=str(exc))
            return
        stats = self.reconcile_stats
        stats["passes"] = stats.get("passes", 0) + 1
        stats["seconds"] = round(time.perf_counter() - started, 4)
        stats["started"] = stats.get("started", 0) + len(result.started)
        if result.outcome is not None:
            solution = result.outcome.solution
            stats["solver_seconds"] = solution.solve_seconds
            stats["gap"] = solution.gap
            stats["unplaceable"] = sum(1 for d in result.outcome.decisions if d.unplaceable_reasons)
        if result.plan is not None:
            stats["waiting_for_spot"] = sum(
                1 for h in result.plan.holds if h.gate is Gate.WAITING_FOR_SPOT
            )
            stats["violations_overdue"] = len(result.plan.overdue)
        stats["decisions"] = stats.get("decisions", 0) + result.recorded
        if result.skipped:
            self.log.warning("reconcile skipped", reason=result.skipped)
        elif result.started:
            self.log.info("migrations started", migrations=result.started)

    def reload_policies(self) -> None:
        if self.reconciler is None:
            return
        before = self.reconciler.policy.revision if self.reconciler.policy else None
        state = self.reconciler.reload(force=True)
        if state is None or state.errors:
            self.log.error(
                "reload refused: keeping the policies in force",
                revision=before,
                errors=state.errors if state else ["no valid policies"],
            )
        else:
            self.log.info("policies reloaded", revision=state.revision, previous=before)

    def add_reconcile_job(self) -> None:
        from arbiter.config import default_kill_switch_file, effective_source_configs
        from arbiter.executors import make_executor
        from arbiter.migrator import Migrator
        from arbiter.reconcile import Reconciler

        conf = self.settings.executor
        executor = make_executor(
            conf.kind, self.clock, conf.options, origin=self.settings.origin_of
        )
        self.executor = executor  # from here on, stopping closes it
        migrator = Migrator(self.store, executor, executor, self.clock, actor=self.name)
        daemon = self.settings.daemon
        if daemon.kill_switch_file is None:
            kill = default_kill_switch_file()
            if kill is None:
                # no home or data directory (a PostgreSQL daemon needs neither): run
                # without a default kill switch rather than refuse to start
                self.log.warning(
                    "no kill switch file: there is no data directory to hold the default; "
                    "set daemon.kill_switch_file to have one"
                )
            else:
                daemon = daemon.model_copy(update={"kill_switch_file": kill})
                self.settings = self.settings.model_copy(update={"daemon": daemon})
        stale = {
            name: c.stale_after
            for name, c in effective_source_configs(self.settings.sources).items()
        }
        self.reconciler = Reconciler(
            self.store, migrator, self.settings, self.catalog, self.clock, stale_after=stale
        )
        self.reconciler.reload()
        self._scheduler.add_job(
            self.reconcile,
            "interval",
            seconds=daemon.reconcile_seconds,
            id="reconcile",
            next_run_time=self.clock.now() + timedelta(seconds=5),
            max_instances=1,
            coalesce=True,
        )
        self.log.info(
            "reconciling",
            executor=conf.kind,
            mode=daemon.mode.value,
            every_seconds=daemon.reconcile_seconds,
            kill_switch_file=str(daemon.kill_switch_file) if daemon.kill_switch_file else None,
        )

    def add_interruption_jobs(self) -> None:
        """One job per enabled ``[interruptions.NAME]`` source, every ``interval`` (leader
        only: an SQS message is consumed by whoever receives it). Each new notice goes to
        the reconciler, and a pass runs at once so the replacement is asked for within
        seconds. Notice recording and passes are serialised (also with the periodic
        ``reconcile`` job): a pass never sees half a batch, and one already running is
        followed by another. A ProviderError is logged and the source polled again on
        its next run. Notices live in the leader's memory only."""
        from arbiter.errors import ProviderError
        from arbiter.interruptions import build_interruption_source

        configs = {n: c for n, c in self.settings.interruptions.items() if c.enabled}
        if not configs or self.reconciler is None:
            return
        lock = threading.Lock()

        def reconcile_serialised() -> None:
            with lock:
                self.reconcile()

        if self._scheduler.get_job("reconcile") is not None:
            self._scheduler.modify_job("reconcile", func=reconcile_serialised)

        def poll(name: str, source: Any) -> None:
            if not self.is_leader or self.stopping.is_set():
                return
            try:
                notices = source.poll(self.clock.now())
            except ProviderError as exc:
                self.log.warning("interruption poll failed", source=name, error=str(exc))
                return
            if not notices:
                return
            with lock:
                new = [n for n in notices if self.reconciler.notice(n)]
                if new:
                    self.log.info("new interruption notices: reconciling now", notices=len(new))
                    self.reconcile()

        for name, conf in configs.items():
            source = build_interruption_source(conf.kind, name, conf.options, origin=conf.origin)
            self.interruption_sources.append(source)  # from here on, stopping closes it
            self._scheduler.add_job(
                poll,
                "interval",
                args=[name, source],
                seconds=conf.interval,
                id=f"interruptions:{name}",
                next_run_time=self.clock.now(),
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self.log.info("watching for interruptions", sources=sorted(configs))

    def add_polling_jobs(self, sources: dict[str, ConfiguredSource]) -> None:
        self.poller = Poller(self.store, sources, self.catalog, self.clock)
        first = self.clock.now()
        for name, configured in sources.items():
            self._scheduler.add_job(
                self.poll,
                "interval",
                args=[name],
                seconds=configured.config.interval,
                jitter=configured.config.jitter,
                id=f"poll:{name}",
                next_run_time=first,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self._scheduler.add_job(
            self.prune, "interval", hours=6, id="retention", max_instances=1, coalesce=True
        )

    # -- lifecycle --------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            self.log.info("stopping", signal=signal.Signals(signum).name)
            self.stopping.set()

        def reload(_signum: int, _frame: FrameType | None) -> None:
            self.log.info("reload requested", signal="SIGHUP")
            self.reload_requested.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def run(
        self,
        sources: dict[str, ConfiguredSource] | None = None,
        *,
        on_ready: Callable[[], None] | None = None,
        reconcile: bool = True,
    ) -> int:
        self.sources = dict(sources or {})  # the daemon's from here on: closed below
        try:
            if self.settings.database.echo:
                echo_sql()
            self.prepare_store()
            # From here on the lease may be ours: whatever stops the start (an executor or
            # an interruption source refusing its options, a port in use) releases it
            # below rather than leaving it held until it expires.
            self.try_lead()
            self._start(self.sources, reconcile=reconcile)
            if on_ready:
                on_ready()
            while not self.stopping.wait(timeout=1.0):
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload_policies()
        finally:
            self._shut_down()
        return 0

    def _shut_down(self) -> None:
        """Stop in order: tell systemd, stop the HTTP endpoint, stop the scheduler
        (letting the running job finish), close the executor and the sources, release
        the lease, dispose of the engine. Every step runs whichever failed before it: a
        failure is logged ("shutdown step failed", naming the step) and neither changes
        the exit status nor replaces the error the daemon is stopping on. An interrupt
        inside a step (a second Ctrl-C) is logged too; the later steps still run, and
        then it propagates."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("tell systemd", self.notifier.stopping),
            ("stop the HTTP endpoint", self._stop_endpoint),
            ("stop the scheduler", self._stop_scheduler),
            ("close the executor", self._close_executor),
            ("close the sources", self._close_sources),
            ("release the lease", self._release_lease),
            ("dispose of the engine", self.engine.dispose),
        ]
        interrupted: BaseException | None = None
        for step, take in steps:
            try:
                take()
            except Exception as exc:  # the next steps still run; the caller's error stands
                self.log.error("shutdown step failed", step=step, error=str(exc))
            except BaseException as exc:  # an interrupt: finish stopping first
                self.log.error("shutdown step interrupted", step=step)
                interrupted = interrupted or exc
        self.log.info("stopped")
        if interrupted is not None:
            raise interrupted

    def _stop_endpoint(self) -> None:
        if self.endpoint is not None:
            self.endpoint.stop()

    def _stop_scheduler(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)

    def _release_lease(self) -> None:
        if not self.is_leader:
            return
        try:
            self.store.leases.release(LEADER_LEASE, self.name)
        except StoreError as exc:
            self.log.warning("could not release lease", error=str(exc))

    def _close_executor(self) -> None:
        """Close the executor (its connection pools, SDK clients), once. Replicas keep
        running."""
        executor, self.executor = self.executor, None
        name = getattr(executor, "name", type(executor).__name__)
        self._close("executor", executor, executor=name)

    def _close_sources(self) -> None:
        """Close the interruption sources (SQS and EC2 clients, metadata HTTP clients,
        Kubernetes API pools) and the market-data sources (SDK and HTTP clients), each
        once: a failing one does not keep the others open."""
        interruptions, self.interruption_sources = self.interruption_sources, []
        for source in interruptions:
            self._close("interruption source", source, source=source.name)
        sources, self.sources = self.sources, {}
        close_sources(sources)

    def _close(self, what: str, holder: Any, **names: str) -> None:
        """Call ``holder.close()`` if it has one (the dry-run executor and the replay
        source hold nothing). A failure is logged: it must not replace the exit status
        or the error the daemon is stopping on."""
        close = getattr(holder, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception as exc:  # any SDK or transport error: the daemon still stops
            self.log.warning(f"could not close the {what}", error=str(exc), **names)

    def _start(self, sources: dict[str, ConfiguredSource] | None, *, reconcile: bool) -> None:
        """Build the executor and the interruption sources (their options are checked
        here), schedule the jobs, start them and the HTTP endpoint."""
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(timezone="UTC")
        if sources:
            self.add_polling_jobs(sources)
        if reconcile:
            self.add_reconcile_job()
            self.add_interruption_jobs()
        self._scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.settings.daemon.tick_seconds,
            id="tick",
            max_instances=1,
            coalesce=True,
        )
        if self.notifier.watchdog_seconds:
            self._scheduler.add_job(
                self.watchdog,
                "interval",
                seconds=self.notifier.watchdog_seconds / 2,
                id="watchdog",
                max_instances=1,
                coalesce=True,
            )
        self._scheduler.start()
        http = self.settings.http
        if http.enabled:
            self.endpoint = Endpoint(
                http.host, http.port, self.store, self.state, self.readiness, fleet=self.fleet
            )
            self.endpoint.start()
        self.notifier.ready(
            f"{'leader' if self.is_leader else 'standby'}; mode {self.settings.daemon.mode.value}"
        )
        self.log.info(
            "started",
            mode=self.settings.daemon.mode.value,
            leader=self.is_leader,
            backend=self.engine.dialect.name,
            sources=sorted(sources or {}),
        )
