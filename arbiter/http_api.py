"""The daemon's HTTP endpoint, bound to localhost by default:

* ``/healthz`` — 200 while the process runs its scheduler;
* ``/readyz`` — 200 when the store answers and this daemon knows its role (leader or
  standby) and at least one market-data source is healthy; 503 with the reasons
  otherwise;
* ``/metrics`` — Prometheus text format, read from the store at scrape time (source
  health and age, migrations by state, decisions, leadership, mode).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from arbiter.errors import ConfigError
from arbiter.logs import get_logger
from arbiter.store.repositories import Store

DEGRADED_AFTER = 3


class StoreCollector(Collector):
    """Reads the store on every scrape; a failing store gives ``arbiter_store_up 0``."""

    def __init__(
        self,
        store: Store,
        state: Callable[[], dict[str, Any]],
        fleet: Callable[[], dict[str, Any]] | None = None,
    ):
        self.store = store
        self.state = state
        self.fleet = fleet
        """The fleet summary of ``arbiter status`` (cost, baseline, carbon), if given."""

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(UTC)
        state = self.state()
        leader = GaugeMetricFamily("arbiter_leader", "1 if this daemon leads, else 0")
        leader.add_metric([], 1.0 if state.get("leader") else 0.0)
        yield leader
        info = GaugeMetricFamily("arbiter_info", "Daemon mode and name", labels=["mode", "name"])
        info.add_metric([str(state.get("mode", "")), str(state.get("name", ""))], 1.0)
        yield info
        up = GaugeMetricFamily("arbiter_store_up", "1 if the store answered this scrape")
        try:
            sources = self.store.sources.all()
            migrations = self.store.migrations.unfinished()
        except Exception:  # any store failure is reported as the store being down
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        age = GaugeMetricFamily(
            "arbiter_source_last_success_age_seconds",
            "Seconds since the source last polled successfully",
            labels=["source"],
        )
        failures = GaugeMetricFamily(
            "arbiter_source_consecutive_failures", "Failed polls in a row", labels=["source"]
        )
        healthy = GaugeMetricFamily(
            "arbiter_source_healthy",
            f"1 unless the source failed {DEGRADED_AFTER} or more polls in a row",
            labels=["source"],
        )
        for s in sources:
            if s.last_success_at is not None:
                age.add_metric([s.source], (now - s.last_success_at).total_seconds())
            failures.add_metric([s.source], float(s.consecutive_failures))
            healthy.add_metric([s.source], 0.0 if s.consecutive_failures >= DEGRADED_AFTER else 1.0)
        yield age
        yield failures
        yield healthy
        in_flight = GaugeMetricFamily(
            "arbiter_migrations_in_flight", "Unfinished migrations by state", labels=["state"]
        )
        counts: dict[str, int] = {}
        for m in migrations:
            counts[m.state.value] = counts.get(m.state.value, 0) + 1
        for state_name, count in sorted(counts.items()):
            in_flight.add_metric([state_name], float(count))
        yield in_flight
        yield from self._fleet()
        yield from self._reconcile(state.get("reconcile") or {})

    def _fleet(self) -> Iterator[Metric]:
        if self.fleet is None:
            return
        try:
            summary = self.fleet()
        except Exception:  # a scrape never fails on one part: the rest is still served
            return
        gauges = (
            ("arbiter_fleet_usd_per_hour", "Price of every running replica, USD/h", "usd_per_hour"),
            (
                "arbiter_fleet_on_demand_baseline_usd_per_hour",
                "The same replicas at on-demand prices, USD/h",
                "baseline_on_demand_usd_per_hour",
            ),
            (
                "arbiter_fleet_savings_usd_per_hour",
                "Baseline minus what the fleet pays, USD/h",
                "savings_usd_per_hour",
            ),
            (
                "arbiter_fleet_carbon_g_per_hour",
                "Grid carbon of the running replicas, gCO2e/h",
                "carbon_g_per_hour",
            ),
            ("arbiter_fleet_replicas", "Running replicas", "replicas"),
        )
        for name, doc, key in gauges:
            value = summary.get(key)
            if value is None:
                continue
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(value))
            yield gauge

    def _reconcile(self, r: dict[str, Any]) -> Iterator[Metric]:
        """Counters and figures of this daemon's reconcile passes (leader only)."""
        if not r:
            return
        for name, doc, key in (
            ("arbiter_reconcile_passes", "Reconcile passes run by this daemon", "passes"),
            ("arbiter_decisions_recorded", "Decisions recorded (changed ones)", "decisions"),
            ("arbiter_migrations_started", "Migrations started by this daemon", "started"),
        ):
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], float(r.get(key, 0)))
            yield counter
        for name, doc, key in (
            ("arbiter_solver_seconds", "HiGHS time of the last placement solve", "solver_seconds"),
            ("arbiter_reconcile_seconds", "Wall time of the last reconcile pass", "seconds"),
            ("arbiter_workloads_unplaceable", "Workloads not fully placed", "unplaceable"),
            (
                "arbiter_workloads_waiting_for_spot",
                "Workloads short of spot replicas lost to an interruption (fallback none)",
                "waiting_for_spot",
            ),
            ("arbiter_solver_gap", "Relative MIP gap of the last solve", "gap"),
        ):
            if key in r:
                gauge = GaugeMetricFamily(name, doc)
                gauge.add_metric([], float(r[key]))
                yield gauge
        if "violations_overdue" in r:
            # named on its own: the shipped alert ArbiterHardViolationOverdue reads it
            overdue = GaugeMetricFamily(
                "arbiter_hard_violations_overdue",
                "Workloads still breaking an enforced rule past on_hard_violation.drain_within",
            )
            overdue.add_metric([], float(r["violations_overdue"]))
            yield overdue


class Endpoint:
    """A small threaded HTTP server in the daemon (health, readiness, metrics)."""

    def __init__(
        self,
        host: str,
        port: int,
        store: Store,
        state: Callable[[], dict[str, Any]],
        ready: Callable[[], tuple[bool, list[str]]],
        fleet: Callable[[], dict[str, Any]] | None = None,
    ):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(store, state, fleet))
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    ok, reasons = ready()
                    body = json.dumps({"ready": ok, "reasons": reasons}).encode() + b"\n"
                    self._send(200 if ok else 503, body, "application/json")
                elif path == "/metrics":
                    self._send(
                        200,
                        generate_latest(endpoint.registry),
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}", source="http", key="port"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="arbiter-http", daemon=True
        )
        self.log = get_logger("http")

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        self.log.info("serving", host=self.address[0], port=self.address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
