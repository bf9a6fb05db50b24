"""Run every benchmark (or those named) and write JSON results to bench/results/.

.venv/bin/python -m bench.run            # all
.venv/bin/python -m bench.run ingest     # one

PostgreSQL benchmarks start a private server, or use the existing one named by
ARBITER_BENCH_POSTGRES_URL (see bench/common.py). stdout is the JSON results only;
progress and log lines go to stderr.
"""

from __future__ import annotations

import importlib
import json
import sys

from arbiter.logs import configure as configure_logging

BENCHMARKS = {
    "ingest": "bench.ingest",
    "poll_cycle": "bench.poll_cycle",
    "cli_latency": "bench.cli_latency",
    "interruption": "bench.interruption",
    "solver": "bench.solver",
    "reconcile": "bench.reconcile",
}


def main(argv: list[str]) -> int:
    # stdout carries only the JSON results; the measured code logs as the daemon does
    # (info, JSON lines), but to stderr with the progress lines.
    configure_logging(level="info", fmt="json", stream=sys.stderr)
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== {name}", file=sys.stderr)
        result = importlib.import_module(BENCHMARKS[name]).main()
        print(json.dumps({name: result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
