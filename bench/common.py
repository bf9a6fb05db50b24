"""Shared benchmark plumbing: a PostgreSQL server, timing, and JSON results with
machine information. Benchmarks are not tests: they measure and record, and the
figures go into results/*.json (and the closing notes)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        pass
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
    }


def median_of(runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    values = [fn() for _ in range(runs)]
    return statistics.median(values), values


@contextmanager
def timer() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    elapsed: list[float] = []
    yield lambda: elapsed[0] if elapsed else time.perf_counter() - start
    elapsed.append(time.perf_counter() - start)


BENCH_POSTGRES_URL = "ARBITER_BENCH_POSTGRES_URL"
"""An existing PostgreSQL server to measure on, as a libpq URL whose role may create
databases, e.g. ``postgresql://arbiter@127.0.0.1:5432/postgres``."""


@contextmanager
def postgres_url() -> Iterator[str]:
    """A fresh, empty database (SQLAlchemy URL), dropped afterwards.

    On the server named by ARBITER_BENCH_POSTGRES_URL when it is set, which is left
    running; else on a private PostgreSQL server started for this benchmark and stopped
    after it. Benchmarks need an empty database: they count the rows they insert.
    """
    from tests.support.postgres import PostgresServer

    server = PostgresServer()
    external = os.environ.get(BENCH_POSTGRES_URL)
    if external:
        server.admin_url = _libpq_url(external)
    else:
        server.start()
    try:
        url = server.new_database()
        try:
            yield url
        finally:
            if external:
                server.drop_database(url)
    finally:
        server.stop()


def _libpq_url(url: str) -> str:
    """``url`` as psycopg takes it: SQLAlchemy's ``postgresql+psycopg://`` and the
    ``postgres://`` shorthand become ``postgresql://``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(f"{BENCH_POSTGRES_URL} must be a postgresql:// URL")
    return f"postgresql://{rest}"


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
